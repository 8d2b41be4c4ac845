"""Attribution over the recurrent memory h_t as well as the latent z_t (issue #30: "attribution over the 32 z
dimensions and the LSTM state"; it applies to every member).

The decision at step t reads the feature of (h_t, z_t): the RSSM's GRU state and its latent (Dreamer), or M's LSTM
hidden state and V's z (World Models' C acts on [z, h]). Pixel saliency and ``latent_attribution`` hold h_t fixed,
so what the agent carries from earlier frames (the ball seen three steps ago) gets no credit there. Here one
IntegratedGradients pass attributes the explained score jointly to every unit of h_t and every entry of z_t, from a
baseline that means "nothing remembered, nothing seen": the member's initial memory h_0 (zeros: DreamerV2's and
World Models' episode start) with z at the prior p(z | h_0). Completeness makes the two parts add up to
f(h_t, z_t) - f(h_0, z_0), so ``memory_share`` (the share of |attribution| on h) says how much of the decision
rests on memory.

Each unit's IG is checked against an intervention, FeatureAblation: unit i alone set to its baseline value with
everything else as it is. ``ablate_units`` sets a group of units at once, which is how the tests score a ranking:
the agent's own top supporting units (largest positive IG) must lower its score more than the top units a
randomised copy of the agent names
(tests/test_memory_attribution.py).

For World Models the memory is M's (h, c); C reads h only, so c's units get zero and the share is over h. The
score is the explained action's log-probability (discrete), the pre-tanh mean of one action dimension
(continuous), or the critic's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .attribution import _check_latent, latent_feat
from .saliency import NO_CRITIC, _to_tensor, actor_outputs, attribution_guard

TARGETS = ("action", "value")


@dataclass
class MemoryAttribution:
    """Joint IG over h_t (``per_unit`` ``[deter]``) and z_t (``per_latent`` ``[stoch]``) at one step."""

    per_unit: np.ndarray  # [deter] IG on each unit of h_t
    per_latent: np.ndarray  # [stoch] IG on each latent variable (summed over its classes)
    per_unit_ablation: np.ndarray  # [deter] f(h, z) - f(h with unit i at its baseline, z)
    delta: float  # completeness: sum of all attributions - (value - baseline_value)
    target: str
    action: int | None
    value: float
    baseline_value: float
    n_steps: int

    @property
    def memory_share(self) -> float:
        """Share of the total |attribution| on the memory h_t (0: the decision rests on z_t alone)."""
        total = np.abs(self.per_unit).sum() + np.abs(self.per_latent).sum()
        return float(np.abs(self.per_unit).sum() / total) if total > 0 else 0.0

    @property
    def agreement(self) -> float:
        """Spearman rank correlation of |IG| with |ablation effect| over the units that either moves (NaN when
        fewer than three do)."""
        a, b = np.abs(self.per_unit), np.abs(self.per_unit_ablation)
        live = (a > 0) | (b > 0)
        if live.sum() < 3 or np.ptp(a[live]) == 0 or np.ptp(b[live]) == 0:  # no ranking to compare
            return float("nan")
        from scipy.stats import spearmanr

        return float(spearmanr(a[live], b[live]).statistic)

    def top_units(self, k: int = 5, signed: bool = False) -> list[int]:
        """The k units with the largest |IG|, or (``signed``) the largest IG: those that most support the score."""
        score = self.per_unit if signed else np.abs(self.per_unit)
        return [int(i) for i in np.argsort(-score)[:k]]

    def to_dict(self) -> dict:
        return {"target": self.target, "action": self.action, "value": self.value,
                "baseline_value": self.baseline_value, "delta": self.delta, "n_steps": self.n_steps,
                "baseline": "initial memory h_0, z at the prior p(z | h_0)",
                "memory_share": self.memory_share, "agreement_with_ablation": self.agreement,
                "top_units": self.top_units(), "per_unit": self.per_unit.tolist(),
                "per_latent": self.per_latent.tolist(), "per_unit_ablation": self.per_unit_ablation.tolist()}


class _Score:
    """``(h [N, deter], z [N, stoch * width]) -> score [N]`` through the agent's own actor or critic."""

    def __init__(self, agent, target: str, action: int | None) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
        if target == "value" and not getattr(agent, "has_critic", True):
            raise ValueError(NO_CRITIC)
        if target == "action" and not agent.spec.discrete and action is None:
            raise ValueError("for a continuous-action agent give action=<dimension> to explain")
        if action is not None and not 0 <= int(action) < agent.spec.num_actions:
            raise ValueError(f"action {action} out of range for {agent.spec.num_actions} actions")
        self.agent, self.target, self.action = agent, target, None if action is None else int(action)

    def outputs(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return actor_outputs(self.agent, latent_feat(self.agent, h, z))

    def __call__(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.target == "value":
            return self.agent.ac.value(latent_feat(self.agent, h, z))
        out = self.outputs(h, z)
        return out.log_softmax(-1)[:, self.action] if self.agent.spec.discrete else out[:, self.action]


def baseline_state(agent) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline (h_0 ``[1, deter]``, z_0 ``[1, stoch * width]``): the member's initial memory and the relaxed
    prior latent at it."""
    rssm = agent.wm.rssm
    h0 = rssm.initial(1, agent.device).deter.float()
    with torch.no_grad():
        if hasattr(rssm, "prior_logits"):  # World Models' view: M's mixture, moment-matched
            logits = rssm.prior_logits(h0)
        else:
            _, logits = rssm._stoch_from_logits(rssm.img_out(h0), sample=False)
    return h0, rssm.relaxed_stoch(logits).reshape(1, -1).float()


def _inputs(agent, deter: Any, post_logits: Any) -> tuple[torch.Tensor, torch.Tensor]:
    h, lg = _check_latent(agent, deter, post_logits, "post_logits")
    return h.reshape(1, -1), agent.wm.rssm.relaxed_stoch(lg).reshape(1, -1).float()


def memory_attribution(agent, deter: Any, post_logits: Any, target: str = "action", action: int | None = None,
                       *, n_steps: int = 32) -> MemoryAttribution:
    """IntegratedGradients over (h_t, z_t) jointly from (h_0, z_0), and FeatureAblation over h_t's units.

    ``deter`` ``[deter]`` and ``post_logits`` (``[stoch, classes]``; Gaussian latents ``[stoch, 2]``): the
    posterior at step t, as a trace records them. ``action``: the action whose log-probability is explained
    (default: the agent's choice at this state); for continuous actions, the dimension whose pre-tanh mean is.
    """
    from captum.attr import FeatureAblation, IntegratedGradients

    h, z = _inputs(agent, deter, post_logits)
    h0, z0 = baseline_state(agent)
    score = _Score(agent, target, action)
    with attribution_guard(agent):
        if target == "action" and score.action is None:
            with torch.no_grad():
                score.action = int(score.outputs(h, z).argmax(-1)[0])
        (attr_h, attr_z), delta = IntegratedGradients(score).attribute(
            (h.clone(), z.clone()), baselines=(h0, z0), n_steps=n_steps, method="gausslegendre",
            return_convergence_delta=True)
        with torch.no_grad():
            ablation = FeatureAblation(lambda hh: score(hh, z.expand(hh.shape[0], -1))).attribute(
                h.clone(), baselines=h0, perturbations_per_eval=64)
            value, base_value = float(score(h, z)[0]), float(score(h0, z0)[0])
    stoch = agent.wm.rssm.stoch_size
    return MemoryAttribution(
        per_unit=attr_h.detach()[0].cpu().double().numpy(),
        per_latent=attr_z.detach().reshape(stoch, -1).sum(1).cpu().double().numpy(),
        per_unit_ablation=ablation.detach()[0].cpu().double().numpy(), delta=float(delta.reshape(-1)[0]),
        target=target, action=score.action if target == "action" else None, value=value,
        baseline_value=base_value, n_steps=n_steps)


def ablate_units(agent, deter: Any, post_logits: Any, units: Sequence[int], target: str = "action",
                 action: int | None = None) -> float:
    """f(h, z) - f(h with ``units`` at their baseline values, z): the drop in the score when those units forget
    (the intervention that scores a ranking: the units with the largest positive IG should drop it most; ranked by
    |IG| instead, positive and negative units cancel)."""
    return ablate_unit_sets(agent, deter, post_logits, {"units": units}, target, action)["units"]


def ablate_unit_sets(agent, deter: Any, post_logits: Any, sets: Mapping[str, Sequence[int]], target: str = "action",
                     action: int | None = None) -> dict[str, float]:
    """``ablate_units`` for several unit sets at one state, the unedited score and the baseline computed once."""
    h, z = _inputs(agent, deter, post_logits)
    h0, _ = baseline_state(agent)
    score = _Score(agent, target, action)
    out = {}
    with torch.no_grad():
        if target == "action" and score.action is None:
            score.action = int(score.outputs(h, z).argmax(-1)[0])
        unedited = float(score(h, z)[0])
        for name, units in sets.items():
            edited = h.clone()
            index = torch.as_tensor(list(units), dtype=torch.long, device=h.device)
            edited[0, index] = h0[0, index]
            out[name] = unedited - float(score(edited, z)[0])
    return out