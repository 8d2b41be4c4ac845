"""Evaluation: run the actor's mode (or a random policy) for whole episodes with fixed seeds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .envs import Env, EnvSpec

EVAL_SEED_OFFSET = 1_000_000  # eval episodes use seeds disjoint from training episodes


@dataclass
class EvalResult:
    env: str
    policy: str
    seed: int
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "episodes": len(self.returns), "mean": self.mean, "std": self.std}


def random_action(spec: EnvSpec, rng: np.random.Generator):
    if spec.discrete:
        return int(rng.integers(spec.num_actions))
    return rng.uniform(-1, 1, spec.num_actions).astype(np.float32)


def episode_seed(seed: int, index: int) -> int:
    return int(seed) * 100_003 + int(index)


def evaluate(agent, env: Env, episodes: int, seed: int = 0, policy: str = "mode",
             progress: bool = False) -> EvalResult:
    """Run ``episodes`` episodes; ``policy`` is ``mode`` (actor's mode, as dreamerv2 eval),
    ``sample`` (the exploration policy) or ``random`` (uniform; ``agent`` may be None)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if policy not in ("mode", "sample", "random"):
        raise ValueError(f"unknown policy {policy!r}; use mode, sample or random")
    rng = np.random.default_rng(seed)
    result = EvalResult(env=env.spec.id, policy=policy, seed=seed)
    iterator = range(episodes)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"eval {env.spec.id}", unit="ep")
    for index in iterator:
        obs = env.reset(seed=EVAL_SEED_OFFSET + episode_seed(seed, index))
        state, total, length = None, 0.0, 0
        while True:
            if policy == "random":
                action = random_action(env.spec, rng)
            else:
                action, state = agent.act(obs, state, mode="eval" if policy == "mode" else "explore")
            obs = env.step(action)
            total += float(obs["reward"])
            length += 1
            if obs["is_last"]:
                break
        result.returns.append(total)
        result.lengths.append(length)
    return result
