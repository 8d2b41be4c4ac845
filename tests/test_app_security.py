"""Issue #28 ("Hostile files and bad input") for the explainer app and its launcher: the app's process keeps the
user's folder off ``sys.path``, listens on loopback only, checks its port, caps uploads, imports only the
``--import`` modules, follows paths read from files only inside the folders opened, renders file content as
text and shows one-line errors. Servers started here answer a session driven over Streamlit's websocket (no
browser), so each end-to-end check takes seconds."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from xdreamer import app as ui

APP = pathlib.Path(__file__).resolve().parent.parent / "apps" / "explainer.py"
TIMEOUT = 180
EVIL_IMAGE = "![x](http://127.0.0.1:9/x.png)"
EVIL_HTML = "<img src=x onerror=alert(1)>"


# ---- helpers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port``, from /proc/net/tcp and tcp6 (what `ss -ltn` reads)."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = pathlib.Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw))
    return found


def run_session(port: int, timeout: float = 120) -> list[str]:
    """Open one session on the server at ``port`` as a browser tab would (Streamlit's websocket protocol) and wait
    until its script run finishes; returns the forward-message kinds seen."""
    pytest.importorskip("websockets.sync.client", reason="websockets ships with Streamlit's starlette server")
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    kinds = []
    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"], open_timeout=30,
                 max_size=None) as ws:
        msg = BackMsg()
        msg.rerun_script.query_string = ""
        ws.send(msg.SerializeToString())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            forward = ForwardMsg()
            forward.ParseFromString(ws.recv(timeout=max(deadline - time.monotonic(), 1)))
            kinds.append(forward.WhichOneof("type"))
            if kinds[-1] == "script_finished":
                return kinds
    raise AssertionError(f"the script run did not finish within {timeout} s: {kinds}")


def wait_up(proc: subprocess.Popen, port: int, log: pathlib.Path, timeout: float = 120) -> None:
    assert ui.wait_for_server(f"http://127.0.0.1:{port}", timeout=timeout, proc=proc), log.read_text()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # the launcher stops its Streamlit child on SIGTERM
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def payload_folder(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A folder holding ``xdpayload.py``, which writes a marker file when imported."""
    folder = root / "user"
    folder.mkdir()
    marker = root / "PAYLOAD_RAN"
    (folder / "xdpayload.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    return folder, marker


def has_link(text: str) -> bool:
    """Markdown link or image syntax (``](`` or ``![`` with no backslash escaping it) or raw HTML."""
    return bool(re.search(r"(?<!\\)\]\(|(?<!\\)!\[|<img|<a ", text))


def unescaped(text: str, chars: str) -> list[str]:
    """The characters of ``chars`` in ``text`` that no backslash escapes."""
    return [m.group(2) for m in re.finditer(r"(\\*)([" + re.escape(chars) + "])", text) if len(m.group(1)) % 2 == 0]


# ---- the launcher ----------------------------------------------------------------------------------------
def test_streamlit_command_binds_loopback_and_caps_uploads():
    cmd = ui.streamlit_command("ck", 8999)

    def option(name):
        return cmd[cmd.index(name) + 1]

    assert option("--server.address") == "127.0.0.1" == ui.DEFAULT_HOST
    assert option("--server.maxUploadSize") == str(ui.MAX_UPLOAD_MB) and 0 < ui.MAX_UPLOAD_MB <= 64
    assert option("--server.enableXsrfProtection") == "true" and option("--client.showErrorDetails") == "none"
    if sys.version_info >= (3, 11):
        assert cmd[1] == "-P"
    assert cmd[-2:] == ["--", "ck"]
    assert option("--server.address") == "127.0.0.1"
    assert ui.streamlit_command("ck", 8999, host="0.0.0.0")[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert ui.is_loopback("127.0.0.1") and ui.is_loopback("localhost") and ui.is_loopback("::1")
    assert not ui.is_loopback("0.0.0.0") and not ui.is_loopback("192.168.1.5") and not ui.is_loopback("example.com")
    assert ui.app_url("0.0.0.0", 80) == "http://127.0.0.1:80" and ui.app_url("::1", 80) == "http://[::1]:80"


def test_app_process_runs_outside_the_users_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kwargs = ui.app_process(tmp_path / "ck", imports=["mypkg.envs", "other"],
                            environ={"PATH": "/bin", "PYTHONPATH": f"lib{os.pathsep}{os.pathsep}/abs"})
    assert kwargs["cwd"] == str(APP.parent)
    env = kwargs["env"]
    assert env[ui.BASE_ENV] == str(tmp_path.resolve()) and env[ui.ROOTS_ENV] == str(tmp_path / "ck")
    assert env["PYTHONSAFEPATH"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path.resolve() / "lib"), "/abs"]  # no empty entry
    # --import reaches the app's process, and the app reads exactly those names.
    assert env[ui.IMPORTS_ENV] == "mypkg.envs,other"
    assert ui.app_imports(env) == ["mypkg.envs", "other"] and ui.app_imports({}) == []
    with pytest.raises(ValueError, match="not a Python module name"):
        ui.app_process("ck", imports=["a,b"])


def test_cli_passes_host_and_imports(monkeypatch):
    from xdreamer import cli

    args = cli.build_parser().parse_args(["app", "ck", "--import", "a", "--import", "b.c", "--host", "0.0.0.0"])
    assert (args.imports, args.host) == (["a", "b.c"], "0.0.0.0")
    assert cli.build_parser().parse_args(["app"]).host == "127.0.0.1"
    seen = {}
    monkeypatch.setattr(ui, "run_app", lambda *a, **k: seen.update(args=a, kwargs=k) or 0)
    assert cli.main(["app", "ck", "--import", "a", "--host", "::1", "--port", "9000", "--headless"]) == 0
    assert seen["kwargs"] == {"port": 9000, "headless": True, "host": "::1", "imports": ["a"]}


class FakeProc:
    def __init__(self, command, **kwargs):
        FakeProc.calls.append((command, kwargs))

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


def test_run_app_warns_when_not_on_loopback(monkeypatch, capsys, tmp_path):
    FakeProc.calls = []
    monkeypatch.setattr(ui.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(ui, "_stop_child_on_sigterm", lambda: None)  # keep pytest's own SIGTERM handling
    port = free_port()
    assert ui.run_app(str(tmp_path), port=port, headless=True, host="0.0.0.0") == 0
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "0.0.0.0 is not a loopback address" in err
    assert f"at http://127.0.0.1:{port}" in out
    (command, kwargs), = FakeProc.calls
    assert command[command.index("--server.address") + 1] == "0.0.0.0" and kwargs["cwd"] == str(APP.parent)
    assert ui.run_app(str(tmp_path), port=port, headless=True) == 0
    out, err = capsys.readouterr()
    assert err == "" and f"http://127.0.0.1:{port}" in out


def test_port_in_use_is_one_line_before_anything_starts(monkeypatch, capsys):
    from xdreamer import cli

    def no_server(*args, **kwargs):
        raise AssertionError("started a server on a taken port")

    monkeypatch.setattr(ui.subprocess, "Popen", no_server)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ui.PortInUse) as info:
            ui.run_app(None, port=port, headless=True)
        assert str(info.value) == f"port {port} on 127.0.0.1 is in use; pass --port N"
        assert isinstance(info.value, ValueError)
        capsys.readouterr()
        assert cli.main(["app", "--port", str(port), "--headless"]) == 2
    err = capsys.readouterr().err
    assert err == f"xdreamer: error: port {port} on 127.0.0.1 is in use; pass --port N\n"
    ui.check_port_free("127.0.0.1", port)  # free again once closed


def test_app_process_keeps_the_users_folder_off_sys_path(tmp_path, monkeypatch):
    """The launcher alone (whatever envs.make does): a Streamlit app started by it from a folder holding
    ``xdpayload.py`` can import no module from that folder, and runs in its own folder."""
    user, marker = payload_folder(tmp_path)
    probe_dir = tmp_path / "app"
    probe_dir.mkdir()
    out = tmp_path / "probe.json"
    script = probe_dir / "probe.py"
    script.write_text(
        "import json, os, sys, pathlib\n"
        "try:\n    import xdpayload\n    imported = True\nexcept ImportError:\n    imported = False\n"
        f"pathlib.Path({str(out)!r}).write_text(json.dumps({{'path': sys.path, 'cwd': os.getcwd(), "
        "'imported': imported, 'base': os.environ.get('XDREAMER_APP_CWD')}))\n"
        "import streamlit as st\nst.text('probe')\n")
    monkeypatch.chdir(user)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(ui.streamlit_command(user, port, script=script), stdout=f, stderr=subprocess.STDOUT,
                                **ui.app_process(user, script=script))
    try:
        wait_up(proc, port, log, timeout=60)
        assert listening_addresses(port) in ({"127.0.0.1"}, set())  # set(): no /proc/net here
        assert "script_finished" in run_session(port, timeout=60)
        if ui._streamlit_has_option("server.allowedHosts"):  # DNS rebinding: a foreign Host is refused
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            with pytest.raises(InvalidStatus, match="403"):
                connect(f"ws://rebound.example:{port}/_stcore/stream", subprotocols=["streamlit"], open_timeout=30,
                        sock=socket.create_connection(("127.0.0.1", port))).close()
    finally:
        stop(proc)
    seen = json.loads(out.read_text())
    assert not seen["imported"] and not marker.exists()
    assert str(user) not in seen["path"] and str(user.resolve()) not in seen["path"] and "" not in seen["path"]
    assert seen["cwd"] == str(probe_dir) and seen["base"] == str(user.resolve())


def test_xdreamer_app_end_to_end_loopback_and_no_payload(tmp_path):
    """`xdreamer app . --headless --port N` run inside a checkpoint folder that holds ``xdpayload.py`` and whose
    config names ``gym:xdpayload:CartPole-v1`` (the issue's case): it listens on 127.0.0.1 only, and opening
    the page (which records an episode) never runs the payload."""
    user, marker = payload_folder(tmp_path)
    shutil.copytree(ui.DEFAULT_SOURCE, user, dirs_exist_ok=True)
    config = json.loads((user / "config.json").read_text())
    config["env"] = "gym:xdpayload:CartPole-v1"
    (user / "config.json").write_text(json.dumps(config))
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "xdreamer", "app", ".", "--headless", "--port", str(port)],
                                cwd=user, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_up(proc, port, log)
        if pathlib.Path("/proc/net/tcp").exists():
            assert listening_addresses(port) == {"127.0.0.1"}, listening_addresses(port)
        assert "script_finished" in run_session(port)
    finally:
        stop(proc)
    text = log.read_text()
    assert "Network URL" not in text and f"http://127.0.0.1:{port}" in text, text
    assert not marker.exists()


# ---- paths read from files -------------------------------------------------------------------------------
def test_is_within(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link-out").symlink_to(outside)
    (root / "link-in").symlink_to(root / "sub")
    roots = [root]
    assert ui.is_within(root, roots) and ui.is_within(root / "sub", roots) and ui.is_within(root / "new", roots)
    assert ui.is_within(root / "link-in" / "x", roots)
    assert not ui.is_within(root / "link-out", roots) and not ui.is_within(root / "link-out" / "x", roots)
    assert not ui.is_within(root / ".." / "outside", roots) and not ui.is_within(root / "sub" / ".." / "..", roots)
    assert not ui.is_within("/etc", roots) and not ui.is_within("/", roots)
    assert not ui.is_within(tmp_path / "root-sibling", roots)  # a prefix of the name is not inside
    assert ui.is_within("/etc/passwd", ["/etc"]) and not ui.is_within(root, [])
    loop = root / "loop"
    loop.symlink_to(loop)
    assert not ui.is_within(loop / "x", [outside])


def test_allowed_roots(tmp_path):
    trace = tmp_path / "t" / "trace.npz"
    trace.parent.mkdir()
    trace.write_bytes(b"")
    env = {ui.ROOTS_ENV: str(tmp_path / "cli-ckpt"), ui.BASE_ENV: str(tmp_path)}
    roots = ui.allowed_roots(typed=["t/trace.npz", "", "reports-typed"], environ=env, argv=["pytest"])
    assert ui.REPO_ROOT / "checkpoints" in roots and ui.REPO_ROOT / "reports" in roots
    assert (tmp_path / "cli-ckpt").resolve() in roots
    assert trace.resolve() in roots and trace.parent.resolve() in roots  # a trace's folder holds its checkpoint
    assert (tmp_path / "reports-typed").resolve() in roots and tmp_path.resolve() not in roots
    assert pathlib.Path("/x/ck").resolve() in ui.allowed_roots(environ={}, argv=["/a/apps/explainer.py", "/x/ck"])


def fake_checkpoint(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder


def test_data_checkpoint_is_followed_only_inside_the_roots(tmp_path):
    root = tmp_path / "opened"
    inside = fake_checkpoint(root / "ck")
    elsewhere = fake_checkpoint(tmp_path / "elsewhere")
    (root / "link").symlink_to(elsewhere)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("../../../elsewhere")  # a run whose latest points out
    roots = [root]
    assert ui.data_checkpoint(str(inside), roots) == inside.resolve()
    assert ui.data_checkpoint("ck", roots, base=root) == inside.resolve()
    for named in ("/etc", "../../x", str(elsewhere), str(root / "link"), str(root / ".." / "elsewhere")):
        with pytest.raises(ui.OutsideRoots, match="outside the folders opened"):
            ui.data_checkpoint(named, roots, base=root)
    with pytest.raises(ValueError):  # OutsideRoots, or checkpoint.resolve refusing the pointer itself
        ui.data_checkpoint(str(run), roots)
    with pytest.raises(ValueError, match="names no checkpoint"):
        ui.data_checkpoint(None, roots)


def test_case_step_does_not_follow_rows_outside(tmp_path):
    trace = types.SimpleNamespace(arrays={"episode": np.array([0, 0, 1]), "t": np.array([0, 1, 0])})
    report = tmp_path / "report"
    report.mkdir()
    ckpt = fake_checkpoint(tmp_path / "opened" / "ck")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "checkpoints").mkdir(parents=True)
    (elsewhere / "checkpoints" / "latest").write_text("../../opened/ck")  # a run folder resolving to ckpt

    def row(named, episode=1, step=0):
        return {"checkpoint": named, "episode": episode, "step": step}

    roots = [tmp_path / "opened"]
    assert ui.case_step(trace, row(str(ckpt)), ckpt, report, roots=roots) == 2
    assert ui.case_step(trace, row("../opened/ck"), ckpt, report, roots=roots) == 2  # `..` that stays inside
    assert ui.case_step(trace, row(str(ckpt), episode=3), ckpt, report, roots=roots) is None  # not in the trace
    for named in ("/etc", "../../x", "../elsewhere", str(elsewhere), "nan", ""):
        assert ui.case_step(trace, row(named), ckpt, report, roots=roots) is None, named


def test_read_report_refuses_symlinks_out_of_the_folder(tmp_path):
    report = tmp_path / "report"
    (report / "clips").mkdir(parents=True)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"secret")
    (report / "summary.csv").write_text("case,checkpoint,episode,step,detector,score\na,/etc,0,1,d,0.5\n"
                                        "b,x,0,2,d,0.1\n")
    (report / "clips" / "a.mp4").symlink_to(secret)
    (report / "clips" / "b.mp4").write_bytes(b"clip")
    table, clips = ui.read_report(report)
    assert list(table["case"]) == ["a", "b"] and clips == {"b": report / "clips" / "b.mp4"}
    shutil.rmtree(report / "clips")
    (report / "clips").symlink_to(tmp_path)  # the whole clips folder pointing out
    (tmp_path / "b.mp4").write_bytes(b"outside")
    assert ui.read_report(report)[1] == {}
    (report / "summary.csv").unlink()
    (tmp_path / "summary.csv").write_text("case,checkpoint,episode,step,detector,score\n")
    (report / "summary.csv").symlink_to(tmp_path / "summary.csv")
    with pytest.raises(ValueError, match="points outside the report folder"):
        ui.read_report(report)


# ---- file content is text --------------------------------------------------------------------------------
def test_escape_md():
    for hostile in (EVIL_IMAGE, EVIL_HTML, "[link](javascript:alert(1))",
                    "**bold** _it_ `code` $x$ :red[red] ~~s~~ \\[x](y)"):
        out = ui.escape_md(hostile)
        assert unescaped(out, "[]`*_$~") == [], (hostile, out)
        assert "<" not in out and ">" not in out and not has_link(out)
    assert ui.escape_md(EVIL_IMAGE) == "!\\[x\\](http://127.0.0.1:9/x.png)"
    assert ui.escape_md(EVIL_HTML) == "&lt;img src=x onerror=alert(1)&gt;"
    assert ui.escape_md("a\nb\r\n\n# c") == "a b # c"  # one line: no heading, list or table can start
    assert ui.escape_md("# title") == "\\# title" and ui.escape_md("- item") == "\\- item"
    assert ui.escape_md("1. item") == "1\\. item"
    plain = "toy:catch 1,234 -0.500 (mode policy)!"
    assert ui.escape_md(plain) == plain  # plain text reads the same
    assert ui.escape_md("AT&T") == "AT&amp;T"


def test_manifest_rows_survive_garbled_fields():
    rows = ui.manifest_rows({"env": "toy:catch", "steps": "lots", "updates": None, "created": EVIL_IMAGE,
                             "eval": {"mean": "high", "std": 1}})
    assert rows["steps trained"] == "?" and rows["updates"] == "?" and rows["evaluation return"] == "?"
    assert rows["created"] == EVIL_IMAGE  # the data as it is; the page escapes it
    assert ui.manifest_rows("not a mapping")["env"] == "None"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A tiny untrained debug checkpoint whose manifest carries Markdown and garbled fields, and traces whose
    meta names checkpoints outside any folder opened."""
    import torch

    from xdreamer import checkpoint, explain
    from xdreamer.agent import Agent
    from xdreamer.config import build_config
    from xdreamer.envs import make

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hostile")
    env = make("toy:catch")
    torch.manual_seed(0)
    agent = Agent(build_config(["debug"], {"env": "toy:catch", "device": "cpu"}), env.spec)
    path = checkpoint.save(root / "elsewhere" / "ck", agent, steps=5,
                           extra={"created": EVIL_IMAGE})
    agent = checkpoint.load(path)
    trace = explain.record(agent, env, episodes=1, seed=0, max_steps=6)
    env.close()
    traces = {}
    for name, named in (("outside", str(path)), ("etc", "/etc"), ("dotdot", "../../x"),
                        ("evil", f"/nowhere/{EVIL_IMAGE} {EVIL_HTML}")):
        trace.meta.update(checkpoint=named)
        traces[name] = explain.save(trace, root / f"{name}.npz").read_bytes()
    trace.arrays["post_class"] = np.full_like(trace.arrays["post_class"], 999)  # out of range
    trace.meta.update(checkpoint=None)
    traces["garbled"] = explain.save(trace, root / "garbled.npz").read_bytes()
    yield {"root": root, "path": path, "traces": traces}
    torch.set_num_threads(threads)


def open_app(source, monkeypatch):
    from streamlit.testing.v1 import AppTest

    for name in (ui.ROOTS_ENV, ui.BASE_ENV, ui.IMPORTS_ENV, ui.SOURCE_ENV):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["source"] = str(source)
    return at.run()


def markdown_of(at) -> list[str]:
    """Every Markdown-rendered string of the page: markdown, captions, alerts, labels and tooltips."""
    texts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in at.get(kind)]
    texts += [e.value for e in at.sidebar.markdown] + [c for image in at.image for c in image.captions]
    return texts


def assert_one_line_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    for e in list(at.error) + list(at.warning):
        assert "\n" not in e.value.strip() and "Traceback" not in e.value, e.value


def test_page_renders_manifest_and_meta_as_text(hostile, monkeypatch):
    at = open_app(hostile["path"], monkeypatch)
    assert_one_line_errors(at)
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    assert "**created:** " + ui.escape_md(EVIL_IMAGE) in sidebar
    assert "**steps trained:** 5" in sidebar
    assert not [text for text in markdown_of(at) if has_link(text)]
    # Text from an uploaded trace's meta (the checkpoint it names, quoted in the refusal): escaped too.
    at.text_input(key="source").set_value("").run()
    at.file_uploader(key="upload").set_value(("t.npz", hostile["traces"]["evil"], "application/zip")).run()
    assert_one_line_errors(at)
    assert any(ui.escape_md(EVIL_IMAGE) in w.value and "&lt;img" in w.value for w in at.sidebar.warning)
    assert not [text for text in markdown_of(at) if has_link(text)]


def test_uploaded_trace_naming_a_checkpoint_outside_is_not_followed(hostile, monkeypatch):
    at = open_app("", monkeypatch)  # nothing opened: only the bundled folders are roots
    for name in ("outside", "etc", "dotdot"):
        at.file_uploader(key="upload").set_value((f"{name}.npz", hostile["traces"][name], "application/zip")).run()
        assert_one_line_errors(at)
        warnings = [w.value for w in at.sidebar.warning]
        assert any("names a checkpoint outside the folders opened" in w and "open that checkpoint folder" in w
                   for w in warnings), (name, warnings)
        assert not any("steps trained" in m.value for m in at.sidebar.markdown)  # the checkpoint was not loaded
        assert any("Saliency needs the checkpoint" in i.value for i in at.info)
    # The same trace with its checkpoint's folder typed by the user: followed.
    at.text_input(key="source").set_value(str(hostile["path"].parent)).run()
    at.file_uploader(key="upload").set_value(("t.npz", hostile["traces"]["outside"], "application/zip")).run()
    assert not at.exception
    assert any("steps trained" in m.value for m in at.sidebar.markdown)


def test_garbled_trace_and_imports_give_one_line(hostile, monkeypatch, tmp_path):
    """Out-of-range latent classes give one line per panel; an --import module is imported by the app (and a
    missing one is one line)."""
    (tmp_path / "xd_app_import_probe.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "xd_app_import_probe", None)  # restored (removed) after the test
    del sys.modules["xd_app_import_probe"]
    at = open_app("", monkeypatch)
    monkeypatch.setenv(ui.IMPORTS_ENV, "xd_app_import_probe,xd_no_such_module_28")
    at.file_uploader(key="upload").set_value(("g.npz", hostile["traces"]["garbled"], "application/zip")).run()
    assert_one_line_errors(at)
    assert "xd_app_import_probe" in sys.modules
    assert any(ui.escape_md("could not import module xd_no_such_module_28") in e.value for e in at.sidebar.error)
    if any("Cannot read the uploaded file" in e.value for e in at.sidebar.error):
        return  # the trace loader refused the out-of-range classes itself: one line, fine
    for panel in ("Frame", "Latent", "What-if", "Failures"):
        at.segmented_control(key="panel").set_value(panel).run()
        assert_one_line_errors(at)
