"""Time the issue's PyTorch peer, sheeprl 0.8.4 ``dreamer_v2``, at the paper's Atari sizes on this machine.

Issue 7 states the peer's speed (0.091 updates/s, about 11 s per update) as measured on the machine class it was
filed on (Intel, AVX-512 + AMX). This script measures it on whatever machine runs it, with the same kind of
random replay-shaped batches ``xdreamer bench`` uses, so "twice the peer on this CPU" can be checked here.

sheeprl is not a dependency of xdreamer; install it in a separate environment that reuses this one's torch:

    python -m venv --system-site-packages /tmp/peer
    /tmp/peer/bin/pip install "sheeprl[atari]==0.8.4"
    /tmp/peer/bin/python docs/experiments/peer_sheeprl.py [WARMUP] [TIMED]     # default 3 warm-up, 5 timed

Sizes: sheeprl's ``exp=dreamer_v2`` (deter 600, 32x32 latents, CNN multiplier 48, 4x400 MLPs, ELU, horizon 15,
batch 16x50; its defaults follow the DreamerV2 paper), with the encoder and decoder on one grayscale 64x64 channel
as in the paper's Atari setup, the paper's discount predictor on (sheeprl's default has it off), and 6 actions
(Pong-shaped, like the agent ``xdreamer bench`` times). float32 (``32-true``), eager (sheeprl's
``algo.compile.enabled`` default is False), no metric aggregation (``metric.log_level=0``), one process on CPU.
Each timed update is sheeprl's own ``train`` on a fresh random batch; the target-critic copy every 100 updates
is not included (one copy of a small MLP).

Prints one JSON line: seconds per update (mean, min, each), updates/s and the machine.
"""
import json
import os
import platform
import sys
import time

import gymnasium as gym
import numpy as np
import sheeprl  # noqa: F401  (registers the algorithms)
import torch
from hydra import compose, initialize_config_module
from lightning.fabric import Fabric
from omegaconf import OmegaConf
from sheeprl.algos.dreamer_v2.agent import build_agent
from sheeprl.algos.dreamer_v2.dreamer_v2 import train
from sheeprl.algos.dreamer_v2.utils import build_optimizer
from sheeprl.utils.utils import dotdict

WARMUP = int(sys.argv[1]) if len(sys.argv) > 1 else 3
TIMED = int(sys.argv[2]) if len(sys.argv) > 2 else 5
T, B, ACTIONS = 50, 16, 6  # sequence length x batch (DreamerV2 Atari config); Pong-shaped as `xdreamer bench`

with initialize_config_module(version_base="1.3", config_module="sheeprl.configs"):
    cfg = compose(config_name="config", overrides=[
        "exp=dreamer_v2", "env=atari", "env.grayscale=True", "fabric.accelerator=cpu", "metric.log_level=0",
        "algo.cnn_keys.encoder=[rgb]", "algo.mlp_keys.encoder=[]", "model_manager.disabled=True",
        # the discount predictor of the paper's Atari config (`pred_discount: True`), off in sheeprl's defaults
        "algo.world_model.use_continues=True",
    ])
cfg = dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))
torch.distributions.Distribution.set_default_validate_args(cfg.distribution.validate_args)  # as sheeprl's CLI
torch.manual_seed(0)
fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")  # sheeprl's fabric=default on CPU
obs_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (1, 64, 64), np.uint8)})
world_model, actor, critic, target_critic, _ = build_agent(fabric, (ACTIONS,), False, cfg, obs_space)
optims = fabric.setup_optimizers(*(build_optimizer(cfg.algo[name].optimizer, model.parameters())
                                   for name, model in (("world_model", world_model), ("actor", actor),
                                                       ("critic", critic))))
rng = np.random.default_rng(0)


def batch() -> dict[str, torch.Tensor]:
    actions = np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, (T, B))]
    return {
        "rgb": torch.from_numpy(rng.integers(0, 256, (T, B, 1, 64, 64), dtype=np.uint8)).float(),
        "actions": torch.from_numpy(actions),
        "rewards": torch.from_numpy(rng.normal(size=(T, B, 1)).astype(np.float32)),
        "terminated": torch.zeros(T, B, 1),
        "truncated": torch.zeros(T, B, 1),
        "is_first": torch.zeros(T, B, 1),
    }


seconds = []
for i in range(WARMUP + TIMED):
    data = batch()
    start = time.perf_counter()
    train(fabric, world_model, actor, critic, target_critic, *optims, data, None, cfg, (ACTIONS,))
    if i >= WARMUP:
        seconds.append(time.perf_counter() - start)
    print(f"update {i}: {time.perf_counter() - start:.2f} s", file=sys.stderr)
mean = float(np.mean(seconds))
print(json.dumps({
    "peer": "sheeprl 0.8.4 dreamer_v2", "torch": torch.__version__, "threads": torch.get_num_threads(),
    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.processor() or platform.machine(),
    "cores": os.cpu_count(), "warmup": WARMUP, "timed": TIMED, "seconds_per_update": round(mean, 3),
    "min_seconds": round(min(seconds), 3), "each": [round(s, 2) for s in seconds],
    "updates_per_s": round(1.0 / mean, 4),
}))
