"""Faithfulness numbers shipped with the explanations (issue 3, part 8).

* **Deletion / insertion curves** (Petsiuk et al. 2018, RISE) with blur fill: pixels are ranked
  by the saliency map (highest value first; for signed maps, the most supporting pixels first);
  deletion replaces the top-k fraction by the Gaussian-blurred frame, insertion pastes the top-k
  pixels of the real frame into the blurred frame. Score: the chosen action's probability (or the
  value). A faithful map gives a low deletion AUC and a high insertion AUC (trapezoid over the
  fraction of pixels in [0, 1]).
* **Cascading model randomisation** (Adebayo et al. 2018, "Sanity checks for saliency maps"):
  re-initialise (with the agent's own initialiser) the layers of a deep copy of the agent from the
  top (the actor's / critic's output layer) down through the posterior head to the encoder's
  first convolution, cumulatively, and recompute the map after each stage. Reported: Spearman
  rank correlation between the trained and the randomised map per stage. A map that stays highly
  correlated while the network is destroyed does not explain the network.
* **IntegratedGradients completeness delta** ``sum(attr) - (f(x) - f(baseline))``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .saliency import (PixelForward, SaliencyMap, attribution_guard, gaussian_blur, saliency,
                       to_unit_frame)


# ---- rank statistics (numpy only) ----------------------------------------------------------------
def rankdata(values: Any) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata(method='average')``)."""
    a = np.ravel(np.asarray(values, dtype=np.float64))
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(a.size, dtype=np.intp)
    inv[sorter] = np.arange(a.size, dtype=np.intp)
    s = a[sorter]
    first = np.r_[True, s[1:] != s[:-1]]
    dense = first.cumsum()[inv]
    bounds = np.r_[np.nonzero(first)[0], a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation in [-1, 1]; NaN when either input is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise ValueError(f"sizes differ: {ra.size} vs {rb.size}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if denom == 0:
        return float("nan")
    return float(np.clip((ra * rb).sum() / denom, -1.0, 1.0))


def trapezoid_auc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(((y[1:] + y[:-1]) * np.diff(x)).sum() / 2)


# ---- deletion / insertion ------------------------------------------------------------------------
@dataclass
class DeletionInsertion:
    fractions: np.ndarray  # [steps + 1] fraction of pixels deleted / inserted, 0..1
    deletion: np.ndarray  # [steps + 1] score after deleting the top fraction
    insertion: np.ndarray  # [steps + 1] score after inserting the top fraction into the blurred frame
    deletion_auc: float
    insertion_auc: float
    score: str
    action: int | None = None
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc, "score": self.score,
                "action": self.action, "fractions": self.fractions.tolist(), "deletion": self.deletion.tolist(),
                "insertion": self.insertion.tolist(), "params": self.params}


def deletion_insertion_curves(forward: Callable[[torch.Tensor], torch.Tensor], frame: torch.Tensor,
                              saliency_map: Any, steps: int = 32, blur_sigma: float = 5.0,
                              batch_size: int = 66, score: str = "prob") -> DeletionInsertion:
    """Curves for any scalar-per-example ``forward`` at ``frame`` ``[1, C, H, W]`` and a map ``[H, W]``."""
    frame = frame.detach().float()
    _, C, H, W = frame.shape
    smap = np.asarray(saliency_map, dtype=np.float64)
    if smap.shape != (H, W):
        raise ValueError(f"saliency map has shape {smap.shape}, the frame is {H}x{W}")
    order = np.argsort(-smap.ravel(), kind="stable")  # most salient first
    rank = np.empty(H * W, dtype=np.int64)
    rank[order] = np.arange(H * W)
    rank_t = torch.as_tensor(rank.reshape(1, 1, H, W), device=frame.device)
    counts = np.round(np.linspace(0, H * W, steps + 1)).astype(np.int64)
    blurred = gaussian_blur(frame, blur_sigma)
    deleted, inserted = [], []
    for k in counts:
        top = (rank_t < int(k)).float()  # [1, 1, H, W], broadcast over channels
        deleted.append(frame * (1 - top) + blurred * top)
        inserted.append(blurred * (1 - top) + frame * top)
    batch = torch.cat(deleted + inserted)
    with torch.no_grad():
        scores = torch.cat([forward(batch[i:i + batch_size]).reshape(-1)
                            for i in range(0, batch.shape[0], batch_size)]).cpu().numpy().astype(np.float64)
    fractions = counts / (H * W)
    d, ins = scores[:steps + 1], scores[steps + 1:]
    return DeletionInsertion(fractions=fractions, deletion=d, insertion=ins, deletion_auc=trapezoid_auc(fractions, d),
                             insertion_auc=trapezoid_auc(fractions, ins), score=score,
                             params={"steps": steps, "blur_sigma": blur_sigma})


def deletion_insertion(agent, frame: Any, saliency_map: Any, prev_state: Any = None, prev_action: Any = None,
                       target: str = "action", action: int | None = None, *, is_first: bool = False,
                       steps: int = 32, blur_sigma: float = 5.0, score: str = "prob") -> DeletionInsertion:
    """Deletion / insertion curves of the agent's chosen-action probability (or value) for a map
    (a :class:`SaliencyMap` -- its action is reused -- or an array ``[64, 64]``)."""
    if isinstance(saliency_map, SaliencyMap):
        action = saliency_map.action if action is None else action
        target = saliency_map.target
        saliency_map = saliency_map.map
    x = to_unit_frame(frame, agent.device)
    with attribution_guard(agent):
        fwd = PixelForward(agent, prev_state, prev_action, is_first, target, score, action)
        chosen = fwd.resolve_action(x)
        result = deletion_insertion_curves(fwd, x, saliency_map, steps=steps, blur_sigma=blur_sigma,
                                           score=score if target == "action" else "value")
    result.action = chosen
    return result


# ---- cascading model randomisation ---------------------------------------------------------------
def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]


