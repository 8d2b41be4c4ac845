"""Open-loop prediction video (dreamerv2 ``WorldModel.video_pred``): 5 context frames observed,
then the rest imagined under the recorded actions. Rows: truth, model, error."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch


@torch.no_grad()
def open_loop(world_model, data: Mapping[str, torch.Tensor], context: int = 5) -> dict[str, np.ndarray]:
    """Returns ``truth``, ``model`` and ``error`` images ``[B, T, C, 64, 64]`` in [0, 1]."""
    inp = world_model.preprocess(data)
    T = inp["image"].shape[1]
    assert 0 < context < T, f"need more than {context} frames, got {T}"
    embed = world_model.encode(inp["image"][:, :context])
    post, _ = world_model.observe(embed, inp["action"][:, :context], inp["is_first"][:, :context])
    recon = world_model.decode(world_model.feat(post))
    # action[:, t] led to o_t, so the actions after the context drive the imagined frames.
    states, _ = world_model.imagine(post[:, -1], actions=inp["action"][:, context:], horizon=T - context)
    imagined = world_model.decode(world_model.feat(states[:, 1:]))
    model = (torch.cat([recon, imagined], 1) + 0.5).clamp(0, 1)
    truth = inp["image"] + 0.5
    return {"truth": truth.cpu().numpy(), "model": model.cpu().numpy(),
            "error": ((model - truth + 1) / 2).cpu().numpy()}


ROWS = ("truth", "model", "error")


def grid_frames(pred: Mapping[str, np.ndarray], context: int | None = None, scale: int = 1) -> np.ndarray:
    """Arrange rows truth / model / error, one column per sample: uint8 ``[T, 3*64, B*64, 3]``. With ``context``
    (the number of observed frames), the frames are enlarged ``scale`` times and labelled (issue #31): each row's name
    in a left margin and, above, whether the frame is observed context or imagined and at which step."""
    rows = [pred[k] for k in ROWS]  # each [B, T, C, H, W]
    stacked = np.stack(rows, 0)  # [3, B, T, C, H, W]
    R, B, T, C, H, W = stacked.shape
    frames = stacked.transpose(2, 0, 4, 1, 5, 3).reshape(T, R * H, B * W, C)
    if C == 1:
        frames = np.repeat(frames, 3, -1)
    frames = (frames * 255).round().clip(0, 255).astype(np.uint8)
    if context is None:
        return frames
    return _labelled(frames, context, scale, H * scale)


def _labelled(frames: np.ndarray, context: int, scale: int, row_height: int) -> np.ndarray:
    import cv2

    frames = frames.repeat(scale, 1).repeat(scale, 2)
    T, height, width, _ = frames.shape
    margin, header = 80, 32  # multiples of 16: H.264 pads frames to 16-px blocks
    out = np.full((T, header + height, margin + width, 3), 255, np.uint8)
    out[:, header:, margin:] = frames
    font = cv2.FONT_HERSHEY_SIMPLEX
    for t in range(T):
        if t < context:
            text, colour = f"context: observed frame {t + 1} of {context}", (0, 110, 0)
        else:
            text, colour = f"imagined: {t - context + 1} step(s) past the context", (170, 0, 0)
        cv2.putText(out[t], text, (margin + 4, 21), font, 0.5, colour, 1, cv2.LINE_AA)
        for r, name in enumerate(ROWS):
            cv2.putText(out[t], name, (6, header + r * row_height + row_height // 2 + 5), font, 0.5, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return out


def filmstrip(frames: np.ndarray, every: int = 5) -> np.ndarray:
    """One image of labelled ``frames`` ``[T, H, W, 3]`` (``grid_frames(..., context=...)``), every ``every``-th
    frame side by side: a still for TensorBoard's image tab."""
    return np.concatenate(list(frames[::every]), 1)
