"""``xdreamer bench --presets worldmodels worldmodels-cpu``: World Models' rows, V, M and C update speed per preset
and CarRacing env steps/s (the default presets are Dreamer's and do not run these).

Per preset (``worldmodels`` = the paper's sizes, ``worldmodels-cpu``, ...) on random data of the preset's shapes
(64x64 RGB frames, CarRacing's 3 continuous actions): one V update (batch ``wm_vae_batch``), one M update
(``wm_rnn_batch`` x ``wm_rnn_seq``), one PPO update (``wm_ppo_epochs`` epochs over ``wm_ppo_horizon`` steps), one
CMA-ES ask/tell of the population, and one step of ``wm_popsize x wm_cma_rollouts`` dreams (M, the temperature
sample and C for every candidate's rollouts: a dream generation costs this times the episode length). The first
call of each is a warm-up. ``python -m xdreamer.worldmodels.bench [PRESET ...]`` prints the JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # torch loads inside the functions, after ``share_cpu`` (see ``__main__``)
    import torch


def _best_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _adam_step(module: torch.nn.Module, lr: float, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One Adam update of ``module`` on ``loss_fn()`` per call (what V's and M's training loops do per batch)."""
    import torch

    opt = torch.optim.Adam(module.parameters(), lr=lr)

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def bench_updates(preset: str, repeats: int = 3) -> dict[str, Any]:
    """Seconds per V, M, PPO and CMA-ES update and per dream step at ``preset``'s sizes (CarRacing's spec)."""
    import cma
    import torch

    from ..config import build_config
    from ..envs import EnvSpec
    from .agent import WorldModelsAgent
    from .dream import DreamEnv
    from .mdnrnn import windows
    from .ppo import ppo_update

    cfg = build_config(preset.split("+"), {"device": "cpu", "wm_controller": "ppo"})
    spec = EnvSpec("gym:CarRacing-v3", (3, 64, 64), False, 3, max_steps=1000)
    torch.manual_seed(0)
    agent = WorldModelsAgent(cfg, spec, device="cpu")
    rng = np.random.default_rng(0)
    frames = torch.rand(cfg.wm_vae_batch, 3, 64, 64)
    vae_step = _adam_step(agent.vae, cfg.wm_vae_lr, lambda: agent.vae.loss(frames)[0])

    steps = cfg.wm_rnn_seq + 1
    series = [{"mean": rng.standard_normal((steps, cfg.wm_z)).astype(np.float32),
               "logvar": np.full((steps, cfg.wm_z), -2.0, np.float32),
               "action": rng.uniform(-1, 1, (steps, 3)).astype(np.float32),
               "reward": rng.standard_normal(steps).astype(np.float32), "is_terminal": np.zeros(steps, np.float32)}]
    batch = windows(series, cfg.wm_rnn_batch, cfg.wm_rnn_seq, rng)
    mdn_step = _adam_step(agent.mdn, cfg.wm_rnn_lr, lambda: agent.mdn.loss(batch)[0])

    n = cfg.wm_ppo_horizon
    ppo_data = {"feat": torch.randn(n, agent.feat_dim), "raw": torch.randn(n, 3), "logp": torch.full((n,), -3.0),
                "adv": torch.randn(n), "ret": torch.randn(n)}
    ppo_opt = torch.optim.Adam([*agent.controller.parameters(), *agent.critic.parameters()], lr=cfg.wm_ppo_lr)
    params = agent.controller.get_flat().numel()
    es = cma.CMAEvolutionStrategy(np.zeros(params), cfg.wm_cma_sigma, {"popsize": cfg.wm_popsize, "verbose": -9})

    def cma_step():
        solutions = es.ask()
        es.tell(solutions, list(rng.standard_normal(len(solutions))))

    rows = cfg.wm_popsize * cfg.wm_cma_rollouts
    dream_env = DreamEnv(agent, np.zeros((4, 2, cfg.wm_z), np.float32), cfg.wm_temperature, 10**9,
                         torch.Generator().manual_seed(0))
    flat = torch.randn(rows, params) * 0.1
    dream_env.reset(rows)

    def dream_step():
        from .controller import batched_act

        action = batched_act(flat, agent.feat(dream_env.z, dream_env.state), 3, False)
        dream_env.step(action)

    with torch.no_grad():
        frame = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
        act_s = _best_s(lambda: agent.policy({"image": frame.numpy(), "is_first": np.array([False])}), repeats)
    return {"preset": preset, "torch_threads": torch.get_num_threads(),
            "vae_batch": cfg.wm_vae_batch, "vae_update_s": _best_s(vae_step, repeats),
            "rnn_batch": f"{cfg.wm_rnn_batch}x{cfg.wm_rnn_seq}", "mdnrnn_update_s": _best_s(mdn_step, repeats),
            "ppo_update_s": _best_s(lambda: ppo_update(agent, ppo_opt, ppo_data, cfg, rng), repeats),
            "ppo_steps": n, "cmaes_ask_tell_s": _best_s(cma_step, repeats), "controller_params": params,
            "dream_rows": rows, "dream_step_s": _best_s(dream_step, repeats), "act_step_s": act_s}


