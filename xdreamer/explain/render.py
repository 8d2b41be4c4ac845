"""Rendering of analysis results (videos, figures); no computation happens here.

``whatif_frames`` lays out, side by side, the real future of the trace, the dream of the taken action,
and the dreams (plus, with a ``Grounded`` result, the real branches) of alternative actions. Each panel
is the 64x64 frame upscaled (nearest, default 4x) with a title bar and a footer annotating reward r,
value v and the imagined return Q of the column. ``write_whatif_video`` writes it as H.264 mp4 (or gif
by extension) through ``xdreamer.logger.write_video``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

BAR = 24  # pixels of title bar / footer per panel (upscaled panels stay multiples of 16 in total)
GAP = 4
GAP_GREY = 90


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.38, color=(255, 255, 255)) -> None:
    import cv2

    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _rgb(frame: np.ndarray, scale: int) -> np.ndarray:
    """uint8 [C, 64, 64] -> [64*scale, 64*scale, 3]."""
    img = np.transpose(frame, (1, 2, 0))
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, -1)
    return np.repeat(np.repeat(img, scale, 0), scale, 1)


def panel(frame: np.ndarray, title: str, footer: str, scale: int = 4, color=(255, 255, 255),
          dim: bool = False) -> np.ndarray:
    img = _rgb(frame, scale)
    if dim:
        img = (img * 0.35).astype(np.uint8)
    return _framed(img, title, footer, color)


def _framed(img: np.ndarray, title: str, footer: str, color=(255, 255, 255)) -> np.ndarray:
    """An RGB image ``[H, W, 3]`` with a title bar above and a footer bar below."""
    W = img.shape[1]
    top = np.zeros((BAR, W, 3), np.uint8)
    bottom = np.zeros((BAR, W, 3), np.uint8)
    _text(top, title[: max(4, W // 7)], 4, BAR - 8, color=color)
    _text(bottom, footer[: max(4, W // 7)], 4, BAR - 8)
    return np.concatenate([top, img, bottom], 0)


def _hstack(panels: list[np.ndarray]) -> np.ndarray:
    """Panels side by side with grey separators."""
    gap = np.full((panels[0].shape[0], GAP, 3), GAP_GREY, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, 1)


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:+.2f}"


def whatif_frames(trace, dream, grounded=None, alternatives: Sequence[int] | None = None, scale: int = 4,
                  max_alternatives: int = 4) -> np.ndarray:
    """uint8 ``[H+1, height, width, 3]`` video frames for a ``WhatIf`` (and optional ``Grounded``)."""
    if dream.frames is None:
        raise ValueError("the what-if result has no decoded frames (computed with decode=False)")
    step, H = dream.step, dream.horizon
    rows = list(range(len(dream.labels)))
    first = [int(a) if np.ndim(a) == 0 else i for i, a in enumerate(dream.first_actions)]
    taken = dream.taken_action
    taken_row = next((r for r in rows if np.ndim(taken) == 0 and first[r] == int(taken)), None)
    if alternatives is None:
        alt_rows = [r for r in rows if r != taken_row][:max_alternatives]
    else:
        alt_rows = []
        for a in alternatives:
            matches = [r for r in rows if first[r] == int(a)]
            if not matches:
                raise ValueError(f"action {a} is not among the dreamed first actions {first}")
            alt_rows.append(matches[0])
    ground_rows = {}
    if grounded is not None:
        ground_rows = {int(a): r for r, a in enumerate(grounded.first_actions)} if np.ndim(taken) == 0 else {}
    episode = trace.arrays["episode"]
    out = []
    for i in range(H + 1):
        panels = []
        # Real future of the trace (the taken action, then the recorded actions).
        j = step + i
        if j < len(trace) and episode[j] == episode[step]:
            panels.append(panel(trace.arrays["frame"][j], f"real t={int(trace.arrays['t'][j])}",
                                f"r {_fmt(trace.arrays['reward'][j])} v {_fmt(trace.arrays['value'][j])}", scale))
        else:
            last = np.flatnonzero(episode == episode[step])[-1]
            panels.append(panel(trace.arrays["frame"][last], "real (ended)", "", scale, dim=True))
        columns = ([(taken_row, "dream taken", (120, 220, 255))] if taken_row is not None else [])
        columns += [(r, "dream", (255, 200, 120)) for r in alt_rows]
        for r, kind, color in columns:
            panels.append(panel(dream.frames[r, i], f"{kind} {dream.labels[r]}",
                                f"r {_fmt(dream.reward[r, i])} v {_fmt(dream.value[r, i])} Q {_fmt(dream.q[r])}",
                                scale, color))
            g = ground_rows.get(first[r]) if kind == "dream" else None
            if g is not None:
                ok = bool(grounded.valid[g, i])
                panels.append(panel(grounded.real_frames[g, i], f"real {grounded.labels[g]}",
                                    f"r {_fmt(grounded.real_reward[g, i])} R {_fmt(grounded.real_return[g])}"
                                    if ok else "ended", scale, (150, 255, 150), dim=not ok))
        out.append(_hstack(panels))
    return _pad16(np.stack(out))


def _pad16(frames: np.ndarray) -> np.ndarray:
    """Pad ``[T, H, W, 3]`` frames to multiples of 16 (H.264 macro blocks)."""
    pad_w = (-frames.shape[2]) % 16
    pad_h = (-frames.shape[1]) % 16
    if pad_w or pad_h:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return frames


def write_whatif_video(path: str | os.PathLike, trace, dream, grounded=None, alternatives=None, fps: int = 4,
                       scale: int = 4) -> pathlib.Path:
    """What-if video as mp4 (H.264) or gif (``.gif`` suffix)."""
    from ..logger import write_video

    path = pathlib.Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"video path must end in .mp4 or .gif, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, whatif_frames(trace, dream, grounded, alternatives, scale), fps=fps)


def highlights_image(trace, moments, scale: int = 2) -> np.ndarray:
    """One row per moment: its context frames, the moment itself framed; uint8 ``[h, w, 3]``."""
    if not moments:
        raise ValueError("no moments to draw")
    width = max(len(m.context) for m in moments)
    rows = []
    for m in moments:
        tiles = []
        for j in m.context:
            color = (255, 220, 120) if j == m.step else (255, 255, 255)
            tiles.append(panel(trace.arrays["frame"][j], f"t={int(trace.arrays['t'][j])}",
                               f"I {m.importance:.2f}" if j == m.step else "", scale, color))
        blank = np.zeros_like(tiles[0])
        tiles += [blank] * (width - len(tiles))
        rows.append(_hstack(tiles))
    sep = np.full((GAP, rows[0].shape[1], 3), GAP_GREY, np.uint8)
    out = [rows[0]]
    for r in rows[1:]:
        out += [sep, r]
    return np.concatenate(out, 0)


def write_image(path: str | os.PathLike, image: np.ndarray) -> pathlib.Path:
    import imageio.v2 as imageio

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    imageio.imwrite(tmp, image)
    os.replace(tmp, path)
    return path


def write_saliency_video(path: str | os.PathLike, agent, trace, method: str = "saliency", target: str = "action",
                         steps: Sequence[int] | None = None, scale: int = 4, fps: int = 8,
                         progress: bool = False) -> pathlib.Path:
    """Saliency-overlay video of a trace (an episode or the given ``steps``): each frame is the real
    frame with the chosen method's map over it and the step, action and value written below.
    Maps come from ``explain.saliency.saliency`` with the trace's own recurrent state per step."""
    from ..logger import write_video
    from .saliency import saliency, trace_inputs
    from .saliency_commands import overlay

    steps = list(range(len(trace))) if steps is None else [int(s) for s in steps]
    if not steps:
        raise ValueError("no steps to render")
    iterator = steps
    if progress:
        from tqdm import tqdm

        iterator = tqdm(steps, desc=f"saliency video ({method})", unit="frame")
    names = agent.spec.action_names
    frames = []
    for step in iterator:
        inputs = trace_inputs(trace, step)
        result = saliency(agent, inputs["frame"], inputs["prev_state"], inputs["prev_action"], target=target,
                          method=method, action=inputs["action"], is_first=inputs["is_first"])
        image = np.ascontiguousarray(overlay(inputs["frame"], result.map, scale=scale))
        action = inputs["action"]
        label = names[action] if action is not None and action < len(names) else str(action)
        frames.append(_framed(image, f"t={step} {method}", f"a={label} v={_fmt(float(trace.table['value'].iloc[step]))}"))
    return write_video(path, _pad16(np.stack(frames)), fps=fps)
