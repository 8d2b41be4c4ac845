"""Attributions over the 32x32 categorical latent (issue 3, part 4), and over DreamerV1's Gaussian dimensions.

Gaussian latents (``rssm.latent_kind == "gaussian"``, issue #29): the explained input is the 30 values of z_t
(default: the posterior mean; ``z``: e.g. the values the agent acted on), the map is ``[stoch, 1]``, the prior
baseline is the prior's mean and FeatureAblation sets one dimension at a time to the baseline's value. The
class-switching helpers below refuse such agents (they have no classes).

At a step t with posterior ``deter`` h_t ``[deter]`` and posterior logits ``[stoch, classes]`` the
explained functions take the relaxed one-hot z (the posterior class probabilities, a float
``[1, stoch * classes]``) with h_t held fixed::

    f(z) = log_softmax(actor(concat(h_t, z)))[a]      target "action" (a = chosen action)
    v(z) = critic(concat(h_t, z))                     target "value"

Methods (Captum, used as a library):

* ``IntegratedGradients`` from a baseline z' -- by default the prior p(z_t | h_t) computed by the
  RSSM's own prior head from h_t -- to z, ``n_steps=32`` (Gauss-Legendre), with the completeness
  delta ``sum(attr) - (f(z) - f(z'))``. Result: a ``[stoch, classes]`` map; summing a variable's
  row gives its IG importance.
* ``FeatureAblation`` with a ``feature_mask`` grouping each variable's ``classes`` entries: variable
  i is replaced as a whole by its baseline distribution (prior or uniform); score
  ``f(z) - f(z with variable i ablated)``.

"What does a latent class mean": :func:`class_effect` decodes the state with variable i switched
to class c minus the decoded original (the world model's own decoder), and
:func:`class_conditional_means` averages real frames over the steps where variable i had class c.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..rssm import State
from .saliency import NO_CRITIC, _to_tensor, attribution_guard

LATENT_TARGETS = ("action", "value")


@dataclass
class LatentAttribution:
    """Attribution of one scalar (``target``) to the latent classes at one step."""

    map: np.ndarray  # [stoch, classes] IntegratedGradients attribution
    per_variable: np.ndarray  # [stoch] sum of the IG map over classes
    per_variable_ablation: np.ndarray  # [stoch] FeatureAblation: f(z) - f(z with variable i -> baseline)
    delta: float  # IG completeness delta: sum(map) - (f(z) - f(baseline))
    target: str  # "action" (log-probability of ``action``) or "value"
    action: int | None
    value: float  # f(z)
    baseline_value: float  # f(baseline)
    baseline: str  # prior | uniform | tensor
    ablation_baseline: str
    n_steps: int
    params: dict = field(default_factory=dict)

    @property
    def relative_delta(self) -> float:
        """|delta| / |f(z) - f(baseline)| (inf when the two scores coincide and delta is not 0)."""
        gap = abs(self.value - self.baseline_value)
        return abs(self.delta) / gap if gap > 0 else (0.0 if self.delta == 0 else float("inf"))

    def top_variables(self, k: int = 5, by: str = "ig") -> list[int]:
        score = self.per_variable if by == "ig" else self.per_variable_ablation
        return [int(i) for i in np.argsort(-np.abs(score))[:k]]

    def to_dict(self) -> dict:
        return {"target": self.target, "action": self.action, "value": self.value,
                "baseline_value": self.baseline_value, "delta": self.delta,
                "relative_delta": self.relative_delta, "baseline": self.baseline,
                "ablation_baseline": self.ablation_baseline, "n_steps": self.n_steps,
                "per_variable": self.per_variable.tolist(),
                "per_variable_ablation": self.per_variable_ablation.tolist(),
                "top_variables": self.top_variables()}


def latent_feat(agent, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The world model's feature for h_t ``[N, deter]`` and latents ``z`` ``[N, stoch * classes]`` (or
    ``[N, stoch, classes]``): ``wm.feat``, whose layout is the member's own ([h, z] in the RSSM, [z, h] for World
    Models' C)."""
    rssm = agent.wm.rssm
    z = z.reshape(z.shape[0], rssm.stoch_size, -1)
    return agent.wm.feat(State(h, z, z))