def bench_carracing(steps: int = 300) -> dict[str, Any]:
    """CarRacing-v3 steps/s through World Models' view (the env layer, crop, 64x64) under Brownian random actions,
    and with a paper-size agent acting (V, C and M per step)."""
    from ..config import build_config
    from .agent import WorldModelsAgent
    from .envs import make_env
    from .rollouts import RandomPolicy

    cfg = build_config(["worldmodels"], {"env": "gym:CarRacing-v3", "device": "cpu"})
    out: dict[str, Any] = {"env": cfg.env, "steps": steps}
    env = make_env(cfg, seed=0)
    agent = WorldModelsAgent(cfg, env.spec, device="cpu")
    for name, acting in (("env_steps_per_s", False), ("agent_steps_per_s", True)):
        policy, state = RandomPolicy(env.spec, np.random.default_rng(0)), None
        obs = env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(steps):
            if acting:
                action, state = agent.act(obs, state)
            else:
                action = policy()
            obs = env.step(action)
            if obs["is_last"]:
                obs = env.reset()
        out[name] = steps / (time.perf_counter() - start)
    env.close()
    return out


def run(presets: tuple[str, ...] = ("worldmodels", "worldmodels-cpu"), repeats: int = 3,
        carracing_steps: int = 300) -> dict[str, Any]:
    """Every preset's update timings (a preset may be several joined by ``+``) and CarRacing's steps/s."""
    return {"updates": {p: bench_updates(p, repeats) for p in presets},
            "carracing": bench_carracing(carracing_steps)}


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for preset, r in results["updates"].items():
        lines.append(f"worldmodels {preset}: V {r['vae_update_s']:.3f} s (batch {r['vae_batch']}), M "
                     f"{r['mdnrnn_update_s']:.3f} s ({r['rnn_batch']}), PPO {r['ppo_update_s']:.3f} s "
                     f"({r['ppo_steps']} steps), CMA-ES ask/tell {r['cmaes_ask_tell_s']:.4f} s, dream step "
                     f"{r['dream_step_s']:.4f} s ({r['dream_rows']} rows)")
    c = results["carracing"]
    lines.append(f"env {c['env']} (World Models view): {c['env_steps_per_s']:.0f} steps/s, "
                 f"{c['agent_steps_per_s']:.0f} with a paper-size agent acting")
    return lines


if __name__ == "__main__":
    from ..threads import share_cpu

    share_cpu()  # OpenMP's passive wait before torch loads, as the CLI does (#31): spinning threads on a shared
    # machine made a single acting step 0.0018 or 0.15 s at random here
    presets = tuple(sys.argv[1:]) or ("worldmodels", "worldmodels-cpu")
    print(json.dumps(run(presets), indent=2))
