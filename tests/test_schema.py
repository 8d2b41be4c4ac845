"""Hostile files and bad input (issue #28): every file the toolkit reads is validated (xdreamer.schema) and
every problem is a one-line ConfigError / CheckpointError (ValueError), never a traceback, a silent load or an
allocation the file asked for."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdreamer import checkpoint, schema
from xdreamer.agent import Agent
from xdreamer.checkpoint import CheckpointError
from xdreamer.config import PRESET_NEEDS, PRESETS, Config, ConfigError, build_config, check_device, read_config_file
from xdreamer.envs import make

ROOT = pathlib.Path(__file__).resolve().parent.parent
# database=None: no .hypothesis/ folder in the working tree
SETTINGS = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ---- a tiny valid checkpoint, made once ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_ckpt(tmp_path_factory) -> pathlib.Path:
    """A debug-preset toy:catch checkpoint with a trainer state (as Trainer.save writes it)."""
    env = make("toy:catch")
    torch.manual_seed(0)
    agent = Agent(build_config(["debug"], {"env": "toy:catch"}), env.spec)
    agent.init_optimizers()
    rng = np.random.default_rng(0)
    state = {"step": 10, "episodes": 1, "updates": 0, "pretrained": False, "wall_s": 1.0,
             "optimizers": agent.optimizer_state(), "torch_rng": torch.get_rng_state(),
             "numpy_rng": json.dumps(rng.bit_generator.state), "replay_rng": json.dumps(rng.bit_generator.state)}
    return checkpoint.save(tmp_path_factory.mktemp("valid") / "ckpt", agent, steps=10, trainer_state=state)


@pytest.fixture
def ckpt(valid_ckpt, tmp_path) -> pathlib.Path:
    """A fresh copy of the valid checkpoint to spoil."""
    return pathlib.Path(shutil.copytree(valid_ckpt, tmp_path / "ckpt"))


def _copy(valid_ckpt: pathlib.Path, folder: str) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(valid_ckpt, pathlib.Path(folder) / "ckpt"))


def _write_weights(path: pathlib.Path, data: bytes) -> None:
    """Replace the weights and make the manifest's sha256 match, so the checks after the hash are reached."""
    (path / checkpoint.WEIGHTS).write_bytes(data)
    checkpoint.update_manifest(path, weights_sha256=checkpoint.sha256(path / checkpoint.WEIGHTS))


def _edit_json(path: pathlib.Path, name: str, **changes) -> None:
    data = json.loads((path / name).read_text())
    data.update(changes)
    (path / name).write_text(json.dumps(data))


def _spoil_tensor(path: pathlib.Path, fn) -> str:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path / checkpoint.WEIGHTS))
    key = sorted(weights)[3]
    weights[key] = fn(weights[key])
    tmp = path / "w.tmp"
    save_file(weights, str(tmp))
    _write_weights(path, tmp.read_bytes())
    tmp.unlink()
    return key


# ---- config -----------------------------------------------------------------------------------------------------
def test_every_config_field_has_a_rule():
    from dataclasses import fields

    assert {f.name for f in fields(Config)} == set(schema.CONFIG_RULES)
    schema.config_model()  # builds (it checks the same)


def test_presets_and_bundled_configs_validate():
    for name in PRESETS:
        build_config([PRESET_NEEDS[name], name] if name in PRESET_NEEDS else [name])
    for combo in (["atari", "small"], ["small", "toy"], ["atari-paper"], ["mujoco", "small"], ["debug"],
                  ["dreamerv3", "small", "toy", "dreamerv3-toy"]):
        build_config(combo, {"env": "toy:catch"})


@pytest.mark.parametrize("combo", [["small", "toy", "dreamerv3-toy"], ["dreamerv3-toy", "dreamerv3", "small", "toy"],
                                   ["dreamerv3", "dreamerv3-toy", "dreamerv3"]])
def test_a_preset_that_adjusts_another_needs_it_first(combo):
    with pytest.raises(ConfigError, match="give it after 'dreamerv3'") as exc:
        build_config(combo)
    _one_line(exc)


