"""World Models (issue #30, xdreamer/worldmodels/): shapes and time alignment, the dream against a manual MDN-RNN
rollout, temperature, GAE, checkpoint round trip and hostile checkpoints, CMA-ES workers, the CarRacing view, the
CLI end to end (train, resume, bad input), and - marked slow - learning on a toy game: V reconstructs below the
mean-frame baseline, M's held-out NLL falls below the unconditional baseline, C beats random and the untrained C."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from xdreamer.checkpoint import CheckpointError
from xdreamer.config import ConfigError, build_config
from xdreamer.envs import make
from xdreamer.worldmodels import mdnrnn
from xdreamer.worldmodels.agent import WorldModelsAgent
from xdreamer.worldmodels.dream import DreamEnv, dream

DEBUG = ["worldmodels-debug"]
# A pipeline in seconds: every stage runs, nothing is expected to be learnt.
TINY = {"wm_rollouts": 4, "wm_vae_epochs": 1, "wm_vae_batch": 64, "wm_rnn_steps": 3, "wm_generations": 1,
        "wm_popsize": 4, "wm_cma_rollouts": 1, "eval_episodes": 1, "wm_ppo_iterations": 1, "wm_ppo_horizon": 32,
        "wm_ppo_envs": 2, "wm_ppo_epochs": 1, "wm_ppo_minibatch": 16}


def agent_for(env_id: str = "toy:catch", seed: int = 0, **overrides) -> WorldModelsAgent:
    """A debug-size agent with random (not zero) controller weights, so that C's actions depend on [z, h]."""
    cfg = build_config(DEBUG, {"env": env_id, **overrides})
    torch.manual_seed(seed)
    agent = WorldModelsAgent(cfg, make(env_id).spec)
    torch.nn.init.normal_(agent.controller.linear.weight, std=0.5)
    return agent


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xdreamer", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


# ---- config ----------------------------------------------------------------------------------------------------
def test_presets_pick_the_member_and_bad_values_are_one_line_errors():
    cfg = build_config(DEBUG)
    assert cfg.algo == "worldmodels" and cfg.wm_controller == "cmaes"
    paper = build_config(["worldmodels"])
    assert (paper.wm_z, paper.wm_rnn, paper.wm_mixtures, paper.wm_popsize, paper.wm_cma_rollouts) == (32, 256, 5, 64, 16)
    bad = (("wm_controller", "banana"), ("wm_temperature", "0"), ("wm_popsize", "1"), ("wm_rnn", "-3"))
    for key, value in bad:
        with pytest.raises(ConfigError, match=key):
            build_config(DEBUG, {key: value})


# ---- shapes and time alignment -----------------------------------------------------------------------------------
def test_shapes():
    agent = agent_for()
    frames = torch.randint(0, 256, (5, 1, 64, 64), dtype=torch.uint8)
    mean, logvar = agent.vae.encode(frames.float() / 255)
    assert mean.shape == logvar.shape == (5, agent.cfg.wm_z)
    assert agent.vae.decode(mean).shape == (5, 1, 64, 64)
    out, (h, c) = agent.mdn(torch.zeros(5, 7, agent.cfg.wm_z), torch.zeros(5, 7, 3))
    k = agent.cfg.wm_mixtures
    assert out.logpi.shape == out.mean.shape == out.logstd.shape == (5, 7, agent.cfg.wm_z, k)
    assert out.reward.shape == out.done_logit.shape == (5, 7) and h.shape == c.shape == (5, agent.cfg.wm_rnn)
    assert torch.allclose(out.logpi.exp().sum(-1), torch.ones(5, 7, agent.cfg.wm_z), atol=1e-5)
    loss, metrics = agent.mdn.loss(mdnrnn.windows([_episode(10, agent.cfg.wm_z)], 2, 4, np.random.default_rng(0)))
    assert torch.isfinite(loss) and set(metrics) == {"mdn/nll", "mdn/reward_mse", "mdn/done_bce"}


def _episode(steps: int, z: int = 16, actions: int = 3) -> dict[str, np.ndarray]:
    """An encoded episode whose step t has mean t (every dimension), action one-hot of t % 3, reward t and an end
    at the last step; log-variance -30 makes every sampled z its mean."""
    t = np.arange(steps, dtype=np.float32)
    return {"mean": np.repeat(t[:, None], z, 1), "logvar": np.full((steps, z), -30.0, np.float32),
            "action": np.eye(actions, dtype=np.float32)[np.arange(steps) % actions], "reward": t,
            "is_terminal": (np.arange(steps) == steps - 1).astype(np.float32)}


