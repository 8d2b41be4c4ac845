"""Rollouts in the real env: the random-policy data of stage 1, and controllers' returns in lockstep.

Random policy (paper §3: "a random policy" collects 10,000 rollouts): uniform over a discrete action set; for
continuous actions ctallec/world-models' Brownian motion (``utils/misc.py`` ``sample_continuous_policy``: the action
takes a Gaussian step of std sqrt(1/50) per step, clipped to its bounds), which drives a car further than
independent uniform actions would.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..envs import Env
from ..evaluation import episode_seed
from ..replay import EpisodeBuilder, Replay
from .controller import batched_act, env_action

BROWNIAN_DT = 1.0 / 50.0  # ctallec data/generation_script.py: dt 1/50


class RandomPolicy:
    """Uniform discrete actions, or a Brownian walk in [-1, 1]^A restarted at each episode."""

    def __init__(self, spec, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng
        self.last: np.ndarray | None = None

    def reset(self) -> None:
        self.last = None

    def __call__(self):
        if self.spec.discrete:
            return int(self.rng.integers(self.spec.num_actions))
        if self.last is None:
            self.last = self.rng.uniform(-1, 1, self.spec.num_actions)
        else:
            step = math.sqrt(BROWNIAN_DT) * self.rng.standard_normal(self.spec.num_actions)
            self.last = np.clip(self.last + step, -1.0, 1.0)
        return self.last.astype(np.float32)


def collect_random(env: Env, replay: Replay, episodes: int, seed: int, progress: bool = False, agent=None,
                   epsilon: float = 0.0) -> int:
    """Add random-policy episodes to ``replay`` (stored atomically, one file each) until it holds ``episodes``;
    episode i uses env seed ``episode_seed(seed, i)`` and its own action stream, so a resumed collection continues
    with the episodes a single run would have made. Returns the env steps taken now.

    With ``agent`` (the iterative procedure, paper §5: "rollout to actual environment" with the trained C) the agent
    acts (C's action; PPO's C samples), and with probability ``epsilon`` per step the random policy does instead;
    the agent's memory reads the action taken either way."""
    start = replay.total_episodes
    builder = EpisodeBuilder(env.spec.discrete, env.spec.num_actions)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, initial=start, desc="rollouts (" + ("the agent" if agent else "random policy") + ")",
                   unit="ep", dynamic_ncols=True)
    steps = 0
    try:
        for index in range(start, episodes):
            rng = np.random.default_rng([seed, index])
            policy = RandomPolicy(env.spec, rng)
            obs = env.reset(seed=episode_seed(seed, index))
            builder.add(obs, None)
            state = None
            while True:
                if agent is None:
                    action = policy()
                else:
                    action, state = _agent_step(agent, obs, state, policy if rng.random() < epsilon else None)
                obs = env.step(action)
                steps += 1
                episode = builder.add(obs, action)
                if episode is not None:
                    replay.add_episode(episode)
                    break
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return steps


@torch.no_grad()
def _agent_step(agent, obs, state, random_policy=None):
    """One acting step of a ``WorldModelsAgent`` whose action may be replaced by ``random_policy()``; M's memory
    reads the action taken. Returns the env action and the next state."""
    state = agent.reset_where(state or agent.initial_state(1),
                              torch.tensor([float(obs["is_first"])], device=agent.device))
    z = agent.encode(obs["image"][None])
    if random_policy is not None:
        action = random_policy()
        taken = torch.as_tensor(np.asarray(action)[None], device=agent.device)
    else:
        feat = agent.feat(z, state)
        if agent.critic is not None:  # PPO: its policy's sample
            taken = env_action(agent.spec.discrete, agent.controller.dist(feat).sample())
        else:
            taken = agent.controller.act(feat)
        action = int(taken[0]) if agent.spec.discrete else taken[0].cpu().numpy().astype(np.float32)
    return action, agent.advance(z, taken, state)


@torch.no_grad()
def lockstep_returns(agent, flat: torch.Tensor, envs: Sequence[Env], seeds: Sequence[int],
                     max_steps: int | None = None) -> np.ndarray:
    """The return of controller ``flat[i]`` (``Controller.get_flat`` layout, ``[N, P]``) in ``envs[i]`` reset
    with ``seeds[i]``, all N episodes stepped in lockstep with one batched V, C and M call per step (V's mean z,
    C deterministic). ``max_steps`` cuts episodes (their return so far). Returns float64 ``[N, 2]``: each
    episode's return and its length in env steps."""
    n = len(flat)
    assert len(envs) >= n and len(seeds) == n, (len(envs), len(seeds), n)
    obs = [envs[i].reset(seed=int(seeds[i])) for i in range(n)]
    state = agent.initial_state(n)
    totals, lengths, done, length = np.zeros(n), np.zeros(n), np.zeros(n, bool), 0
    flat = flat.to(agent.device)
    while not done.all():
        z = agent.encode(np.stack([o["image"] for o in obs]))
        action = batched_act(flat, agent.feat(z, state), agent.spec.num_actions, agent.spec.discrete)
        state = agent.advance(z, action, state)
        actions = action.cpu().numpy()
        length += 1
        for i in np.flatnonzero(~done):
            obs[i] = envs[i].step(int(actions[i]) if agent.spec.discrete else actions[i])
            totals[i] += obs[i]["reward"]
            lengths[i] += 1
            if obs[i]["is_last"] or (max_steps is not None and length >= max_steps):
                done[i] = True
    return np.stack([totals, lengths], 1)


def make_envs(factory: Callable[[], Env], count: int, pool: list[Env]) -> list[Env]:
    """``pool`` grown to at least ``count`` envs from ``factory`` (envs are reused across generations)."""
    while len(pool) < count:
        pool.append(factory())
    return pool
