"""Latent attributions checked by intervention (issue #27, item 4).

A latent attribution is a claim: "the decision depends on variable i this much". The check is to set variable i to
other values *the model actually uses* and watch the decision (Geiger et al. 2021, "Causal abstractions of neural
networks", interchange interventions; Hase et al. 2021 on out-of-distribution ablations). Here:

* **The on-manifold reference.** The aggregate posterior m_i(c) -- how often variable i takes class c over the
  recorded steps -- gives each variable's values in use. The *intervention effect* of variable i at step t is the
  expected change of the action distribution when the variable is set to a class drawn from m_i, all else (h_t and
  the other variables' one-hot classes) held::

      effect_i = sum_c m_i(c) * TV(pi(. | h_t, z_t), pi(. | h_t, z_t with variable i := one-hot c))

  with TV = 0.5 * sum_a |p'(a) - p(a)|. It is exact (one batched forward of ``stoch x classes`` rows), not sampled.
* **The attribution under test** explains log pi(a_t | h_t, z_t) at the one-hot z the agent acted on, by
  IntegratedGradients and FeatureAblation (``attribution.latent_attribution``) from a baseline: the aggregate
  posterior (each variable's distribution over the steps recorded: "what the policy depends on") or the prior
  p(z_t | h_t) (what the world model expected; issue #27 measured that ranking to predict the interventions at
  Spearman 0.03 / -0.12: it measures surprise).
* **The check.** Per step, Spearman(|attribution|, effect) over the variables, against two nulls that do not consult
  the actor: the per-variable surprise KL(posterior || prior) and a random order. And the joint test: intervening on
  the top-k variables together (interchange: their classes copied from every other recorded step) against k random
  variables and against the k variables with the largest effects (the oracle: the best any ranking can do).

Steps where the actor is saturated (``objects.SATURATED``: p(mode) > 0.95) are skipped: every intervention can only
lower the mode a little there, and any ranking is noise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .attribution import latent_feat
from .audit_checks import bootstrap_ci
from .faithfulness import spearman
from .objects import SATURATED
from .saliency import _to_tensor, attribution_guard

__all__ = ["aggregate_posterior", "VariableEffects", "variable_effects", "joint_effect", "InterventionCheck",
           "intervention_check", "RANKINGS", "BASELINES"]

BASELINES = ("aggregate", "prior")
# The rankings compared with the intervention effect: the attribution (IG / FeatureAblation) under each baseline, and
# two nulls that do not read the actor.
RANKINGS = ("aggregate_ig", "aggregate_ablation", "prior_ig", "prior_ablation", "surprise", "random")


def aggregate_posterior(post_class: Any, classes: int) -> np.ndarray:
    """``[stoch, classes]``: how often each variable takes each class over the steps given (class indices ``[N, stoch]``
    or one-hot ``[N, stoch, classes]``). Rows sum to 1."""
    c = np.asarray(post_class)
    if c.ndim == 3:
        c = c.argmax(-1)
    if c.ndim != 2 or c.shape[0] == 0:
        raise ValueError(f"post_class must be [N, stoch] class indices with N > 0, got shape {c.shape}")
    if c.min() < 0 or c.max() >= classes:
        raise ValueError(f"class indices must lie in [0, {classes})")
    onehot = np.zeros((*c.shape, classes), np.float64)
    np.put_along_axis(onehot, c[..., None].astype(np.int64), 1.0, -1)
    return onehot.mean(0)


def _categorical(rssm) -> None:
    if rssm.latent_kind != "categorical":
        raise ValueError(f"the intervention check switches categorical classes; this agent's latents are "
                         f"{rssm.latent_kind} (DreamerV1, World Models)")


def _probs(agent, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Actor probabilities ``[N, A]`` at ``h`` ``[1, deter]`` and one-hot ``z`` ``[N, stoch, classes]``."""
    feat = latent_feat(agent, h.expand(z.shape[0], -1), z.flatten(1))
    return agent.actor.net(feat).float().softmax(-1)


def _onehot(agent, z: Any) -> torch.Tensor:
    rssm = agent.wm.rssm
    t = _to_tensor(z, agent.device)
    if not t.dtype.is_floating_point and t.numel() == rssm.stoch_size:
        return F.one_hot(t.long().reshape(-1), rssm.classes).float()
    t = t.float().reshape(rssm.stoch_size, rssm.classes)
    if not torch.equal(t, F.one_hot(t.argmax(-1), rssm.classes).float()):
        raise ValueError("z must be one-hot (the classes the agent acted on) or class indices [stoch]")
    return t


