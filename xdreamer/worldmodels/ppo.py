"""C by PPO (Schulman et al. 2017, arXiv:1707.06347): the clipped surrogate objective with GAE(λ) advantages,
on the [z, h] features of V and M, in the real env or in M's dream (issue #30's PPO variant of World Models).

Hyperparameters: Table 3 of the paper (the MuJoCo setting; ``settings.py``). The policy keeps the paper's linear C
(``controller.py``) and adds a separate critic. Per iteration: ``wm_ppo_horizon`` steps over ``wm_ppo_envs`` envs in
lockstep, then ``wm_ppo_epochs`` epochs of minibatches of ``wm_ppo_minibatch``; advantages normalised per minibatch
and the gradient norm clipped to 0.5, as cleanrl's ``ppo_continuous_action.py``. An episode's end, terminal or
truncated, stops the bootstrap (a truncation is treated as an end: a simplification). A resumed run continues from
the saved weights and iteration with fresh Adam moments.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..evaluation import episode_seed
from .controller import env_action

MAX_GRAD_NORM = 0.5  # cleanrl ppo_continuous_action.py max_grad_norm 0.5


class RealVecEnv:
    """``count`` real envs in lockstep seen through V and M (same interface as ``dream.DreamEnv``)."""

    def __init__(self, agent, envs: list, seed: int) -> None:
        self.agent, self.envs, self.seed, self.episodes = agent, envs, seed, 0
        self.env_steps = 0
        self.finished: list[float] = []  # returns of the episodes that ended since the last ``take_finished``

    def _reset_env(self, i: int) -> dict:
        self.episodes += 1
        self.returns[i] = 0.0
        return self.envs[i].reset(seed=episode_seed(self.seed, self.episodes))

    @torch.no_grad()
    def reset(self, n: int) -> torch.Tensor:
        assert n == len(self.envs), (n, len(self.envs))
        self.returns = np.zeros(n)
        self.obs = [self._reset_env(i) for i in range(n)]
        self.state = self.agent.initial_state(n)
        self.z = self.agent.encode(np.stack([o["image"] for o in self.obs]))
        return self.agent.feat(self.z, self.state)

    @torch.no_grad()
    def step(self, action: torch.Tensor, auto_reset: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        agent = self.agent
        self.state = agent.advance(self.z, action, self.state)
        actions = action.cpu().numpy()
        rewards, done = np.zeros(len(self.envs), np.float32), np.zeros(len(self.envs), bool)
        self.env_steps += len(self.envs)
        for i, env in enumerate(self.envs):
            obs = env.step(int(actions[i]) if agent.spec.discrete else actions[i])
            rewards[i], done[i] = obs["reward"], obs["is_last"]
            self.returns[i] += obs["reward"]
            if done[i]:
                self.finished.append(float(self.returns[i]))
                obs = self._reset_env(i)
            self.obs[i] = obs
        self.state = agent.reset_where(self.state, torch.as_tensor(done, device=agent.device))
        self.z = agent.encode(np.stack([o["image"] for o in self.obs]))
        return (agent.feat(self.z, self.state), torch.as_tensor(rewards, device=agent.device),
                torch.as_tensor(done, device=agent.device))

    def take_finished(self) -> list[float]:
        out, self.finished = self.finished, []
        return out


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> torch.Tensor:
    """GAE(λ) advantages ``[T, N]`` (Schulman et al. 2016, eq. 16) for rewards, values and dones ``[T, N]`` (done
    at t: the episode ended after step t, so no bootstrap from t + 1) and the value after the last step ``[N]``."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(len(rewards))):
        next_value = last_value if t == len(rewards) - 1 else values[t + 1]
        live = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * next_value * live - values[t]
        running = delta + gamma * lam * live * running
        advantages[t] = running
    return advantages


