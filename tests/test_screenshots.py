"""Screenshots of the explainer app (#31): every panel at 1400 px wide in headless Chromium, on the bundled
`catch-lanes` (a toy agent) and `pong` (an Atari agent, opened from a short saved trace so that nothing records a
whole game), with no Streamlit error or exception element on any of them.

The PNGs go to a temporary folder. To regenerate the screenshots the docs show (docs/images/):

    XDREAMER_SCREENSHOTS=docs/images python -m pytest tests/test_screenshots.py

One server serves both agents: the pong trace is typed into the sidebar as a user would, which saves a second
Streamlit start (about 15 s on 2 cores). The helpers are those of the end-to-end test in tests/test_app.py.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from test_app import free_port  # tests/ is on sys.path under pytest's default import mode

from xdreamer import app as ui

SCREENSHOTS_ENV = "XDREAMER_SCREENSHOTS"
WIDTH = 1400  # the width the target names: readable without zooming
HEIGHT = 1000  # the viewport; screenshots are full-page
PONG_STEPS = 60  # the pong trace: enough for a served ball, a few seconds to record
REPORTS = {"catch-lanes": ui.REPO_ROOT / "reports" / "catch-contrast", "pong": ui.REPO_ROOT / "reports" / "atari"}
# The Compare panel's second agent: the pixel-ball twin of catch-lanes, on the same seed.
COMPARE = {"catch-lanes": ui.REPO_ROOT / "checkpoints" / "catch-pixel-lanes"}
T0 = time.monotonic()
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


@contextlib.contextmanager
def app_server(source, log_path: pathlib.Path, while_starting=lambda: None):
    """`xdreamer app SOURCE --headless` on a free port; yields its URL once /_stcore/health answers. Calls
    `while_starting()` first, while the server imports."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # single-step inference: one thread on shared cores
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "xdreamer", "app", str(source), "--port", str(port),
                               "--headless"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        while_starting()
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not answer within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()  # the launcher stops its Streamlit child on SIGTERM
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # a child that outlived the launcher


QUIET = ("() => !document.querySelector('[data-testid=stStatusWidget]')"  # no script run in progress
         " && !document.querySelector('[data-stale=true], [data-testid=stSkeleton]')")  # no element left over


def settle(page, text: str | re.Pattern, timeout_ms: int = 120_000) -> None:
    """Wait for `text` on the page (or for a locator), then until the script run is over: no status widget, no
    stale element of an earlier run, no placeholder, twice 0.5 s apart."""
    (page.get_by_text(text) if isinstance(text, (str, re.Pattern)) else text).first.wait_for(timeout=timeout_ms)
    for _ in range(2):
        page.wait_for_timeout(500)
        page.wait_for_function(QUIET, timeout=timeout_ms, polling=100)


def capture(page, folder: pathlib.Path, name: str) -> pathlib.Path:
    """A full-page PNG, after checking that no error or exception element is on the page."""
    print(f"{time.monotonic() - T0:6.1f} s  {name}")  # with -s: where the time goes
    page.mouse.move(0, 0)  # no hover tooltip in the picture
    errors = page.locator(ERRORS)
    assert errors.count() == 0, f"{name}: " + " | ".join(errors.all_inner_texts())
    body = page.inner_text("body")
    assert "Traceback" not in body, f"{name}: {body}"
    # Streamlit scrolls inside its main block, not the document: a full-page screenshot is the window. So the
    # window grows to the content's height for the capture.
    height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll("
                           "'[data-testid=stMain], [data-testid=stSidebarContent]'), e => e.scrollHeight))")
    page.set_viewport_size({"width": WIDTH, "height": max(HEIGHT, int(height))})
    page.wait_for_timeout(500)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    assert path.stat().st_size > 20_000, path  # not a blank page
    return path


def choose_panel(page, panel: str) -> None:
    page.locator('[data-testid="stButtonGroup"]').get_by_text(panel, exact=True).click()