def test_windows_pair_z_t_with_the_action_taken_at_t_and_the_next_step():
    """The replay holds the action that led to o_t at step t, so M's input (z_t, a_t) reads action[t + 1] and its
    targets are z_{t+1}, reward[t + 1] and is_terminal[t + 1]; short episodes are padded and masked."""
    batch = mdnrnn.windows([_episode(6)], 3, 8, np.random.default_rng(0))
    z, nz = batch["z"][0, :, 0].round(decimals=4), batch["next_z"][0, :, 0].round(decimals=4)
    a = batch["action"][0].argmax(-1)
    assert batch["mask"][0].tolist() == [1] * 5 + [0] * 3
    assert z[:5].tolist() == [0, 1, 2, 3, 4] and nz[:5].tolist() == [1, 2, 3, 4, 5]
    assert a[:5].tolist() == [(t + 1) % 3 for t in range(5)]
    assert batch["reward"][0, :5].tolist() == [1, 2, 3, 4, 5] and batch["done"][0, :5].tolist() == [0, 0, 0, 0, 1]


# ---- temperature and the dream ------------------------------------------------------------------------------------
def test_temperature_sharpens_and_widens():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    out = mdnrnn.MDNOutput(torch.log_softmax(logits, -1).expand(20000, 1, 3), torch.tensor([0.0, 10.0, 20.0])
                           .expand(20000, 1, 3), torch.zeros(20000, 1, 3), torch.zeros(20000), torch.zeros(20000))
    gen = torch.Generator().manual_seed(0)
    cold = mdnrnn.sample(out, 0.01, gen)[:, 0]
    assert (cold.round() == 0).float().mean() > 0.999  # τ -> 0: the most likely component's mean
    hot = mdnrnn.sample(out, 2.0, gen)[:, 0]
    near = [(hot - m).abs().lt(4).float().mean().item() for m in (0.0, 10.0, 20.0)]
    expect = torch.softmax(logits / 2.0, -1)
    assert np.allclose(near, expect.numpy(), atol=0.02)  # logits / τ
    assert abs(float(hot[(hot - 10).abs() < 4].std()) - np.sqrt(2.0)) < 0.1  # std * sqrt(τ)


def test_dream_equals_a_manual_mdnrnn_rollout():
    agent = agent_for()
    z0 = torch.randn(4, agent.cfg.wm_z, generator=torch.Generator().manual_seed(1))
    result = dream(agent, z0, None, 2, temperature=1.3, horizon=6, generator=torch.Generator().manual_seed(7))
    gen, z, state = torch.Generator().manual_seed(7), z0, agent.mdn.initial(4)
    with torch.no_grad():
        for t in range(6):
            feat = torch.cat([z, state[0]], -1)
            action = torch.full((4,), 2) if t == 0 else agent.controller.linear(feat).argmax(-1)
            assert result.action[:, t].tolist() == action.tolist()
            assert np.allclose(result.h[:, t], state[0].numpy(), atol=1e-6)
            out, state = agent.mdn.step(z, torch.nn.functional.one_hot(action, 3).float(), state)
            assert np.allclose(result.reward[:, t], out.reward.numpy(), atol=1e-6)
            assert np.allclose(result.done_prob[:, t], torch.sigmoid(out.done_logit).numpy(), atol=1e-6)
            z = mdnrnn.sample(out, 1.3, gen)
            assert np.allclose(result.z[:, t + 1], z.numpy(), atol=1e-5)
    assert result.z.shape == (4, 7, agent.cfg.wm_z) and result.mixture.shape == (4, 6, agent.cfg.wm_z, 5)
    other = dream(agent, z0, None, 1, temperature=1.3, horizon=6, generator=torch.Generator().manual_seed(7))
    assert not np.allclose(other.z[:, 1], result.z[:, 1])  # the first action matters
    with pytest.raises(ValueError, match="first action"):
        dream(agent, z0, None, 3, horizon=2)
    with pytest.raises(ValueError, match="temperature"):
        dream(agent, z0, None, 0, temperature=0.0)


def test_dream_env_returns_sum_rewards_until_the_predicted_end():
    agent = agent_for()
    starts = np.zeros((3, 2, agent.cfg.wm_z), np.float32)
    env = DreamEnv(agent, starts, 1.0, max_steps=5, generator=torch.Generator().manual_seed(0))
    flat = agent.controller.get_flat()[None].repeat(2, 1)
    out = env.returns(flat)
    assert out.shape == (2, 2) and (out[:, 1] >= 1).all() and (out[:, 1] <= 5).all()


