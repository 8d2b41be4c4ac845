"""Hostile inputs (issue #28): files from strangers, bombs, garbled states, bad disks.

Each test builds its attack in a temporary folder. Payloads write a marker file when their code runs, so
"no code ran" is checked by the marker's absence; bombs are refused in a subprocess whose peak RSS is
measured; CLI paths are checked for one line on stderr and a non-zero exit, never a traceback.
Config, manifest, weights and trainer-state attacks are in tests/test_schema.py; the app's listening
address, upload cap, path confinement and text rendering in tests/test_app_security.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_files import make_bomb
from xdreamer import npzfile
from xdreamer.explain.trace import load_trace, save

REPO = pathlib.Path(__file__).resolve().parent.parent
CATCH = REPO / "checkpoints" / "catch-lanes"
PONG = REPO / "checkpoints" / "pong"
PAYLOAD = "import pathlib\npathlib.Path(__file__).with_name('MARKER').write_text('payload ran')\n"


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xdreamer", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


def assert_one_line(proc: subprocess.CompletedProcess, *, status: int | None = None, match: str = "") -> str:
    """A non-zero exit with exactly one ``xdreamer: error:`` line on stderr and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout + proc.stderr
    if status is not None:
        assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("xdreamer: error:")]
    assert len(errors) == 1, proc.stderr
    assert match in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def catch_trace(tmp_path_factory):
    """A 10-step trace of the bundled catch-lanes agent, saved."""
    from xdreamer import checkpoint
    from xdreamer.envs import make
    from xdreamer.explain import record

    agent = checkpoint.load(CATCH, device="cpu")
    env = make(agent.cfg.env)
    trace = record(agent, env, episodes=1, seed=0, max_steps=10)
    env.close()
    path = save(trace, tmp_path_factory.mktemp("trace") / "catch.npz")
    return path, trace


def rewrite(path: pathlib.Path, out: pathlib.Path, change) -> pathlib.Path:
    """Copy the npz at ``path`` to ``out`` with ``change(dict_of_arrays)`` applied (np.savez_compressed)."""
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    change(data)
    with open(out, "wb") as f:
        np.savez_compressed(f, **data)
    return out


def _meta(data) -> dict:
    return json.loads(str(data["meta"]))


# ---- group 1: data never names code -----------------------------------------------------------------
def test_checkpoint_env_module_is_never_imported(tmp_path):
    """A checkpoint whose config names gym:xdpayload:... next to an xdpayload.py (issue #28 group 1): record and
    eval run in that folder (so it is on sys.path through ``python -m``) refuse with one line; the payload never runs."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(CATCH, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["env"] = "gym:xdpayload:CartPole-v1"
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "xdpayload.py").write_text(PAYLOAD)
    for command in (["record", ".", "--out", str(tmp_path / "t.npz"), "--no-progress"],
                    ["eval", ".", "--episodes", "1", "--out", str(tmp_path / "e.json"), "--no-progress"]):
        proc = run_cli(*command, cwd=ckpt)
        assert_one_line(proc, status=2, match="--import xdpayload")
        assert not (ckpt / "MARKER").exists(), command
    assert not (tmp_path / "t.npz").exists()


# ---- group 3: decompression bombs ---------------------------------------------------------------------
def test_bomb_is_a_valid_npz_that_inflates_to_what_it_declares(tmp_path, catch_trace):
    """The test's bomb is real: numpy reads it (a small one here, to keep memory low)."""
    bomb = make_bomb(tmp_path / "small-bomb.npz", catch_trace[0], frames=5000)
    with np.load(bomb, allow_pickle=False) as npz:
        assert npz["a/frame"].shape == (5000, 1, 64, 64) and not npz["a/frame"].any()


PEAK_RSS = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(r.returncode)")


