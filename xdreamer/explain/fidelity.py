"""Dream fidelity that sees objects (issue #27, item 5): open-loop dreams scored on object positions.

Whole-frame pixel error rewards blindness: a 4x4 ball is 16 of 4,096 pixels, so a dream that drops it is "more
faithful" than one that draws it one pixel off, and "the real frame with the ball erased" beats both (issue #27).
Here every dream is scored where the objects are, with trivial baselines beside every number.

From the posterior the agent acted on at step t of a recorded ``Trace`` (``dreams.start_state``) the world model
dreams ``horizon`` steps open loop (no observation after t; ``dreams.dream``, prior mode), in two ways:

``recorded``  on the real branch's own recorded actions a_t..a_{t+H-1}: the dream and the real episode follow the
              same actions, so every difference is model error.
``actor``     a_t, then the dream's actor chooses (its mode, on imagined states): model error plus policy
              divergence. ``agreement`` says on which imagined steps 2..H its choice equals the recorded one.

Dream frame k (k = 1..H) is compared with the recorded frame o_{t+k} (the same episode only; ``valid``).

Object positions come from one pixel detector run on the real frame and on the decoded dream alike
(``ObjectDetector``): the centroid, weighted by contrast, of the pixels that differ from the background by more
than half the object's own contrast (the half-maximum convention of a full width at half maximum) inside the
object's search region (everywhere its ground-truth box went in the trace, grown by ``margin`` px, without the
other objects' tracks), where there are at most ``MAX_AREA`` times the object's own area of them (a randomised
decoder's grey differs from the background everywhere: that is no object). A step counts where the detector finds the object in the real frame; where it then finds
nothing in the dream the object is *missing* and scores ``MISSING_PX``, the frame's diagonal: no placement of
an object can score worse than dropping it.

Baselines (no model): pixels: ``repeat`` (o_t for o_{t+k}) and ``erased`` (o_{t+k} with every object box
filled with the background); objects: ``stay`` (the object where it was at t). ``recon``: the posterior's own
reconstruction of o_{t+k} (what the decoder draws when it is told the state; the dream cannot beat it much).

Values: ``q`` is the dream's imagined lambda-return Q_H(s_t, a_t) on the recorded actions (``dreams.dream``'s
``returns[:, 0]``), ``real_return`` the realised lambda-return at t (``report.detectors.lambda_returns``: the
critic's own target on the recorded episode), ``value`` the critic's v(s_t), the baseline for Q_H.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..envs.base import box_slices
from .dreams import _check_horizon, dream, start_state
from .trace import Trace, _to_uint8, check_trace_matches

__all__ = ["ObjectDetector", "object_detector", "check_detector", "reliable_objects", "Fidelity", "fidelity",
           "position_error", "MISSING_PX", "PIXEL_KEYS", "OBJECT_KEYS"]

MISSING_PX = 64 * math.sqrt(2)  # the 64x64 frame's diagonal: a dropped object scores no better than any placement
HALF_MAX = 0.5  # detection threshold as a fraction of the object's contrast (full width at half maximum)
MIN_CONTRAST = 0.05  # objects fainter than this against the background are not scored (no reliable detection)
MAX_AREA = 4.0  # ours: more pixels than 4x the object's own area above threshold is no object but a changed frame
# ours: an object's dream error is evidence only where the detector finds its box centre on most real frames, closely
RELIABLE_FOUND, RELIABLE_PX = 0.8, 2.0
PIXEL_KEYS = ("recorded", "actor", "repeat", "erased", "recon")
OBJECT_KEYS = ("recorded", "actor", "stay", "recon")


# ---- the detector ----------------------------------------------------------------------------------
@dataclasses.dataclass
class ObjectDetector:
    """Finds each object's centroid in frames by their difference from a static background.

    ``background`` float ``[C, H, W]`` in [0, 1]; ``regions`` name -> bool ``[H, W]`` search region;
    ``threshold`` name -> contrast a pixel must exceed to belong to the object; ``max_pixels`` name -> the most
    pixels above it that still make one object (more: a frame that differs from the background everywhere, such
    as a randomised decoder's grey, has no object to locate).
    """

    background: np.ndarray
    regions: dict[str, np.ndarray]
    threshold: dict[str, float]
    max_pixels: dict[str, float]

    @property
    def objects(self) -> tuple[str, ...]:
        return tuple(self.regions)

    def locate(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 frames ``[..., C, H, W]`` -> name -> ``[..., 2]`` centroid (x, y) in frame coordinates (a pixel's
        centre is its index + 0.5, as a box's centre x + w/2), NaN where the object is not found."""
        frames = np.asarray(frames)
        lead = frames.shape[:-3]
        diff = np.abs(frames.reshape(-1, *frames.shape[-3:]).astype(np.float32) / 255.0 - self.background).max(1)
        size_y, size_x = diff.shape[-2:]
        ys, xs = np.mgrid[0:size_y, 0:size_x].astype(np.float32) + 0.5
        out = {}
        for name, region in self.regions.items():
            hit = region & (diff > self.threshold[name])  # [N, H, W]
            weight = np.where(hit, diff, 0.0)
            mass = np.where(hit.sum((1, 2)) <= self.max_pixels[name], weight.sum((1, 2)), 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                cx = (weight * xs).sum((1, 2)) / mass
                cy = (weight * ys).sum((1, 2)) / mass
            pos = np.stack([cx, cy], -1)
            pos[mass <= 0] = np.nan
            out[name] = pos.reshape(*lead, 2)
        return out

    def erase(self, frames: np.ndarray, boxes: dict[str, np.ndarray]) -> np.ndarray:
        """uint8 frames ``[N, C, H, W]`` with each frame's object ``boxes`` (name -> ``[N, 4]``) filled with the
        background: the "objects erased" baseline."""
        out = np.array(frames, copy=True)
        fill = np.round(self.background * 255).astype(np.uint8)
        for name, b in boxes.items():
            for i in range(len(out)):
                s = box_slices(b[i], out.shape[-1])
                if s is not None:
                    out[i][:, s[0], s[1]] = fill[:, s[0], s[1]]
        return out


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Binary dilation of ``mask`` ``[H, W]`` by a square of half-width ``px``."""
    out = mask.copy()
    for _ in range(px):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def object_detector(trace: Trace, margin: int = 2) -> ObjectDetector:
    """Build the detector from a trace's real frames and ground-truth boxes.

    Background: per pixel, the median of the frames where no object box (grown by 1 px) covers it (where boxes
    always do, the median of every uncovered pixel of every frame). Region of an object: its track (every pixel its box covered in the
    trace) grown by ``margin`` px, minus the other objects' tracks. Threshold: ``HALF_MAX`` of the object's
    median contrast inside its box on the real frames; at most ``MAX_AREA`` times its median box area above it."""
    frames = trace.arrays["frame"]
    names = [n for n in trace.object_names if np.isfinite(trace.arrays[f"objects/{n}"]).all(1).any()]
    if not names:
        raise ValueError(f"trace of {trace.meta.get('env')} has no ground-truth object boxes; object-level "
                         "dream fidelity needs an env that annotates objects (toy:, atari: games)")
    n, _, size, _ = frames.shape
    covered = np.zeros((n, size, size), bool)
    tracks = {name: np.zeros((size, size), bool) for name in names}
    for name in names:
        boxes = trace.arrays[f"objects/{name}"]
        for i in range(n):
            s = box_slices(boxes[i], size)
            if s is not None:
                tracks[name][s] = True
                covered[i] |= _grow(_box_mask(s, size), 1)
    pixels = frames.astype(np.float32) / 255.0
    masked = np.where(covered[:, None], np.nan, pixels)
    with np.errstate(all="ignore"), _quiet():
        background = np.nanmedian(masked, axis=0)
    # A pixel some box covers on every frame (a paddle that never leaves its spot) takes the median of all
    # uncovered pixels: the object's own value there would make it invisible to the detector.
    level = np.nanmedian(masked.transpose(1, 0, 2, 3).reshape(masked.shape[1], -1), axis=1) \
        if (~covered).any() else np.median(pixels, axis=(0, 2, 3))
    background = np.where(np.isfinite(background), background, level[:, None, None])
    regions, threshold, max_pixels = {}, {}, {}
    for name in names:
        others = np.zeros((size, size), bool)
        for other in names:
            if other != name:
                others |= tracks[other]
        regions[name] = _grow(tracks[name], margin) & ~others
        contrast, area = [], []
        boxes = trace.arrays[f"objects/{name}"]
        for i in range(n):
            s = box_slices(boxes[i], size)
            if s is not None:
                contrast.append(float(np.abs(pixels[i][:, s[0], s[1]] - background[:, s[0], s[1]]).max()))
                area.append((s[0].stop - s[0].start) * (s[1].stop - s[1].start))
        threshold[name] = max(HALF_MAX * float(np.median(contrast)), MIN_CONTRAST) if contrast else 1.0
        max_pixels[name] = MAX_AREA * float(np.median(area)) if area else 0.0
    return ObjectDetector(background=background.astype(np.float32), regions=regions, threshold=threshold,
                          max_pixels=max_pixels)


def _box_mask(s: tuple[slice, slice], size: int) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[s] = True
    return m


class _quiet:
    """Silence numpy's "All-NaN slice" RuntimeWarning inside ``nanmedian`` (pixels every frame's boxes cover)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def check_detector(detector: ObjectDetector, trace: Trace) -> dict[str, dict[str, float]]:
    """The detector on ``trace``'s real frames against its ground-truth boxes: per object the fraction of boxed
    steps where it finds the object (``found``) and the median distance to the box centre there (``median_px``)."""
    located = detector.locate(trace.arrays["frame"])
    out = {}
    for name in detector.objects:
        boxes = trace.arrays[f"objects/{name}"].astype(np.float64)
        err = position_error(located[name], boxes[:, :2] + boxes[:, 2:] / 2)
        err = err[np.isfinite(err)]
        hit = err[err < MISSING_PX]
        out[name] = {"found": float(len(hit) / len(err)) if len(err) else float("nan"),
                     "median_px": float(np.median(hit)) if len(hit) else float("nan")}
    return out


def reliable_objects(check: dict[str, dict[str, float]]) -> list[str]:
    """Objects of a ``check_detector`` result whose dream errors are evidence: found on at least ``RELIABLE_FOUND``
    of the real frames with a box, at most ``RELIABLE_PX`` (median) from the box centre."""
    return [name for name, c in check.items()
            if c["found"] >= RELIABLE_FOUND and c["median_px"] <= RELIABLE_PX]


def position_error(found: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance ``[...]`` between centroids ``[..., 2]``: NaN where the reference is not found (the
    step is not scored), ``MISSING_PX`` where only ``found`` is missing."""
    dist = np.sqrt(((found - reference) ** 2).sum(-1))
    ref_ok = np.isfinite(reference).all(-1)
    dist = np.where(np.isfinite(found).all(-1), dist, MISSING_PX)
    return np.where(ref_ok, dist, np.nan)


# ---- the measurement --------------------------------------------------------------------------------
@dataclasses.dataclass
class Fidelity:
    """Per start step (``[S]``) and imagined step k = 1..H (``[S, H]``); see the module docstring.

    ``pixel_mae`` key -> ``[S, H]`` mean |frame - o_{t+k}| in [0, 1] units (keys ``PIXEL_KEYS``);
    ``object_px`` key -> ``[S, O, H]`` centroid error in px (keys ``OBJECT_KEYS``; NaN where not scored);
    ``agreement`` bool ``[S, H]``: the actor dream's action into step k equals the recorded a_{t+k-1} (k = 1 is
    the recorded a_t by construction); ``q``, ``q_actor``, ``value``, ``real_return`` ``[S]``.
    ``detector_check`` name -> {"found", "median_px"}: the detector on the trace's real frames against the
    ground-truth box centres (how often it finds the object where a box is, and how far from the box centre).
    Where it does not find an object's box centre on real frames (Atari objects among moving scenery), that
    object's numbers measure the detector, not the dream.
    """

    steps: np.ndarray
    horizon: int
    objects: tuple[str, ...]
    valid: np.ndarray
    agreement: np.ndarray
    pixel_mae: dict[str, np.ndarray]
    object_px: dict[str, np.ndarray]
    q: np.ndarray
    q_actor: np.ndarray
    value: np.ndarray
    real_return: np.ndarray
    detector: ObjectDetector
    detector_check: dict[str, dict[str, float]]

    def object_mean(self, key: str, obj: str, first: int | None = None) -> float:
        """Mean centroid error of ``obj`` over every scored (step, k <= ``first``) pair (NaN if none)."""
        return _finite_mean(self.object_px[key][:, self.objects.index(obj), :first])

    def missing_frac(self, key: str, obj: str, first: int | None = None) -> float:
        """Fraction of scored pairs where the object is missing from the frame ``key`` draws."""
        err = self.object_px[key][:, self.objects.index(obj), :first]
        err = err[np.isfinite(err)]
        return float((err >= MISSING_PX).mean()) if err.size else float("nan")

    def pixel_mean(self, key: str, first: int | None = None) -> float:
        """Mean whole-frame MAE of ``key`` over every valid (step, k <= ``first``) pair."""
        return _finite_mean(self.pixel_mae[key][:, :first])

    def agreement_frac(self, first: int | None = None) -> float:
        """Fraction of valid imagined steps 2..``first`` where the actor dream chose the recorded action."""
        agree, valid = self.agreement[:, 1:first], self.valid[:, 1:first]
        return float(agree[valid].mean()) if valid.any() else float("nan")

    def summary(self, first: int | None = None) -> dict[str, Any]:
        """Means over steps 1..``first`` (all when None), per key, object and, under ``per_k``, per step k."""
        first = self.horizon if first is None else min(int(first), self.horizon)
        q_ok = np.isfinite(self.real_return)

        def mae(a):
            return float(np.abs(a[q_ok] - self.real_return[q_ok]).mean()) if q_ok.any() else float("nan")

        out: dict[str, Any] = {
            "horizon": first, "start_steps": int(len(self.steps)),
            "pixel_mae": {k: self.pixel_mean(k, first) for k in PIXEL_KEYS},
            "object_px": {o: {k: self.object_mean(k, o, first) for k in OBJECT_KEYS} for o in self.objects},
            "missing": {o: {k: self.missing_frac(k, o, first) for k in OBJECT_KEYS} for o in self.objects},
            "scored": {o: int(np.isfinite(self.object_px["recorded"][:, i, :first]).sum())
                       for i, o in enumerate(self.objects)},
            "agreement": self.agreement_frac(first), "detector_check": self.detector_check,
            "q_abs_error": {"dream_q": mae(self.q), "dream_q_actor": mae(self.q_actor), "critic_value": mae(self.value)},
            "per_k": {f"k{k + 1}": {"pixel_mae": {key: _finite_mean(self.pixel_mae[key][:, k]) for key in PIXEL_KEYS},
                                    "object_px": {o: {key: _finite_mean(self.object_px[key][:, i, k])
                                                      for key in OBJECT_KEYS} for i, o in enumerate(self.objects)}}
                      for k in range(first)},
        }
        return _clean(out)


def _finite_mean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _clean(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, float):
        return round(d, 5) if math.isfinite(d) else None
    return d


@torch.no_grad()
def fidelity(agent, trace: Trace, steps: Sequence[int] | None = None, horizon: int = 5, margin: int = 2,
             batch_size: int = 128, detector: ObjectDetector | None = None) -> Fidelity:
    """Dream ``horizon`` steps open loop from each of ``steps`` (default: every step with at least one recorded
    successor in its episode) on the recorded actions and on the actor's own choices, and score both against
    the recorded frames; see the module docstring. ``detector``: a prebuilt ``object_detector(trace, margin)``."""
    check_trace_matches(trace, agent)
    horizon = _check_horizon(horizon)
    a = trace.arrays
    n = len(trace)
    episode = a["episode"]
    succ = np.zeros(n, bool)
    succ[:-1] = (episode[1:] == episode[:-1]) & ~a["is_last"][:-1].astype(bool)
    steps = np.flatnonzero(succ) if steps is None else np.array([trace.check_step(s) for s in steps], np.int64)
    if steps.size == 0:
        raise ValueError("fidelity: no start step has a recorded next step in its episode")
    detector = object_detector(trace, margin) if detector is None else detector
    objects = detector.objects
    S, H, O = len(steps), horizon, len(objects)
    # valid[s, k-1]: o_{t+k} is recorded in t's episode (the episode did not end before it)
    future = steps[:, None] + np.arange(1, H + 1)[None]
    valid = np.zeros((S, H), bool)
    for s, t in enumerate(steps):
        for k in range(H):
            j = t + k + 1
            if j >= n or episode[j] != episode[t]:
                break
            valid[s, k] = True
            if a["is_last"][j]:  # the episode ended with o_j: nothing follows it
                break
    future = np.minimum(future, n - 1)
    act_index = np.minimum(steps[:, None] + np.arange(H)[None], n - 1)  # a_t .. a_{t+H-1}

    frames_rec = np.zeros((S, H, *a["frame"].shape[1:]), np.uint8)
    frames_act = np.zeros_like(frames_rec)
    actions_act = np.zeros((S, H), np.int64) if agent.spec.discrete else None
    q, q_actor = np.zeros(S, np.float32), np.zeros(S, np.float32)
    was_training = agent.training
    agent.eval()
    try:
        for lo in range(0, S, batch_size):
            idx = slice(lo, lo + batch_size)
            start = start_state(agent, trace, steps[idx])
            prefix = torch.as_tensor(a["action_vec"][act_index[idx]], device=agent.device, dtype=torch.float32)
            rec = dream(agent, start, H, prefix, None)
            act = dream(agent, start, H, prefix[:, :1], "actor")
            frames_rec[idx] = _to_uint8(rec["frames"][:, 1:])
            frames_act[idx] = _to_uint8(act["frames"][:, 1:])
            q[idx] = rec["returns"][:, 0].cpu().numpy()
            q_actor[idx] = act["returns"][:, 0].cpu().numpy()
            if actions_act is not None:
                actions_act[idx] = act["actions"][:, 1:].argmax(-1).cpu().numpy()
    finally:
        agent.train(was_training)

    real = a["frame"][future]  # [S, H, C, 64, 64]
    if actions_act is not None:
        agreement = (actions_act == a["action"][act_index]) & valid
    else:
        agreement = np.zeros((S, H), bool)
    boxes = {name: a[f"objects/{name}"][future.reshape(-1)] for name in objects}
    candidates = {"recorded": frames_rec, "actor": frames_act, "repeat": np.broadcast_to(a["frame"][steps][:, None], real.shape),
                  "erased": detector.erase(real.reshape(-1, *real.shape[2:]), boxes).reshape(real.shape),
                  "recon": a["recon"][future]}
    realf = real.astype(np.float32) / 255.0
    pixel_mae = {k: np.where(valid, np.abs(v.astype(np.float32) / 255.0 - realf).mean((2, 3, 4)), np.nan)
                 for k, v in candidates.items()}
    ref = detector.locate(real)  # name -> [S, H, 2]
    at_t = detector.locate(a["frame"][steps])  # name -> [S, 2]
    found = {k: detector.locate(candidates[k]) for k in ("recorded", "actor", "recon")}
    object_px = {k: np.full((S, O, H), np.nan, np.float32) for k in OBJECT_KEYS}
    for o, name in enumerate(objects):
        for key in ("recorded", "actor", "recon"):
            object_px[key][:, o] = np.where(valid, position_error(found[key][name], ref[name]), np.nan)
        object_px["stay"][:, o] = np.where(valid, position_error(np.broadcast_to(at_t[name][:, None], ref[name].shape),
                                                                 ref[name]), np.nan)

    from ..report.detectors import lambda_returns  # the one realised lambda-return (a library function)

    real_return = lambda_returns(trace)[steps].astype(np.float32)
    return Fidelity(detector_check=check_detector(detector, trace), steps=steps, horizon=H, objects=objects, valid=valid, agreement=agreement,
                    pixel_mae=pixel_mae, object_px=object_px, q=q, q_actor=q_actor,
                    value=a["value"][steps].astype(np.float32), real_return=real_return, detector=detector)

