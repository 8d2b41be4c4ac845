"""HIGHLIGHTS summaries (Amir & Amir, AAMAS 2018) from the agent's own dreams.

Importance of step t: I(t) = max_a Q_H(s_t, a) - min_a Q_H(s_t, a), with Q_H the imagined
lambda-return of ``dreams.whatif`` (first action a, then the actor's mode). All steps x actions are
imagined in large batches of the world model's ``imagine`` without decoding. ``top_k`` picks the k
most important moments of a trace such that no two lie within ``min_gap`` steps of each other in the
same episode, each with the indices of its context frames.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .dreams import _check_horizon, dream, start_state
from .trace import Trace


@dataclasses.dataclass
class Moment:
    step: int  # global index into the trace
    episode: int
    t: int  # step within its episode
    importance: float
    context: np.ndarray  # global indices of the context frames (same episode), including ``step``

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "episode": self.episode, "t": self.t, "importance": self.importance,
                "context": self.context.tolist()}


@dataclasses.dataclass
class Highlights:
    importance: np.ndarray  # [N]
    q: np.ndarray  # [N, A]
    moments: list[Moment]

    def to_dict(self) -> dict[str, Any]:
        return {"moments": [m.to_dict() for m in self.moments], "importance": self.importance.tolist(),
                "q": self.q.tolist()}


def q_values(agent, trace: Trace, horizon: int = 15, batch_size: int = 512, progress: bool = False) -> np.ndarray:
    """Q_H(s_t, a) for every step t and every discrete action a: ``[N, A]``."""
    if not agent.spec.discrete:
        raise ValueError("HIGHLIGHTS importance needs a discrete action space (max - min over actions)")
    horizon = _check_horizon(horizon)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    N, A = len(trace), agent.spec.num_actions
    eye = F.one_hot(torch.arange(A), A).float().to(agent.device)
    per = max(1, batch_size // A)
    chunks = range(0, N, per)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="highlights", unit="chunk")
    out = np.zeros((N, A), np.float32)
    for lo in chunks:
        steps = np.arange(lo, min(N, lo + per))
        start = start_state(agent, trace, np.repeat(steps, A))
        prefix = eye.repeat(len(steps), 1)[:, None]
        result = dream(agent, start, horizon, prefix, "actor", decode=False)
        out[steps] = result["returns"][:, 0].reshape(len(steps), A).cpu().numpy()
    return out


def importance(agent, trace: Trace, horizon: int = 15, batch_size: int = 512, progress: bool = False) -> np.ndarray:
    """I(t) ``[N]``; also stored in ``trace.table["importance"]`` and ``trace.arrays["q_values"]``."""
    q = q_values(agent, trace, horizon, batch_size, progress)
    imp = (q.max(1) - q.min(1)).astype(np.float32)
    trace.arrays["q_values"] = q
    trace.arrays["importance"] = imp
    trace.table["importance"] = imp
    return imp


def top_k(trace: Trace, k: int = 5, context: int = 5, min_gap: int = 10,
          importance: np.ndarray | None = None) -> list[Moment]:
    """The ``k`` most important, mutually ``min_gap``-apart moments (greedy, as HIGHLIGHTS-DIV's
    simplest form), each with ``context`` frames either side within its episode."""
    if importance is None:
        if "importance" not in trace.table:
            raise ValueError("no importance in this trace: run highlights.importance(agent, trace) first")
        importance = trace.table["importance"].to_numpy()
    importance = np.asarray(importance, np.float64)
    if importance.shape != (len(trace),):
        raise ValueError(f"importance has shape {importance.shape}, the trace has {len(trace)} steps")
    for name, value in (("k", k), ("context", context), ("min_gap", min_gap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    episode, t = trace.arrays["episode"], trace.arrays["t"]
    order = np.argsort(-np.nan_to_num(importance, nan=-np.inf), kind="stable")
    chosen: list[Moment] = []
    for idx in order:
        if len(chosen) >= k:
            break
        if any(m.episode == episode[idx] and abs(m.t - int(t[idx])) < min_gap for m in chosen):
            continue
        same = np.flatnonzero(episode == episode[idx])
        ctx = same[np.abs(t[same] - t[idx]) <= context]
        chosen.append(Moment(int(idx), int(episode[idx]), int(t[idx]), float(importance[idx]), ctx))
    return chosen


def highlights(agent, trace: Trace, k: int = 5, context: int = 5, min_gap: int = 10, horizon: int = 15,
               batch_size: int = 512, progress: bool = False) -> Highlights:
    """Importance of every step and the top-k diverse moments."""
    imp = importance(agent, trace, horizon, batch_size, progress)
    return Highlights(imp, trace.arrays["q_values"], top_k(trace, k, context, min_gap, imp))