@pytest.mark.slow
def test_trace_bomb_is_refused_before_inflating(tmp_path, catch_trace):
    """A 1 GiB-inflating trace of ~1 MB (ratio ~1,000x): refused in one line, peak RSS of the whole CLI process
    under 500 MB (np.load took it to the full gigabyte)."""
    frames = (1 << 30) // 4096
    bomb = make_bomb(tmp_path / "bomb.npz", catch_trace[0], frames=frames)
    assert bomb.stat().st_size < 8 << 20
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "xdreamer", "whatif", str(CATCH),
                           "--trace", str(bomb), "--step", "0", "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    assert_one_line(proc, status=2, match="decompression bomb")
    peak_mb = int(proc.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 500, peak_mb


def test_declared_sizes_are_checked_against_the_trace_meta(tmp_path, catch_trace):
    path, trace = catch_trace
    n = len(trace)

    def frame_shape(d):
        d["a/frame"] = np.zeros((n, 3, 64, 64), np.uint8)  # the meta's spec says 1 channel

    def steps_differ(d):
        d["a/deter"] = np.zeros((n + 5, d["a/deter"].shape[1]), np.float32)

    def too_many_steps(d):
        d["a/episode"] = np.zeros(2_000_000, np.int64)

    def huge_step(d):
        d["a/extra"] = np.zeros((n, 2 << 20), np.uint8)  # 2 MiB a step, more than any per-step array

    def big_meta(d):
        meta = _meta(d)
        meta["padding"] = "x" * (2 << 20)
        d["meta"] = np.array(json.dumps(meta))

    def stray_member(d):
        d["other"] = np.zeros(3)

    for change, match in ((frame_shape, "from meta.spec"), (steps_differ, "starts with the"),
                          (too_many_steps, "steps; a trace holds"), (huge_step, "a step"),
                          (big_meta, "meta record"), (stray_member, "unexpected member")):
        bad = rewrite(path, tmp_path / f"{change.__name__}.npz", change)
        with pytest.raises(ValueError, match=match):
            load_trace(bad)


def test_object_arrays_are_refused_before_reading(tmp_path, catch_trace):
    """A pickled object member is refused from its header; its pickle never runs (marker)."""
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.write_text, (marker, "payload ran"))

    def add_object(d):
        d["a/evil"] = np.array([Payload()], dtype=object)

    bad = rewrite(catch_trace[0], tmp_path / "object.npz", add_object)
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="dtype object"):
        load_trace(bad)
    assert not marker.exists()


# ---- group 5: values the analysis indexes with -----------------------------------------------------------
def test_garbled_values_give_one_line(tmp_path, catch_trace):
    path, trace = catch_trace

    def big_class(d):
        d["a/post_class"] = d["a/post_class"].copy()
        d["a/post_class"][3, 0] = 10**6

    def bad_action(d):
        d["a/action"] = d["a/action"].copy()
        d["a/action"][0] = 7

    def bad_offsets(d):
        d["a/sim/ints/offsets"] = d["a/sim/ints/offsets"][::-1].copy()

    def no_spec(d):
        meta = _meta(d)
        del meta["spec"]
        d["meta"] = np.array(json.dumps(meta))

    for change, match in ((big_class, "post_class holds class 1000000"), (bad_action, "action must be integers"),
                          (bad_offsets, "offsets do not index"), (no_spec, "spec")):
        bad = rewrite(path, tmp_path / f"{change.__name__}.npz", change)
        with pytest.raises(ValueError, match=match):
            load_trace(bad)
        proc = run_cli("whatif", str(CATCH), "--trace", str(bad), "--step", "1", "--no-progress")
        assert_one_line(proc, status=2)


