"""Failure detectors: pure functions over an ``xdreamer.explain.Trace`` (numpy and pandas; torch only for
``behavior.lambda_return``, the one lambda-return implementation).

Every detector returns an *events* DataFrame with the columns of ``EVENT_COLUMNS``: one row per flagged
moment (a contiguous run of flagged steps inside one episode becomes one event, at the run's worst step).
``score`` is a severity >= 1 for every flagged event: the detector's statistic divided by its threshold, so
scores of one detector rank moments across a batch. ``value`` is the raw statistic, ``detail`` a short
human-readable explanation with the numbers behind it.

Trace alignment (see ``explain.trace``): step t holds o_t and r_t (the reward that arrived with o_t); the
reward head on the posterior at t predicts r_t (clipped per ``meta["clip_rewards"]``), the critic's value at t
estimates the lambda-return that starts with r_t (dreamerv2 ``ActorCritic.target``), and ``surprise`` is
KL(posterior || prior) at t.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from ..envs.base import box_slices

EVENT_COLUMNS = ("detector", "step", "episode", "t", "score", "value", "detail")
DETECTORS = ("blind_spot", "reward_miss", "phantom_reward", "surprise_spike", "value_error", "dream_infidelity")
EPS = 1e-3  # squared-error floor of the in-box / background ratio (pixel units in [0, 1])


# ---- helpers ----------------------------------------------------------------------------------
def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
        EVENT_COLUMNS, ("str", "int64", "int64", "int64", "float64", "float64", "str"))})


def flagged_runs(mask: np.ndarray, episode: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs ``[start, end)`` of True in ``mask`` that do not cross an episode boundary."""
    mask = np.asarray(mask, bool)
    runs, start = [], None
    for i, m in enumerate(mask):
        if start is not None and (not m or episode[i] != episode[start]):
            runs.append((start, i))
            start = None
        if m and start is None:
            start = i
    if start is not None:
        runs.append((start, len(mask)))
    return runs


def events_from_mask(trace, detector: str, mask: np.ndarray, score: np.ndarray, value: np.ndarray,
                     detail: Callable[[int], str]) -> pd.DataFrame:
    """One event per flagged run, at the run's highest ``score``."""
    episode, t = trace.arrays["episode"], trace.arrays["t"]
    rows = []
    for lo, hi in flagged_runs(mask, episode):
        i = lo + int(np.argmax(score[lo:hi]))
        rows.append({"detector": detector, "step": i, "episode": int(episode[i]), "t": int(t[i]),
                     "score": float(score[i]), "value": float(value[i]),
                     "detail": detail(i) + (f" ({hi - lo} consecutive steps)" if hi - lo > 1 else "")})
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS)) if rows else _empty()


def reward_target(trace) -> np.ndarray:
    """The reward the reward head is trained on: ``tanh(r)`` when the agent clips rewards with tanh."""
    reward = trace.arrays["reward"].astype(np.float64)
    return np.tanh(reward) if trace.meta.get("clip_rewards") == "tanh" else reward


def reward_scale(trace) -> float:
    """Typical magnitude of a reward event in reward-head units (median over events; 1 or tanh(1) if none)."""
    target = np.abs(reward_target(trace))
    events = target[target > 1e-6]
    if len(events):
        return float(np.median(events))
    return float(np.tanh(1.0)) if trace.meta.get("clip_rewards") == "tanh" else 1.0


# ---- perception -------------------------------------------------------------------------------
def object_errors(trace) -> pd.DataFrame:
    """Per step and object: mean squared reconstruction error inside the object's ground-truth box
    (``object_error``), outside every object box (``background_error``) and their ratio (with a floor
    ``EPS`` on both). Absent objects give no row."""
    sq = trace.arrays["recon_sqerr"]
    names = trace.object_names
    rows = []
    for i in range(len(trace)):
        err = sq[i].astype(np.float32).mean(0)  # [64, 64] averaged over channels
        outside = np.ones_like(err, bool)
        slices = {}
        for name in names:
            s = box_slices(trace.arrays[f"objects/{name}"][i], err.shape[0])
            if s is not None:
                slices[name] = s
                outside[s] = False
        background = float(err[outside].mean()) if outside.any() else float("nan")
        for name, s in slices.items():
            inside = float(err[s].mean())
            rows.append({"step": i, "object": name, "object_error": inside, "background_error": background,
                         "ratio": (inside + EPS) / (background + EPS)})
    return pd.DataFrame(rows, columns=["step", "object", "object_error", "background_error", "ratio"])


