"""What-if dreams: counterfactual rollouts in the agent's own imagination.

From the posterior state the agent acted on at step t of a ``Trace`` (rebuilt exactly from the
recorded ``deter``, the class indices of the posterior sample and the posterior logits), every
alternative first action is imagined at once: one batched call of the world model's ``imagine``
with a one-step action prefix, after which the actor's mode (or a fixed action sequence) drives the
rollout. Latent interventions switch a categorical variable at the start state (or, with
``persist``, at every imagined step through ``imagine``'s ``intervene`` hook).

Returns (timing as ``imagine``: index 0 is the start state, ``actions[:, i]`` led to state i)::

    frames    uint8 [K, H+1, C, 64, 64]   decoded states (index 0 = reconstruction at t)
    reward, discount, value   float [K, H+1]  reward head, discount head, critic
    returns   float [K, H]    the agent's own lambda-targets (``behavior.lambda_return``; critic values,
                              predicted discounts, bootstrap from v(s_H)), as ``ActorCritic.target``
    q         float [K]       returns[:, 0]: Q_H(s_t, a) estimate (DreamerV2 convention: includes the
                              start state's own predicted reward, which all actions share)
    dream_return  float [K]   sum_{i=1..H} gamma^(i-1) * reward[:, i] (comparable to a real branch)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..behavior import lambda_return
from ..rssm import State
from .trace import Trace, _to_uint8


@dataclasses.dataclass
class WhatIf:
    step: int
    horizon: int
    first_actions: np.ndarray  # [K] int (discrete) or [K, A]
    labels: list[str]  # one per row
    taken_action: Any  # the action recorded at step t
    actions: np.ndarray  # [K, H] actions driving the dream at imagined steps 1..H (int or [K, H, A])
    frames: np.ndarray | None  # uint8 [K, H+1, C, 64, 64]
    reward: np.ndarray  # [K, H+1]
    discount: np.ndarray  # [K, H+1]
    value: np.ndarray  # [K, H+1]
    returns: np.ndarray  # [K, H]
    q: np.ndarray  # [K]
    dream_return: np.ndarray  # [K]
    stoch_class: np.ndarray  # [K, H+1, stoch]
    intervention: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers (no frames)."""
        out = {"step": self.step, "horizon": self.horizon, "labels": self.labels,
               "first_actions": self.first_actions.tolist(), "taken_action": _jsonable(self.taken_action),
               "actions": self.actions.tolist(), "q": self.q.tolist(), "dream_return": self.dream_return.tolist(),
               "reward": self.reward.tolist(), "discount": self.discount.tolist(), "value": self.value.tolist(),
               "returns": self.returns.tolist()}
        if self.intervention is not None:
            out["intervention"] = self.intervention
        return out


def _jsonable(x):
    return x.tolist() if isinstance(x, np.ndarray) else (x.item() if isinstance(x, np.generic) else x)


# ---- start states ---------------------------------------------------------------------------
def start_state(agent, trace: Trace, steps) -> State:
    """The posterior ``State`` the agent acted on at ``steps`` (int or int array) -> ``[B]``."""
    steps = np.atleast_1d(np.asarray(steps, dtype=np.int64))
    dev = agent.device
    from .trace import acted_latent

    rssm = agent.wm.rssm
    deter = torch.as_tensor(trace.arrays["deter"][steps], device=dev, dtype=torch.float32)
    logits = torch.as_tensor(trace.arrays["post_logits"][steps], device=dev, dtype=torch.float32)
    gaussian = "post_stoch" in trace.arrays
    width = 2 if gaussian else rssm.classes  # Gaussian logits hold (mean, std)
    if deter.shape[-1] != rssm.deter_size or tuple(logits.shape[-2:]) != (rssm.stoch_size, width) \
            or gaussian != (rssm.latent_kind == "gaussian"):
        raise ValueError(f"trace latent shapes (deter {tuple(deter.shape[1:])}, stoch {tuple(logits.shape[1:])}) "
                         "do not fit this agent's world model")
    return State(deter, torch.as_tensor(acted_latent(trace.arrays, steps), device=dev), logits)


def _action_matrix(agent, actions, what: str) -> torch.Tensor:
    """Env actions -> model action inputs ``[K, A]`` with validation."""
    spec = agent.spec
    if spec.discrete:
        ids = []
        for a in actions:
            if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
                raise ValueError(f"{what}: actions must be integers in [0, {spec.num_actions}), got {a!r}")
            if not 0 <= int(a) < spec.num_actions:
                raise ValueError(f"invalid action {int(a)} in {what}: {spec.id} has actions 0..{spec.num_actions - 1}")
            ids.append(int(a))
        return F.one_hot(torch.tensor(ids, dtype=torch.long), spec.num_actions).float().to(agent.device)
    arr = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1)
    if arr.shape[1] != spec.num_actions or not np.all(np.isfinite(arr)) or np.abs(arr).max(initial=0) > 1:
        raise ValueError(f"invalid continuous actions in {what}: "
                         f"need finite vectors of size {spec.num_actions} in [-1, 1]")
    return torch.as_tensor(arr, device=agent.device)