def test_huge_simulator_integers_are_refused_by_the_env(tmp_path, catch_trace):
    """Simulator integers of 2**62 in a trace: the toy env refuses the state in one line, in Python and the CLI."""
    from xdreamer import checkpoint
    from xdreamer.envs import make
    from xdreamer.explain import ground

    def huge(d):
        d["a/sim/ints/data"] = d["a/sim/ints/data"].copy()
        d["a/sim/ints/data"][:] = 2**62

    bad = rewrite(catch_trace[0], tmp_path / "huge.npz", huge)
    trace = load_trace(bad)
    agent = checkpoint.load(CATCH, device="cpu")
    env = make(agent.cfg.env)
    with pytest.raises(ValueError, match="outside"):
        ground(agent, env, trace, 1, horizon=3)
    env.close()
    proc = run_cli("whatif", str(CATCH), "--trace", str(bad), "--step", "1", "--horizon", "3", "--grounded",
                   "--no-progress")
    assert_one_line(proc, status=2, match="outside")


@pytest.fixture(scope="module")
def pong_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("pong") / "pong.npz"
    proc = run_cli("record", str(PONG), "--max-steps", "12", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


def test_atari_grounded_whatif_from_a_saved_trace(tmp_path, pong_trace):
    """Issue #31: the grounded what-if from a saved Atari trace restored into a fresh env without reset()
    (ResetNeeded); it runs now."""
    proc = run_cli("whatif", str(PONG), "--trace", str(pong_trace), "--step", "4", "--horizon", "3", "--grounded",
                   "--actions", "0", "1", "--json", str(tmp_path / "w.json"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    grounded = json.loads((tmp_path / "w.json").read_text())["grounded"]
    assert grounded is not None


def test_garbled_atari_state_gives_one_line(tmp_path, pong_trace):
    def garble(d):
        data = d["a/sim/ale/data"].copy()
        data[: len(data) // 2] = np.random.default_rng(0).integers(0, 256, len(data) // 2, dtype=np.uint8)
        d["a/sim/ale/data"] = data

    def garble_rng(d):
        d["a/sim/np_rng/data"] = np.full_like(d["a/sim/np_rng/data"], ord("{"))

    for change in (garble, garble_rng):
        bad = rewrite(pong_trace, tmp_path / f"{change.__name__}.npz", change)
        proc = run_cli("whatif", str(PONG), "--trace", str(bad), "--step", "4", "--horizon", "2", "--grounded",
                       "--actions", "0", "--no-progress")
        assert_one_line(proc, status=2, match="cannot be restored" if change is garble else "state")


def test_replay_episode_is_read_bounded(tmp_path):
    from xdreamer.replay import load_episode, save_episode

    episode = {"image": np.zeros((5, 1, 64, 64), np.uint8), "action": np.zeros(5, np.int32),
               "reward": np.zeros(5, np.float32), "is_first": np.eye(1, 5, dtype=bool)[0],
               "is_last": np.zeros(5, bool), "is_terminal": np.zeros(5, bool)}
    good = tmp_path / "20260101T000000-0000000-abcdef-5.npz"
    save_episode(good, episode)
    assert load_episode(good)["image"].shape == (5, 1, 64, 64)
    lying = tmp_path / "20260101T000000-0000001-abcdef-5.npz"
    save_episode(lying, {**episode, "image": np.zeros((500, 1, 64, 64), np.uint8)})  # more steps than its name
    with pytest.raises(ValueError, match="expected 5 steps"):
        load_episode(lying)


# ---- property-based: the trace loader never raises anything but ValueError ---------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_truncated_or_flipped_traces_give_value_errors(tmp_path, catch_trace, data):
    raw = catch_trace[0].read_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=4),
                      label="flips")
    blob = bytearray(raw if data.draw(st.booleans(), label="flip instead of cut") else raw[:cut])
    for i, x in flips:
        if i < len(blob):
            blob[i] ^= x
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(blob))
    try:
        load_trace(path)
    except ValueError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_subnormal=False) | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                     max_size=6), max_leaves=30),
       keep=st.sampled_from(["format", "version", "spec", "env", "checkpoint", "columns", None]))
