"""Non-UI helpers of the Streamlit explainer (``apps/explainer.py``) and the ``xdreamer app`` launcher.

Everything here is plain Python: locating and launching the app, classifying what the user opened,
cache keys (path + modification time, so cached results follow edits of a file), readable error
text, the failure-report reader, and figure/image builders that only *draw* numbers computed by
``xdreamer.explain``. No model maths happens here; ``import xdreamer.app`` needs neither torch nor
streamlit (plotly is imported by the figure builders).
"""

from __future__ import annotations

import errno
import html
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The bundled agent that sees its ball (checkpoints/README.md); checkpoints/catch is blind to it.
DEFAULT_SOURCE = REPO_ROOT / "checkpoints" / "catch-lanes"
DEFAULT_PORT = 8501
TRAIN_HINT = "xdreamer train --env toy:catch --preset debug --logdir runs/catch-debug"
SOURCE_ENV = "XDREAMER_APP_SOURCE"
REPORT_COLUMNS = ("case", "checkpoint", "episode", "step", "detector", "score")
CASE_COLUMNS = ("checkpoint_path", "record_seed")  # what "Open this case" needs (#31)
TIMELINE_SERIES = (("reward", "reward"), ("value", "value"), ("entropy", "action entropy"),
                   ("surprise", "surprise (KL)"), ("recon_error", "reconstruction error"))
PANELS = ("Frame", "Latent", "What-if", "Compare", "Failures")


# ---- locating and launching the app -------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"
# #28: Streamlit's default upload cap is 200 MB, and an upload is held in memory (and decompressed by
# explain.load_trace). A trace takes ~10 KB a step compressed (toy:catch-lanes: 93 steps in 0.96 MB; paper-size
# Atari traces with simulator states take a few times more), so 64 MB holds thousands of steps while the server
# refuses an upload bomb before any of our code reads it. Longer traces open by path, not by upload.
MAX_UPLOAD_MB = 64
MAX_SUMMARY_BYTES = 64 << 20
IMPORTS_ENV = "XDREAMER_APP_IMPORTS"  # comma-separated modules named with `xdreamer app --import`
ROOTS_ENV = "XDREAMER_APP_ROOTS"  # os.pathsep-separated paths given on the command line (allowed roots)
BASE_ENV = "XDREAMER_APP_CWD"  # the folder `xdreamer app` was started in: base of relative typed paths
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class PortInUse(ValueError):
    """The port asked for is taken on that host (one line; the CLI prints it and exits 2)."""


def app_script() -> pathlib.Path:
    """``apps/explainer.py`` next to the package (an editable install / a source checkout)."""
    import xdreamer

    script = pathlib.Path(xdreamer.__file__).resolve().parent.parent / "apps" / "explainer.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"the explainer app is not next to the package ({script} does not exist); "
            "install xdreamer from its source checkout with `pip install -e .` to use `xdreamer app`")
    return script


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); anything else may be reachable
    from other machines."""
    import ipaddress

    host = str(host).strip().strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """The host part of the URL the launcher checks and prints: the bound address (a wildcard address is
    reached through loopback), IPv6 literals in brackets."""
    host = str(host).strip().strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def app_url(host: str, port: int) -> str:
    return f"http://{_url_host(host)}:{int(port)}"


def check_port_free(host: str, port: int) -> None:
    """Raise ``PortInUse`` when ``host:port`` cannot be bound (another server listens there).

    Without this check `xdreamer app --port 8501` with the port taken printed "ready" (the other server
    answered the health check) and then Streamlit's own "Port 8501 is not available" (#28). SO_REUSEADDR as
    the server sets it: a port left in TIME_WAIT counts as free, a listening socket does not."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"cannot use host {host!r}: {exc.strerror or exc}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise PortInUse(f"port {int(port)} on {host} is in use; pass --port N") from None
                raise ValueError(f"cannot listen on {host} port {int(port)}: {exc.strerror or exc}") from None


def check_imports(imports: Sequence[str]) -> list[str]:
    """The module names of ``--import``, checked to be dotted Python names (they travel comma-separated)."""
    names = [str(n).strip() for n in imports]
    for name in names:
        if not _MODULE_NAME.fullmatch(name):
            raise ValueError(f"--import {name!r} is not a Python module name (e.g. mypackage.envs)")
    return names


def _streamlit_has_option(name: str) -> bool:
    """Whether the installed Streamlit knows config option ``name``, read from its config module's source
    (importing streamlit here would cost a second; an unknown flag makes `streamlit run` exit)."""
    import importlib.util

    spec = importlib.util.find_spec("streamlit")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        try:
            return f'"{name}"' in (pathlib.Path(folder) / "config.py").read_text(encoding="utf-8")
        except OSError:
            continue
    return False


