"""Replay alignment, checkpoints, the training loop, resume, the CLI."""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import xdreamer
from conftest import random_batch
from xdreamer import checkpoint
from xdreamer.agent import Agent
from xdreamer.cli import main
from xdreamer.config import ConfigError, build_config, parse_set_args
from xdreamer.envs import make
from xdreamer.replay import EpisodeBuilder, Replay, load_episode


# ---- config ---------------------------------------------------------------------------------
def test_presets_compose_and_set_overrides():
    cfg = build_config(["atari", "small"], {"deter": "128", "prioritize_ends": "false"})
    assert cfg.kl_scale == 0.1 and cfg.discount == 0.999  # from atari (paper)
    assert cfg.cnn_depth == 16  # from small
    assert cfg.deter == 128 and cfg.prioritize_ends is False  # from --set
    paper = build_config(["atari"])
    assert (paper.deter, paper.stoch, paper.classes, paper.cnn_depth, paper.batch, paper.length) == (600, 32, 32, 48, 16, 50)
    assert build_config(["mujoco"]).kl_scale == 1.0 and build_config(["mujoco"]).kl_free == 1.0
    with pytest.raises(ConfigError, match="unknown config key 'detr'"):
        build_config([], {"detr": 1})
    with pytest.raises(ConfigError, match="unknown preset"):
        build_config(["huge"])
    with pytest.raises(ConfigError, match="not an integer"):
        build_config([], {"deter": "abc"})
    with pytest.raises(ConfigError):
        parse_set_args(["deter"])


# ---- replay ---------------------------------------------------------------------------------
def _collect(env, steps, rng):
    builder = EpisodeBuilder(env.spec.discrete, env.spec.num_actions)
    obs = env.reset(seed=0)
    builder.add(obs, None)
    taken, episodes = [], []
    for _ in range(steps):
        action = int(rng.integers(env.spec.num_actions))
        obs = env.step(action)
        taken.append((action, obs["reward"], obs["image"].copy()))
        episode = builder.add(obs, action)
        if episode is not None:
            episodes.append(episode)
            obs = env.reset()
            builder.add(obs, None)
            taken.append(None)
    return episodes, taken


def test_replay_time_alignment(tmp_path):
    env = make("toy:catch", seed=0)
    episodes, taken = _collect(env, 150, np.random.default_rng(0))
    episode = episodes[0]
    # Row t holds o_t, the action a_{t-1} that led to it and the reward r_t received with it.
    assert episode["is_first"][0] and not episode["is_first"][1:].any()
    assert episode["action"][0] == 0 and episode["reward"][0] == 0
    for t in range(1, len(episode["image"])):
        action, reward, image = taken[t - 1]
        assert episode["action"][t] == action and episode["reward"][t] == reward
        assert np.array_equal(episode["image"][t], image)
    assert episode["is_last"][-1] and episode["is_terminal"][-1] and not episode["is_last"][:-1].any()
    replay = Replay(tmp_path, capacity=10_000)
    name = replay.add_episode(episode)
    stored = load_episode(tmp_path / f"{name}.npz")
    assert all(np.array_equal(stored[k], episode[k]) for k in episode)
    batch = replay.sample(8, 40)
    assert batch["image"].shape == (8, 40, 1, 64, 64) and batch["action"].shape == (8, 40)
    # A sequence crossing into another episode marks the boundary with is_first.
    long = replay.sample(4, 200)
    assert long["is_first"].sum(1).min() >= 1


