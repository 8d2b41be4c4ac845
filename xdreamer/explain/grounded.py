"""Grounded counterfactuals: the what-if branch executed in the real simulator, next to the dream.

For each first action the recorded simulator state at step t is restored (``env.set_state``), the
action is taken, and then the same policy as the dream acts for the rest of the horizon: the actor's
mode through ``Agent.policy`` on the real frames (its policy state rebuilt from the trace at t, with
the alternative first action fed back), or the same fixed action sequence. Fidelity of the dream is
reported per step (index 0 is step t itself; dream frame 0 is the reconstruction)::

    pixel_mse        [K, H+1]  mean squared error between dreamed and real frames in [0, 1] units
    object_mse       {name: [K, H+1]}  the same inside the real object's box (NaN where absent)
    reward_error     [K, H+1]  predicted reward - real reward (clipped as the model was trained)
    real_return      [K]       undiscounted sum of real rewards over steps 1..H
    real_return_disc [K]       sum gamma^(i-1) * clip(r_i), comparable to ``dream_return``
    real_q           [K]       the agent's lambda-target over the real branch (real rewards, the critic on the
                               states filtered from the real frames, bootstrapped from v(s_H)): the dream's q
                               (Q_H) grounded, so Q_H is scored against the branch it imagines (issue #27)
    valid            [K, H+1]  False after the real episode ended
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ..agent import PolicyState
from .dreams import WhatIf, _plan, start_state, whatif
from .trace import Trace


@dataclasses.dataclass
class Grounded:
    step: int
    horizon: int
    first_actions: np.ndarray
    labels: list[str]
    real_frames: np.ndarray  # uint8 [K, H+1, C, 64, 64]
    real_reward: np.ndarray  # [K, H+1] (index 0: reward at t)
    real_actions: np.ndarray  # [K, H] actions taken in the real branch at steps t..t+H-1
    valid: np.ndarray  # bool [K, H+1]
    objects: dict[str, np.ndarray]  # name -> [K, H+1, 4]
    dream: WhatIf
    pixel_mse: np.ndarray  # [K, H+1]
    object_mse: dict[str, np.ndarray]  # name -> [K, H+1]
    reward_error: np.ndarray  # [K, H+1]
    real_return: np.ndarray  # [K]
    real_return_disc: np.ndarray  # [K]
    action_agreement: np.ndarray  # [K] fraction of steps where dream and real branch chose the same action
    real_value: np.ndarray | None = None  # [K, H+1] the critic on the real branch's posterior states
    real_q: np.ndarray | None = None  # [K] the agent's lambda-target over the real branch: the dream's q, grounded

    def to_dict(self) -> dict[str, Any]:
        def clean(a):  # strict JSON: NaN (no object / step after the episode ended) -> null
            a = np.asarray(a, dtype=float).round(6)
            return np.where(np.isfinite(a), a, None).tolist()

        return {"step": self.step, "horizon": self.horizon, "labels": self.labels,
                "first_actions": self.first_actions.tolist(), "real_actions": self.real_actions.tolist(),
                "real_reward": clean(self.real_reward), "valid": self.valid.tolist(),
                "pixel_mse": clean(self.pixel_mse), "reward_error": clean(self.reward_error),
                "object_mse": {k: clean(v) for k, v in self.object_mse.items()},
                "objects": {k: clean(v) for k, v in self.objects.items()},
                "real_return": self.real_return.tolist(), "real_return_disc": self.real_return_disc.tolist(),
                "dream_return": self.dream.dream_return.tolist(), "q": self.dream.q.tolist(),
                "real_q": None if self.real_q is None else clean(self.real_q),
                "action_agreement": self.action_agreement.tolist()}


def check_branchable(env, trace: Trace) -> None:
    if not env.spec.can_branch:
        raise ValueError(f"env {env.spec.id} cannot branch (no simulator state); grounded counterfactuals need "
                         "an env with get_state/set_state: atari:, mujoco:, toy: or gym: (by replay)")
    if env.spec.id != trace.meta.get("env"):
        raise ValueError(f"trace was recorded on {trace.meta.get('env')}, not on {env.spec.id}")
    if not trace.has_sim_states:
        raise ValueError("trace has no simulator states; record it again on an env that can branch")


def ground(agent, env, trace: Trace, step: int, actions: Sequence | None = None, horizon: int = 15,
           follow: str | Sequence = "actor", dream: WhatIf | None = None) -> Grounded:
    """Run the what-if branches of step ``step`` in the real simulator and score the dream against them.

    ``actions``/``follow`` as in ``dreams.whatif`` (``follow="actor"``: the actor's mode acting on real
    frames through ``Agent.policy``). ``dream`` may pass an already computed ``whatif`` result with the
    same arguments (it is computed otherwise). The env is left in the state the last branch ended in.
    """
    check_branchable(env, trace)
    step, horizon, first_ids, labels, prefix, mode = _plan(agent, trace, step, horizon, actions, follow)
    if mode == "sample":
        raise ValueError("grounded branches follow the actor's mode or a fixed action sequence, not 'sample'")
    if trace.arrays["is_last"][step]:
        raise ValueError(f"step {step} is the last step of its episode; there is no future to branch into")
    if dream is not None and (dream.step != step or dream.horizon != horizon or dream.frames is None
                              or not np.array_equal(dream.first_actions, first_ids)):
        raise ValueError("the dream passed to ground() was computed for another step, horizon or actions "
                         "(or without frames)")
    if dream is None:
        dream = whatif(agent, trace, step, horizon, list(first_ids) if agent.spec.discrete else first_ids, follow)
    spec = agent.spec
    K, C = len(first_ids), trace.arrays["frame"].shape[1]
    fixed = prefix.shape[1]
    sim = trace.sim_state(step)
    latent0 = start_state(agent, trace, [step])
    real_frames = np.zeros((K, horizon + 1, C, 64, 64), np.uint8)
    real_reward = np.full((K, horizon + 1), np.nan, np.float32)
    valid = np.zeros((K, horizon + 1), bool)
    objects = {name: np.full((K, horizon + 1, 4), np.nan, np.float32) for name in env.spec.object_names}
    real_actions = (np.full((K, horizon), -1, np.int64) if spec.discrete
                    else np.full((K, horizon, spec.num_actions), np.nan, np.float32))
    real_value = np.zeros((K, horizon + 1), np.float32)  # the critic on the branch's own posterior states
    terminal = np.zeros((K, horizon + 1), bool)
    value0 = _value(agent, latent0)
    for k in range(K):
        real_value[k, 0] = value0
        env.set_state(sim)
        real_frames[k, 0] = trace.arrays["frame"][step]
        real_reward[k, 0] = trace.arrays["reward"][step]
        valid[k, 0] = True
        for name in objects:
            objects[name][k, 0] = trace.arrays[f"objects/{name}"][step]
        action_vec = prefix[k, 0][None]
        state = PolicyState(latent0, action_vec)
        for i in range(horizon):
            if spec.discrete:
                env_action = int(action_vec[0].argmax())
            else:
                env_action = action_vec[0].cpu().numpy().astype(np.float32)
            real_actions[k, i] = env_action
            obs = env.step(env_action)
            real_frames[k, i + 1] = obs["image"]
            real_reward[k, i + 1] = obs["reward"]
            valid[k, i + 1] = True
            for name in objects:
                box = obs.get("objects", {}).get(name)
                if box is not None:
                    objects[name][k, i + 1] = box
            # The agent keeps observing the real frames (its policy state stays in step with the branch).
            _, state = agent.policy({"image": obs["image"][None], "is_first": np.array([False])}, state, mode="eval")
            real_value[k, i + 1] = _value(agent, state.latent)
            terminal[k, i + 1] = bool(obs["is_terminal"])
            if obs["is_last"]:
                real_frames[k, i + 2:] = obs["image"]
                real_value[k, i + 2:] = real_value[k, i + 1]  # a cut episode bootstraps from its last state
                break
            if i + 1 == horizon:
                break
            if i + 1 < fixed:  # the fixed sequence still drives the branch
                action_vec = prefix[k, i + 1][None]
                state = PolicyState(state.latent, action_vec)
            else:  # the actor's mode on the real frame
                action_vec = state.action
    # ---- fidelity ----------------------------------------------------------------------------
    dream_frames = dream.frames.astype(np.float32) / 255.0
    real = real_frames.astype(np.float32) / 255.0
    sq = (dream_frames - real) ** 2  # [K, H+1, C, 64, 64]
    pixel_mse = np.where(valid, sq.mean((2, 3, 4)), np.nan)
    object_mse = {}
    for name, boxes in objects.items():
        out = np.full((K, horizon + 1), np.nan, np.float32)
        for k in range(K):
            for i in range(horizon + 1):
                x, y, w, h = boxes[k, i]
                if not valid[k, i] or not np.all(np.isfinite(boxes[k, i])):
                    continue
                x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
                x1, y1 = min(int(np.ceil(x + max(w, 1e-3))), 64), min(int(np.ceil(y + max(h, 1e-3))), 64)
                if x1 > x0 and y1 > y0:
                    out[k, i] = sq[k, i, :, y0:y1, x0:x1].mean()
        object_mse[name] = out
    clipped = np.tanh(real_reward) if agent.cfg.clip_rewards == "tanh" else real_reward
    reward_error = np.where(valid, dream.reward - clipped, np.nan)
    future = np.where(valid[:, 1:], real_reward[:, 1:], 0.0)
    gamma = agent.cfg.discount ** np.arange(horizon)
    real_return = future.sum(1)
    real_return_disc = (np.where(valid[:, 1:], clipped[:, 1:], 0.0) * gamma).sum(1)
    real_q = _real_lambda_return(agent, np.where(valid, clipped, 0.0), real_value, terminal, valid)
    agree = (dream.actions == real_actions) if spec.discrete else np.isclose(dream.actions, real_actions).all(-1)
    steps_valid = valid[:, :-1]
    agreement = (agree & steps_valid).sum(1) / np.maximum(steps_valid.sum(1), 1)
    return Grounded(step=step, horizon=horizon, first_actions=np.asarray(first_ids), labels=labels,
                    real_frames=real_frames, real_reward=real_reward, real_actions=real_actions, valid=valid,
                    objects=objects, dream=dream, pixel_mse=pixel_mse, object_mse=object_mse,
                    reward_error=reward_error, real_return=real_return.astype(np.float32),
                    real_return_disc=real_return_disc.astype(np.float32), action_agreement=agreement,
                    real_value=real_value, real_q=real_q)


def _value(agent, latent) -> float:
    """The critic's value of one posterior state (0 for an agent without a critic, as in its dreams)."""
    import torch

    with torch.no_grad(), agent.autocast():
        return float(agent.ac.value(agent.wm.feat(latent)).float().reshape(-1)[0])