# ---- the one dreaming routine ----------------------------------------------------------------
@torch.no_grad()
def dream(agent, start: State, horizon: int, prefix: torch.Tensor | None = None, follow: str = "actor",
          intervene: Callable[[int, State], State] | None = None, decode: bool = True, sample: bool = False
          ) -> dict[str, torch.Tensor]:
    """Imagine from ``start`` ``[B]`` via ``WorldModel.imagine``; ``prefix`` ``[B, L, A]`` fixes the first
    L actions, then the actor's mode (``follow="actor"``) or its sample (``"sample"``) continues."""
    wm = agent.wm
    policy = {"actor": agent.actor.mode, "sample": agent.actor.sample, None: None}[follow]
    with agent.autocast():
        states, actions = wm.imagine(start, policy=policy, horizon=horizon, actions=prefix,
                                     intervene=intervene, sample=sample)
        feat = wm.feat(states)
        reward, discount, value = wm.reward(feat), wm.discount(feat), agent.ac.value(feat)
        # Without a critic (World Models + CMA-ES: value 0) lambda = 1 makes the target the discounted imagined
        # reward over the horizon, not a lambda-shrunk one.
        lam = agent.cfg.discount_lambda if getattr(agent, "has_critic", True) else 1.0
        returns = lambda_return(reward[:, :-1].float(), value[:, :-1].float(), discount[:, :-1].float(),
                                value[:, -1].float(), lam)
        frames = _decode(wm, feat) if decode else None
    gamma = agent.cfg.discount ** torch.arange(horizon, device=reward.device, dtype=torch.float32)
    return {"states": states.map(lambda x: x.float()), "actions": actions.float(), "reward": reward.float(),
            "discount": discount.float(), "value": value.float(), "returns": returns,
            "dream_return": (reward[:, 1:].float() * gamma).sum(1), "frames": frames}


def _decode(wm, feat: torch.Tensor) -> torch.Tensor:
    """``wm.decode(feat)`` for ``feat`` ``[B, H+1, F]``; where every branch starts from the same state (a what-if
    from one step) its first frame is decoded once instead of B times (17 of 288 frames for 18 actions x 15 steps)."""
    first = feat[:, 0]
    if feat.shape[0] == 1 or not bool((first == first[:1]).all()):
        return wm.decode(feat)
    head = wm.decode(first[:1])  # [1, C, H, W]
    rest = wm.decode(feat[:, 1:])  # [B, H, C, H, W]
    return torch.cat([head.unsqueeze(1).expand(feat.shape[0], 1, *head.shape[1:]), rest], 1)


def _check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    return int(horizon)


def _pack(agent, trace: Trace, step: int, out: dict, first, labels, intervention=None) -> WhatIf:
    acts = out["actions"][:, 1:]
    acts = acts.argmax(-1).cpu().numpy() if agent.spec.discrete else acts.cpu().numpy()
    frames = _to_uint8(out["frames"]) if out["frames"] is not None else None
    return WhatIf(step=step, horizon=out["reward"].shape[1] - 1, first_actions=np.asarray(first), labels=labels,
                  taken_action=trace.arrays["action"][step], actions=acts, frames=frames,
                  reward=out["reward"].cpu().numpy(), discount=out["discount"].cpu().numpy(),
                  value=out["value"].cpu().numpy(), returns=out["returns"].cpu().numpy(),
                  q=out["returns"][:, 0].cpu().numpy(), dream_return=out["dream_return"].cpu().numpy(),
                  stoch_class=out["states"].stoch.argmax(-1).cpu().numpy(), intervention=intervention)


def _plan(agent, trace: Trace, step, horizon, actions, follow):
    step = trace.check_step(step)
    horizon = _check_horizon(horizon)
    if actions is None:
        if not agent.spec.discrete:
            actions = [trace.arrays["action"][step]]
        else:
            actions = list(range(agent.spec.num_actions))
    elif isinstance(actions, (int, np.integer)) and agent.spec.discrete:
        actions = [actions]
    actions = list(actions)
    if not actions:
        raise ValueError("actions: give at least one first action")
    first = _action_matrix(agent, actions, "actions")  # [K, A]
    prefix = first[:, None]
    mode = "actor"
    if isinstance(follow, str):
        if follow not in ("actor", "sample"):
            raise ValueError(f"follow must be 'actor', 'sample' or a sequence of actions, got {follow!r}")
        mode = follow
    else:
        follow = list(follow)
        if len(follow) > horizon - 1:
            raise ValueError(f"follow has {len(follow)} actions but only {horizon - 1} steps follow the first action")
        if follow:
            seq = _action_matrix(agent, follow, "follow")  # [L, A]
            prefix = torch.cat([prefix, seq[None].expand(len(actions), -1, -1)], 1)
        if prefix.shape[1] >= horizon:
            mode = None
    if agent.spec.discrete:
        first_ids = np.array([int(a) for a in actions])
        names = trace.action_names
        labels = [names[a] for a in first_ids]
    else:
        first_ids = first.cpu().numpy()
        labels = [f"action {i}" for i in range(len(actions))]
    return step, horizon, first_ids, labels, prefix, mode