@dataclasses.dataclass
class VariableEffects:
    """Per-variable intervention effects at one step (module docstring)."""

    tv: np.ndarray  # [stoch] expected TV of the action distribution over c ~ m_i
    dlogp: np.ndarray  # [stoch] expected |log pi'(a) - log pi(a)| of the explained action
    per_class_tv: np.ndarray  # [stoch, classes] TV when variable i := class c (0 for its own class)
    probs: np.ndarray  # [A] the unedited action distribution
    action: int


def variable_effects(agent, deter: Any, z: Any, marginals: Any, action: int | None = None) -> VariableEffects:
    """Intervention effects of every latent variable at one step: ``deter`` h_t ``[deter]``, ``z`` the one-hot classes
    the agent acted on ``[stoch, classes]`` (or indices ``[stoch]``), ``marginals`` the aggregate posterior
    ``[stoch, classes]``; ``action`` the explained action (default: the actor's mode)."""
    rssm = agent.wm.rssm
    _categorical(rssm)
    S, K = rssm.stoch_size, rssm.classes
    h = _to_tensor(deter, agent.device).float().reshape(1, -1)
    if h.shape[1] != rssm.deter_size:
        raise ValueError(f"deter has {h.shape[1]} entries, this model has {rssm.deter_size}")
    z1 = _onehot(agent, z)
    m = _to_tensor(marginals, agent.device).float()
    if m.shape != (S, K):
        raise ValueError(f"marginals have shape {tuple(m.shape)}, this model needs ({S}, {K})")
    zs = z1[None, None].repeat(S, K, 1, 1)  # [S, K, S, K]: row (i, c) has variable i set to class c
    index = torch.arange(S, device=agent.device)
    zs[index, :, index] = torch.eye(K, device=agent.device)
    with attribution_guard(agent), torch.no_grad():
        p0 = _probs(agent, h, z1[None])[0]
        p = _probs(agent, h, zs.reshape(S * K, S, K)).reshape(S, K, -1)
    a = int(p0.argmax()) if action is None else int(action)
    if not 0 <= a < p0.numel():
        raise ValueError(f"action {a} out of range for {p0.numel()} actions")
    tv = 0.5 * (p - p0).abs().sum(-1)  # [S, K]
    dlogp = (p[..., a].clamp_min(1e-12).log() - p0[a].clamp_min(1e-12).log()).abs()
    own = z1.argmax(-1)
    tv[index, own] = 0.0  # a variable set to its own class is no intervention (batched rows need not be bit-equal)
    dlogp[index, own] = 0.0
    return VariableEffects(tv=(tv * m).sum(-1).cpu().numpy().astype(np.float64),
                           dlogp=(dlogp * m).sum(-1).cpu().numpy().astype(np.float64),
                           per_class_tv=tv.cpu().numpy().astype(np.float64),
                           probs=p0.cpu().numpy().astype(np.float64), action=a)


def joint_effect(agent, deter: Any, z: Any, variables: Sequence[int], pool: Any) -> float:
    """Interchange intervention on several variables at once: mean TV of the action distribution when ``variables``
    take their classes from each row of ``pool`` (class indices ``[M, stoch]``, e.g. every recorded step)."""
    rssm = agent.wm.rssm
    h = _to_tensor(deter, agent.device).float().reshape(1, -1)
    z1 = _onehot(agent, z)
    rows = torch.as_tensor(np.asarray(pool), device=agent.device).long()
    V = torch.as_tensor(list(variables), device=agent.device).long()
    if rows.ndim != 2 or rows.shape[1] != rssm.stoch_size:
        raise ValueError(f"pool must be class indices [M, {rssm.stoch_size}], got shape {tuple(rows.shape)}")
    zs = z1[None].repeat(rows.shape[0], 1, 1)
    zs[:, V] = F.one_hot(rows[:, V], rssm.classes).float()
    with attribution_guard(agent), torch.no_grad():
        p0 = _probs(agent, h, z1[None])
        p = _probs(agent, h, zs)
    return float((0.5 * (p - p0).abs().sum(-1)).mean())


def _surprise(post_logits: np.ndarray, prior_logits: np.ndarray) -> np.ndarray:
    q = torch.as_tensor(np.asarray(post_logits, np.float64)).log_softmax(-1)
    p = torch.as_tensor(np.asarray(prior_logits, np.float64)).log_softmax(-1)
    return (q.exp() * (q - p)).sum(-1).numpy()


