"""Attribution over time: the decision at step t credited to the frames t-k..t through the recurrent state
(issue #27, item 3).

Most of a Dreamer agent's decision is not in the current frame: the ball's position in catch is carried in h_t from
frames seen earlier (issue #27: blurring the whole current frame moves p(action) from 0.78 to 0.73). Current-frame
saliency (``saliency.py``) holds h_t fixed and so cannot credit a ball seen three steps ago. Here the explained
function re-filters the last ``k + 1`` frames through the world model's own ``encode`` and ``rssm.obs_step``,
starting from the recorded posterior at t-k-1 with the recorded actions::

    frames o_{t-k..t} [N, k+1, C, 64, 64] in [0, 1]
      -> for j = t-k..t:  post_j = obs_step(post_{j-1}, a_{j-1}, encode(o_j - 0.5))   (relaxed: z = softmax)
      -> log pi(a_t | h_t, z_t)                                                        (the chosen action)

The posterior is relaxed to class probabilities at every step, as in ``saliency.py`` (a one-hot is piecewise
constant in the pixels); ``relaxed_gap`` reports how far the relaxed score is from the agent's own (one-hot mode)
score at the recorded frames. A window that would reach before the episode's start begins at its first step.

Two attributions of the same number:

* ``integrated_gradients`` (Captum) from a baseline where every frame of the window is its background (each frame's
  most common value per channel: black in the toy games, so every object is erased): a signed map per frame
  ``[k+1, 64, 64]``; the per-frame sums add up (completeness) to f(frames) - f(all frames erased).
* ``frame_deletion`` (the intervention the maps are checked against): each frame alone replaced by its background,
  the window re-filtered: ``f(frames) - f(frames with o_j erased)`` per frame, and the change of the action
  distribution (total variation). It needs no gradients and is exact for what it asks.

``TemporalAttribution.past_share`` is the fraction of the |credit| that falls on the frames before t.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..rssm import State
from .audit_checks import fill_frame
from .saliency import as_action_input, as_state, attribution_guard, to_unit_frame, trace_inputs

__all__ = ["TemporalAttribution", "temporal_attribution", "window_inputs", "SequenceForward", "TEMPORAL_METHODS"]

TEMPORAL_METHODS = ("integrated_gradients", "frame_deletion")


def window_inputs(trace, step: int, k: int) -> dict[str, Any]:
    """The inputs of the window ending at ``step``: ``frames`` uint8 ``[k'+1, C, H, W]`` (k' <= k when the episode
    started later), ``steps`` (their trace steps), the ``start`` state before the first (``None`` at the
    episode's first step), ``actions`` ``[k'+1, A]`` (a_{j-1} fed with frame j), ``is_first`` ``[k'+1]`` and the
    recorded ``action`` a_t."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    step = trace.check_step(step)
    a = trace.arrays
    episode = np.asarray(a["episode"])
    first = step
    while first > step - k and first > 0 and episode[first - 1] == episode[step] and not bool(a["is_first"][first]):
        first -= 1
    head = trace_inputs(trace, first)
    steps = list(range(first, step + 1))
    actions = [head["prev_action"]] + [np.asarray(a["action_vec"][j - 1], np.float32) for j in steps[1:]]
    action = a["action"][step]
    return {"frames": np.stack([np.asarray(a["frame"][j]) for j in steps]), "steps": steps,
            "start": head["prev_state"], "actions": actions, "is_first": [head["is_first"]] + [False] * (len(steps) - 1),
            "action": int(action) if np.ndim(action) == 0 else None}


class SequenceForward:
    """``frames [N, W, C, 64, 64] in [0, 1] -> log pi(action | h_t, z_t) [N]``, re-filtered from ``start``."""

    def __init__(self, agent, start: Any, actions: list, is_first: list, action: int | None = None) -> None:
        self.agent = agent
        self.start = as_state(agent, start)
        self.actions = torch.cat([as_action_input(agent, x) for x in actions])  # [W, A]
        self.is_first = torch.tensor([float(bool(f)) for f in is_first], device=agent.device)
        self.action = action

    def probs(self, frames: torch.Tensor, relaxed: bool = True) -> torch.Tensor:
        """Action distribution ``[N, A]`` after filtering the window (``relaxed=False``: the one-hot posterior mode,
        the agent's own eval-mode path)."""
        wm = self.agent.wm
        n, W = frames.shape[:2]
        state = self.start.map(lambda x: x.expand(n, *x.shape[1:]))
        embed = wm.encode(frames.flatten(0, 1).float() - 0.5).reshape(n, W, -1)
        for j in range(W):
            post, _ = wm.rssm.obs_step(state, self.actions[j:j + 1].expand(n, -1), embed[:, j],
                                       self.is_first[j:j + 1].expand(n), sample=False)
            state = State(post.deter, wm.rssm.relaxed_stoch(post.logits), post.logits) if relaxed else post
        return self.agent.actor.net(wm.feat(state)).float().softmax(-1)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.probs(frames).clamp_min(1e-12).log()[:, self.action]


@dataclasses.dataclass
class TemporalAttribution:
    """Credit of the decision at ``step`` to the frames of its window (module docstring)."""

    step: int
    steps: list[int]  # trace steps of the window, oldest first (the last is ``step``)
    action: int
    method: str
    maps: np.ndarray | None  # [W, 64, 64] signed IG per frame (channels summed); None for frame_deletion
    per_frame: np.ndarray  # [W] credit per frame: IG sums, or the score drop when the frame alone is erased
    deletion_tv: np.ndarray  # [W] TV of the action distribution when the frame alone is erased
    value: float  # log pi(action) (relaxed) on the recorded frames
    baseline_value: float  # the same with every frame erased
    delta: float | None  # IG completeness delta
    relaxed_gap: float  # |pi_relaxed(action) - pi_agent(action)| on the recorded frames

    @property
    def past_share(self) -> float:
        """Fraction of the |credit| on the frames before ``step`` (0 when there are none or no credit)."""
        return _past_share(self.per_frame)

    @property
    def deletion_past_share(self) -> float:
        """The same for the intervention: the share of the erased-frame TVs that falls on the frames before t."""
        return _past_share(self.deletion_tv)

    def to_dict(self) -> dict:
        return {"step": self.step, "steps": self.steps, "action": self.action, "method": self.method,
                "per_frame": self.per_frame.tolist(), "deletion_tv": self.deletion_tv.tolist(),
                "past_share": self.past_share, "deletion_past_share": self.deletion_past_share, "value": self.value, "baseline_value": self.baseline_value,
                "delta": self.delta, "relaxed_gap": self.relaxed_gap}


def _past_share(values: np.ndarray) -> float:
    total = float(np.abs(values).sum())
    return float(np.abs(values[:-1]).sum()) / total if total > 0 else 0.0


def temporal_attribution(agent, trace, step: int, k: int = 4, method: str = "integrated_gradients",
                         action: int | None = None, n_steps: int = 32, fill: str = "background") -> TemporalAttribution:
    """Attribute the decision at ``step`` of ``trace`` to its last ``k + 1`` frames (module docstring). ``action``:
    the explained action (default: the recorded one); ``fill``: what an erased frame becomes (``background`` or
    ``blur``)."""
    from captum.attr import IntegratedGradients

    if method not in TEMPORAL_METHODS:
        raise ValueError(f"unknown temporal method {method!r}; use one of {TEMPORAL_METHODS}")
    if not agent.spec.discrete:
        raise ValueError("attribution over time explains the chosen action's probability; it needs discrete actions")
    w = window_inputs(trace, step, k)
    action = w["action"] if action is None else int(action)
    if action is None or not 0 <= action < agent.spec.num_actions:
        raise ValueError(f"action {action} out of range for {agent.spec.num_actions} actions")
    x = torch.cat([to_unit_frame(f, agent.device) for f in w["frames"]])[None]  # [1, W, C, H, W]
    if tuple(x.shape[2:]) != tuple(agent.spec.obs_shape):
        raise ValueError(f"frames have shape {tuple(x.shape[2:])}, the agent expects {tuple(agent.spec.obs_shape)}")
    base = torch.cat([fill_frame(x[:, j], fill) for j in range(x.shape[1])])[None]
    W = x.shape[1]
    with attribution_guard(agent):
        fwd = SequenceForward(agent, w["start"], w["actions"], w["is_first"], action)
        with torch.no_grad():
            erased = x.repeat(W, 1, 1, 1, 1)
            idx = torch.arange(W)
            erased[idx, idx] = base[0]
            p = fwd.probs(torch.cat([x, base, erased]))
            agent_p = fwd.probs(x, relaxed=False)[0, action]
        logp = p.clamp_min(1e-12).log()[:, action]
        value, base_value = float(logp[0]), float(logp[1])
        drop = (logp[0] - logp[2:]).cpu().numpy().astype(np.float64)
        tv = (0.5 * (p[2:] - p[:1]).abs().sum(-1)).cpu().numpy().astype(np.float64)
        maps, delta = None, None
        if method == "integrated_gradients":
            attr, d = IntegratedGradients(fwd).attribute(x, baselines=base, n_steps=n_steps,
                                                         return_convergence_delta=True)
            maps = attr[0].sum(1).detach().cpu().numpy().astype(np.float32)  # [W, H, W]
            delta = float(d.reshape(-1)[0])
    per_frame = maps.reshape(W, -1).sum(1).astype(np.float64) if maps is not None else drop
    return TemporalAttribution(step=int(w["steps"][-1]), steps=w["steps"], action=action, method=method, maps=maps,
                               per_frame=per_frame, deletion_tv=tv, value=value, baseline_value=base_value,
                               delta=delta, relaxed_gap=abs(float(p[0, action]) - float(agent_p)))