def streamlit_command(source: str | os.PathLike, port: int = DEFAULT_PORT,
                      script: str | os.PathLike | None = None, host: str = DEFAULT_HOST) -> list[str]:
    """The ``python -m streamlit run`` command line of the app (its process settings: ``app_process``)."""
    script = app_script() if script is None else pathlib.Path(script)
    # -P (Python >= 3.11): no current folder on sys.path. `python -m` puts it first, so an `xdpayload.py` in
    # the folder the app was started from shadowed any module the app imports (#28).
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    command = [sys.executable, *safe_path, "-m", "streamlit", "run", str(script), "--server.headless", "true",
               "--server.port", str(int(port)),
               # #28: bind the given address only (Streamlit's default is every interface, with no login).
               "--server.address", str(host),
               "--server.maxUploadSize", str(MAX_UPLOAD_MB),
               # Streamlit's defaults, stated so that no config file can turn them off.
               "--server.enableCORS", "true", "--server.enableXsrfProtection", "true",
               # An exception that escapes the page's own handlers shows a generic message, not a traceback
               # quoting file content (the page itself shows one-line errors).
               "--client.showErrorDetails", "none",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    if is_loopback(host) and _streamlit_has_option("server.allowedHosts"):
        # DNS rebinding: a web page whose name re-resolves to 127.0.0.1 would otherwise drive a loopback app.
        for name in dict.fromkeys(("localhost", "127.0.0.1", "::1", _url_host(host).strip("[]"))):
            command += ["--server.allowedHosts", name]
    return command + ["--", str(source)]


def app_process(source: str | os.PathLike, imports: Sequence[str] = (), script: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments of the app's process: ``cwd`` and ``env``.

    #28: the process runs in the app's own folder, not the user's: a checkpoint folder holding
    ``xdpayload.py`` (found through ``sys.path``) or ``.streamlit/config.toml`` (read by Streamlit from the
    current folder) is then inert. What it needs from the user's folder travels explicitly: that folder
    (relative paths typed in the page resolve against it), the opened path (an allowed root, ``allowed_roots``),
    the ``--import`` modules, and PYTHONPATH with relative entries made absolute against it."""
    script = app_script() if script is None else pathlib.Path(script)
    environ = dict(os.environ if environ is None else environ)
    here = pathlib.Path(os.getcwd() if cwd is None else cwd).resolve()
    env = {**environ, BASE_ENV: str(here), ROOTS_ENV: str(source), IMPORTS_ENV: ",".join(check_imports(imports)),
           "PYTHONSAFEPATH": "1"}  # -P for Python processes the app may start
    if environ.get("PYTHONPATH"):
        # Empty entries mean "the current folder" to Python: dropped, that is the hole being closed.
        entries = [e for e in environ["PYTHONPATH"].split(os.pathsep) if e]
        env["PYTHONPATH"] = os.pathsep.join(str(here / pathlib.Path(e).expanduser()) for e in entries)
    return {"cwd": str(script.resolve().parent), "env": env}


def wait_for_server(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> bool:
    """Poll Streamlit's health endpoint until it answers (False on timeout or when ``proc`` exits)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


def run_app(source: str | None = None, port: int = DEFAULT_PORT, headless: bool = False, host: str = DEFAULT_HOST,
            imports: Sequence[str] = ()) -> int:
    """Start the explainer on ``source`` (default: the bundled checkpoint), print its URL, block until
    it exits or Ctrl-C. Without ``headless`` a browser tab is opened once the server answers.

    It listens on ``host`` only (loopback by default; another address prints a warning, #28) and imports the
    ``imports`` modules (``--import``) in the app's process."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")
    host = str(host).strip()
    if not host:
        raise ValueError("--host must not be empty (the default is 127.0.0.1)")
    source = str(pathlib.Path(source).expanduser().resolve()) if source else str(DEFAULT_SOURCE)
    command = streamlit_command(source, port, host=host)
    process = app_process(source, imports)
    check_port_free(host, port)
    url = app_url(host, port)
    if not is_loopback(host):
        print(f"xdreamer app: warning: {host} is not a loopback address: anyone who can reach it can use the app "
              "(no login), open the agent's files and upload traces", file=sys.stderr, flush=True)
    if not pathlib.Path(source).exists():
        note = (" (the bundled default checkpoint is not there yet; the app explains how to train one)"
                if source == str(DEFAULT_SOURCE) else " (not found; the app will say so)")
        print(f"xdreamer app: {source}{note}", flush=True)
    print(f"xdreamer app: starting the explainer at {url}", flush=True)
    proc = subprocess.Popen(command, **process)
    _stop_child_on_sigterm()
    try:
        if wait_for_server(url, timeout=120, proc=proc):
            print(f"xdreamer app: ready at {url}  (Ctrl-C stops it)", flush=True)
            if not headless:
                import webbrowser

                webbrowser.open(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _stop_child_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``run_app``'s ``finally`` stops the Streamlit server too."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def initial_source(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """What the app opens first: ``streamlit run explainer.py -- PATH`` (argv[0] is the script then),
    else ``$XDREAMER_APP_SOURCE``, else the bundled default checkpoint."""
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ if environ is None else environ
    if len(argv) > 1 and argv[0].endswith("explainer.py") and argv[1].strip():
        return argv[1]
    return environ.get(SOURCE_ENV) or str(DEFAULT_SOURCE)


def app_imports(environ: Mapping[str, str] | None = None) -> list[str]:
    """The modules `xdreamer app --import` named (``$XDREAMER_APP_IMPORTS``); the app imports these and no
    others (#28)."""
    environ = os.environ if environ is None else environ
    return [name.strip() for name in environ.get(IMPORTS_ENV, "").split(",") if name.strip()]


# ---- paths: what the user opened, and what data may point at (#28) --------------------------------
class OutsideRoots(ValueError):
    """A path read from a file (a trace's checkpoint, a report row) points outside every folder the user
    opened; the app does not follow it."""


def base_dir(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """The folder relative paths typed in the page are relative to: where `xdreamer app` was started
    (``$XDREAMER_APP_CWD``; the app's own process runs in ``apps/``), else the current folder."""
    environ = os.environ if environ is None else environ
    base = environ.get(BASE_ENV, "")
    return pathlib.Path(base) if base and os.path.isabs(base) else pathlib.Path.cwd()


def user_path(text: str | os.PathLike, base: str | os.PathLike | None = None) -> pathlib.Path:
    """A path as the user typed it (``~`` expanded), relative ones joined to ``base`` (default ``base_dir()``);
    not resolved."""
    p = pathlib.Path(str(text).strip()).expanduser()
    return p if p.is_absolute() else pathlib.Path(base_dir() if base is None else base) / p


def opened_roots(path: str | os.PathLike) -> list[pathlib.Path]:
    """The roots a path the user opened contributes: itself, resolved; for a file (a trace) also its folder,
    where `xdreamer record` keeps the trace's checkpoint next to it."""
    p = pathlib.Path(path).resolve()
    return [p, p.parent] if p.is_file() else [p]


def allowed_roots(typed: Sequence[str | os.PathLike] = (), environ: Mapping[str, str] | None = None,
                  argv: Sequence[str] | None = None) -> list[pathlib.Path]:
    """Folders (and files) paths read from data may point into: the bundled ``checkpoints/`` and ``reports/``,
    the paths given on the command line (``$XDREAMER_APP_ROOTS``, ``streamlit run explainer.py -- PATH``) and
    the paths the user typed in the page (``typed``, relative to ``base_dir()``)."""
    environ = os.environ if environ is None else environ
    argv = list(sys.argv if argv is None else argv)
    given = [p for p in environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    if len(argv) > 1 and argv[0].endswith("explainer.py") and argv[1].strip():
        given.append(argv[1])
    base = base_dir(environ)
    roots = [REPO_ROOT / "checkpoints", REPO_ROOT / "reports"]
    for text in [*given, *(str(t) for t in typed if str(t).strip())]:
        roots += opened_roots(user_path(text, base))
    unique: list[pathlib.Path] = []
    for root in (r.resolve() for r in roots):
        if root not in unique:
            unique.append(root)
    return unique


def is_within(path: str | os.PathLike, roots: Sequence[str | os.PathLike]) -> bool:
    """Whether ``path``, resolved (``..`` and symlinks followed), is one of ``roots`` or inside one (roots
    resolved too). A relative ``path`` resolves against the current folder: join it to a base first."""
    try:
        p = pathlib.Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False
    for root in roots:
        try:
            r = pathlib.Path(root).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if p == r or p.is_relative_to(r):
            return True
    return False


def data_checkpoint(named: Any, roots: Sequence[str | os.PathLike], base: str | os.PathLike | None = None,
                    what: str = "the trace") -> pathlib.Path:
    """The checkpoint folder a path read from a file names (a trace's ``meta["checkpoint"]``), followed only
    inside ``roots`` (#28: an uploaded trace naming ``/etc`` or ``../../x`` must not make the app probe or load
    it). Relative paths join ``base``. Raises ``OutsideRoots`` (a ValueError) otherwise."""
    from .checkpoint import resolve

    if not named or not str(named).strip():
        raise ValueError(f"{what} names no checkpoint")
    p = user_path(str(named), base)
    refusal = OutsideRoots(f"{what} names a checkpoint outside the folders opened ({named}); open that checkpoint "
                           "folder explicitly (in the sidebar or `xdreamer app CHECKPOINT`) to use it")
    if not is_within(p, roots):
        raise refusal
    ckpt = resolve(p).resolve()
    if not is_within(ckpt, roots):  # a run folder whose checkpoints/latest points elsewhere
        raise refusal
    return ckpt


def escape_md(text: Any) -> str:
    """``text`` made inert for Streamlit's Markdown (st.markdown, captions, alerts, labels, st.table cells).

    File content shown in the page went through Markdown, so a manifest field ``![x](http://...)`` made the
    browser fetch a remote image (#28). Backslash-escaped: ``[`` and ``]`` (links, images, footnotes and
    Streamlit's ``:color[...]``; ``(``, ``)`` and ``!`` are inert without them), emphasis and code (`` ` * _ ~``),
    math (``$``) and the backslash itself. ``<``, ``>`` and ``&`` become entities (no raw HTML, no autolinks),
    line breaks become spaces (no block syntax), and a leading ``#``, ``-``, ``+``, ``=`` or ``1.`` is escaped so
    that the text is no heading or list on its own. Plain text (``toy:catch``, ``0.500 (mode policy)``) reads
    the same before and after."""
    s = re.sub(r"[\r\n\u0085\u2028\u2029]+", " ", str(text))
    s = re.sub(r"([\\`*_~\[\]$])", r"\\\1", s)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"^(\s*)([-+=#])", r"\1\\\2", s)
    return re.sub(r"^(\s*\d+)([.)])", r"\1\\\2", s)


def escape_html(text: Any) -> str:
    """``text`` for plotly labels and hover text, which understand a subset of HTML (``<a href>``, ``<b>``)."""
    return html.escape(str(text), quote=False)


# ---- sources, cache keys, error text ------------------------------------------------------------
def classify_source(path: str | os.PathLike) -> tuple[str, pathlib.Path]:
    """``("checkpoint", folder)`` or ``("trace", file)``; a ValueError with a readable message otherwise."""
    text = str(path).strip()
    if not text:
        raise ValueError("no checkpoint or trace given: enter a checkpoint folder, a run folder or a trace "
                         "file (.npz made by `xdreamer record`)")
    p = user_path(text)  # relative to where `xdreamer app` started, not the app's own folder (#28)
    if not p.exists():
        if p.resolve() == DEFAULT_SOURCE.resolve():
            raise ValueError(f"the bundled default checkpoint {p} does not exist yet. Train one with "
                             f"`{TRAIN_HINT}` and open the checkpoint it prints (or the run folder "
                             "runs/catch-debug): `xdreamer app runs/catch-debug`")
        raise ValueError(f"not found: {p}")
    if p.is_file():
        if p.suffix != ".npz":
            raise ValueError(f"{p.name} is neither a checkpoint folder nor a trace file (.npz made by "
                             "`xdreamer record`)")
        return "trace", p.resolve()
    from .checkpoint import resolve

    return "checkpoint", resolve(p).resolve()


def run_videos(checkpoint_path: str | os.PathLike, limit: int = 50) -> list[pathlib.Path]:
    """The open-loop prediction videos of the training run a checkpoint belongs to (``<run>/videos/openloop-*.mp4``,
    newest first; the checkpoint is ``<run>/checkpoints/step-N``), or none for a bundled checkpoint."""
    ckpt = pathlib.Path(checkpoint_path)
    if ckpt.parent.name != "checkpoints":
        return []
    videos = ckpt.parent.parent / "videos"
    if not videos.is_dir():
        return []
    return sorted((p for p in videos.glob("openloop-*.mp4") if p.is_file()), reverse=True)[:limit]


def file_key(path: str | os.PathLike) -> tuple:
    """Hash-free cache key of a file: resolved path, mtime and size."""
    p = pathlib.Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_mtime_ns, st.st_size)


def checkpoint_key(path: str | os.PathLike) -> tuple:
    """Cache key of a checkpoint folder (its manifest and weights files)."""
    from .checkpoint import MANIFEST, WEIGHTS, resolve

    p = resolve(path).resolve()
    parts = [str(p)]
    for name in (MANIFEST, WEIGHTS):
        f = p / name
        parts += list(file_key(f)[1:]) if f.exists() else [None, None]
    return tuple(parts)


AUDIT_MAX_BYTES = 16 << 20


def find_audit(agent, base: str | os.PathLike | None = None) -> dict | None:
    """The ``xdreamer audit`` result of this agent's weights, if one was written (#27): ``audit.json`` in the
    checkpoint folder or the command's default ``xdreamer-out/audit-<name>/`` of the app's folder. Only a result
    whose ``weights_sha256`` is the agent's counts; anything unreadable is ignored (the map is then shown as
    before)."""
    import json

    sha = (getattr(agent, "manifest", None) or {}).get("weights_sha256")
    path = pathlib.Path(str(getattr(agent, "path", "") or ""))
    if not sha or not str(path):
        return None
    folder = pathlib.Path(base) if base is not None else base_dir()
    for f in (path / "audit.json", folder / "xdreamer-out" / f"audit-{path.name}" / "audit.json"):
        try:
            if f.is_file() and f.stat().st_size <= AUDIT_MAX_BYTES:
                data = json.loads(f.read_text(encoding="utf-8"))
                if isinstance(data, dict) and data.get("weights_sha256") == sha and isinstance(data.get("methods"), dict):
                    return {**data, "_path": str(f)}
        except (OSError, ValueError):
            continue
    return None


def audit_notice(audit: Mapping[str, Any] | None, method: str, signed: bool = False) -> tuple[str, str] | None:
    """``(level, text)`` for a map of ``method`` under an audit result: ``warning`` when it failed its checks on
    this agent, ``success`` when it passed, ``info`` when inconclusive; None without a result for it.
    ``signed``: the map is drawn signed, so the randomisation check is read from its signed verdict (the audit
    reports both; #27 found signed IG / occlusion / Greydanus maps pass where their magnitudes fail)."""
    entry = (audit or {}).get("methods", {}).get(method)
    if not isinstance(entry, Mapping) or "verdict" not in entry:
        return None
    checks = entry.get("checks") if isinstance(entry.get("checks"), Mapping) else {}
    verdicts = {k: str(c.get("verdict")) for k, c in checks.items() if isinstance(c, Mapping) and "verdict" in c}
    rnd = checks.get("randomisation")
    note = ""
    if signed and isinstance(rnd, Mapping) and rnd.get("signed_verdict"):
        verdicts["randomisation"] = str(rnd["signed_verdict"])
        note = " (randomisation read on the signed map, as drawn)"
    failed = [k for k, v in verdicts.items() if v == "fail"]
    states = len(audit.get("states") or [])
    where = f"`xdreamer audit` over {states} states ({audit.get('_path', 'audit.json')}){note}"
    verdict = str(entry["verdict"])
    if signed and verdicts:
        from .explain.audit_checks import combine

        verdict = combine(list(verdicts.values()))
    if verdict == "fail":
        return "warning", (f"{method} FAILS its sanity checks on this agent ({', '.join(failed)}; {where}): "
                           "this map is not evidence of what the agent uses.")
    if verdict == "pass":
        return "success", f"{method} passes its sanity checks on this agent ({where})."
    return "info", f"{method}: sanity checks inconclusive on this agent ({where})."


def error_text(exc: BaseException) -> str:
    """One readable line for the page (never a traceback)."""
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (ValueError, FileNotFoundError, NotImplementedError)):
        return message
    return f"{type(exc).__name__}: {message}"


# ---- run / manifest -----------------------------------------------------------------------------
def _amount(x: Any) -> str:
    """A return as the page prints it: game scores with thousands separators, small ones with 3 decimals."""
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3f}"


def _eval_text(ev: Any, where: str) -> str:
    """``mean ± std over N episodes (policy; where)`` of an evaluation record; ``?`` when garbled (#28)."""
    try:
        if not isinstance(ev, Mapping) or ev.get("mean") is None:
            return "not evaluated"
        returns = ev.get("returns", [])
        n = ev.get("episodes", len(returns) if isinstance(returns, list) else "?")
        return (f"{_amount(ev['mean'])} ± {_amount(ev.get('std') or 0)} over {n} episodes "
                f"({ev.get('policy', 'mode')} policy; {where})")
    except (TypeError, ValueError, OverflowError):
        return "?"


def manifest_rows(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The manifest fields the Run panel shows, as plain strings (escape them before Markdown: they are file
    content). A field of the wrong type shows as ``?``, never as an exception (#28).

    The evaluation shown is the bundle's (``xdreamer bundle``: agent and random policy over the episodes and
    seed it states) when the manifest has one, else the evaluation training ran when it saved the checkpoint;
    each says which it is (#31: videopinball's training-time 0 ± 0 over 5 cut episodes stood where
    checkpoints/README.md reports the bundle's 16,227 ± 5,594)."""
    manifest = manifest if isinstance(manifest, Mapping) else {}
    env = manifest.get("env") or {}
    env_id = env.get("id") if isinstance(env, Mapping) else env

    def count(key: str) -> str:
        try:
            return f"{int(manifest.get(key, 0)):,}"
        except (TypeError, ValueError, OverflowError):
            return "?"

    rows = {"env": str(env_id), "steps trained": count("steps"), "updates": count("updates")}
    bundle = manifest.get("bundle")
    if isinstance(bundle, Mapping) and isinstance(bundle.get("eval_mode"), Mapping):
        ev = bundle["eval_mode"]
        where = (f"bundled evaluation, {ev.get('episodes', bundle.get('episodes', '?'))} episodes, "
                 f"seed {ev.get('seed', bundle.get('seed', '?'))}")
        rows["evaluation return"] = _eval_text(ev, where)
        if isinstance(bundle.get("eval_random"), Mapping):
            rows["random-policy return"] = _eval_text(bundle["eval_random"], where)
    else:
        rows["evaluation return"] = _eval_text(manifest.get("eval"),
                                               f"training-time evaluation at step {count('steps')}")
    rows["created"] = str(manifest.get("created", "?"))
    return rows


def trace_rows(trace) -> dict[str, str]:
    meta = trace.meta
    return {"trace env": str(meta.get("env")), "episodes": str(meta.get("episodes")), "steps": str(len(trace)),
            "seed": str(meta.get("seed")), "policy": str(meta.get("policy")),
            "episode return": ", ".join(f"{r:+.2f}" for r in episode_returns(trace))}


def episode_returns(trace) -> list[float]:
    table = trace.table
    return [float(g["reward"].sum()) for _, g in table.groupby("episode", sort=True)]


def step_from_selection(state: Any, n_steps: int) -> int | None:
    """The step a plotly selection event points at (its first point's x), clamped; None if empty."""
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        x = point.get("x") if isinstance(point, Mapping) else None
        if x is None:
            continue
        try:
            return int(min(max(round(float(x)), 0), n_steps - 1))
        except (TypeError, ValueError):
            continue
    return None


def cell_from_selection(state: Any) -> tuple[int, int] | None:
    """(variable, class) of the first clicked heat-map cell, or None."""
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for point in points or []:
        try:
            return int(point["y"]), int(point["x"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


# ---- images (drawing only) ----------------------------------------------------------------------
def to_rgb(frame: np.ndarray, scale: int = 4) -> np.ndarray:
    """uint8 ``[C, H, W]`` -> uint8 ``[H*scale, W*scale, 3]`` (nearest)."""
    img = np.transpose(np.asarray(frame), (1, 2, 0))
    img = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3]
    return np.ascontiguousarray(np.repeat(np.repeat(img, scale, 0), scale, 1).astype(np.uint8))


BOX_COLORS = ((255, 80, 80), (80, 220, 80), (80, 160, 255), (255, 200, 0), (255, 0, 255), (0, 255, 255))


def draw_boxes(image: np.ndarray, boxes: Mapping[str, np.ndarray], scale: int = 4) -> np.ndarray:
    """Ground-truth boxes (``[x, y, w, h]`` in 64x64 frame units, NaN = absent) drawn on an upscaled RGB image."""
    import cv2

    out = image.copy()
    for i, (name, box) in enumerate(boxes.items()):
        box = np.asarray(box, np.float32)
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            continue
        x, y, w, h = box
        color = BOX_COLORS[i % len(BOX_COLORS)]
        p0 = (int(round(x * scale)), int(round(y * scale)))
        p1 = (int(round((x + max(w, 1)) * scale)) - 1, int(round((y + max(h, 1)) * scale)) - 1)
        cv2.rectangle(out, p0, p1, color, 1)
        cv2.putText(out, name, (p0[0], max(p0[1] - 3, 9)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)
    return out


def heat_rgb(values: np.ndarray, scale: int = 4, vmax: float | None = None) -> np.ndarray:
    """Non-negative ``[H, W]`` values -> jet RGB (0 = dark blue), upscaled."""
    from .explain.saliency_commands import jet

    v = np.nan_to_num(np.asarray(values, np.float32))
    top = float(v.max()) if vmax is None else float(vmax)
    norm = v / top if top > 0 else np.zeros_like(v)
    rgb = (jet(norm) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(rgb, scale, 0), scale, 1))


def diverging_rgb(values: np.ndarray, scale: int = 4) -> tuple[np.ndarray, float]:
    """Signed ``[C, H, W]`` or ``[H, W]`` values (channels summed) -> blue (negative) / white / red
    (positive) RGB, upscaled; also returns the magnitude that maps to full colour."""
    v = np.asarray(values, np.float32)
    v = v.sum(0) if v.ndim == 3 else v
    top = float(np.abs(v).max())
    t = np.clip(v / top, -1, 1) if top > 0 else np.zeros_like(v)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], -1)
    rgb = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(rgb, scale, 0), scale, 1)), top