def blind_spots(trace, ratio: float = 5.0, min_error: float = 0.02, errors: pd.DataFrame | None = None
                ) -> pd.DataFrame:
    """Steps where an object is reconstructed far worse than the background: in-box squared error at least
    ``min_error`` and at least ``ratio`` times the background's. Score = error ratio / ``ratio``."""
    errors = object_errors(trace) if errors is None else errors
    n = len(trace)
    out = []
    for name, group in errors.groupby("object", sort=True):
        score = np.zeros(n)
        value = np.zeros(n)
        obj = np.zeros(n)
        bg = np.zeros(n)
        steps = group["step"].to_numpy()
        score[steps] = group["ratio"].to_numpy() / ratio
        value[steps] = group["ratio"].to_numpy()
        obj[steps] = group["object_error"].to_numpy()
        bg[steps] = group["background_error"].to_numpy()
        mask = (score >= 1) & (obj >= min_error)
        out.append(events_from_mask(
            trace, "blind_spot", mask, score, value,
            lambda i, name=name: (f"{name}: reconstruction error {obj[i]:.3f} inside its box vs "
                                  f"{bg[i]:.4f} elsewhere ({value[i]:.1f}x)")))
    return _concat(out)


def object_visibility(trace, threshold: float = 0.1) -> pd.DataFrame:
    """How much of each object survives in the 64x64 frames the agent sees.

    Per object over the steps where it is present: ``area_px`` (box area in frame pixels, can be < 1 for
    Atari sprites shrunk by the resize), ``contrast`` (largest |pixel - surrounding median| inside the box's
    footprint, in [0, 1]) and ``survive_frac`` (fraction of the footprint's pixels whose contrast exceeds
    ``threshold``: 1 for a crisp sprite, near 0 for one averaged away by the resize)."""
    frames = trace.arrays["frame"]
    rows = []
    for name in trace.object_names:
        boxes = trace.arrays[f"objects/{name}"]
        areas, contrasts, survive = [], [], []
        for i in range(len(trace)):
            s = box_slices(boxes[i], frames.shape[-1])
            if s is None:
                continue
            img = frames[i].astype(np.float32).mean(0) / 255.0
            ys, xs = s
            ring = img[max(ys.start - 2, 0):ys.stop + 2, max(xs.start - 2, 0):xs.stop + 2].copy()
            inner = np.zeros_like(ring, bool)
            inner[ys.start - max(ys.start - 2, 0):ys.stop - max(ys.start - 2, 0),
                  xs.start - max(xs.start - 2, 0):xs.stop - max(xs.start - 2, 0)] = True
            background = float(np.median(ring[~inner])) if (~inner).any() else 0.0
            diff = np.abs(img[s] - background)
            areas.append(float(boxes[i][2] * boxes[i][3]))
            contrasts.append(float(diff.max()))
            survive.append(float((diff > threshold).mean()))
        rows.append({"object": name, "present_frac": len(areas) / max(len(trace), 1),
                     "area_px": float(np.mean(areas)) if areas else float("nan"),
                     "contrast": float(np.mean(contrasts)) if contrasts else float("nan"),
                     "survive_frac": float(np.mean(survive)) if survive else float("nan")})
    return pd.DataFrame(rows, columns=["object", "present_frac", "area_px", "contrast", "survive_frac"])


# ---- rewards ----------------------------------------------------------------------------------
def reward_misses(trace, tol: float = 0.5) -> pd.DataFrame:
    """Real reward events the reward head missed (``reward_miss``: |pred - target| > ``tol`` x |target|) and
    predicted rewards that never came (``phantom_reward``: no event but |pred| > ``tol`` x the typical
    event size). Targets are the clipped rewards the head is trained on. Score = error / threshold."""
    target = reward_target(trace)
    pred = trace.arrays["pred_reward"].astype(np.float64)
    raw = trace.arrays["reward"]
    event = np.abs(target) > 1e-6
    err = np.abs(pred - target)
    miss_thr = tol * np.maximum(np.abs(target), 1e-6)
    miss_score = np.where(event, err / miss_thr, 0.0)
    scale = reward_scale(trace)
    phantom_score = np.where(~event, np.abs(pred) / (tol * scale), 0.0)
    misses = events_from_mask(
        trace, "reward_miss", miss_score >= 1, miss_score, err,
        lambda i: f"real reward {raw[i]:+.2f} (head target {target[i]:+.2f}) predicted as {pred[i]:+.2f}")
    phantom = events_from_mask(
        trace, "phantom_reward", phantom_score >= 1, phantom_score, pred,
        lambda i: f"predicted reward {pred[i]:+.2f} but none came (typical event {scale:.2f})")
    return _concat([misses, phantom])