def ppo_update(agent, opt: torch.optim.Optimizer, data: dict[str, torch.Tensor], cfg,
               rng: np.random.Generator) -> dict[str, float]:
    """``wm_ppo_epochs`` epochs of clipped-objective minibatch steps on a flattened rollout (``feat``, ``raw``
    actions, ``logp``, ``adv``, ``ret``); returns the last epoch's mean losses."""
    controller, critic = agent.controller, agent.critic
    params = [*controller.parameters(), *critic.parameters()]
    count = len(data["feat"])
    for _ in range(cfg.wm_ppo_epochs):
        sums = {"ppo/policy_loss": 0.0, "ppo/value_loss": 0.0, "ppo/entropy": 0.0, "ppo/clip_frac": 0.0}
        order = torch.as_tensor(rng.permutation(count))
        steps = 0
        for start in range(0, count, cfg.wm_ppo_minibatch):
            index = order[start:start + cfg.wm_ppo_minibatch]
            feat, raw, old_logp = data["feat"][index], data["raw"][index], data["logp"][index]
            adv = data["adv"][index]
            adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
            dist = controller.dist(feat)
            logp = _log_prob(dist, raw, agent.spec.discrete)
            ratio = torch.exp(logp - old_logp)
            policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - cfg.wm_ppo_clip, 1 + cfg.wm_ppo_clip) * adv).mean()
            value_loss = 0.5 * (critic(feat) - data["ret"][index]).pow(2).mean()
            entropy = _entropy(dist, agent.spec.discrete).mean()
            loss = policy_loss + cfg.wm_ppo_vf * value_loss - cfg.wm_ppo_ent * entropy
            if not torch.isfinite(loss):
                raise FloatingPointError(f"PPO loss is not finite ({float(loss)}); lower wm_ppo_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            opt.step()
            for key, value in (("ppo/policy_loss", policy_loss), ("ppo/value_loss", value_loss),
                               ("ppo/entropy", entropy),
                               ("ppo/clip_frac", ((ratio - 1).abs() > cfg.wm_ppo_clip).float().mean())):
                sums[key] += float(value.detach())
            steps += 1
    return {k: v / max(steps, 1) for k, v in sums.items()}


def _log_prob(dist, raw: torch.Tensor, discrete: bool) -> torch.Tensor:
    logp = dist.log_prob(raw)
    return logp if discrete else logp.sum(-1)


def _entropy(dist, discrete: bool) -> torch.Tensor:
    entropy = dist.entropy()
    return entropy if discrete else entropy.sum(-1)


def train_ppo(agent, cfg, vec_env, resume: dict[str, Any] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """``cfg.wm_ppo_iterations`` PPO iterations of C (and its critic) in ``vec_env`` (``RealVecEnv`` or
    ``dream.DreamEnv``); after each, ``save(progress)``. Returns the progress record (``iteration``,
    ``history``: per iteration the losses, mean reward per step and, in the real env, finished episodes' returns)."""
    state = resume or {"iteration": 0, "history": []}
    params = [*agent.controller.parameters(), *agent.critic.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.wm_ppo_lr, eps=1e-5)  # eps 1e-5: cleanrl's PPO
    rng = np.random.default_rng([cfg.seed, state["iteration"]])
    n = cfg.wm_ppo_envs
    steps = max(cfg.wm_ppo_horizon // n, 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.wm_ppo_iterations, initial=state["iteration"], unit="it", dynamic_ncols=True,
                   desc=f"C (PPO, {n} x {steps} steps{', dream' if cfg.wm_dream else ''})")
    feat = vec_env.reset(n)
    discrete = agent.spec.discrete
    try:
        for iteration in range(state["iteration"], cfg.wm_ppo_iterations):
            start = time.time()
            buf: dict[str, list[torch.Tensor]] = {k: [] for k in ("feat", "raw", "logp", "value", "reward", "done")}
            agent.eval()
            with torch.no_grad():
                for _ in range(steps):
                    dist = agent.controller.dist(feat)
                    raw = dist.sample()
                    row = {"feat": feat, "raw": raw, "logp": _log_prob(dist, raw, discrete),
                           "value": agent.critic(feat)}
                    feat, reward, done = vec_env.step(env_action(discrete, raw), auto_reset=True)
                    for key, value in {**row, "reward": reward.float(), "done": done}.items():
                        buf[key].append(value)
                last_value = agent.critic(feat)
            data = {k: torch.stack(v) for k, v in buf.items()}
            adv = gae(data["reward"], data["value"], data["done"], last_value, cfg.wm_ppo_gamma, cfg.wm_ppo_lambda)
            flat = {k: data[k].flatten(0, 1) for k in ("feat", "raw", "logp")}
            flat.update(adv=adv.flatten(), ret=(adv + data["value"]).flatten())
            metrics = ppo_update(agent, opt, flat, cfg, rng)
            finished = vec_env.take_finished() if hasattr(vec_env, "take_finished") else []
            record = {"iteration": iteration + 1, **metrics, "reward_per_step": float(data["reward"].mean()),
                      "episodes": len(finished), "seconds": round(time.time() - start, 3)}
            if finished:
                record["return_mean"] = float(np.mean(finished))
            state = {"iteration": iteration + 1, "history": [*state["history"], record]}
            if save is not None:
                save(state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(r_step=f"{record['reward_per_step']:.3f}",
                                **({"return": f"{record['return_mean']:.2f}"} if finished else {}))
    finally:
        if bar is not None:
            bar.close()
    agent.eval()
    return state