class LatentForward:
    """``z [N, stoch * classes] -> score [N]`` with h_t fixed, through the agent's own heads."""

    def __init__(self, agent, deter: torch.Tensor, target: str = "action", action: int | None = None) -> None:
        if target not in LATENT_TARGETS:
            raise ValueError(f"unknown target {target!r}; use one of {LATENT_TARGETS}")
        if target == "value" and not getattr(agent, "has_critic", True):
            raise ValueError(NO_CRITIC)
        if target == "action" and not agent.spec.discrete:
            raise ValueError("latent attribution of the action needs a discrete-action agent; use target='value'")
        self.agent, self.deter, self.target, self.action = agent, deter.reshape(1, -1), target, action

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        feat = latent_feat(self.agent, self.deter.expand(z.shape[0], -1), z)
        if self.target == "value":
            return self.agent.ac.value(feat)
        return self.agent.actor.net(feat).log_softmax(-1)[:, self.action]


def prior_logits(agent, deter: Any) -> torch.Tensor:
    """Prior logits p(z_t | h_t) ``[stoch, classes]`` from the RSSM's own prior head."""
    rssm = agent.wm.rssm
    h = _to_tensor(deter, agent.device).float().reshape(1, -1)
    with torch.no_grad():
        _, logits = rssm._stoch_from_logits(rssm.img_out(h), sample=False)
    return logits[0]


def _check_latent(agent, deter: Any, logits: Any, name: str = "logits") -> tuple[torch.Tensor, torch.Tensor]:
    rssm = agent.wm.rssm
    h = _to_tensor(deter, agent.device).float().reshape(-1)
    lg = _to_tensor(logits, agent.device).float()
    width = 2 if rssm.latent_kind == "gaussian" else rssm.classes  # Gaussian latents: (mean, std) per dimension
    if h.numel() != rssm.deter_size:
        raise ValueError(f"deter has {h.numel()} entries, this model has {rssm.deter_size}")
    if lg.numel() != rssm.stoch_size * width:
        raise ValueError(f"{name} has shape {tuple(lg.shape)}, this model needs ({rssm.stoch_size}, {width})")
    return h, lg.reshape(rssm.stoch_size, width)


def _baseline_probs(agent, h: torch.Tensor, baseline: Any, prior: Any) -> tuple[torch.Tensor, str]:
    rssm = agent.wm.rssm
    S, K = rssm.stoch_size, rssm.classes
    if isinstance(baseline, str):
        if baseline == "prior":
            lg = prior_logits(agent, h) if prior is None else _check_latent(agent, h, prior, "prior logits")[1]
            return rssm.relaxed_stoch(lg).reshape(1, S * K), "prior"
        if baseline == "uniform" and rssm.latent_kind == "gaussian":
            raise ValueError("Gaussian latents have no uniform baseline; use prior or a [stoch] tensor of values")
        if baseline == "uniform":
            return torch.full((1, S * K), 1.0 / K, device=agent.device), "uniform"
        raise ValueError(f"unknown baseline {baseline!r}; use prior, uniform or a [stoch, classes] tensor")
    probs = _to_tensor(baseline, agent.device).float()
    if probs.numel() != S * K:
        raise ValueError(f"baseline has shape {tuple(probs.shape)}, need ({S}, {K})")
    return probs.reshape(1, S * K), "tensor"