def capture_agent(page, folder: pathlib.Path, name: str, env_id: str) -> list[pathlib.Path]:
    """The app on one agent: the Frame panel at its first HIGHLIGHTS moment, then Latent, What-if (run, with
    the real branches) and Failures (the bundled report of that game)."""
    settle(page, env_id)
    settle(page, re.compile(r"^step 0: episode 0"))
    page.get_by_role("button", name=re.compile(r"^★ step \d+")).first.click()
    caption = page.get_by_text(re.compile(r"^step \d+: episode 0, t=\d+")).first
    page.wait_for_function("() => !document.body.innerText.includes('step 0: episode 0')", timeout=120_000)
    step = int(re.match(r"step (\d+)", caption.inner_text()).group(1))
    settle(page, f"real frame (step {step})")
    shots = [capture(page, folder, f"{name}-frame")]
    choose_panel(page, "Latent")
    settle(page, re.compile(r"^decoded difference: variable"))
    shots.append(capture(page, folder, f"{name}-latent"))
    choose_panel(page, "What-if")
    page.get_by_role("button", name=f"Run what-if at step {step}").click()
    settle(page, f"What-if at step {step}")
    settle(page, "Download the what-if video (mp4)")
    assert page.locator("video").count() >= 1
    shots.append(capture(page, folder, f"{name}-whatif"))
    if name in COMPARE:
        choose_panel(page, "Compare")
        box = page.get_by_label("Second checkpoint (recorded on the same seed and step cut)")
        box.fill(str(COMPARE[name]))
        box.press("Enter")
        settle(page, re.compile(r"^episode seed \d+; both at step"))
        settle(page, page.locator('[data-testid="stTable"]').nth(1))
        shots.append(capture(page, folder, f"{name}-compare"))
    choose_panel(page, "Failures")
    box = page.get_by_label("Failure report folder (made by `xdreamer report`)")
    box.fill(str(REPORTS[name]))
    box.press("Enter")
    settle(page, page.locator('[data-testid="stDataFrame"]'))
    shots.append(capture(page, folder, f"{name}-failures"))
    return shots


@pytest.mark.slow
def test_screenshots_of_every_panel(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium not found: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    import torch

    from xdreamer import checkpoint, explain
    from xdreamer.training import make_env

    assert ui.PANELS == ("Frame", "Latent", "What-if", "Compare", "Failures"), \
        "a new panel: capture it in capture_agent"
    folder = pathlib.Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    traces = {}

    def record_pong():  # a short saved trace: opening the checkpoint would record a whole game first
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        agent = checkpoint.load(ui.REPO_ROOT / "checkpoints" / "pong")
        env = make_env(agent.cfg)
        try:
            trace = explain.record(agent, env, episodes=1, seed=0, max_steps=PONG_STEPS)
            traces["pong"] = explain.save(trace, tmp_path / "pong.npz")
        finally:
            env.close()
            torch.set_num_threads(threads)

    shots = []
    with app_server(ui.REPO_ROOT / "checkpoints" / "catch-lanes", tmp_path / "server.log", record_pong) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                page.goto(url)
                shots += capture_agent(page, folder, "catch-lanes", "toy:catch-lanes")
                choose_panel(page, "Frame")
                source = page.get_by_label("Checkpoint folder, run folder or trace file (.npz)")
                source.fill(str(traces["pong"]))
                source.press("Enter")
                settle(page, "atari:Pong")
                shots += capture_agent(page, folder, "pong", "atari:Pong")
            finally:
                browser.close()
    assert [s.name for s in shots] == [f"{agent}-{panel}.png" for agent in ("catch-lanes", "pong")
                                       for panel in ("frame", "latent", "whatif", "compare", "failures")
                                       if panel != "compare" or agent in COMPARE]
    from PIL import Image

    for shot in shots:
        with Image.open(shot) as image:
            assert image.width == WIDTH, (shot, image.size)  # nothing wider than the window
            if os.environ.get(SCREENSHOTS_ENV):  # committed copies: 256 colours, a third of the bytes
                image = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        if os.environ.get(SCREENSHOTS_ENV):
            image.save(shot, optimize=True)