def test_replay_chunks_of_a_running_episode(tmp_path):
    """``replay_chunk``: a long episode is stored in chunks while it runs; concatenated they are the whole
    episode, and a sampled sequence that runs into another chunk has is_first set at the seam."""
    env = make("toy:catch", seed=0)
    whole, _ = _collect(env, 150, np.random.default_rng(0))
    env = make("toy:catch", seed=0)
    builder = EpisodeBuilder(env.spec.discrete, env.spec.num_actions)
    rng = np.random.default_rng(0)
    obs = env.reset(seed=0)
    builder.add(obs, None)
    replay, chunks = Replay(tmp_path, capacity=10_000, seed=0), []
    while True:
        action = int(rng.integers(env.spec.num_actions))
        obs = env.step(action)
        episode = builder.add(obs, action)
        if episode is None and len(builder.steps) >= 20:
            chunks.append(builder.take_chunk())
            replay.add_episode(chunks[-1])
        if episode is not None:
            chunks.append(episode)
            replay.add_episode(episode)
            break
    assert len(chunks) >= 4 and all(len(c["image"]) == 20 for c in chunks[:-1])
    assert chunks[0]["is_first"][0] and not any(c["is_first"][0] for c in chunks[1:])
    for key in whole[0]:
        assert np.array_equal(np.concatenate([c[key] for c in chunks]), whole[0][key]), key
    # Sampling: chunks whose pixel (0, 0) holds their index; wherever a sequence moves to another chunk,
    # is_first is set (also where the stored chunk starts with is_first 0).
    marked = Replay(None, capacity=10_000, seed=1)
    for i, c in enumerate(chunks):
        c = {k: v.copy() for k, v in c.items()}
        c["image"][:, 0, 0, 0] = i
        marked.add_episode(c)
    batch = marked.sample(64, 30)  # longer than any chunk: every sequence crosses a seam
    ids = batch["image"][:, :, 0, 0, 0]
    seams = np.zeros_like(batch["is_first"])
    seams[:, 1:] = ids[:, 1:] != ids[:, :-1]
    assert seams.sum() >= 32 and batch["is_first"][seams].all()


def test_replay_capacity_and_reload(tmp_path):
    env = make("toy:catch", seed=0)
    episodes, _ = _collect(env, 400, np.random.default_rng(1))
    replay = Replay(tmp_path, capacity=150)
    for ep in episodes:
        replay.add_episode(ep)
    assert len(replay) <= 150 + max(len(e["image"]) for e in episodes)
    assert len(replay.episodes) < len(episodes)  # oldest evicted from memory ...
    assert len(list(tmp_path.glob("*.npz"))) == len(episodes)  # ... but kept on disk
    again = Replay(tmp_path, capacity=150)
    again.load()
    assert list(again.episodes) == list(replay.episodes)
    assert again.total_steps == sum(len(e["image"]) for e in episodes)


# ---- checkpoints ----------------------------------------------------------------------------
def _obs_stream(env_id="toy:catch", steps=30):
    env = make(env_id, seed=3)
    obs = env.reset(seed=3)
    out = [obs]
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs = env.step(int(rng.integers(env.spec.num_actions)))
        out.append(obs)
    return out


def _actions(agent, stream):
    state, acts = None, []
    for obs in stream:
        a, state = agent.policy({"image": obs["image"][None], "is_first": np.array([obs["is_first"]])}, state,
                                mode="eval")
        acts.append(int(a[0]))
    return acts


@pytest.mark.parametrize("embed_norm", ["none", "batch"])
def test_checkpoint_roundtrip_identical_actions(tmp_path, debug_cfg, toy_spec, embed_norm):
    torch.manual_seed(0)
    agent = Agent(debug_cfg.replace(embed_norm=embed_norm), toy_spec)
    agent.train_step(random_batch(toy_spec, 2, 8))
    path = checkpoint.save(tmp_path / "ckpt", agent, steps=42)
    loaded = xdreamer.load(path)
    assert loaded.manifest["steps"] == 42 and loaded.manifest["env"]["id"] == "toy:catch"
    if embed_norm == "batch":  # the running statistics are part of the weights
        assert "wm.embed_norm.running_mean" in loaded.state_dict()
        assert not torch.equal(loaded.wm.embed_norm.running_mean, torch.zeros_like(loaded.wm.embed_norm.running_mean))
    assert loaded.cfg == agent.cfg and loaded.spec == agent.spec
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in agent.state_dict().items())
    stream = _obs_stream()
    assert _actions(agent.eval(), stream) == _actions(loaded, stream)
    manifest = json.loads((path / "manifest.json").read_text())
    for key in ("format_version", "versions", "env", "steps", "weights_sha256"):
        assert key in manifest