def latent_attribution(agent, deter: Any, post_logits: Any, target: str = "action", action: int | None = None,
                       *, prior: Any = None, baseline: Any = "prior", ablation_baseline: Any = None,
                       n_steps: int = 32, method: str = "gausslegendre", z: Any = None) -> LatentAttribution:
    """IntegratedGradients and grouped FeatureAblation over the latent classes at one step.

    ``deter`` ``[deter]`` and ``post_logits`` ``[stoch, classes]``: the posterior at step t.
    ``prior``: recorded prior logits (default: recomputed from ``deter`` by the RSSM's prior head).
    ``baseline`` (IG) and ``ablation_baseline`` (FeatureAblation, default = ``baseline``): ``prior``,
    ``uniform`` or probabilities ``[stoch, classes]``. ``action``: the action whose log-probability is
    explained (default: the agent's eval-mode choice, the actor's mode on the
    one-hot posterior mode). ``z``: explain at these probabilities instead of
    ``softmax(post_logits)`` (e.g. the one-hot sample the agent acted on).
    """
    from captum.attr import FeatureAblation, IntegratedGradients

    rssm = agent.wm.rssm
    S, K = rssm.stoch_size, rssm.classes
    h, lg = _check_latent(agent, deter, post_logits, "post_logits")
    inp = (rssm.relaxed_stoch(lg) if z is None else _to_tensor(z, agent.device).float()).reshape(1, S * K)
    base, base_name = _baseline_probs(agent, h, baseline, prior)
    abl, abl_name = (base, base_name) if ablation_baseline is None else _baseline_probs(agent, h, ablation_baseline,
                                                                                         prior)
    if target == "action" and action is not None and not 0 <= int(action) < agent.spec.num_actions:
        raise ValueError(f"action {action} out of range for {agent.spec.num_actions} actions")
    with attribution_guard(agent):
        fwd = LatentForward(agent, h, target, None if action is None else int(action))
        if target == "action" and fwd.action is None:
            with torch.no_grad():
                # the agent's own choice: actor mode on the one-hot posterior mode (Agent.policy eval)
                onehot = rssm.mode_stoch(lg).float().reshape(1, S * K)
                fwd.action = int(agent.actor.net(latent_feat(agent, h[None], onehot)).argmax(-1)[0])
        attr, delta = IntegratedGradients(fwd).attribute(inp.clone(), baselines=base, n_steps=n_steps,
                                                         method=method, return_convergence_delta=True)
        mask = torch.arange(S, device=agent.device).repeat_interleave(K)[None]
        with torch.no_grad():
            ablation = FeatureAblation(fwd).attribute(inp.clone(), baselines=abl, feature_mask=mask,
                                                      perturbations_per_eval=S)
            value, base_value = float(fwd(inp)[0]), float(fwd(base)[0])
    ig = attr.detach().reshape(S, K).cpu().numpy().astype(np.float64)
    per_ablation = ablation.detach().reshape(S, K)[:, 0].cpu().numpy().astype(np.float64)
    return LatentAttribution(map=ig, per_variable=ig.sum(1), per_variable_ablation=per_ablation,
                             delta=float(delta.reshape(-1)[0]), target=target,
                             action=fwd.action if target == "action" else None, value=value,
                             baseline_value=base_value, baseline=base_name, ablation_baseline=abl_name,
                             n_steps=n_steps, params={"method": method, "z": "probs" if z is None else "given"})


# ---- what does a latent class mean ---------------------------------------------------------------
def _need_classes(rssm) -> None:
    if rssm.latent_kind != "categorical":
        raise ValueError(f"this agent's latents are {rssm.latent_kind} (DreamerV1, World Models): they have no classes to switch")


def _onehot_stoch(agent, stoch: Any) -> torch.Tensor:
    rssm = agent.wm.rssm
    z = _to_tensor(stoch, agent.device)
    if not z.dtype.is_floating_point and z.numel() == rssm.stoch_size:  # class indices [stoch]
        z = F.one_hot(z.long().reshape(-1), rssm.classes)
    z = z.float()
    if z.numel() != rssm.stoch_size * rssm.classes:
        raise ValueError(f"stoch has shape {tuple(z.shape)}, this model needs ({rssm.stoch_size}, {rssm.classes})")
    z = z.reshape(rssm.stoch_size, rssm.classes)
    # Straight-through samples (onehot + probs - probs.detach()) are one-hot only up to rounding:
    # snap them to the exact one-hot the agent meant; genuine probabilities are kept as they are.
    exact = F.one_hot(z.argmax(-1), rssm.classes).float()
    return exact if torch.allclose(z, exact, atol=1e-5, rtol=0) else z