# Pixel methods whose map has a sign (positive: this region raises the explained score). #27's audit: their signed
# maps lose their pattern under cascading randomisation where |map| keeps the frame's, so the app draws them signed.
SIGNED_METHODS = ("integrated_gradients", "occlusion", "greydanus")


def signed_overlay(frame: np.ndarray, values: np.ndarray, scale: int = 4, alpha: float = 0.7,
                   top: float | None = None) -> tuple[np.ndarray, float]:
    """The frame (``[C, H, W]`` uint8) with a signed map blended in red (raises the score) / blue (lowers it),
    weighted by ``|value| / top`` (``top`` default: the map's max |value|), upscaled; returns ``(rgb, top)``."""
    img = np.asarray(frame)
    img = img.transpose(1, 2, 0)
    rgb = (np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3]).astype(np.float32) / 255.0
    v = np.nan_to_num(np.asarray(values, np.float32))
    v = v.sum(0) if v.ndim == 3 else v
    top = float(np.abs(v).max()) if top is None else float(top)
    t = np.clip(v / top, -1, 1) if top > 0 else np.zeros_like(v)
    colour = np.where(t[..., None] >= 0, np.array([0.9, 0.1, 0.1], np.float32), np.array([0.1, 0.3, 1.0], np.float32))
    weight = alpha * np.abs(t)[..., None]
    out = (1 - weight) * rgb + weight * colour
    out = np.kron(out, np.ones((scale, scale, 1), np.float32)) if scale > 1 else out
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8), top