# ---- PPO's GAE ------------------------------------------------------------------------------------------------------
def test_gae_matches_the_recursion_and_stops_at_episode_ends():
    from xdreamer.worldmodels.ppo import gae

    rewards, values = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.5], [1.0], [1.5]])
    dones, last = torch.tensor([[False], [True], [False]]), torch.tensor([2.0])
    g, lam = 0.9, 0.8
    d2 = 3 + g * 2.0 - 1.5
    d1 = 2 - 1.0  # the episode ended after step 1: no bootstrap
    d0 = 1 + g * 1.0 - 0.5
    expect = [d0 + g * lam * d1, d1, d2]
    assert np.allclose(gae(rewards, values, dones, last, g, lam)[:, 0].numpy(), expect)


# ---- checkpoints ----------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_hostile_files(tmp_path):
    from xdreamer import checkpoint as shared
    from xdreamer.worldmodels.checkpoint import load, save

    agent = agent_for()
    path = save(tmp_path / "ckpt", agent, steps=10)
    loaded = load(path)
    assert loaded.manifest["algo"] == "worldmodels" and loaded.cfg == agent.cfg
    for key, value in agent.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    env = make("toy:catch", seed=3)
    obs, state_a, state_b = env.reset(seed=3), None, None
    for _ in range(20):
        action_a, state_a = agent.act(obs, state_a)
        action_b, state_b = loaded.act(obs, state_b)
        assert action_a == action_b
        obs = env.step(action_a)
    from xdreamer.worldmodels.analysis import WorldModelsView

    assert isinstance(shared.load(path), WorldModelsView)  # the shared loader gives the analysis view (#30)
    with pytest.raises(CheckpointError, match="World Models"):
        shared.load(path, trainer=True)  # but no Dreamer trainer state, in one line
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "algo": "dreamerv2"}))
    with pytest.raises(CheckpointError, match="not a World Models checkpoint"):
        load(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "wm_rnn": 10**7}))  # schema cap, before any allocation
    with pytest.raises(CheckpointError, match="wm_rnn"):
        load(path)
    (path / "config.json").write_text(json.dumps({**config, "wm_rnn": 128}))  # fits the schema, not the weights
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        load(path)
    (path / "config.json").write_text(json.dumps(config))
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load(path)


# ---- CMA-ES ----------------------------------------------------------------------------------------------------------
def test_cmaes_fitness_is_the_same_with_one_or_two_worker_processes():
    from xdreamer.worldmodels.cmaes import Evaluator

    agent = agent_for(wm_cma_rollouts=2)
    solutions = np.random.default_rng(0).normal(0, 0.5, (4, agent.controller.get_flat().numel()))
    one = Evaluator(agent, agent.cfg.replace(wm_workers=1), None)
    two = Evaluator(agent, agent.cfg.replace(wm_workers=2), None)
    try:
        a, b = one(solutions, 0), two(solutions, 0)
    finally:
        one.close(), two.close()
    assert np.allclose(a, b) and one.env_steps == two.env_steps > 0
    assert len(set(a.round(6))) > 1  # different controllers, different returns


def test_cmaes_steps_cut_each_candidates_rollout():
    from xdreamer.worldmodels.cmaes import Evaluator

    agent = agent_for(wm_cma_rollouts=2, wm_cma_steps=5, wm_workers=1)
    solutions = np.random.default_rng(0).normal(0, 0.5, (3, agent.controller.get_flat().numel()))
    evaluate = Evaluator(agent, agent.cfg, None)
    try:
        evaluate(solutions, 0)
    finally:
        evaluate.close()
    assert evaluate.env_steps == 3 * 2 * 5  # toy:catch's episodes are far longer than 5 steps


# ---- CarRacing's World Models view ---------------------------------------------------------------------------------
def test_carracing_is_cropped_to_64x64_and_still_branches():
    import cv2

    from xdreamer.worldmodels.envs import make_env

    cfg = build_config(DEBUG, {"env": "gym:CarRacing-v3"})
    env, native = make_env(cfg, seed=0), make("gym:CarRacing-v3", seed=0, size=96)
    try:
        assert env.spec.obs_shape == (3, 64, 64)
        obs, raw = env.reset(seed=5), native.reset(seed=5)
        for _ in range(3):
            obs, raw = env.step(np.array([0.1, 0.5, -1.0])), native.step(np.array([0.1, 0.5, -1.0]))
        expect = cv2.resize(raw["image"].transpose(1, 2, 0)[:84], (64, 64), interpolation=cv2.INTER_AREA)
        assert np.array_equal(obs["image"], expect.transpose(2, 0, 1))
        state = env.get_state()
        later = env.step(np.array([0.0, 1.0, -1.0]))
        env.set_state(state)
        assert np.array_equal(env.step(np.array([0.0, 1.0, -1.0]))["image"], later["image"])
    finally:
        env.close(), native.close()