def test_fused_adam_matches_foreach_and_resumes_a_foreach_state(debug_cfg, toy_spec, monkeypatch):
    """On CPU the optimizers run PyTorch's fused AdamW: the same parameters as its default (foreach) implementation
    up to float rounding, and an optimizer state saved by a foreach run resumes fused, to the same parameters."""
    torch.manual_seed(0)
    fused = Agent(debug_cfg, toy_spec)
    foreach = copy.deepcopy(fused)
    start = [p.detach().clone() for p in fused.parameters()]
    monkeypatch.setattr(foreach, "_fused_adam", lambda: False)

    def train(agent, seeds):
        torch.manual_seed(1)
        for seed in seeds:
            agent.train_step(random_batch(toy_spec, 2, 8, seed=seed))

    def flags(agent):
        return {g["fused"] for opt in agent.optimizers.values() for g in opt.param_groups}

    def max_diff(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))

    for agent in (fused, foreach):
        train(agent, range(3))
    assert flags(fused) == {True} and flags(foreach) == {None}
    moved = max((p - s).abs().max().item() for p, s in zip(fused.parameters(), start))
    assert moved > 1e-4 and max_diff(fused, foreach) < 1e-3 * moved, (moved, max_diff(fused, foreach))
    resumed = Agent(debug_cfg, toy_spec)
    resumed.load_state_dict(foreach.state_dict())
    resumed.load_optimizer_state(copy.deepcopy(foreach.optimizer_state()))
    resumed.updates = foreach.updates  # as training.py resumes (the slow critic's update schedule)
    assert flags(resumed) == {True}
    train(resumed, [3])
    train(foreach, [3])
    assert max_diff(resumed, foreach) < 1e-3 * moved


def test_checkpoint_errors(tmp_path, debug_cfg, toy_spec):
    agent = Agent(debug_cfg, toy_spec)
    path = checkpoint.save(tmp_path / "ckpt", agent, steps=1)
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        xdreamer.load(tmp_path / "missing")
    with pytest.raises(checkpoint.CheckpointError, match="architecture mismatch"):
        checkpoint.load(path, overrides={"deter": 32})
    pong = make("atari:Pong").spec
    with pytest.raises(checkpoint.CheckpointError, match="mismatch in num_actions"):
        checkpoint.check_env(agent.spec, pong)
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="sha256"):
        xdreamer.load(path)


def test_checkpoint_load_executes_no_code(tmp_path, debug_cfg, toy_spec):
    """trainer.pt is read with weights_only=True: a pickle payload is refused, not run."""
    agent = Agent(debug_cfg, toy_spec)
    path = checkpoint.save(tmp_path / "ckpt", agent, steps=1, trainer_state={"step": 1})

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"step": Evil()}, path / "trainer.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a plain trainer state"):  # one line (#28)
        checkpoint.load(path, trainer=True)
    assert not (tmp_path / "pwned").exists()


# ---- training loop, resume ------------------------------------------------------------------
def test_train_debug_writes_everything(tmp_path):
    cfg = build_config(["debug"], {"env": "toy:catch", "steps": 600, "video_every": 500})
    from xdreamer.training import train

    result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert result.steps == 600 and result.updates > 0
    assert (run / "checkpoints" / "latest").exists() and (result.checkpoint / "manifest.json").exists()
    videos = list((run / "videos").glob("openloop-*.mp4"))
    assert videos
    import imageio.v3 as iio

    # Labelled (#31): a 32-px header and an 80-px margin of row names around 3 rows x 6 samples of 2x-enlarged frames.
    assert iio.imread(videos[0], index=0).shape[:2] == (32 + 3 * 128, 80 + 6 * 128)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/model_loss" in r for r in rows) and any("perf/updates_per_s" in r for r in rows)
    assert list((run / "tb").glob("events.*"))
    assert len(list((run / "replay").glob("*.npz"))) >= 5
    agent = xdreamer.load(run)
    assert agent.manifest["steps"] == 600 and "eval" in agent.manifest