def legend_strip(kind: str = "jet", width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal colour bar (uint8 ``[height, width, 3]``) of the image overlays: ``jet`` (``heat_rgb``,
    saliency overlays: 0 at the left, the maximum at the right) or ``diverging`` (``diverging_rgb``: -max at
    the left, 0 white in the middle, +max at the right)."""
    from .explain.saliency_commands import jet

    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    if kind == "jet":
        row = jet(x)
    elif kind == "diverging":
        t = 2 * x - 1
        pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
        row = np.stack([1 - neg, 1 - pos - neg, 1 - pos], -1)
    else:
        raise ValueError(f"unknown colour bar {kind!r}; use jet or diverging")
    rgb = (np.clip(row, 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(np.repeat(rgb[None], height, 0))


def legend_text(kind: str, top: float, what: str) -> str:
    """What full colour means on an overlay whose full-colour magnitude is ``top`` (``what``: quantity, unit)."""
    if not np.isfinite(top) or top <= 0:
        return f"colour bar: {what} is 0 everywhere (no colour)"
    if kind == "diverging":
        return f"colour bar: full blue = -{top:.3g}, white = 0, full red = +{top:.3g} ({what}; max |value|)"
    return f"colour bar: dark blue = 0, red = {top:.3g} ({what}; the maximum)"


def zero_map_text(method: str, explained: str) -> str:
    """The notice for a saliency map that is exactly zero everywhere (#31: it drew as a plain frame, and the
    CLI named a peak at row 0, col 0). Zero means no pixel of this frame changes ``explained`` under
    ``method`` at this step (e.g. a saturated posterior, whose softmax has zero gradient); it is no evidence
    about the other steps or methods."""
    return (f"The {method} map is zero everywhere: under {method}, {explained} does not change with this "
            "frame's pixels at this step, so no pixel is highlighted (it is not a peak at row 0, col 0). "
            "Try another step or method.")


def boxes_at(trace, step: int) -> dict[str, np.ndarray]:
    return {name: trace.arrays[f"objects/{name}"][step] for name in trace.object_names}


# ---- figures (drawing only) ---------------------------------------------------------------------
TIMELINE_WINDOW = 300  # steps shown at first when an episode is longer: 1,000-27,000 steps drew a solid band (#31)


def timeline_window(n: int, step: int, window: tuple[int, int] | None) -> tuple[int, int]:
    """The zoom range ``(first, last)`` of the timeline: ``window`` if it holds ``step``, else a range of its width
    (``TIMELINE_WINDOW`` at first) moved to hold it; the whole trace when that is short."""
    width = TIMELINE_WINDOW if window is None else window[1] - window[0]
    if n <= TIMELINE_WINDOW and window is None:
        return 0, max(n - 1, 0)
    if window is not None and window[0] <= step <= window[1] and window[1] < n:
        return int(window[0]), int(window[1])
    first = min(max(step - width // 2, 0), max(n - 1 - width, 0))
    return first, min(first + width, n - 1)


def timeline_figure(trace, step: int, bookmarks: Sequence[tuple[int, str]] = (),
                    window: tuple[int, int] | None = None):
    """Stacked line plots of the per-step scalars over the trace (x = step index, one shared x axis), with
    the current step (red) and the bookmarks (orange, stars on the value row) marked. Every point is
    clickable (plotly selection). ``window`` ``(first, last)``: only those steps (the zoom). Built as one layout
    dict: ``make_subplots`` + ``add_vline`` cost ~0.3 s per rerun, this ~20 ms."""
    import plotly.graph_objects as go

    first, last = window if window is not None else (0, len(trace.table) - 1)
    table = trace.table.iloc[first:last + 1]
    bookmarks = [(s, label) for s, label in bookmarks if first <= s <= last]
    series = [(col, label) for col, label in TIMELINE_SERIES if col in table]
    n_rows, gap = len(series), 0.03
    height = (1.0 - gap * (n_rows - 1)) / n_rows
    x = np.arange(first, first + len(table))
    hover = [f"step {i} (episode {e}, t={t})<br>action {escape_html(a)}" for i, e, t, a in
             zip(x, table["episode"], table["t"], table["action_name"])]
    colors = ("#1f77b4", "#6baed6", "#d62728", "#ff9896", "#2ca02c", "#9467bd")
    data, annotations = [], []
    layout: dict[str, Any] = {}
    for i, (col, label) in enumerate(series):
        axis = "" if i == 0 else str(i + 1)
        top = 1.0 - i * (height + gap)
        layout[f"yaxis{axis}"] = {"domain": [top - height, top], "anchor": "x"}
        annotations.append({"text": label, "x": 0.5, "y": top, "xref": "paper", "yref": "paper",
                            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 12}})
        data.append({"type": "scatter", "x": x, "y": table[col].to_numpy(dtype=float), "mode": "lines+markers",
                     "name": label, "xaxis": "x", "yaxis": f"y{axis}", "marker": {"size": 4},
                     "line": {"width": 1.5, "color": colors[i % len(colors)]}, "text": hover,
                     "hovertemplate": "%{text}<br>" + label + " %{y:.4g}<extra></extra>"})
    shapes = [{"type": "line", "xref": "x", "yref": "paper", "x0": s, "x1": s, "y0": 0, "y1": 1,
               "line": {"color": "orange", "width": 1, "dash": "dot"}} for s, _ in bookmarks]
    shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": step, "x1": step, "y0": 0, "y1": 1,
                   "line": {"color": "red", "width": 2}})
    if bookmarks and "value" in table:
        row = [c for c, _ in series].index("value")
        marks = [float(table["value"].iloc[s - first]) for s, _ in bookmarks]
        data.append({"type": "scatter", "x": [s for s, _ in bookmarks], "y": marks,
                     "mode": "markers", "xaxis": "x", "yaxis": "y" if row == 0 else f"y{row + 1}",
                     "marker": {"symbol": "star", "size": 12, "color": "orange"}, "name": "bookmarks",
                     "text": [label for _, label in bookmarks], "hovertemplate": "%{text}<extra></extra>"})
    layout.update({"xaxis": {"anchor": f"y{n_rows}" if n_rows > 1 else "y", "title": {"text": "step"},
                             "range": [first - 1, max(last + 1, first + 2)]},
                   "shapes": shapes, "annotations": annotations, "height": 110 * n_rows + 60, "showlegend": False,
                   "margin": {"l": 50, "r": 10, "t": 30, "b": 30}, "clickmode": "event+select",
                   "hovermode": "closest"})
    return go.Figure({"data": data, "layout": layout})


def action_figure(probs: np.ndarray, names: Sequence[str], taken: int | None):
    """Bar chart of the actor's probabilities, the taken action highlighted."""
    import plotly.graph_objects as go

    probs = np.asarray(probs, float)
    colors = ["#ff7f0e" if i == taken else "#8c9db5" for i in range(len(probs))]
    names = [escape_html(n) for n in names]  # plotly labels understand HTML; action names come from files
    labels = [f"{n} (taken)" if i == taken else n for i, n in enumerate(names)]
    fig = go.Figure(go.Bar(x=labels, y=probs, marker_color=colors, text=[f"{p:.2f}" for p in probs],
                           textposition="outside"))
    fig.update_layout(height=260, yaxis={"range": [0, 1.1], "title": "probability"},
                      margin={"l": 40, "r": 10, "t": 10, "b": 30}, showlegend=False)
    return fig


def object_effects_figure(trace, step: int):
    """The episode of ``step``: per object, how far moving / removing it in the simulator moves p(action) at each step
    (stored by ``xdreamer record --objects``), the current step marked; None when the trace stores none."""
    import plotly.graph_objects as go

    from .explain.objects import stored_object_attribution

    stored = stored_object_attribution(trace)
    if stored is None:
        return None
    steps = trace.episode_steps(step)
    t = trace.arrays["t"][steps]
    fig = go.Figure()
    effect = np.full((len(trace), len(stored.objects)), np.nan)  # NaN: no edit applied, or not a stored step
    effect[stored.steps] = stored.effect()
    for o, name in enumerate(stored.objects):
        y = np.asarray(effect[steps, o], float)
        fig.add_trace(go.Scatter(x=t, y=np.where(np.isfinite(y), y, None), mode="lines", name=escape_html(name),
                                 connectgaps=False))
    fig.add_vline(x=int(trace.arrays["t"][step]), line_dash="dot", line_color="#ff7f0e")
    fig.update_layout(height=200, yaxis={"range": [0, 1.05], "title": "p(action) TV"}, xaxis={"title": "t"},
                      margin={"l": 40, "r": 10, "t": 10, "b": 30}, legend={"orientation": "h", "y": 1.15})
    return fig


def heatmap_figure(matrix: np.ndarray, title: str, diverging: bool = False, mark: tuple[int, int] | None = None,
                   colorbar: str = ""):
    """``[stoch, classes]`` heat map (rows = latent variables, columns = classes); clickable cells, with a
    colour bar titled ``colorbar`` (what the colour measures, and its unit)."""
    import plotly.graph_objects as go

    m = np.asarray(matrix, float)
    kwargs = {"colorscale": "RdBu", "reversescale": True, "zmid": 0.0} if diverging else {"colorscale": "Viridis"}
    bar = {"title": {"text": escape_html(colorbar), "side": "right"}, "thickness": 12}
    fig = go.Figure(go.Heatmap(z=m, x=np.arange(m.shape[1]), y=np.arange(m.shape[0]), **kwargs, hoverinfo="skip",
                               showscale=True, colorbar=bar))
    # Plotly heat maps emit no selection events (streamlit#8760): an invisible marker on every cell
    # carries the hover text and makes cells clickable.
    rows, cols = np.meshgrid(np.arange(m.shape[0]), np.arange(m.shape[1]), indexing="ij")
    fig.add_trace(go.Scatter(x=cols.ravel(), y=rows.ravel(), mode="markers", customdata=m.ravel(),
                             marker={"size": max(4, min(24, 320 // max(m.shape))), "color": "rgba(0,0,0,0)",
                                     "symbol": "square"},
                             hovertemplate="variable %{y}, class %{x}: %{customdata:.3g}<extra></extra>",
                             showlegend=False, selected={"marker": {"opacity": 1}},
                             unselected={"marker": {"opacity": 1}}))
    if mark is not None:
        v, c = mark
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=v - 0.5, y1=v + 0.5, line={"color": "red", "width": 2})
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=380, clickmode="event+select",
                      margin={"l": 40, "r": 10, "t": 40, "b": 40},
                      xaxis={"title": "class"}, yaxis={"title": "variable", "autorange": "reversed"})
    return fig


def reward_scale(cfg: Any) -> str:
    """The reward scale the world model predicts and the critic learns (``cfg.clip_rewards``): imagined
    returns and values are on it, real game scores are not (Atari: tanh(r), so a 100-point bumper is 1.0)."""
    return "tanh-clipped reward" if getattr(cfg, "clip_rewards", "identity") == "tanh" else "reward"


def whatif_table(dream, grounded=None, scale: str = "reward"):
    """One row per first action: imagined Q and return, and (grounded) the real return and fidelity.
    Columns name their reward scale: ``scale`` (``reward_scale(agent.cfg)``) for the imagined and discounted
    ones, the game's own score for the undiscounted real return."""
    import pandas as pd

    taken = dream.taken_action
    rows = []
    for k, label in enumerate(dream.labels):
        first = dream.first_actions[k]
        row = {"action": escape_md(label),  # st.table renders cells as Markdown; labels are action names
               "taken": bool(np.ndim(first) == 0 and np.ndim(taken) == 0 and int(first) == int(taken)),
               f"imagined Q (λ-return, {scale})": float(dream.q[k]),
               f"imagined return (discounted, {scale})": float(dream.dream_return[k])}
        if grounded is not None:
            g = _grounded_row(grounded, first)
            if g is not None:
                if getattr(grounded, "real_q", None) is not None:  # Q grounded: the agent's λ-target on this branch
                    row[f"real Q (λ-target on the real branch, {scale})"] = float(grounded.real_q[g])
                row.update({f"real return (discounted, {scale})": float(grounded.real_return_disc[g]),
                            "real return (game score)": float(grounded.real_return[g]),
                            "pixel MSE (mean)": float(np.nanmean(grounded.pixel_mse[g])),
                            "reward error (mean abs)": float(np.nanmean(np.abs(grounded.reward_error[g]))),
                            "action agreement": float(grounded.action_agreement[g])})
        rows.append(row)
    return pd.DataFrame(rows)


def _grounded_row(grounded, first) -> int | None:
    for g, a in enumerate(grounded.first_actions):
        if np.array_equal(np.asarray(a), np.asarray(first)):
            return g
    return None


def fidelity_figure(grounded):
    """Per-step pixel MSE between dream and real branch, one line per first action."""
    import plotly.graph_objects as go

    fig = go.Figure()
    steps = np.arange(grounded.pixel_mse.shape[1])
    for k, label in enumerate(grounded.labels):
        fig.add_trace(go.Scatter(x=steps, y=grounded.pixel_mse[k], mode="lines+markers", name=escape_html(label)))
    fig.update_layout(height=260, xaxis={"title": "imagined step"}, yaxis={"title": "pixel MSE dream vs real"},
                      margin={"l": 50, "r": 10, "t": 10, "b": 40})
    return fig


# ---- failure reports ----------------------------------------------------------------------------
class NoReport(Exception):
    """No report folder given, or the folder holds no summary.csv (an informational state, not an error)."""


REPORT_HOWTO = ("A failure report is a folder with `summary.csv` (one row per case: columns "
                f"{', '.join(REPORT_COLUMNS)}) and optional `clips/*.mp4`, as written by "
                "`xdreamer report CHECKPOINT --out FOLDER`. Enter such a folder above to browse its cases; "
                f"reports whose summary also has {' and '.join(f'`{c}`' for c in CASE_COLUMNS)} open each case "
                "with one click "
                "(the case's episode recorded again, at its step).")
OLD_REPORT_NOTE = ("This report predates one-click cases (its summary.csv has no "
                   f"{' / '.join(f'`{c}`' for c in CASE_COLUMNS)} column): re-run `xdreamer report` to open its "
                   "cases with one click. "
                   "Meanwhile a case is found only in the episode shown when its checkpoint and episode number match.")


def score_text(value: Any) -> str:
    """A failure score with 3 significant digits (the CSV holds full precision)."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def has_case_columns(table) -> bool:
    """Whether a report's summary names each case's checkpoint folder and record seed (``xdreamer report``
    since #31); older reports hold a bare checkpoint name and a report-local episode index."""
    return all(c in table.columns for c in CASE_COLUMNS)


def _seed(value: Any) -> int | None:
    """A record seed from a CSV cell (int, ``5.0``, empty/NaN for cases from a saved trace), else None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return int(x) if np.isfinite(x) and x == int(x) and 0 <= x < 2**63 else None


def report_case(row: Mapping[str, Any], report_folder: str | os.PathLike,
                roots: Sequence[str | os.PathLike]) -> tuple[pathlib.Path, int, int] | None:
    """``(checkpoint folder, record seed, t)`` of a report row that can be opened with one click: recording
    that checkpoint's episode with ``explain.record(..., episodes=1, seed=record_seed)`` replays the case's
    episode, and the case is its step with ``t == row["step"]``. None when the row lacks either (an old
    report, or a case from a saved trace). ``checkpoint_path`` is data (#28): relative paths join the report
    folder, and it is followed only inside ``roots`` or the report folder (``OutsideRoots`` otherwise)."""
    seed = _seed(row.get("record_seed"))
    named = row.get("checkpoint_path")
    if seed is None or named is None or (isinstance(named, float) and not np.isfinite(named)) \
            or not str(named).strip():
        return None
    try:
        t = int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None
    folder = user_path(str(report_folder))
    ckpt = data_checkpoint(str(named), [*roots, folder], base=folder, what=f"case {row.get('case', '?')}")
    return ckpt, seed, t


def read_report(folder: str | os.PathLike | None):
    """``(table, clips)`` of a report folder: the summary as a DataFrame and ``{case: clip path}``.

    ``folder`` is typed by the user (relative to ``base_dir()``). What the folder holds is data: its
    summary.csv and clips are read only when they resolve inside the folder (a symlink out is refused, #28),
    and clips only as ``clips/*.mp4``. Raises ``NoReport`` when no folder is given or it has no summary.csv,
    ValueError when the folder or the CSV is unusable."""
    import pandas as pd

    if folder is None or not str(folder).strip():
        raise NoReport("no report folder given")
    p = user_path(str(folder))
    if not p.exists():
        raise ValueError(f"report folder not found: {p}")
    if not p.is_dir():
        raise ValueError(f"{p} is not a folder; a report is a folder holding summary.csv")
    if not (p / "summary.csv").is_file():
        raise NoReport(f"{p} has no summary.csv")
    inside = [p.resolve()]
    if not is_within(p / "summary.csv", inside):
        raise ValueError(f"{p / 'summary.csv'} points outside the report folder; not read")
    from .schema import validate_report_table

    size = (p / "summary.csv").stat().st_size
    if size > MAX_SUMMARY_BYTES:  # a report's summary has a few hundred rows (~50 KB); read_csv would load it all
        raise ValueError(f"{p / 'summary.csv'} is {size / 2**20:,.0f} MiB; a report summary is at most "
                         f"{MAX_SUMMARY_BYTES >> 20} MiB")
    try:
        table = pd.read_csv(p / "summary.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"cannot read {p / 'summary.csv'}: {exc}") from None
    table = validate_report_table(table, p / "summary.csv")  # types and ranges, one line naming row and column
    clips = {}
    files = sorted(f for f in (p / "clips").glob("*.mp4") if is_within(f, inside) and f.is_file()) \
        if (p / "clips").is_dir() else []
    for case in table["case"]:
        exact = [f for f in files if f.stem == case]
        loose = [f for f in files if case in f.stem]
        if exact or loose:
            clips[case] = (exact or loose)[0]
    return table, clips


# The report's other tables the Failures panel shows (#31), with the columns it reads and their kinds.
REPORT_EXTRAS = {
    "verdicts": ("verdicts.csv", {"env": str, "checkpoint": str, "verdict": str, "evidence": str,
                                  "score_context": str, "coverage": str,
                                  "agreement": str, "seed_verdicts": str}),  # the last two: reports run --seeds
    "probes": ("probes.csv", {"checkpoint": str, "variable": str, "features": str, "r2": float}),
}


def read_report_extras(folder: str | os.PathLike) -> dict[str, Any]:
    """The report's verdicts and latent probes (``verdicts.csv``, ``probes.csv``) as DataFrames of known columns,
    where present. Data, read as ``read_report`` reads the summary: only inside the folder, at most
    ``MAX_SUMMARY_BYTES``, cells as text (at most 500 characters) or numbers; anything else is left out."""
    import pandas as pd

    p = user_path(str(folder))
    out = {}
    for name, (file, columns) in REPORT_EXTRAS.items():
        f = p / file
        if not f.is_file() or not is_within(f, [p.resolve()]) or f.stat().st_size > MAX_SUMMARY_BYTES:
            continue
        try:
            table = pd.read_csv(f, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
            continue
        keep = {}
        for column, kind in columns.items():
            if column in table:
                values = table[column].astype(str).str.slice(0, 500)
                keep[column] = pd.to_numeric(values, errors="coerce").round(3) if kind is float else values
        if keep:
            out[name] = pd.DataFrame(keep)
    return out


def case_step(trace, row: Mapping[str, Any], checkpoint_path: str | os.PathLike | None,
              report_folder: str | os.PathLike | None = None,
              roots: Sequence[str | os.PathLike] = (), recorded_seed: int | None = None) -> int | None:
    """Global trace index of a report case when it belongs to this checkpoint and episode, else None.

    A row with ``checkpoint_path`` and ``record_seed`` (``report_case``) is in the trace when the trace is the
    app's recording of that checkpoint with that seed (``recorded_seed``; one episode, numbered 0) at
    ``t == step``. Other rows (old reports, cases from saved traces) match by the ``checkpoint`` column and
    the episode index. The row's paths are data: compared with the opened checkpoint, and looked into (a run
    folder's latest checkpoint) only inside ``roots`` or the report folder (#28); relative paths join the
    report folder or ``base_dir()``."""
    if checkpoint_path is None:
        return None
    target = pathlib.Path(checkpoint_path).resolve()
    if report_folder is not None and str(report_folder).strip():
        try:
            case = report_case(row, report_folder, [*roots, target])
        except (ValueError, OSError, RuntimeError):  # OutsideRoots is a ValueError
            return None
        if case is not None:
            ckpt, seed, t = case
            if ckpt != target or recorded_seed is None or int(recorded_seed) != seed:
                return None
            hits = np.flatnonzero((trace.arrays["episode"] == 0) & (trace.arrays["t"] == t))
            return int(hits[0]) if len(hits) else None
    try:
        named = str(row["checkpoint"]).strip()
        if not named or named.lower() == "nan":
            return None
        folder = user_path(str(report_folder)) if report_folder and str(report_folder).strip() else None
        ckpt = pathlib.Path(named).expanduser()
        candidates = [ckpt] if ckpt.is_absolute() else \
            [base_dir() / ckpt] + ([folder / ckpt] if folder is not None else [])
        inside = [*roots, target, *([folder] if folder is not None else [])]
        from .checkpoint import resolve

        if not any(is_within(c, inside) and c.exists() and resolve(c).resolve() == target for c in candidates):
            return None
        episode, t = int(row["episode"]), int(row["step"])
    except (ValueError, TypeError, KeyError, OSError, RuntimeError):
        return None
    hits = np.flatnonzero((trace.arrays["episode"] == episode) & (trace.arrays["t"] == t))
    return int(hits[0]) if len(hits) else None