def randomization_stages(agent, target: str = "action") -> list[str]:
    """Qualified module names, top (output head) first, down to the encoder's first convolution."""
    names = {id(m): n for n, m in agent.named_modules()}
    head = agent.actor.net if target == "action" else agent.ac.critic
    order = _layers(head)[::-1] + _layers(agent.wm.rssm.obs_out)[::-1] + _layers(agent.wm.encoder)[::-1]
    return [names[id(m)] for m in order]


def _reinitialise(module: nn.Module) -> None:
    """Re-draw ``module``'s weights with the agent's own initialiser (``nets.init_weights``: Glorot
    weights, zero biases), falling back to PyTorch's ``reset_parameters``."""
    try:
        from ..nets import init_weights
    except ImportError:  # pragma: no cover - older package without a shared initialiser
        init_weights = None
    with torch.no_grad():
        if init_weights is not None:
            init_weights(module)
        for m in module.modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def _detached_copy(agent):
    """Deep copy of the agent without its optimisers (their state is not needed and may be large)."""
    memo = {id(agent.optimizers): {}} if hasattr(agent, "optimizers") else {}
    return copy.deepcopy(agent, memo)


@dataclass
class RandomizationCheck:
    stages: list[str]  # module re-initialised at each stage (cumulative, top down)
    correlations: np.ndarray  # [stages] Spearman(trained map, randomised map)
    maps: np.ndarray  # [stages + 1, 64, 64]; maps[0] is the trained agent's
    method: str
    target: str
    action: int | None
    absolute: bool

    def to_dict(self) -> dict:
        return {"method": self.method, "target": self.target, "action": self.action, "absolute": self.absolute,
                "stages": self.stages, "spearman": [None if np.isnan(c) else float(c) for c in self.correlations]}


def randomization_check(agent, frame: Any, prev_state: Any = None, prev_action: Any = None,
                        target: str = "action", method: str = "saliency", action: int | None = None, *,
                        is_first: bool = False, stages: list[str] | None = None, seed: int = 0,
                        absolute: bool = True, **options: Any) -> RandomizationCheck:
    """Adebayo et al.'s cascading randomisation on a deep copy (the agent itself is not touched).

    ``stages``: module names to re-initialise in order (default :func:`randomization_stages`).
    ``absolute``: correlate |map| (Adebayo et al. report both; magnitudes suit sign-free methods).
    ``options`` go to :func:`saliency`. The explained action is fixed to the trained agent's.
    """
    trained = saliency(agent, frame, prev_state, prev_action, target, method, action, is_first=is_first, **options)
    action = trained.action
    stages = randomization_stages(agent, target) if stages is None else list(stages)
    clone = _detached_copy(agent)
    modules = dict(clone.named_modules())
    missing = [s for s in stages if s not in modules]
    if missing:
        raise ValueError(f"unknown modules for randomisation: {missing}")
    maps, corrs = [trained.map], []
    reference = np.abs(trained.map) if absolute else trained.map
    for k, name in enumerate(stages):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            _reinitialise(modules[name])
        result = saliency(clone, frame, prev_state, prev_action, target, method, action, is_first=is_first, **options)
        maps.append(result.map)
        corrs.append(spearman(reference, np.abs(result.map) if absolute else result.map))
    return RandomizationCheck(stages=stages, correlations=np.asarray(corrs, dtype=np.float64), maps=np.stack(maps),
                              method=trained.method, target=target, action=action, absolute=absolute)


