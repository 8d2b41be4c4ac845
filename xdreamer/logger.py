"""Metrics to JSONL (always) and TensorBoard (when installed), plus video files."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections import defaultdict
from typing import Mapping

import numpy as np


class Logger:
    """Appends one JSON object per ``write`` to ``<logdir>/metrics.jsonl``; mirrors scalars to
    TensorBoard under ``<logdir>/tb``. ``add`` accumulates values that ``write`` averages."""

    def __init__(self, logdir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[str, list[float]] = defaultdict(list)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.logdir / "tb"))
            except ImportError:
                print("xdreamer: tensorboard not installed; metrics go to metrics.jsonl only", file=sys.stderr)

    def add(self, metrics: Mapping[str, float], prefix: str = "") -> None:
        for key, value in metrics.items():
            self._pending[f"{prefix}{key}"].append(float(value))

    def write(self, step: int, metrics: Mapping[str, float] | None = None) -> dict[str, float]:
        row = {key: float(np.mean(values)) for key, values in self._pending.items()}
        row.update({k: float(v) for k, v in (metrics or {}).items()})
        self._pending.clear()
        if not row:
            return row
        with open(self.logdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": int(step), **row}) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        return row

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An RGB image ``[H, W, 3]`` uint8 to TensorBoard's image tab (a no-op without TensorBoard)."""
        if self._tb is not None:
            self._tb.add_image(tag, image, step, dataformats="HWC")
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 10) -> pathlib.Path:
    """Write uint8 frames ``[T, H, W, 3]`` as H.264 mp4 (or gif by extension), atomically."""
    import imageio.v2 as imageio

    path = pathlib.Path(path)
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3, (frames.dtype, frames.shape)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix == ".gif":
        imageio.mimwrite(tmp, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimwrite(tmp, list(frames), fps=fps, codec="libx264", macro_block_size=16)
    os.replace(tmp, path)
    return path
