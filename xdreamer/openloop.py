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


def grid_frames(pred: Mapping[str, np.ndarray]) -> np.ndarray:
    """Arrange rows truth / model / error, one column per sample: uint8 ``[T, 3*64, B*64, 3]``."""
    rows = [pred[k] for k in ("truth", "model", "error")]  # each [B, T, C, H, W]
    stacked = np.stack(rows, 0)  # [3, B, T, C, H, W]
    R, B, T, C, H, W = stacked.shape
    frames = stacked.transpose(2, 0, 4, 1, 5, 3).reshape(T, R * H, B * W, C)
    if C == 1:
        frames = np.repeat(frames, 3, -1)
    return (frames * 255).round().clip(0, 255).astype(np.uint8)