# ---- surprise ---------------------------------------------------------------------------------
def surprise_spikes(trace, k: float = 6.0, min_spread: float = 0.05) -> pd.DataFrame:
    """KL(posterior || prior) above median + ``k`` x MAD (scaled to a normal's sigma, at least
    ``min_spread`` nats), per episode, ignoring each episode's first step (its prior is the initial state).
    Score = (KL - median) / (k x spread)."""
    kl = trace.arrays["surprise"].astype(np.float64)
    episode = trace.arrays["episode"]
    first = trace.arrays["is_first"].astype(bool)
    score = np.zeros(len(kl))
    stats = {}
    for ep in np.unique(episode):
        idx = np.flatnonzero((episode == ep) & ~first)
        if not len(idx):
            continue
        med = float(np.median(kl[idx]))
        spread = max(1.4826 * float(np.median(np.abs(kl[idx] - med))), min_spread)
        score[idx] = (kl[idx] - med) / (k * spread)
        stats[int(ep)] = (med, spread)
    return events_from_mask(
        trace, "surprise_spike", score >= 1, score, kl,
        lambda i: (f"KL(post||prior) {kl[i]:.2f} nats vs episode median {stats[int(episode[i])][0]:.2f} "
                   f"(+{(kl[i] - stats[int(episode[i])][0]) / stats[int(episode[i])][1]:.1f} robust sigma)"))


# ---- values -----------------------------------------------------------------------------------
def lambda_returns(trace, discount: float | None = None, lambda_: float | None = None) -> np.ndarray:
    """Realised lambda-returns of the recorded episodes, the critic's own target on real data, computed per
    episode with ``behavior.lambda_return``: ``R_t = r_t + d_t ((1 - lambda) v_{t+1} + lambda R_{t+1})`` with
    clipped rewards r, ``d_t = gamma (1 - terminal_t)`` and the recorded values v. An episode that ends in a
    terminal step is used whole (d_T = 0, the bootstrap never counts); the last step of an episode cut
    without a terminal is the bootstrap and has no target (NaN)."""
    import torch

    from ..behavior import lambda_return

    discount = float(trace.meta.get("discount", 0.99) if discount is None else discount)
    lambda_ = float(trace.meta.get("discount_lambda", 0.95) if lambda_ is None else lambda_)
    reward = reward_target(trace)
    value = trace.arrays["value"].astype(np.float64)
    terminal = trace.table["is_terminal"].to_numpy().astype(bool) if "is_terminal" in trace.table \
        else np.zeros(len(trace), bool)
    disc = discount * (1.0 - terminal)
    episode = trace.arrays["episode"]
    out = np.full(len(trace), np.nan)
    for ep in np.unique(episode):
        idx = np.flatnonzero(episode == ep)
        if terminal[idx[-1]]:
            span, bootstrap = idx, 0.0
        elif len(idx) >= 2:
            span, bootstrap = idx[:-1], value[idx[-1]]
        else:
            continue

        def row(x):
            return torch.as_tensor(np.asarray(x, np.float64)[None])

        ret = lambda_return(row(reward[span]), row(value[span]), row(disc[span]),
                            torch.tensor([bootstrap], dtype=torch.float64), lambda_)
        out[span] = ret[0].numpy()
    return out


def value_errors(trace, tol: float = 1.0, returns: np.ndarray | None = None) -> pd.DataFrame:
    """Steps where the critic's value is more than ``tol`` away from the realised lambda-return.
    Score = |value - return| / ``tol``."""
    ret = lambda_returns(trace) if returns is None else returns
    value = trace.arrays["value"].astype(np.float64)
    err = value - ret
    score = np.where(np.isfinite(err), np.abs(err) / tol, 0.0)
    return events_from_mask(
        trace, "value_error", score >= 1, score, np.nan_to_num(err),
        lambda i: f"value {value[i]:+.2f} vs realised lambda-return {ret[i]:+.2f} (error {err[i]:+.2f})")


# ---- exploration ------------------------------------------------------------------------------
VENTURE_ROOM_RAM = 90  # AtariARI ram_annotations.py: venture current_room = 90 (../shared/reference notes, §6)
CELL = 8  # toy coverage: 8-pixel buckets -> 8 x 8 = 64 (ball x, paddle x) cells


def _centre_x(box: np.ndarray) -> float:
    return float(box[0] + box[2] / 2)