def test_dreamerv3_toy_keeps_dreamerv3_and_the_toy_rates():
    """The preset changes only the five values it names (the comment in config.py says why) over DreamerV3 with the
    toy sizes and rates; the run of docs/family.md's seed 2 (3.28 over 50 episodes) had exactly this config."""
    base = build_config(["dreamerv3", "small", "toy"]).to_dict()
    tuned = build_config(["dreamerv3", "small", "toy", "dreamerv3-toy"]).to_dict()
    changed = {k: tuned[k] for k in tuned if tuned[k] != base[k]}
    assert changed == {"dyn_scale": 0.08, "rep_scale": 0.02, "decoder": "dreamerv2", "grad_clip": 100.0,
                       "adam_eps": 1e-5}
    assert tuned["algo"] == "dreamerv3" and tuned["model_lr"] == 3e-3 and tuned["kl_free"] == 1.0
    bundled = sorted((ROOT / "checkpoints").glob("*/config.json"))
    assert len(bundled) >= 5
    for path in bundled:
        read_config_file(path)
        checkpoint.read_manifest(path.parent)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "not a list"), (None, "not null"), ("deter", "not a string"), (3, "not a number"),
])
def test_config_from_dict_refuses_a_non_object(data, message):
    with pytest.raises(ConfigError, match=message) as exc:
        Config.from_dict(data)
    _one_line(exc)


@pytest.mark.parametrize("overrides, message", [
    ({"deter": -64}, "deter=-64 must be in 1..8192"),
    ({"deter": 10**7}, "deter=10000000 must be in 1..8192"),
    ({"precision": "float8"}, "precision='float8' is not one of float32, bfloat16"),
    ({"time_limit": -1}, "time_limit=-1 must be in 1.."),
    ({"discount": "nan"}, r"discount=nan must be a finite number in \(0, 1\]"),
    ({"discount": "-5"}, r"discount=-5.0 must be a finite number in \(0, 1\]"),
    ({"discount": "inf"}, "discount=inf must be a finite number"),
    ({"grad_clip": "-1"}, "grad_clip=-1.0 must be a finite number > 0"),
    ({"checkpoint_every": "0"}, "checkpoint_every=0 must be in 1.."),
    ({"eval_episodes": "-1"}, "eval_episodes=-1 must be in 1.."),
    ({"batch": "1e9"}, "batch=1000000000 must be in 1..4096"),
    ({"device": "banana"}, "device='banana' must be auto, cpu, cuda, cuda:N or mps"),
    ({"threads": "-3"}, "threads=-3 must be in 0..1024"),
    ({"model_lr": "nan"}, "model_lr=nan must be a finite number > 0"),
    ({"actor_lr": "0"}, "actor_lr=0.0 must be a finite number > 0"),
    ({"kl_balance": "1.5"}, r"kl_balance=1.5 must be a finite number in \[0, 1\]"),
    ({"unimix": "1"}, r"unimix=1.0 must be a finite number in \[0, 1\)"),
    ({"sticky": "-0.1"}, "sticky=-0.1 must be"),
    ({"train_every": "0"}, "train_every=0 must be in 1.."),
    ({"length": "1"}, "length=1 must be in 2..10000"),
    ({"horizon": "1001"}, "horizon=1001 must be in 1..1000"),
    ({"stoch": "1024", "classes": "1024"}, r"stoch\*classes=1024\*1024=1048576 must be at most 16384"),
    ({"env": ""}, "env='' must be a string of 1..200 characters"),
    ({"deter": "1e400"}, "deter='1e400' is not an integer"),
    ({"discount": 10**400}, "discount=.* is not a number"),
    ({"env": ["x"]}, r"env=\['x'\] is not a string"),
])
def test_bad_config_values_are_one_line_errors(overrides, message):
    """Each value the issue found accepted (or a traceback) through --set, and their neighbours."""
    with pytest.raises(ConfigError, match=message) as exc:
        build_config(["debug"], overrides)
    _one_line(exc)
    with pytest.raises(ConfigError, match=message):  # the same rule from a file's dict and from .replace
        Config.from_dict(overrides)


def test_zero_still_turns_a_cadence_off():
    """eval_every / video_every / log_every 0 mean "never" (training.Every; the tests and docs use it)."""
    cfg = build_config(["debug"], {"eval_every": "0", "video_every": "0", "log_every": "0", "replay_chunk": "0"})
    assert cfg.eval_every == cfg.video_every == cfg.log_every == 0