def test_random_meta_gives_value_errors(tmp_path, catch_trace, meta, keep):
    """Random JSON as the trace's meta (keeping one real field, so deeper checks are reached too). No subnormal
    floats: earlier in-process CLI tests leave torch's flush-denormal mode on (``training.configure_cpu``), and
    Hypothesis refuses to draw them then."""
    with zipfile.ZipFile(catch_trace[0]) as zf:
        original = json.loads(str(np.load(catch_trace[0], allow_pickle=False)["meta"]))
    value = dict(original) if keep is None else ({**meta, keep: original[keep]} if isinstance(meta, dict) else meta)
    if keep is None and isinstance(meta, dict):
        value.update(meta)
    bad = rewrite(catch_trace[0], tmp_path / "meta.npz", lambda d: d.update(meta=np.array(json.dumps(value))))
    try:
        trace = load_trace(bad)
    except ValueError:
        return
    assert len(trace) == len(catch_trace[1])


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_are_not_npz(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("bytes") / "x.npz"
    path.write_bytes(blob)
    with pytest.raises(ValueError):
        load_trace(path)
    with pytest.raises(ValueError):
        npzfile.load_bounded(path)


# ---- CLI: one line, never a traceback -------------------------------------------------------------------
def test_cli_disk_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """A full disk (ENOSPC from the final rename) and a C++ stream failure: one line, status 1, no traceback;
    --debug shows the traceback."""
    import errno

    from xdreamer import cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    args = ["eval", str(CATCH), "--episodes", "1", "--out", str(tmp_path / "e.json"), "--no-progress"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["xdreamer: error: [Errno 28] No space left on device"], err
    assert list(tmp_path.iterdir()) == []  # no stray temp file
    assert cli.main(args + ["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.undo()

    def ios(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr("xdreamer.explain.trace.save", ios)
    assert cli.main(["record", str(CATCH), "--max-steps", "2", "--out", str(tmp_path / "t.npz"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "disk full or read-only" in err, err


def test_cli_outputs_are_checked_before_the_work(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    proc = run_cli("eval", str(CATCH), "--episodes", "1", "--out", str(folder), "--no-progress")
    assert_one_line(proc, status=2, match="is a folder")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    proc = run_cli("record", str(CATCH), "--out", "/proc/xdreamer-cannot-write/t.npz", "--no-progress")
    assert_one_line(proc, status=1, match="cannot write into")


def test_killed_trace_write_is_cleaned_by_the_next_save(tmp_path, catch_trace):
    """A temporary of a killed save (its pid gone) is removed by the next save of that file; one of a live
    writer and unrelated hidden files are kept."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".t.npz.tmp-{dead}-0123abcd"
    live = tmp_path / f".t.npz.tmp-{os.getpid()}-0123abcd"
    other = tmp_path / ".notes.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"partial")
    save(catch_trace[1], tmp_path / "t.npz")
    assert not stale.exists() and live.exists() and other.exists()
    assert load_trace(tmp_path / "t.npz").meta["env"] == "toy:catch-lanes"


def test_cli_bad_device_is_one_line():
    import torch

    cases = [("banana", "unknown device"), ("cuda:99", "use --device cpu" if not torch.cuda.is_available()
                                             else "CUDA device(s)")]
    for device, match in cases:
        proc = run_cli("record", str(CATCH), "--device", device, "--out", "/tmp/never.npz", "--no-progress")
        assert_one_line(proc, status=2, match=match)


def test_report_table_is_validated(tmp_path):
    """The app's Failures panel reads summary.csv through the schema: a bad cell is one line naming row and
    column; the bundled reports pass."""
    from xdreamer.app import read_report

    for folder in sorted((REPO / "reports").iterdir()):
        if (folder / "summary.csv").is_file():
            table, _ = read_report(folder)
            assert len(table) > 0 and table["step"].dtype == np.int64
    (tmp_path / "summary.csv").write_text("case,checkpoint,episode,step,detector,score\n"
                                          "a,catch,0,5,blind_spot,0.5\nb,catch,0,-3,blind_spot,0.7\n")
    with pytest.raises(ValueError, match="row 2 .*column step"):
        read_report(tmp_path)
