"""Evaluation: run the actor's mode (or a random policy) for whole episodes with fixed seeds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .envs import Env, EnvSpec

EVAL_SEED_OFFSET = 1_000_000  # eval episodes use seeds disjoint from training episodes
PREFIX_STEPS = 2_000
LOCKSTEP = 10  # mode-policy episodes run side by side by default (evaluate's more_envs)


@dataclass
class EvalResult:
    env: str
    policy: str
    seed: int
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    # The return over each episode's first PREFIX_STEPS steps, so that a check can re-run a long
    # (e.g. 27,000-step stalled Atari) episode only that far (tests/test_bundled.py).
    prefix_steps: int = PREFIX_STEPS
    prefix_returns: list[float] = field(default_factory=list)

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
             progress: bool = False, more_envs: Sequence[Env] = (), max_steps: int | None = None) -> EvalResult:
    """Run ``episodes`` episodes; ``policy`` is ``mode`` (actor's mode, as dreamerv2 eval),
    ``sample`` (the exploration policy) or ``random`` (uniform; ``agent`` may be None).

    With ``more_envs`` (more instances of the same env), ``mode`` episodes run in lockstep, one
    batched network call per step for all of them: the same seeds and the same deterministic
    policy, so the same episodes up to float rounding of a batched matmul (which can flip an
    exactly tied action). ``random`` and ``sample`` always run one episode at a time, so that
    their random streams do not depend on the batching. ``max_steps`` cuts every episode after that
    many steps (its return is then the return so far)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if policy not in ("mode", "sample", "random"):
        raise ValueError(f"unknown policy {policy!r}; use mode, sample or random")
    # ``mode`` with ``eval_latent=sample`` (dreamerv2's released evaluation) draws the posterior: one episode at a
    # time, each from its own torch seed, so that its random stream does not depend on the batching either.
    sample_latent = policy == "mode" and getattr(agent.cfg, "eval_latent", "mode") == "sample"
    if more_envs and policy == "mode" and not sample_latent:
        return _evaluate_lockstep(agent, [env, *more_envs], episodes, seed, progress, max_steps)
    rng = np.random.default_rng(seed)
    result = EvalResult(env=env.spec.id, policy=policy, seed=seed)
    iterator = range(episodes)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"eval {env.spec.id}", unit="ep")
    for index in iterator:
        obs = env.reset(seed=EVAL_SEED_OFFSET + episode_seed(seed, index))
        state, total, length, prefix = None, 0.0, 0, 0.0
        with torch.random.fork_rng(devices=[]):  # the caller's (training's) random stream is left as it was
            torch.manual_seed(EVAL_SEED_OFFSET + episode_seed(seed, index))
            while True:
                if policy == "random":
                    action = random_action(env.spec, rng)
                else:
                    action, state = agent.act(obs, state, mode="eval" if policy == "mode" else "explore",
                                              sample_latent=True if sample_latent else None)
                obs = env.step(action)
                total += float(obs["reward"])
                length += 1
                if length <= PREFIX_STEPS:
                    prefix = total
                if obs["is_last"] or (max_steps is not None and length >= max_steps):
                    break
        result.prefix_returns.append(prefix)
        result.returns.append(total)
        result.lengths.append(length)
    return result


@contextlib.contextmanager
def lockstep_envs(factory: Callable[[], Env], episodes: int, lockstep: int = LOCKSTEP) -> Iterator[list[Env]]:
    """The extra env instances (``factory()``) for running ``episodes`` mode episodes ``lockstep`` at a
    time with ``evaluate(..., more_envs=...)``; closed on exit."""
    if lockstep < 1:
        raise ValueError(f"--lockstep must be at least 1, got {lockstep}")
    envs = [factory() for _ in range(min(lockstep, episodes) - 1)]
    try:
        yield envs
    finally:
        for env in envs:
            env.close()


def _evaluate_lockstep(agent, envs: Sequence[Env], episodes: int, seed: int, progress: bool,
                       max_steps: int | None = None) -> EvalResult:
    """``mode`` episodes ``len(envs)`` at a time; finished envs idle until their group is done."""
    result = EvalResult(env=envs[0].spec.id, policy="mode", seed=seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"eval {envs[0].spec.id} ({len(envs)} in lockstep)", unit="ep")
    for start in range(0, episodes, len(envs)):
        group = envs[:min(len(envs), episodes - start)]
        obs = [e.reset(seed=EVAL_SEED_OFFSET + episode_seed(seed, start + i)) for i, e in enumerate(group)]
        totals, lengths = [0.0] * len(group), [0] * len(group)
        prefix = [0.0] * len(group)
        done = [False] * len(group)
        state = None
        while not all(done):
            batch = {"image": np.stack([o["image"] for o in obs]),
                     "is_first": np.array([o["is_first"] for o in obs])}
            actions, state = agent.policy(batch, state, mode="eval")
            for i, e in enumerate(group):
                if done[i]:
                    continue
                obs[i] = e.step(actions[i])
                totals[i] += float(obs[i]["reward"])
                lengths[i] += 1
                if lengths[i] <= PREFIX_STEPS:
                    prefix[i] = totals[i]
                if obs[i]["is_last"] or (max_steps is not None and lengths[i] >= max_steps):
                    done[i] = True
                    if bar is not None:
                        bar.update(1)
        result.returns.extend(totals)
        result.lengths.extend(lengths)
        result.prefix_returns.extend(prefix)
    if bar is not None:
        bar.close()
    return result
