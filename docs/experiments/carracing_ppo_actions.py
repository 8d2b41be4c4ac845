"""How the bundled CarRacing PPO agent's mean action drives against its sampled actions (docs/worldmodels.md, "A PPO
controller on the same V and M").

    python docs/experiments/carracing_ppo_actions.py [EPISODE ...]

For each evaluation episode (the seeds of ``xdreamer eval --seed 0``; default 2 and 3, where the mean action scores
-29 and -18) it drives once with the policy's mean action (``mode="eval"``) and once with sampled actions
(``mode="explore"``, torch seed 0), and prints the return, the mean gas and brake (the env layer's linear map of
[-1, 1] onto [0, 1]), the mean |steering|, the road tiles reached (steps with a positive reward) and the first step
that starts 50 steps without a new tile (-1: none).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdreamer.evaluation import EVAL_SEED_OFFSET, episode_seed  # noqa: E402
from xdreamer.worldmodels.checkpoint import load  # noqa: E402
from xdreamer.worldmodels.envs import make_env  # noqa: E402


def main() -> None:
    episodes = [int(e) for e in sys.argv[1:]] or [2, 3]
    agent = load(ROOT / "checkpoints" / "worldmodels" / "carracing-ppo")
    env = make_env(agent.cfg, seed=agent.cfg.seed + 1)
    torch.manual_seed(0)
    for mode in ("eval", "explore"):
        for ep in episodes:
            obs, state, actions, rewards = env.reset(seed=EVAL_SEED_OFFSET + episode_seed(0, ep)), None, [], []
            for _ in range(1000):
                action, state = agent.act(obs, state, mode=mode)
                actions.append(np.asarray(action))
                obs = env.step(action)
                rewards.append(obs["reward"])
                if obs["is_last"]:
                    break
            a, r = np.array(actions), np.array(rewards)
            dry = np.convolve(r > 0, np.ones(50), "valid") == 0
            print(f"{'mean action' if mode == 'eval' else 'sampled'} episode {ep}: return {r.sum():.1f}, gas "
                  f"{((a[:, 1] + 1) / 2).mean():.2f}, brake {((a[:, 2] + 1) / 2).mean():.2f}, |steer| "
                  f"{np.abs(a[:, 0]).mean():.2f}, tiles {int((r > 0).sum())}, no new tile from step "
                  f"{int(np.argmax(dry)) if dry.any() else -1}")
    env.close()


if __name__ == "__main__":
    main()