def _real_lambda_return(agent, reward: np.ndarray, value: np.ndarray, terminal: np.ndarray,
                        valid: np.ndarray) -> np.ndarray:
    """Q_H's real counterpart per branch ``[K]``: the agent's own lambda-target (``behavior.lambda_return``, as the
    dream's ``q``) over the real branch, with the real (clipped) rewards, discount gamma x (1 - terminal) and the
    critic on the states the agent filtered from the real frames, bootstrapped from v(s_H). After an episode end
    nothing follows a terminal state; a cut one (time limit) bootstraps from its last state's value."""
    import torch

    from ..behavior import lambda_return

    gamma = agent.cfg.discount
    discount = np.where(terminal | ~valid, 0.0, gamma)
    for k in range(len(valid)):  # an episode cut (not terminal): the steps after it keep d = 1 at its last value
        ends = np.flatnonzero(~valid[k])
        if ends.size and not terminal[k, ends[0] - 1]:
            discount[k, ends[0]:] = 1.0
    lam = agent.cfg.discount_lambda if getattr(agent, "has_critic", True) else 1.0
    t = lambda x: torch.as_tensor(np.asarray(x, np.float32))  # noqa: E731
    returns = lambda_return(t(reward[:, :-1]), t(value[:, :-1]), t(discount[:, :-1]), t(value[:, -1]), lam)
    return returns[:, 0].numpy()