def test_resume_continues(tmp_path):
    from xdreamer.training import Trainer, train

    cfg = build_config(["debug"], {"env": "toy:catch", "steps": 500, "checkpoint_every": 250})
    first = train(cfg, tmp_path / "run", progress=False)
    updates = first.updates
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="cannot change deter"):
        Trainer(None, tmp_path / "run", resume=True, overrides={"deter": 8})
    trainer = Trainer(None, tmp_path / "run", resume=True, overrides={"steps": 800}, progress=False)
    assert trainer.step == 500 and trainer.agent.updates == updates
    episodes_on_disk = len(list((tmp_path / "run" / "replay").glob("*.npz")))
    assert len(trainer.replay.episodes) == episodes_on_disk
    result = trainer.run()
    assert result.steps == 800 and result.updates > updates


def test_kill_minus_nine_loses_no_episode(tmp_path):
    """A training process killed with SIGKILL leaves every completed episode readable; a resumed
    run continues from its checkpoint's step count."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "xdreamer", "train", "--env", "toy:catch", "--preset", "debug", "--logdir",
           str(run), "--no-progress", "--set", "steps=100000", "checkpoint_every=200", "eval_every=0",
           "video_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "latest").exists(), "no checkpoint written before the kill"
    files = list((run / "replay").glob("*.npz"))
    assert files and not list((run / "replay").glob(".*.tmp"))
    for path in files:
        episode = load_episode(path)
        assert episode["is_first"][0] and episode["is_last"][-1]
    saved_step = xdreamer.load(run).manifest["steps"]
    from xdreamer.training import Trainer

    trainer = Trainer(None, run, resume=True, overrides={"steps": saved_step + 50}, progress=False)
    assert trainer.step == saved_step > 0
    assert len(trainer.replay.episodes) == len(files)


def test_sigterm_saves_and_stops(tmp_path):
    """`kill PID` (SIGTERM, as `timeout` and batch schedulers send) stops a training like Ctrl-C: it writes a
    checkpoint of the step it reached and exits 143, so `--resume` loses nothing."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "xdreamer", "train", "--env", "toy:catch", "--preset", "debug", "--logdir",
           str(run), "--no-progress", "--set", "steps=100000", "checkpoint_every=100000", "eval_every=0",
           "video_every=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "replay").glob("*.npz")):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert "continue with --resume" in out
    saved = xdreamer.load(run).manifest["steps"]
    assert saved > 0  # no scheduled checkpoint was due: this one was written on SIGTERM


# ---- CLI ------------------------------------------------------------------------------------
def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_diverging_training_saves_and_fails_cleanly(tmp_path, capsys):
    """Actor and critic learning rates of 1e30 make a loss non-finite after an update or two. That update skips its
    optimizer steps (Agent.train_step), so the run is saved with finite weights at the step reached, and `xdreamer
    train` fails with a one-line error, exit 1."""
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--env", "toy:catch", "--preset", "debug", "--logdir", str(run),
                        "--no-progress", "--set", "steps=2000", "actor_lr=1e30", "critic_lr=1e30",
                        "eval_every=0", "video_every=0")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdreamer: error:") and "is not finite" in lines[0], err
    step = int(re.search(r"at step (\d+); saved", lines[0]).group(1))
    assert 0 < step < 2000
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert latest.name == f"step-{step:09d}" and str(latest) in lines[0]
    agent = xdreamer.load(latest)
    assert agent.updates >= 1 and all(torch.isfinite(v).all() for v in agent.state_dict().values())


def test_cli_commands_configure_the_cpu_like_train(tmp_path, capsys, monkeypatch):
    """Every command but `app` runs training.configure_cpu first (kept freed memory: analysis at paper size
    page-faulted its large temporaries on every call without it)."""
    import xdreamer.training

    calls = []
    monkeypatch.setattr(xdreamer.training, "configure_cpu", lambda: calls.append(1))
    code, _, err = _cli(capsys, "eval", str(tmp_path / "missing-run"), "--episodes", "1")
    assert code == 2 and "missing-run" in err
    assert calls == [1]