def class_effect(agent, deter: Any, stoch_onehot: Any, variable: int, cls: int) -> np.ndarray:
    """Decoded image with latent ``variable`` switched to class ``cls`` minus the decoded original.

    ``deter`` ``[deter]``; ``stoch_onehot`` ``[stoch, classes]`` (or class indices ``[stoch]``).
    Returns ``[C, 64, 64]`` in decoder units (images live in [-0.5, 0.5], so differences in [-1, 1]).
    Switching to the class the variable already has gives exactly zero.
    """
    rssm = agent.wm.rssm
    _need_classes(rssm)
    if not 0 <= int(variable) < rssm.stoch_size:
        raise ValueError(f"variable {variable} out of range for {rssm.stoch_size} latent variables")
    if not 0 <= int(cls) < rssm.classes:
        raise ValueError(f"class {cls} out of range for {rssm.classes} classes")
    h = _to_tensor(deter, agent.device).float().reshape(1, -1)
    z = _onehot_stoch(agent, stoch_onehot)
    switched = z.clone()
    switched[int(variable)] = F.one_hot(torch.tensor(int(cls), device=agent.device), rssm.classes).float()
    with attribution_guard(agent), torch.no_grad():
        # Two separate, identically shaped calls: the same input gives the bit-identical output.
        original = agent.wm.decode(latent_feat(agent, h, z.reshape(1, -1)))
        changed = agent.wm.decode(latent_feat(agent, h, switched.reshape(1, -1)))
    return (changed - original)[0].cpu().numpy()


def class_effects(agent, deter: Any, stoch_onehot: Any, variable: int) -> np.ndarray:
    """:func:`class_effect` for every class of ``variable``: ``[classes, C, 64, 64]`` (one batched decode)."""
    rssm = agent.wm.rssm
    _need_classes(rssm)
    if not 0 <= int(variable) < rssm.stoch_size:
        raise ValueError(f"variable {variable} out of range for {rssm.stoch_size} latent variables")
    h = _to_tensor(deter, agent.device).float().reshape(1, -1)
    z = _onehot_stoch(agent, stoch_onehot)
    K = rssm.classes
    zs = z[None].repeat(K + 1, 1, 1)
    zs[1:, int(variable)] = torch.eye(K, device=agent.device)
    with attribution_guard(agent), torch.no_grad():
        images = agent.wm.decode(latent_feat(agent, h.expand(K + 1, -1), zs.flatten(1)))
    out = (images[1:] - images[:1]).cpu().numpy()
    current = int(z[int(variable)].argmax())
    if torch.equal(z[int(variable)], torch.eye(K, device=agent.device)[current]):
        out[current] = 0.0  # exact identity (batched kernels need not be bit-identical across rows)
    return out


def class_conditional_means(frames: Any, post_samples: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean frame over the steps where variable i had class c.

    ``frames`` ``[N, C, H, W]`` (any dtype; averaged as float32 in the same units); ``post_samples``
    one-hot ``[N, stoch, classes]`` (probabilities are reduced to their argmax) or class indices
    ``[N, stoch]`` -- then the number of classes is ``max + 1``. Returns ``(means, counts)``:
    ``means`` ``[stoch, classes, C, H, W]`` with NaN where a class never occurred, ``counts``
    ``[stoch, classes]``.
    """
    x = np.asarray(frames, dtype=np.float32)
    s = np.asarray(post_samples)
    if x.ndim != 4:
        raise ValueError(f"frames must be [N, C, H, W], got shape {x.shape}")
    if s.ndim == 3:
        index, K = s.argmax(-1), s.shape[-1]
    elif s.ndim == 2:
        index, K = s.astype(np.int64), int(s.max()) + 1
    else:
        raise ValueError(f"post_samples must be [N, stoch, classes] or [N, stoch], got shape {s.shape}")
    if index.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} frames but {index.shape[0]} latent samples")
    N, S = index.shape
    onehot = np.zeros((N, S, K), np.float32)
    np.put_along_axis(onehot, index[..., None], 1.0, -1)
    counts = onehot.sum(0).astype(np.int64)
    sums = np.einsum("nsk,nd->skd", onehot, x.reshape(N, -1), optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[..., None]
    means[counts == 0] = np.nan
    return means.reshape(S, K, *x.shape[1:]).astype(np.float32), counts