@dataclasses.dataclass
class InterventionCheck:
    """How well each latent ranking predicts the intervention effects, over the checked steps."""

    steps: list[int]
    spearman: dict[str, np.ndarray]  # ranking -> [steps] Spearman(|ranking|, effect)
    effect: np.ndarray  # [steps, stoch] intervention effect (expected TV)
    joint: dict[str, np.ndarray]  # "top" (per ranking "top:<name>"), "random", "oracle" -> [steps] joint TV
    k: int
    skipped_saturated: int

    def summary(self, seed: int = 0) -> dict[str, Any]:
        """Medians of the per-step Spearman and means of the joint effects, with 95 % bootstrap intervals, and the
        ratio top-k / random-k (issue #27's target: >= 2) and oracle-k / random-k (the most any ranking can reach)."""
        out: dict[str, Any] = {"steps": len(self.steps), "k": self.k, "skipped_saturated": self.skipped_saturated,
                               "spearman": {}, "joint": {}}
        for name, values in self.spearman.items():
            median, lo, hi = bootstrap_ci(values, np.median, seed=seed)
            out["spearman"][name] = {"median": median, "ci": [lo, hi]}
        rnd = float(np.mean(self.joint["random"])) if len(self.steps) else float("nan")
        for name, values in self.joint.items():
            mean = float(np.mean(values)) if len(values) else float("nan")
            out["joint"][name] = {"mean_tv": mean, "ratio_to_random": mean / rnd if rnd > 0 else None}
        return out


def intervention_check(agent, trace, steps: Sequence[int] | None = None, k: int = 5, every: int = 1,
                       n_random: int = 20, seed: int = 0, n_steps: int = 32, max_steps: int | None = 200,
                       progress: bool = False) -> InterventionCheck:
    """Score every ranking of :data:`RANKINGS` against the intervention effects at ``steps`` of ``trace`` (default:
    every ``every``-th step, at most ``max_steps`` of them; saturated steps skipped). The aggregate posterior is the
    trace's own (all its steps). ``k``: variables in the joint top-k / random-k interventions."""
    from tqdm.auto import tqdm

    from .attribution import latent_attribution

    a = trace.arrays
    rssm = agent.wm.rssm
    _categorical(rssm)
    S, K = rssm.stoch_size, rssm.classes
    if not agent.spec.discrete:
        raise ValueError("the intervention check explains the chosen action's probability; it needs discrete actions")
    if a["post_logits"].shape[1:] != (S, K):
        raise ValueError(f"the trace's latents are {a['post_logits'].shape[1:]}, this model has ({S}, {K})")
    if not 1 <= int(k) < S:
        raise ValueError(f"k must be between 1 and {S - 1}, got {k}")
    n = len(a["action"])
    if steps is None:
        steps = list(range(0, n, max(1, int(every))))[: max_steps or None]
    steps = [trace.check_step(t) for t in steps]
    classes = np.asarray(a["post_class"]).astype(np.int64)
    marg = aggregate_posterior(classes, K)
    rng = np.random.default_rng(seed)
    rho: dict[str, list[float]] = {r: [] for r in RANKINGS}
    joint: dict[str, list[float]] = {"random": [], "oracle": [], **{f"top:{r}": [] for r in RANKINGS[:4]}}
    effects, kept, saturated = [], [], 0
    for t in tqdm(steps, desc="interventions", unit="step", disable=not progress):
        deter, z = a["deter"][t], classes[t]
        eff = variable_effects(agent, deter, z, marg)
        if eff.probs.max() > SATURATED:
            saturated += 1
            continue
        zoh = np.eye(K, dtype=np.float32)[z]
        ranks = {}
        for base in BASELINES:
            la = latent_attribution(agent, deter, a["post_logits"][t], action=eff.action, z=zoh,
                                    baseline=marg if base == "aggregate" else "prior", n_steps=n_steps)
            ranks[f"{base}_ig"] = np.abs(la.per_variable)
            ranks[f"{base}_ablation"] = np.abs(la.per_variable_ablation)
        ranks["surprise"] = _surprise(a["post_logits"][t], a["prior_logits"][t])
        ranks["random"] = rng.random(S)
        for name in RANKINGS:
            rho[name].append(spearman(ranks[name], eff.tv))
        for name in RANKINGS[:4]:
            joint[f"top:{name}"].append(joint_effect(agent, deter, z, np.argsort(-ranks[name])[:k], classes))
        joint["oracle"].append(joint_effect(agent, deter, z, np.argsort(-eff.tv)[:k], classes))
        joint["random"].append(float(np.mean([joint_effect(agent, deter, z, rng.choice(S, k, replace=False), classes)
                                              for _ in range(n_random)])))
        effects.append(eff.tv)
        kept.append(t)
    return InterventionCheck(steps=kept, spearman={r: np.asarray(v) for r, v in rho.items()},
                             effect=np.asarray(effects).reshape(len(kept), S),
                             joint={r: np.asarray(v) for r, v in joint.items()}, k=int(k),
                             skipped_saturated=saturated)