def test_cli_train_and_eval(tmp_path, capsys):
    code, out, err = _cli(capsys, "train", "--env", "toy:catch", "--preset", "debug", "--logdir",
                          str(tmp_path / "run"), "--no-progress", "--set", "steps=400")
    assert code == 0, err
    assert "checkpoint:" in out
    code, out, err = _cli(capsys, "eval", str(tmp_path / "run"), "--episodes", "2", "--out",
                          str(tmp_path / "eval.json"), "--no-progress")
    assert code == 0, err
    data = json.loads((tmp_path / "eval.json").read_text())
    assert data["episodes"] == 2 and len(data["returns"]) == 2
    assert data["mean"] == pytest.approx(np.mean(data["returns"]))
    assert "±" in out
    # lockstep (batched) evaluation runs the same seeded episodes as one-at-a-time evaluation
    runs = {}
    for n in ("1", "3"):
        code, out, err = _cli(capsys, "eval", str(tmp_path / "run"), "--episodes", "5", "--lockstep", n, "--out",
                              str(tmp_path / f"eval{n}.json"), "--no-progress")
        assert code == 0, err
        runs[n] = json.loads((tmp_path / f"eval{n}.json").read_text())
    assert (runs["1"]["returns"], runs["1"]["lengths"]) == (runs["3"]["returns"], runs["3"]["lengths"])
    assert _cli(capsys, "eval", str(tmp_path / "run"), "--lockstep", "0")[0] == 2



def test_eval_prefix_returns_match_a_cut_rerun(tmp_path, monkeypatch, debug_cfg, toy_spec):
    """The recorded return over each episode's first PREFIX_STEPS steps equals an evaluation cut there
    (what tests/test_bundled.py re-runs for a 27,000-step episode), one by one and in lockstep."""
    from xdreamer import evaluation

    monkeypatch.setattr(evaluation, "PREFIX_STEPS", 40)
    torch.manual_seed(0)
    agent = Agent(debug_cfg, toy_spec)
    envs = [make("toy:catch") for _ in range(3)]
    for more in ((), envs[1:]):
        full = evaluation.evaluate(agent, envs[0], 3, seed=2, more_envs=more)
        cut = evaluation.evaluate(agent, envs[0], 3, seed=2, more_envs=more, max_steps=40)
        assert min(full.lengths) > 40 and cut.lengths == [40, 40, 40]
        assert full.prefix_returns == cut.returns == cut.prefix_returns
        rand = evaluation.evaluate(None, envs[0], 3, seed=2, policy="random", max_steps=40)
        assert rand.lengths == [40, 40, 40]