def coverage(trace, ram: np.ndarray | None = None) -> dict:
    """States visited in the trace: ``{"metric", "visited", "total", "detail"}``.

    toy games: distinct (ball x, paddle x) cells of ``CELL`` pixels (of 64). Venture: distinct rooms from RAM
    byte 90 when ``ram`` ``[N, 128]`` is given (the report reads it by restoring the recorded simulator states),
    else n/a. Other Atari games with a ``player`` object: distinct 8x8-pixel cells of its position (of 64).
    Otherwise n/a (``visited`` None)."""
    env = str(trace.meta.get("env", ""))
    names = trace.object_names
    if env.startswith("toy:") and {"ball", "paddle"} <= set(names):
        ball, paddle = trace.arrays["objects/ball"], trace.arrays["objects/paddle"]
        cells = {(int(_centre_x(b) // CELL), int(_centre_x(p) // CELL)) for b, p in zip(ball, paddle)
                 if np.all(np.isfinite(b)) and np.all(np.isfinite(p))}
        total = (64 // CELL) ** 2
        return {"metric": "(ball x, paddle x) cells", "visited": len(cells), "total": total,
                "detail": f"{len(cells)}/{total} (ball x, paddle x) cells of {CELL} px"}
    if env == "atari:Venture":
        if ram is None:
            return {"metric": "rooms", "visited": None, "total": None,
                    "detail": "n/a: no RAM (trace without simulator states)"}
        rooms = sorted({int(r) for r in np.asarray(ram)[:, VENTURE_ROOM_RAM]})
        return {"metric": "rooms", "visited": len(rooms), "total": None,
                "detail": f"{len(rooms)} room id(s) from RAM[90]: {rooms[:12]}"}
    if "player" in names:
        boxes = trace.arrays["objects/player"]
        cells = {(int((b[0] + b[2] / 2) // CELL), int((b[1] + b[3] / 2) // CELL)) for b in boxes
                 if np.all(np.isfinite(b))}
        total = (64 // CELL) ** 2
        return {"metric": "player cells", "visited": len(cells), "total": total,
                "detail": f"{len(cells)}/{total} player-position cells of {CELL} px"}
    return {"metric": "n/a", "visited": None, "total": None, "detail": f"n/a: no coverage measure for {env}"}


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return _empty()
    return pd.concat(frames, ignore_index=True)


def detect(trace, thresholds: dict | None = None) -> pd.DataFrame:
    """All trace-only detectors (not ``dream_infidelity``, which needs the agent and the env), sorted by
    step then detector."""
    th = dict(THRESHOLDS, **(thresholds or {}))
    events = _concat([
        blind_spots(trace, ratio=th["blind_ratio"], min_error=th["blind_min_error"]),
        reward_misses(trace, tol=th["reward_tol"]),
        surprise_spikes(trace, k=th["surprise_k"], min_spread=th["surprise_min_spread"]),
        value_errors(trace, tol=th["value_tol"]),
    ])
    return events.sort_values(["step", "detector"], kind="stable").reset_index(drop=True)


# ---- dreams ------------------------------------------------------------------------------------
def dream_score(pixel_mse: float, object_px: dict[str, float], tol: float, object_px_tol: float
                ) -> tuple[float, str]:
    """Severity of one dream against its real branch, and what it was judged on.

    Where the env has ground-truth objects (``object_px``: each object's mean centroid error in px over the
    imagined steps, ``explain.fidelity``; a dropped object counts as ``fidelity.MISSING_PX``), the score is the
    worst object's error / ``object_px_tol``. Only without objects is it the whole-frame pixel MSE / ``tol``:
    a missing 4x4 ball moves a 64x64 frame's MSE by at most 16/4096 = 0.004 and can never cross ``tol`` 0.02
    (issue #27, item 5)."""
    finite = {k: v for k, v in object_px.items() if np.isfinite(v)}
    if finite:
        worst = max(finite, key=finite.get)
        return finite[worst] / object_px_tol, f"object position ({worst} off by {finite[worst]:.1f} px)"
    return pixel_mse / tol, "whole-frame pixel MSE (no object boxes)"


# dream_object_px (ours): two widths of the toy games' 4x4 ball; a dropped object scores the 64x64 frame's diagonal
# (90.5 px, 11x this); the trivial "object stays where it was" baseline of the toy ball averages 14.5 px over 5 steps
# (docs/fidelity.md).
THRESHOLDS = {"blind_ratio": 5.0, "blind_min_error": 0.02, "reward_tol": 0.5, "surprise_k": 6.0,
              "surprise_min_spread": 0.05, "value_tol": 1.0, "dream_tol": 0.02,
              "dream_object_px": 8.0, "visible_threshold": 0.1}