def whatif(agent, trace: Trace, step: int, horizon: int = 15, actions: Sequence | None = None,
           follow: str | Sequence = "actor", decode: bool = True, sample: bool = False) -> WhatIf:
    """Dream ``horizon`` steps from step ``step`` for each first action in ``actions`` (default: every
    discrete action; for continuous control the recorded one) in one batched ``imagine`` call.
    After the first action the actor's mode continues (``follow="actor"``), or the fixed actions in
    ``follow`` (a sequence for imagined steps 2..; the actor continues when it is shorter)."""
    step, horizon, first_ids, labels, prefix, mode = _plan(agent, trace, step, horizon, actions, follow)
    start = start_state(agent, trace, np.full(len(first_ids), step))
    out = dream(agent, start, horizon, prefix, mode, decode=decode, sample=sample)
    return _pack(agent, trace, step, out, first_ids, labels)


def intervene(agent, trace: Trace, step: int, variable: int, cls: int | str, horizon: int = 15,
              actions: Sequence | None = None, follow: str | Sequence = "actor", persist: bool = False,
              decode: bool = True) -> WhatIf:
    """Latent intervention: set categorical variable ``variable`` of the start state at ``step`` to class
    ``cls`` (an int), to the prior's mode at that step (``"prior"``) or to the prior's probabilities
    (``"prior_probs"``, a soft one-hot), then dream on. ``actions``: first actions (default: the actor
    chooses from the intervened state). ``persist``: also clamp the variable at every imagined step
    through ``imagine``'s ``intervene`` hook. The start state's logits are left as recorded."""
    step = trace.check_step(step)
    horizon = _check_horizon(horizon)
    rssm = agent.wm.rssm
    if rssm.latent_kind != "categorical":
        raise ValueError(f"intervene switches a categorical variable's class; this agent's latents are "
                         f"{rssm.latent_kind} (DreamerV1, World Models): they have no classes")
    if isinstance(variable, bool) or not isinstance(variable, (int, np.integer)) or not 0 <= variable < rssm.stoch_size:
        raise ValueError(f"variable must be an integer in [0, {rssm.stoch_size}), got {variable!r}")
    variable = int(variable)
    if isinstance(cls, str):
        if cls not in ("prior", "prior_probs"):
            raise ValueError(f"cls must be a class index, 'prior' or 'prior_probs', got {cls!r}")
        prior_logits = torch.as_tensor(trace.arrays["prior_logits"][step, variable], dtype=torch.float32,
                                       device=agent.device)
        row = (prior_logits.softmax(-1) if cls == "prior_probs"
               else F.one_hot(prior_logits.argmax(), rssm.classes).float())
    else:
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or not 0 <= cls < rssm.classes:
            raise ValueError(f"cls must be an integer in [0, {rssm.classes}), 'prior' or 'prior_probs', got {cls!r}")
        row = F.one_hot(torch.tensor(int(cls), device=agent.device), rssm.classes).float()

    def clamp(state: State) -> State:
        stoch = state.stoch.clone()
        stoch[:, variable] = row.to(stoch.dtype)
        return State(state.deter, stoch, state.logits)

    hook = (lambda i, state: clamp(state)) if persist else None
    if actions is None:
        K = 1
        start = clamp(start_state(agent, trace, [step]))
        prefix, mode = None, "actor"
        if not isinstance(follow, str):
            raise ValueError("a fixed follow sequence needs first actions (actions=...)")
        if follow not in ("actor", "sample"):
            raise ValueError(f"follow must be 'actor', 'sample' or a sequence of actions, got {follow!r}")
        mode = follow
        first_ids, labels = np.array([-1]), ["actor"]
    else:
        step, horizon, first_ids, labels, prefix, mode = _plan(agent, trace, step, horizon, actions, follow)
        K = len(first_ids)
        start = clamp(start_state(agent, trace, np.full(K, step)))
    out = dream(agent, start, horizon, prefix, mode, intervene=hook, decode=decode)
    if actions is None:
        first_ids = out["actions"][:, 1].argmax(-1).cpu().numpy() if agent.spec.discrete \
            else out["actions"][:, 1].cpu().numpy()
        labels = [trace.action_names[int(a)] for a in first_ids] if agent.spec.discrete else ["actor"]
    info = {"variable": variable, "cls": cls if isinstance(cls, str) else int(cls), "persist": bool(persist),
            "recorded_class": int(trace.arrays["post_class"][step, variable])}
    return _pack(agent, trace, step, out, first_ids, labels, info)