@pytest.mark.parametrize("argv, message", [
    (["train", "--env", "nope:Thing", "--preset", "debug"], "nope:Thing"),
    (["train", "--env", "toy:catch", "--preset", "giant"], "unknown preset"),
    (["train", "--env", "toy:catch", "--set", "detr=3"], "unknown config key"),
    (["train", "--env", "toy:catch", "--set", "compile=fast"], "is not one of off, default"),
    (["eval", "/nonexistent/ckpt"], "not found"),
    (["bench", "--presets", "debug", "--device", "tpu"], "unknown device 'tpu'"),
    (["bench", "--presets", "debug", "--device", "mps"], "runs on cpu or cuda"),
    *([(["bench", "--presets", "debug", "--device", "cuda"], "no CUDA")]
      if not torch.cuda.is_available() else []),
])
def test_cli_errors(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdreamer: error:") and message in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_cli_eval_env_mismatch_and_corrupt(tmp_path, capsys, debug_cfg, toy_spec):
    path = checkpoint.save(tmp_path / "ckpt", Agent(debug_cfg, toy_spec), steps=1)
    code, _, err = _cli(capsys, "eval", str(path), "--env", "atari:Pong", "--episodes", "1")
    assert code == 2 and "mismatch" in err and "Traceback" not in err
    (path / "manifest.json").write_text("{not json")
    code, _, err = _cli(capsys, "eval", str(path))
    assert code == 2 and "corrupt checkpoint" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "xdreamer", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--preset" in out.stdout and "--set" in out.stdout


def test_bench_writes_json(tmp_path, capsys):
    from xdreamer.bench import run_benchmark, summary
    from xdreamer.nets import cpu_has_native_bf16

    out = tmp_path / "bench.json"
    results = run_benchmark(["debug"], out, repeats=1, precisions=("float32", "bfloat16"), envs=("toy:catch",),
                            env_steps=300, report_episodes=0, profile=True)
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    native = cpu_has_native_bf16()  # bfloat16 without hardware support is measured, with a warning
    assert data["machine"]["cpu_native_bf16"] == native and data["machine"]["cpu_capability"]
    assert data["machine"]["device"] == "cpu" and data["presets"]["debug"]["float32"]["machine"]["device"] == "cpu"
    assert ("no native bfloat16" in capsys.readouterr().err) == (not native)
    for precision in ("float32", "bfloat16"):
        debug = data["presets"]["debug"][precision]
        assert debug["precision"] == precision
        for key in ("world_model_update_s", "behavior_update_s", "updates_per_s", "peak_rss_mb", "whatif_s",
                    "integrated_gradients_s", "update_gflop", "achieved_gflops", "matmul_peak_gflops",
                    "replay_sample_s", "eval_s", "record_s", "record_over_eval"):
            assert debug[key] > 0, key
        assert debug["minor_page_faults_per_update"] >= 0 and debug["kernel_cpu_s_per_update"] >= 0
        assert debug["percent_of_matmul_peak"] == pytest.approx(100 * debug["achieved_gflops"] / debug["matmul_peak_gflops"])
        assert debug["matmul_peak_gflops"] == max(debug["matmul_peak_gflops_samples"])  # measured twice, the best
        assert len(debug["matmul_peak_gflops_samples"]) == 2
        prof = debug["profile"]  # --profile: self time per operator category adds up to the profiled total
        assert sum(prof["category_s"].values()) == pytest.approx(prof["self_cpu_s"], rel=1e-3)
        assert prof["category_s"]["convolution"] > 0 and prof["category_s"]["matmul"] > 0
        assert prof["top_ops"] and prof["top_ops_by_shape"][0]["self_s"] <= prof["top_ops"][0]["self_s"] + 1e-9
    env = data["envs"]["toy:catch"]
    assert env["env_steps_per_s"] > 0 and 0 < env["replay_bytes_per_step"] < 4096
    table = summary(results).splitlines()  # what `xdreamer bench` prints
    rows = [line.split() for line in table if line.startswith("debug ")]
    assert [row[1] for row in rows] == ["float32", "bfloat16"]
    assert [float(row[2]) for row in rows] == [round(data["presets"]["debug"][p]["update_s"], 3)
                                               for p in ("float32", "bfloat16")]
    assert any(line.startswith("env toy:catch:") for line in table)


def test_interrupt_saves_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C during training writes a checkpoint at the current step before stopping."""
    from xdreamer.training import Trainer

    # checkpoint_every beyond steps: no scheduled checkpoint (0 is refused since #28)
    cfg = build_config(["debug"], {"env": "toy:catch", "steps": 10_000, "checkpoint_every": 100_000, "eval_every": 0,
                                    "video_every": 0})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    calls = {"n": 0}
    original = trainer.agent.train_step

    def interrupted(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(batch)

    monkeypatch.setattr(trainer.agent, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    agent = xdreamer.load(tmp_path / "run")
    assert agent.manifest["steps"] == trainer.step > cfg.prefill


_MALLOC_SCRIPT = """
import json, torch
from xdreamer.agent import Agent
from xdreamer.config import build_config
from xdreamer.envs import make
from xdreamer.training import configure_cpu
from conftest import random_batch
configure_cpu()
from xdreamer import training
spec = make("toy:catch").spec
torch.manual_seed(0)
agent = Agent(build_config(["debug"]), spec)
losses = [agent.train_step(random_batch(spec, 4, 16, seed=i)) for i in range(2)]
print(json.dumps({"kept": training._MALLOC_KEPT, "metrics": losses}))
"""


def test_keeping_freed_memory_does_not_change_results():
    """configure_cpu() turns glibc's mmap off (keep_freed_memory): same losses as malloc's defaults."""
    out = {}
    for mode in ("kept", "default"):
        env = {**os.environ, "XDREAMER_MALLOC": "" if mode == "kept" else "default",
               "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-c", _MALLOC_SCRIPT], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["kept"]["kept"] is (sys.platform.startswith("linux")) and out["default"]["kept"] is False
    assert out["kept"]["metrics"] == out["default"]["metrics"]