# ---- IG completeness -------------------------------------------------------------------------------
def completeness(result: Any) -> dict:
    """Completeness numbers of an IG result (:class:`SaliencyMap` from ``integrated_gradients`` or a
    ``LatentAttribution``): ``delta``, ``gap = f(x) - f(baseline)`` and ``relative = |delta| / |gap|``."""
    delta, value, base = result.delta, result.value, result.baseline_value
    if delta is None or base is None:
        raise ValueError("completeness needs an IntegratedGradients result (method integrated_gradients)")
    gap = value - base
    return {"delta": float(delta), "gap": float(gap), "value": float(value), "baseline_value": float(base),
            "relative": abs(delta) / abs(gap) if gap != 0 else (0.0 if delta == 0 else float("inf"))}


def ig_completeness(agent, frame: Any, prev_state: Any = None, prev_action: Any = None, target: str = "action",
                    action: int | None = None, *, is_first: bool = False, n_steps: int = 32, **options: Any) -> dict:
    """Pixel IntegratedGradients (blurred-frame baseline) at one frame, reduced to completeness numbers."""
    result = saliency(agent, frame, prev_state, prev_action, target, "integrated_gradients", action,
                      is_first=is_first, n_steps=n_steps, **options)
    return {**completeness(result), "n_steps": n_steps, "action": result.action}


# ---- pointing game ---------------------------------------------------------------------------------
@dataclass
class PointingGame:
    """Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop") on
    ground-truth object boxes: a step is a hit when the saliency map's peak (largest absolute
    value) lies inside an object box grown by ``margin`` pixels. ``chance`` is the mean fraction of
    the frame those grown boxes cover: the hit rate of a peak placed uniformly at random."""

    steps: np.ndarray
    hits: np.ndarray
    hit_rate: float
    chance: float
    method: str
    target: str
    objects: tuple[str, ...]
    margin: int


def pointing_game(agent, trace, steps: Any = None, method: str = "saliency", target: str = "action",
                  objects: Any = None, margin: int = 2, **options: Any) -> PointingGame:
    """Run the pointing game over ``steps`` of a recorded ``trace`` (default: every step with a
    box for at least one of ``objects``; default objects: all the trace records)."""
    from ..envs.base import box_slices
    from .saliency import trace_inputs

    names = tuple(objects) if objects is not None else tuple(trace.object_names)
    if not names:
        raise ValueError("the pointing game needs ground-truth object boxes; this trace records none")
    unknown = [n for n in names if n not in trace.object_names]
    if unknown:
        raise ValueError(f"the trace has no boxes for {unknown}; it records {list(trace.object_names)}")
    size = trace.arrays["frame"].shape[-1]

    def mask_at(step: int) -> np.ndarray:
        mask = np.zeros((size, size), bool)
        for name in names:
            s = box_slices(trace.arrays[f"objects/{name}"][step], size)
            if s is not None:
                rows, cols = s
                mask[max(rows.start - margin, 0):rows.stop + margin, max(cols.start - margin, 0):cols.stop + margin] = True
        return mask

    if steps is None:
        masks = {t: mask_at(t) for t in range(len(trace))}
        steps = [t for t, mask in masks.items() if mask.any()]
    else:
        steps = [trace.check_step(int(t)) for t in steps]
        masks = {int(t): mask_at(int(t)) for t in steps}
    steps = np.asarray(steps, np.int64)
    if len(steps) == 0:
        raise ValueError("no steps to score: no step has a box for the chosen objects")
    hits, cover = [], []
    for t in steps:
        mask = masks[int(t)]
        m = np.abs(saliency(agent, method=method, target=target, **trace_inputs(trace, int(t)), **options).map)
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        hits.append(bool(mask[peak]))
        cover.append(mask.mean())
    hits = np.asarray(hits)
    return PointingGame(steps=steps, hits=hits, hit_rate=float(hits.mean()), chance=float(np.mean(cover)),
                        method=method, target=target, objects=names, margin=int(margin))
