"""``xdreamer bench``: update speed per preset, env speed, replay bytes per step, peak RSS.

Each preset is measured in its own subprocess so that its peak RSS is its own. Updates run on
random replay-shaped batches of the preset's size (batch x length, 64x64 grayscale, Pong's 6
actions); the first update is a warm-up and is not timed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np


def _machine() -> dict[str, Any]:
    import torch

    return {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def bench_preset(preset: str, repeats: int) -> dict[str, Any]:
    import torch

    from .agent import Agent
    from .config import build_config
    from .envs import EnvSpec

    from .training import configure_cpu

    configure_cpu()
    cfg = build_config([preset])
    spec = EnvSpec(id="atari:Pong", obs_shape=(1, 64, 64), discrete=True, num_actions=6,
                   action_names=("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
                   object_names=(), can_branch=True, max_steps=cfg.time_limit)
    torch.manual_seed(0)
    agent = Agent(cfg, spec, device="cpu")
    rng = np.random.default_rng(0)
    B, T = cfg.batch, cfg.length

    def batch():
        is_first = np.zeros((B, T), bool)
        is_first[:, 0] = True
        return {"image": rng.integers(0, 256, (B, T, 1, 64, 64), dtype=np.uint8),
                "action": rng.integers(0, 6, (B, T)).astype(np.int32),
                "reward": rng.normal(size=(B, T)).astype(np.float32),
                "is_first": is_first, "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)}

    agent.train_step(batch())  # warm-up
    model_s, behavior_s, total_s = [], [], []
    for _ in range(repeats):
        data = batch()
        start = time.perf_counter()
        agent.train_step(data)
        total_s.append(time.perf_counter() - start)
        model_s.append(agent.last_timings["model_s"])
        behavior_s.append(agent.last_timings["behavior_s"])
    params = sum(p.numel() for p in agent.parameters())
    analysis = bench_analysis(agent, repeats)
    return {"preset": preset, "batch": B, "length": T, "horizon": cfg.horizon, "parameters": params,
            "repeats": repeats, "world_model_update_s": float(np.mean(model_s)),
            "behavior_update_s": float(np.mean(behavior_s)), "update_s": float(np.mean(total_s)),
            "updates_per_s": float(1.0 / np.mean(total_s)),
            **analysis, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_analysis(agent, repeats: int, actions: int = 18, horizon: int = 15) -> dict[str, float]:
    """Analysis hot paths on ``agent``'s world model: a what-if for ``actions`` first actions x
    ``horizon`` steps with decoding (one batched ``imagine``), and pixel IntegratedGradients (32
    steps) for one frame. Atari's full action set has 18 actions; the agent's own action count is
    used for the one-hot inputs, repeated up to ``actions`` rows."""
    import torch

    from .explain.dreams import dream
    from .explain.saliency import saliency

    agent.eval()
    n = agent.spec.num_actions
    start = agent.wm.rssm.initial(1).map(lambda x: x.expand(actions, *x.shape[1:]).contiguous())
    prefix = torch.nn.functional.one_hot(torch.arange(actions) % n, n).float()[:, None]
    frame = np.random.default_rng(0).integers(0, 256, agent.spec.obs_shape, dtype=np.uint8)

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.mean(times))

    return {"whatif_s": timed(lambda: dream(agent, start, horizon, prefix=prefix, decode=True)),
            "whatif_actions": actions, "whatif_horizon": horizon,
            "integrated_gradients_s": timed(lambda: saliency(agent, frame, None, None,
                                                            method="integrated_gradients"))}


def bench_env(env_id: str, steps: int) -> dict[str, Any]:
    from .envs import make
    from .evaluation import random_action
    from .replay import EpisodeBuilder, Replay

    env = make(env_id, seed=0)
    rng = np.random.default_rng(0)
    builder = EpisodeBuilder(env.spec.discrete, env.spec.num_actions)
    with tempfile.TemporaryDirectory() as tmp:
        replay = Replay(tmp, capacity=10**7)
        obs = env.reset(seed=0)
        builder.add(obs, None)
        start = time.perf_counter()
        for i in range(steps):
            action = random_action(env.spec, rng)
            obs = env.step(action)
            episode = builder.add(obs, action)
            if obs["is_last"]:
                if episode is not None:
                    replay.add_episode(episode)
                obs = env.reset(seed=i)
                builder.add(obs, None)
        elapsed = time.perf_counter() - start
        if builder.steps:  # store the partial episode too, for the bytes-per-step figure
            replay.add_episode(builder.stacked())
        stored = replay.stored_bytes() / max(replay.total_steps, 1)
        sample_start = time.perf_counter()
        for _ in range(10):
            replay.sample(16, 50)
        sample_s = (time.perf_counter() - sample_start) / 10
    env.close()
    return {"env": env_id, "steps": steps, "env_steps_per_s": steps / elapsed,
            "replay_bytes_per_step": stored, "replay_sample_16x50_s": sample_s}


def run_benchmark(presets: list[str], out: str | os.PathLike, repeats: int = 3,
                  envs: tuple[str, ...] = ("toy:catch", "atari:Pong"), env_steps: int = 2000,
                  report_episodes: int = 10) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": _machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "presets": {}, "envs": {}}
    for preset in presets:
        print(f"bench: preset {preset} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, "-m", "xdreamer.bench", "preset", preset, str(repeats)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark of preset {preset} failed:\n{proc.stderr[-2000:]}")
        results["presets"][preset] = json.loads(proc.stdout.strip().splitlines()[-1])
    for env_id in envs:
        print(f"bench: env {env_id} ...", file=sys.stderr, flush=True)
        results["envs"][env_id] = bench_env(env_id, env_steps)
    if report_episodes:  # `xdreamer report` over a fresh small-preset toy:catch agent x report_episodes episodes
        from .report import bench_report

        print("bench: report ...", file=sys.stderr, flush=True)
        results["report"] = bench_report(episodes=report_episodes)
        results["report_s"] = results["report"]["report_s"]
    from .checkpoint import atomic_write_text

    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "preset":
        print(json.dumps(bench_preset(sys.argv[2], int(sys.argv[3]))))
    else:
        sys.exit("usage: python -m xdreamer.bench preset NAME REPEATS (use `xdreamer bench`)")