def test_the_shared_env_factory_gives_world_models_agents_their_cropped_view():
    """`xdreamer.training.make_env` (what `xdreamer bundle`, `eval` and the bundle tests build an agent's env with)
    gives a World Models CarRacing agent the frames it was trained on; a Dreamer agent keeps the whole frame."""
    from xdreamer.training import make_env as shared_make_env
    from xdreamer.worldmodels.envs import make_env

    cfg = build_config(DEBUG, {"env": "gym:CarRacing-v3"})
    envs = [make_env(cfg, seed=0), shared_make_env(cfg, seed=0), shared_make_env(cfg.replace(algo="dreamerv2"), seed=0)]
    try:
        frames = [env.reset(seed=3)["image"] for env in envs]
        frames = [env.step(np.array([0.2, 0.8, 0.0]))["image"] for env in envs]
    finally:
        for env in envs:
            env.close()
    assert np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[2])


# ---- the CLI ---------------------------------------------------------------------------------------------------
def _sets(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``xdreamer ARGS`` in this process (faster than a subprocess): exit status, stdout, stderr."""
    from xdreamer.cli import main

    capsys.readouterr()
    status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_trains_resumes_and_loads(tmp_path, capsys):
    from xdreamer.worldmodels.checkpoint import load

    run = tmp_path / "run"
    proc = run_cli("train", "--preset", "worldmodels-debug", "--env", "toy:catch", "--logdir", str(run),
                   "--no-progress", "--set", *_sets(TINY))  # the real entry point, once
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint:" in proc.stdout
    agent = load(run)
    assert agent.manifest["algo"] == "worldmodels" and agent.manifest["eval"]["episodes"] == 1
    assert "eval_random" in agent.manifest and agent.manifest["steps"] > 0
    status = json.loads((run / "stages" / "status.json").read_text())
    assert all(status[k]["done"] for k in ("rollouts", "vae", "mdnrnn", "controller"))
    vae_time = (run / "stages" / "vae.safetensors").stat().st_mtime_ns
    code, _, err = cli(capsys, "train", "--preset", "worldmodels-debug", "--logdir", str(run), "--no-progress")
    assert code == 2 and "already holds a run" in err and len(err.splitlines()) == 1
    code, _, err = cli(capsys, "train", "--resume", "--logdir", str(run), "--no-progress", "--set", "wm_generations=2")
    assert code == 0, err
    status = json.loads((run / "stages" / "status.json").read_text())
    assert status["controller"]["progress"]["generation"] == 2 and len(status["controller"]["progress"]["history"]) == 2
    assert (run / "stages" / "vae.safetensors").stat().st_mtime_ns == vae_time  # V was not retrained
    code, _, err = cli(capsys, "train", "--resume", "--logdir", str(run), "--no-progress", "--set", "wm_z=8")
    assert code == 2 and "cannot change wm_z" in err and len(err.splitlines()) == 1


def test_cli_ppo_in_the_dream(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--preset", "worldmodels-debug", "--controller", "ppo", "--logdir", str(run),
                       "--no-progress", "--set", *_sets(TINY), "wm_dream=true", "wm_temperature=1.15")
    assert code == 0, err
    status = json.loads((run / "stages" / "status.json").read_text())
    assert status["controller"]["controller"] == "ppo" and status["controller"]["dream"] is True
    assert np.isfinite(status["controller"]["progress"]["history"][0]["ppo/policy_loss"])


@pytest.mark.parametrize("args, message", [
    (["--preset", "worldmodels-debug", "--set", "wm_popsize=1"], "wm_popsize=1 must be in 2.."),
    (["--preset", "debug", "--controller", "ppo"], "--controller trains World Models"),
    (["--preset", "worldmodels-debug", "--env", "toy:nope"], "toy:nope"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    code, _, err = cli(capsys, "train", *args, "--logdir", str(tmp_path / "run"), "--no-progress")
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_train_help_names_the_member(capsys):
    from xdreamer.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "worldmodels" in out and "--controller" in out


# ---- learning on a toy game ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_each_stage_learns_on_the_toy_game(tmp_path):
    """The debug preset on toy:catch-lanes, stage by stage: V reconstructs frames with under 60 % of the mean
    frame's squared error, M's held-out NLL per z dimension is at least 0.1 nats below a Gaussian fitted to the
    marginal of z, and C (CMA-ES, population 8 x 4 rollouts, 10 generations) beats the random policy by at least
    0.5 and controllers with random weights by at least 0.25 (mean return over 20 episodes, the same seeds).
    Measured: V 0.0046 vs 0.0104, M 1.07 vs 1.41, C -1.1 vs random policy -2.4.

    What C can learn here is bounded by what V sees: at this budget V draws the paddle, not the 4x4 ball (its pixels'
    error stays near 1), so the best C is the ball-blind one that holds the paddle under the middle lane (-1.67
    expected; the untrained zero controller starts there, a random-weight controller drives to a wall)."""
    from xdreamer.evaluation import evaluate
    from xdreamer.worldmodels.train import WorldModelsRun

    cfg = build_config(DEBUG, {"env": "toy:catch-lanes", "wm_generations": 10, "wm_cma_rollouts": 4,
                               "eval_episodes": 20})
    run = WorldModelsRun(cfg, tmp_path / "run", progress=False)
    run.collect()
    run.fit_vae()
    vae = run.status["vae"]
    assert vae["recon_mse"] < 0.6 * vae["mean_frame_mse"], vae
    run.fit_mdnrnn()
    m = run.status["mdnrnn"]
    assert m["heldout_nll"] < m["marginal_nll"] - 0.1, m
    run.fit_controller()
    result = run.finish()
    manifest = json.loads((result.checkpoint / "manifest.json").read_text())
    trained, random_policy = manifest["eval"]["mean"], manifest["eval_random"]["mean"]
    agent, env = run.agent, make(cfg.env, seed=cfg.seed + 1)
    weights = agent.controller.get_flat()
    scores = []
    for seed in range(5):  # controllers with random weights (N(0, 1); with argmax only their direction matters)
        agent.controller.set_flat(torch.randn(weights.shape, generator=torch.Generator().manual_seed(seed)))
        scores.append(evaluate(agent, env, 20, seed=cfg.seed).mean)
    agent.controller.set_flat(weights)
    assert trained >= random_policy + 0.5 and trained >= np.mean(scores) + 0.25, (trained, random_policy, scores)


def test_bundled_toy_agent_reproduces_its_manifest():
    """checkpoints/worldmodels/catch-lanes (checkpoints/README.md) loads and replays its first 3 evaluation episodes
    exactly (a folder one level down, so that the Dreamer bundle tests, which load every checkpoints/*/, skip it)."""
    from xdreamer.evaluation import evaluate
    from xdreamer.worldmodels.checkpoint import load
    from xdreamer.worldmodels.envs import make_env

    folder = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "worldmodels" / "catch-lanes"
    agent = load(folder)
    manifest = agent.manifest
    assert manifest["eval"]["mean"] > manifest["eval_random"]["mean"] + 0.5
    result = evaluate(agent, make_env(agent.cfg, seed=agent.cfg.seed + 1), 3, seed=manifest["eval"]["seed"])
    assert result.returns == manifest["eval"]["returns"][:3]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2 << 20


def test_bundled_carracing_agent_loads_and_drives():
    """checkpoints/worldmodels/carracing (checkpoints/README.md, docs/worldmodels.md "CarRacing") loads, sees
    CarRacing's frame through its V (reconstruction below the mean frame's error the manifest records) and acts:
    a few steps of its first evaluation episode, actions in [-1, 1]^3 and the same on a replay (V's mean z and a
    deterministic C). A few steps only: a whole episode is 1,000."""
    from xdreamer.evaluation import EVAL_SEED_OFFSET, episode_seed
    from xdreamer.worldmodels.checkpoint import load
    from xdreamer.worldmodels.envs import make_env
    from xdreamer.worldmodels.vae import reconstruction_error

    folder = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "worldmodels" / "carracing"
    agent = load(folder)
    manifest = agent.manifest
    assert agent.cfg.env == "gym:CarRacing-v3" and manifest["eval"]["episodes"] == 20
    assert sum(f.stat().st_size for f in folder.iterdir()) < 8 << 20
    env = make_env(agent.cfg, seed=agent.cfg.seed + 1)
    runs = []
    try:
        for _ in range(2):
            obs, state, actions = env.reset(seed=EVAL_SEED_OFFSET + episode_seed(manifest["eval"]["seed"], 0)), None, []
            frames = [obs["image"]]
            for _ in range(8):
                action, state = agent.act(obs, state)
                actions.append(action)
                obs = env.step(action)
                frames.append(obs["image"])
            runs.append(np.stack(actions))
    finally:
        env.close()
    assert runs[0].shape == (8, 3) and np.isfinite(runs[0]).all() and np.abs(runs[0]).max() <= 1.0
    assert np.array_equal(runs[0], runs[1])
    assert reconstruction_error(agent.vae, np.stack(frames)) < manifest["stages"]["vae"]["mean_frame_mse"]