def test_check_device():
    assert check_device("cpu") == "cpu" and check_device("auto") == "auto"
    for bad in ("banana", "cuda:x", "cuda:1234", "", "CPU", "cpu "):
        with pytest.raises(ConfigError, match="unknown device") as exc:
            check_device(bad)
        _one_line(exc)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^--device cuda: .*no CUDA .*use --device cpu$") as exc:
            check_device("cuda")
        _one_line(exc)
        if torch.version.cuda is None:
            assert str(exc.value) == (f"--device cuda: this torch build has no CUDA (torch {torch.__version__}); "
                                      "use --device cpu")
        with pytest.raises(ConfigError, match="cuda:1"):
            check_device("cuda:1")


def test_trainer_refuses_an_unavailable_device(tmp_path):
    from xdreamer.training import Trainer

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = build_config(["debug"], {"env": "toy:catch", "device": "cuda"})  # a valid name ...
    with pytest.raises(ConfigError, match="no CUDA"):  # ... that this machine cannot run
        Trainer(cfg, tmp_path / "run", progress=False)


# ---- config.json and manifest.json in a checkpoint -----------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ([1, 2], "not a list"), (None, "not null"), ("x", "not a string"),
    ({"deter": -64}, "config.json: deter=-64 must be in 1..8192"),
    ({"precision": "float8"}, "precision='float8' is not one of"),
    ({"time_limit": -1}, "time_limit=-1 must be in"),
])
def test_bad_config_json_in_a_checkpoint(ckpt, content, message):
    (ckpt / "config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=message) as exc:
        checkpoint.load(ckpt)
    assert _one_line(exc).startswith(f"checkpoint {ckpt / 'config.json'}: ")


_HUGE_SCRIPT = """
import resource, sys
from xdreamer import checkpoint
try:
    checkpoint.load(sys.argv[1])
    out = "loaded"
except checkpoint.CheckpointError as exc:
    out = "CheckpointError: " + str(exc)
except BaseException as exc:
    out = type(exc).__name__ + ": " + str(exc).splitlines()[0]
print(out)
# VmHWM, not getrusage's ru_maxrss: with preexec_fn the child is forked from pytest, and Linux keeps the forked
# image's peak in ru_maxrss across exec (a 1.2 GB pytest read as this process's peak); VmHWM belongs to the new
# address space only.
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def test_a_huge_architecture_fails_fast_without_allocating(ckpt):
    """deter 10^7 asked for a 1.2 PB GRU; the config is refused before any model exists (peak RSS of the
    loading process stays that of python + torch)."""
    _edit_json(ckpt, "config.json", deter=10**7, hidden=10**7)

    def limit_memory():  # the pre-#28 code tried the allocation: keep the machine safe if it comes back
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT, str(ckpt)], capture_output=True, text=True,
                         timeout=120, env=env, preexec_fn=limit_memory)
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0 and len(lines) == 2, (out.stdout, out.stderr)
    assert lines[0].startswith("CheckpointError: ") and "deter=10000000 must be in 1..8192" in lines[0], lines[0]
    peak_mb = int(lines[1]) / 1024  # ru_maxrss is in KB on Linux
    assert peak_mb < 500, peak_mb


@pytest.mark.parametrize("change, message", [
    ({"env": None}, r"manifest.json: env=None must be a JSON object"),
    ({"format_version": "1"}, "format version '1'"),
    ({"steps": -1}, "steps=-1 must be in 0.."),
    ({"weights_sha256": "abc"}, "weights_sha256='abc' must be a string of 64..64"),
    ({"eval": {"mean": float("nan"), "std": 0.0}}, "eval.mean=nan must be a finite number"),
    ({"bundle": {"eval_mode": {"mean": 1.0, "std": -1.0}, "eval_random": {"mean": 0.0, "std": 0.0},
                 "episodes": 1, "seed": 0}}, r"bundle.eval_mode.std=-1.0 must be a finite number >= 0"),
])
def test_bad_manifest_fields(ckpt, change, message):
    _edit_json(ckpt, "manifest.json", **change)
    with pytest.raises(CheckpointError, match=message) as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


def test_manifest_without_env(ckpt):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    del manifest["env"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint .*manifest.json: env is missing") as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


@pytest.mark.parametrize("env_change, message", [
    ({"num_actions": -3}, "env.num_actions=-3 must be in 1..1024"),
    ({"num_actions": 3.0}, "env.num_actions=3.0 must be an integer"),
    ({"obs_shape": [1, 64]}, "env.obs_shape"),
    ({"obs_shape": [1, 64, 10**6]}, r"env.obs_shape.2=1000000 must be in 1..4096"),
    ({"action_names": ["A"]}, "env.action_names has 1 names for num_actions=3"),
    ({"bogus": 1}, "unknown field 'env.bogus'"),
])
def test_bad_env_spec_in_the_manifest(ckpt, env_change, message):
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["env"].update(env_change)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message) as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


# ---- the weights file ----------------------------------------------------------------------------------------------
def test_weights_that_are_a_folder_or_missing(ckpt):
    (ckpt / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights.safetensors"):
        checkpoint.load(ckpt)
    (ckpt / "weights.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="weights.safetensors is not a regular file") as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


def test_manifest_or_config_that_is_a_folder(ckpt):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    with pytest.raises(CheckpointError, match="config.json is not a regular file"):
        checkpoint.load(ckpt)
    shutil.rmtree(ckpt / "config.json")
    (ckpt / "manifest.json").unlink()
    (ckpt / "manifest.json").mkdir()
    with pytest.raises(CheckpointError, match="manifest.json is not a regular file"):
        checkpoint.load(ckpt)


def test_nan_weights_are_refused(ckpt):
    key = _spoil_tensor(ckpt, lambda t: t.clone().view(-1).index_fill_(0, torch.tensor([0, 1, 2]), math.nan)
                        .view(t.shape))
    with pytest.raises(CheckpointError, match=f"tensor {key} has 3 non-finite values") as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


def test_inf_weights_are_refused(ckpt):
    key = _spoil_tensor(ckpt, lambda t: torch.full_like(t, -math.inf))
    with pytest.raises(CheckpointError, match=f"tensor {key} has [0-9]+ non-finite values"):
        checkpoint.load(ckpt)


def test_int8_weights_are_refused(ckpt):
    key = _spoil_tensor(ckpt, lambda t: t.to(torch.int8))
    with pytest.raises(CheckpointError, match=f"tensor {key} has dtype int8, expected float32") as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


def test_weights_larger_than_the_architecture_are_refused_before_reading(ckpt, monkeypatch):
    data = (ckpt / checkpoint.WEIGHTS).read_bytes()
    _write_weights(ckpt, data + bytes(4 << 20))  # 4 MB appended
    monkeypatch.setattr(checkpoint, "sha256", lambda p: pytest.fail("hashed a file too large for its architecture"))
    with pytest.raises(CheckpointError, match="architecture mismatch: .* bytes, more than the") as exc:
        checkpoint.load(ckpt)
    _one_line(exc)


def test_valid_checkpoint_loads_with_its_trainer_state(valid_ckpt):
    agent, state = checkpoint.load(valid_ckpt, trainer=True)
    assert state["step"] == 10 and set(state["optimizers"]) == set(agent.optimizers or ("model", "actor", "critic"))


def test_bundled_checkpoints_pass_every_check():
    for folder in sorted((ROOT / "checkpoints").glob("*/")):
        if (folder / "manifest.json").exists():
            checkpoint.load(folder, device="cpu")


# ---- trainer.pt ---------------------------------------------------------------------------------------------------
def test_malicious_trainer_state_is_refused_in_one_line(ckpt, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": Evil()}, ckpt / "trainer.pt")
    with pytest.raises(CheckpointError, match=r"^refusing .*trainer.pt: not a plain trainer state \(.*GLOBAL") as exc:
        checkpoint.load(ckpt, trainer=True)
    _one_line(exc)
    assert not marker.exists()


@pytest.mark.parametrize("state, message", [
    ({"step": 1}, "is missing"),
    ([1, 2], "must be a dict"),
    ("edit", "step=-1 must be in 0.."),
    ("rng", "torch_rng=.* must be a 1-D uint8 tensor"),
    ("json", "numpy_rng=.* must be a JSON object"),
])
def test_trainer_state_structure_is_checked(ckpt, state, message):
    if isinstance(state, str):
        full = torch.load(ckpt / "trainer.pt", weights_only=True)
        full.update({"edit": {"step": -1}, "rng": {"torch_rng": torch.zeros(3)},
                     "json": {"numpy_rng": "[1, 2]"}}[state])
        state = full
    torch.save(state, ckpt / "trainer.pt")
    with pytest.raises(CheckpointError, match=message) as exc:
        checkpoint.load(ckpt, trainer=True)
    assert _one_line(exc).startswith("refusing ")


def test_garbage_trainer_state(ckpt):
    for data in (b"", b"\x80\x02garbage", b"PK\x03\x04" + bytes(100)):
        (ckpt / "trainer.pt").write_bytes(data)
        with pytest.raises(CheckpointError, match="refusing .*not a plain trainer state") as exc:
            checkpoint.load(ckpt, trainer=True)
        _one_line(exc)


def _run_folder(tmp_path, valid_ckpt) -> pathlib.Path:
    """A run folder as Trainer leaves it, holding the valid checkpoint as its latest."""
    run = tmp_path / "run"
    shutil.copytree(valid_ckpt, run / "checkpoints" / "step-000000010")
    (run / "checkpoints" / "latest").write_text("step-000000010\n")
    shutil.copy(valid_ckpt / "config.json", run / "config.json")
    return run


def test_resume_reads_a_valid_run(tmp_path, valid_ckpt):
    from xdreamer.training import Trainer

    trainer = Trainer(None, _run_folder(tmp_path, valid_ckpt), resume=True, progress=False)
    assert trainer.step == 10 and trainer.episodes == 1


def test_resume_refuses_a_bad_run_config(tmp_path, valid_ckpt):
    from xdreamer.training import Trainer

    run = _run_folder(tmp_path, valid_ckpt)
    for content, message in (([1], "not a list"), ({"deter": -64}, "deter=-64 must be in 1..8192"),
                             ("{", "not valid JSON")):
        (run / "config.json").write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ConfigError, match=message) as exc:
            Trainer(None, run, resume=True, progress=False)
        assert _one_line(exc).startswith(f"{run / 'config.json'}: ")


def test_resume_refuses_optimizer_state_of_another_shape(tmp_path, valid_ckpt):
    from xdreamer.training import Trainer

    run = _run_folder(tmp_path, valid_ckpt)
    file = run / "checkpoints" / "step-000000010" / "trainer.pt"
    state = torch.load(file, weights_only=True)
    opt = state["optimizers"]["model"]
    opt["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(7), "exp_avg_sq": torch.zeros(7)}}
    torch.save(state, file)
    with pytest.raises(CheckpointError, match=r"refusing .*trainer.pt: its state does not fit this run") as exc:
        Trainer(None, run, resume=True, progress=False)
    _one_line(exc)


# ---- the latest pointer -------------------------------------------------------------------------------------
def _run_with_pointer(tmp_path, valid_ckpt, name: str) -> pathlib.Path:
    run = tmp_path / "run"
    shutil.copytree(valid_ckpt, run / "checkpoints" / "step-000000010")
    (run / "checkpoints" / "latest").write_text(name + "\n")
    return run


@pytest.mark.parametrize("pointer", ["/etc", "../../x", "..", ".", "a/b", "step-1/../../../x", "", "\x00"])
def test_latest_pointer_must_name_a_folder_inside_checkpoints(tmp_path, valid_ckpt, pointer):
    run = _run_with_pointer(tmp_path, valid_ckpt, pointer)
    shutil.copytree(valid_ckpt, tmp_path / "x")  # what "../../x" would reach: a valid checkpoint outside the run
    with pytest.raises(CheckpointError, match="latest names .*plain name of a checkpoint folder") as exc:
        checkpoint.resolve(run)
    _one_line(exc)


def test_latest_pointer_to_an_absolute_checkpoint_is_refused(tmp_path, valid_ckpt):
    outside = shutil.copytree(valid_ckpt, tmp_path / "outside")
    run = _run_with_pointer(tmp_path, valid_ckpt, str(outside))
    with pytest.raises(CheckpointError, match="latest names"):
        checkpoint.load(run)


def test_latest_pointer_through_a_symlink_is_refused(tmp_path, valid_ckpt):
    outside = shutil.copytree(valid_ckpt, tmp_path / "outside")
    run = _run_with_pointer(tmp_path, valid_ckpt, "step-000000020")
    (run / "checkpoints" / "step-000000020").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="leads outside"):
        checkpoint.resolve(run)


def test_plain_latest_pointer_still_resolves(tmp_path, valid_ckpt):
    run = _run_with_pointer(tmp_path, valid_ckpt, "step-000000010")
    assert checkpoint.resolve(run) == run / "checkpoints" / "step-000000010"


# ---- temporaries of killed writes ----------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_removed_by_the_next_save(tmp_path, debug_cfg, toy_spec):
    parent = tmp_path / "checkpoints"
    parent.mkdir()
    dead, alive = _dead_pid(), os.getppid()  # our parent (pytest's launcher) outlives this test
    stale = [parent / f".step-000000100.tmp-{dead}-0123abcd", parent / f".step-000000100.old-{dead}-89abcdef",
             parent / f".latest.tmp-{dead}", parent / ".step-000000050.tmp-deadbeef"]  # the last two: before #28
    live = [parent / f".step-000000200.tmp-{alive}-0123abcd", parent / ".step-000000300.tmp-feedf00d"]
    for p in stale[:2] + live:
        p.mkdir()
        (p / "weights.safetensors").write_bytes(b"partial")
    for p in stale[2:3]:
        p.write_text("step-000000100\n")
    stale[3].mkdir()
    stale.append(parent / ".latest.tmp")  # Trainer.save's before #28
    stale[4].write_text("step-000000100\n")
    old = time.time() - 2 * checkpoint.LEGACY_TEMP_AGE_S  # pid-less temporaries from an earlier version, hours old
    for p in stale[3:]:
        os.utime(p, (old, old))
    keep = parent / "step-000000001"  # real checkpoints and other files are never touched
    keep.mkdir()
    others = [parent / ".bashrc.old", parent / ".notes.tmp", parent / f".x.tmp-{dead}-nothex!"]
    for p in others:
        p.write_text("mine")
        os.utime(p, (old, old))
    checkpoint.save(parent / "step-000000400", Agent(debug_cfg, toy_spec), steps=400)
    left = {p.name for p in parent.iterdir()}
    assert not any(p.name in left for p in stale), left
    assert all(p.name in left for p in live + others) and {"step-000000001", "step-000000400"} <= left, left


def test_temp_names_carry_the_writers_pid(tmp_path):
    name = checkpoint.temp_path(tmp_path / "step-000000100").name
    assert name.startswith(f".step-000000100.tmp-{os.getpid()}-") and len(name.rsplit("-", 1)[1]) == 8


def test_atomic_write_text_leaves_no_temporary_on_failure(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write_text(tmp_path / "latest", "step-1\n")
    assert list(tmp_path.iterdir()) == []


def test_trainer_start_removes_stale_temporaries(tmp_path):
    from xdreamer.training import Trainer

    run = tmp_path / "run"
    stale = run / "checkpoints" / f".step-000000100.tmp-{_dead_pid()}-0123abcd"
    stale.mkdir(parents=True)
    Trainer(build_config(["debug"], {"env": "toy:catch"}), run, progress=False)
    assert not stale.exists()


# ---- trace meta and report tables ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace_meta(valid_ckpt):
    from xdreamer.explain.trace import record

    agent = checkpoint.load(valid_ckpt)
    trace = record(agent, make("toy:catch"), max_steps=3)
    return json.loads(json.dumps({**trace.meta, "columns": list(trace.table.columns)}))


def test_recorded_trace_meta_validates(trace_meta):
    assert schema.validate_trace_meta(trace_meta, "t.npz") == trace_meta
    no_columns = {k: v for k, v in trace_meta.items() if k != "columns"}
    schema.validate_trace_meta({**no_columns, "checkpoint": None, "weights_sha256": None}, "t.npz")


@pytest.mark.parametrize("change, message", [
    ({"spec": {"id": "toy:catch", "obs_shape": [1, 64, 64], "discrete": True, "num_actions": -3}},
     "meta spec.num_actions=-3 must be in 1..1024"),
    ({"discount": float("nan")}, "meta discount=nan must be a finite number"),
    ({"weights_fingerprint": "x" * 64}, "meta weights_fingerprint="),
    ({"policy": "evil"}, "meta policy='evil' is not one of mode, sample"),
    ({"seed": "3"}, "meta seed='3' must be an integer"),
    ({"env": "atari:Pong"}, "differs from spec.id"),
    ({"columns": "episode"}, "meta columns='episode' must be a list"),
])
def test_bad_trace_meta(trace_meta, change, message):
    with pytest.raises(ValueError, match=message) as exc:
        schema.validate_trace_meta({**trace_meta, **change}, "runs/t.npz")
    assert _one_line(exc).startswith("corrupt trace file runs/t.npz: ")


def test_trace_meta_must_be_an_object():
    for meta in ([1], None, "x", 3):
        with pytest.raises(ValueError, match="meta must be a JSON object"):
            schema.validate_trace_meta(meta, "t.npz")


def test_bundled_report_tables_validate():
    tables = sorted((ROOT / "reports").glob("*/summary.csv"))
    assert tables
    for path in tables:
        raw = pd.read_csv(path)
        clean = schema.validate_report_table(raw, path)
        assert len(clean) == len(raw) and clean["episode"].dtype == np.int64 and clean["score"].dtype == np.float64
        assert clean["case"].map(type).eq(str).all()


def _report(**columns) -> pd.DataFrame:
    base = {"case": ["c001", "c002"], "checkpoint": ["catch", "catch"], "episode": [0, 1], "step": [5, 7],
            "detector": ["blind_spot", "blind_spot"], "score": [1.5, 0.5], "detail": ["a", "b"]}
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize("columns, message", [
    ({"score": [1.0, "abc"]}, r"row 2 \(line 3\), column score: 'abc' is not a finite number"),
    ({"score": [float("inf"), 1.0]}, r"row 1 \(line 2\), column score: inf is not a finite number"),
    ({"episode": [-1, 0]}, r"row 1 \(line 2\), column episode: -1 is not an integer in 0.."),
    ({"step": [1.5, 2]}, "column step: 1.5 is not an integer"),
    ({"case": ["c001", None]}, r"row 2 \(line 3\), column case is empty"),
    ({"checkpoint": ["x" * 1001, "y"]}, "column checkpoint: 'xxx.* is longer than 1000 characters"),
])
def test_bad_report_tables(columns, message):
    with pytest.raises(ValueError, match=message) as exc:
        schema.validate_report_table(_report(**columns), "rep/summary.csv")
    assert _one_line(exc).startswith("rep/summary.csv")


def test_report_table_missing_column_and_clean_copy():
    with pytest.raises(ValueError, match="lacks the column"):
        schema.validate_report_table(_report().drop(columns=["score"]), "s.csv")
    raw = _report(step=[5.0, 7.0], case=[1, 2])
    clean = schema.validate_report_table(raw, "s.csv")
    assert clean["step"].tolist() == [5, 7] and clean["case"].tolist() == ["1", "2"] and raw["case"].tolist() == [1, 2]


# ---- property-based: random input never escapes as anything but ConfigError / CheckpointError ---------------------
# allow_subnormal=False: Trainer (other tests) flushes denormals to zero process-wide (training.configure_cpu),
# where Hypothesis cannot draw subnormal floats.
FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
CONFIG_KEYS = sorted(schema.CONFIG_RULES)
SCALARS = (st.none() | st.booleans() | st.integers() | FLOATS | st.text(max_size=12)
           | st.sampled_from(["nan", "-1", "0", "1e9", "auto", "cuda", "float8", "1_000"]))


@SETTINGS
@given(data=JSON | st.dictionaries(st.sampled_from(CONFIG_KEYS), SCALARS | JSON, max_size=6))
def test_any_json_as_a_config_is_a_config_error(data):
    try:
        cfg = Config.from_dict(data)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        cfg.validate()


def _load_errors_only(path: pathlib.Path) -> None:
    """Loading ``path`` succeeds or raises CheckpointError (or ConfigError); any other exception fails the test."""
    try:
        checkpoint.load(path, device="cpu", trainer=True)
    except (CheckpointError, ConfigError) as exc:
        assert "\n" not in str(exc), str(exc)


MANIFEST_KEYS = ["env", "steps", "updates", "weights_sha256", "format_version", "eval", "bundle", "env.num_actions",
                 "env.obs_shape", "env.discrete", "env.id", "env.action_names", "env.max_steps"]


@SETTINGS
@given(data=JSON, variant=st.tuples(st.sampled_from(MANIFEST_KEYS), SCALARS | JSON), whole=st.booleans())
def test_any_json_as_a_manifest_is_a_checkpoint_error(valid_ckpt, data, variant, whole):
    with tempfile.TemporaryDirectory() as tmp:
        path = _copy(valid_ckpt, tmp)
        if whole:
            (path / "manifest.json").write_text(json.dumps(data))
        else:  # one field of a valid manifest replaced
            manifest = json.loads((path / "manifest.json").read_text())
            key, value = variant
            target = manifest["env"] if key.startswith("env.") else manifest
            target[key.removeprefix("env.")] = value
            (path / "manifest.json").write_text(json.dumps(manifest))
        _load_errors_only(path)
        try:
            checkpoint.read_manifest(path)
        except CheckpointError:
            pass


@SETTINGS
@given(data=JSON, variant=st.tuples(st.sampled_from(CONFIG_KEYS), SCALARS | JSON))
def test_any_json_as_a_checkpoint_config_is_a_checkpoint_error(valid_ckpt, data, variant):
    with tempfile.TemporaryDirectory() as tmp:
        path = _copy(valid_ckpt, tmp)
        (path / "config.json").write_text(json.dumps(data))
        _load_errors_only(path)
        config = json.loads((valid_ckpt / "config.json").read_text())
        config[variant[0]] = variant[1]
        (path / "config.json").write_text(json.dumps(config))
        _load_errors_only(path)


@SETTINGS
@given(name=st.sampled_from(["manifest.json", "config.json", "weights.safetensors", "trainer.pt"]),
       data=st.binary(max_size=2048))
def test_random_bytes_as_any_checkpoint_file(valid_ckpt, name, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _copy(valid_ckpt, tmp)
        if name == "weights.safetensors":
            _write_weights(path, data)  # a matching sha256, so the bytes reach the parser
        else:
            (path / name).write_bytes(data)
        _load_errors_only(path)


@SETTINGS
@given(fraction=st.floats(0.0, 1.0, exclude_max=True, allow_subnormal=False))
def test_truncated_weights_are_a_checkpoint_error(valid_ckpt, fraction):
    data = (valid_ckpt / checkpoint.WEIGHTS).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = _copy(valid_ckpt, tmp)
        _write_weights(path, data[:int(len(data) * fraction)])
        with pytest.raises(CheckpointError):
            checkpoint.load(path)


@SETTINGS
@given(header=st.dictionaries(
    st.sampled_from(["wm.rssm.img_in.weight", "ac.actor.net.net.0.weight", "__metadata__", "x"]),
    st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "I8", "F64", "BOOL", "F16", "Q4", 3]),
                           "shape": st.lists(st.integers(-2, 70), max_size=3),
                           "data_offsets": st.lists(st.integers(-5, 5000), min_size=0, max_size=3)}) | JSON,
    max_size=4), body=st.binary(max_size=256), pad=st.integers(0, 16))
def test_forged_safetensors_headers_are_a_checkpoint_error(valid_ckpt, header, body, pad):
    raw = json.dumps(header).encode() + b" " * pad
    with tempfile.TemporaryDirectory() as tmp:
        path = _copy(valid_ckpt, tmp)
        _write_weights(path, len(raw).to_bytes(8, "little") + raw + body)
        with pytest.raises(CheckpointError):
            checkpoint.load(path)


@SETTINGS
@given(pointer=st.text(max_size=40) | st.binary(max_size=40))
def test_any_latest_pointer_resolves_inside_or_is_refused(valid_ckpt, pointer):
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp) / "run"
        shutil.copytree(valid_ckpt, run / "checkpoints" / "step-000000010")
        latest = run / "checkpoints" / "latest"
        latest.write_bytes(pointer if isinstance(pointer, bytes) else pointer.encode("utf-8", "surrogatepass"))
        try:
            found = checkpoint.resolve(run)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
        else:
            assert found.resolve().parent == (run / "checkpoints").resolve()
