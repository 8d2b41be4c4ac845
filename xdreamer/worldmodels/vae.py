"""V: the convolutional VAE of World Models (Ha & Schmidhuber 2018, §2.1 and Appendix A.1).

Architecture as hardmaru/WorldModelsExperiments ``carracing/vae/vae.py``: four stride-2 4x4 convs with 32, 64, 128
and 256 channels (ReLU; ``depth`` x 1, 2, 4, 8) take a 64x64 frame to 2x2x256, two dense layers give the mean and
log-variance of z; the decoder maps z to a 1x1x1024 map and four stride-2 deconvs (5, 5, 6, 6; 128, 64, 32, C
channels; ReLU, sigmoid last, or linear: ``wm_vae_output``) back to 64x64. Loss (vae.py): the squared error summed
over pixels plus max(KL, kl_tolerance x z) per frame, both averaged over the batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class ConvVAE(nn.Module):
    """Frames ``[B, C, 64, 64]`` in [0, 1] <-> latents z ``[B, z]``."""

    def __init__(self, channels: int, z: int = 32, depth: int = 32, kl_floor: float = 0.0,
                 output: str = "sigmoid") -> None:
        super().__init__()
        self.channels, self.z = channels, z
        self.kl_floor = kl_floor  # kl_tolerance x z (vae.py): the KL term's floor per frame
        d = depth
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, d, 4, 2), nn.ReLU(), nn.Conv2d(d, 2 * d, 4, 2), nn.ReLU(),
            nn.Conv2d(2 * d, 4 * d, 4, 2), nn.ReLU(), nn.Conv2d(4 * d, 8 * d, 4, 2), nn.ReLU(), nn.Flatten())
        self.mean = nn.Linear(8 * d * 2 * 2, z)
        self.logvar = nn.Linear(8 * d * 2 * 2, z)
        self.expand = nn.Linear(z, 32 * d)  # vae.py: dense 1024 = 4 x 256 for depth 32
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(32 * d, 4 * d, 5, 2), nn.ReLU(), nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ReLU(), nn.ConvTranspose2d(d, channels, 6, 2),
            nn.Sigmoid() if output == "sigmoid" else nn.Identity())

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | frame), each ``[B, z]``, for frames ``[B, C, 64, 64]`` in [0, 1]."""
        assert frames.shape[1:] == (self.channels, 64, 64), frames.shape
        hidden = self.encoder(frames)
        return self.mean(hidden), self.logvar(hidden)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed frames ``[B, C, 64, 64]`` for latents ``[B, z]``: in [0, 1] with the sigmoid output, the
        mean of a unit-variance Gaussian with the linear one (clip it to [0, 1] to show it)."""
        assert z.shape[-1] == self.z, z.shape
        return self.decoder(self.expand(z)[:, :, None, None])

    def loss(self, frames: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """vae.py's loss on a batch ``[B, C, 64, 64]`` in [0, 1]: summed squared error + max(KL, tolerance x z)."""
        mean, logvar = self.encode(frames)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = self.decode(z)
        recon_loss = (recon - frames).pow(2).flatten(1).sum(1).mean()
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1)
        kl_loss = kl.clamp(min=self.kl_floor).mean()
        loss = recon_loss + kl_loss
        return loss, {"vae/recon": float(recon_loss.detach()), "vae/kl": float(kl.detach().mean())}


def build(cfg, channels: int) -> ConvVAE:
    """The VAE of ``cfg`` (``wm_z``, ``wm_vae_depth``, ``wm_kl_tolerance``) for frames with ``channels``."""
    return ConvVAE(channels, cfg.wm_z, cfg.wm_vae_depth, cfg.wm_kl_tolerance * cfg.wm_z, cfg.wm_vae_output)


def to_unit(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames ``[..., C, 64, 64]`` as float in [0, 1] (vae.py divides by 255)."""
    return torch.as_tensor(np.asarray(images), device=device).float() / 255.0


def batches(frames: np.ndarray, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch over ``frames`` ``[N, C, 64, 64]`` in shuffled batches (the last one may be smaller)."""
    order = rng.permutation(len(frames))
    for start in range(0, len(frames), batch):
        yield frames[order[start:start + batch]]


def train_vae(vae: ConvVAE, frames: np.ndarray, cfg, rng: np.random.Generator, progress: bool = False) -> list[dict]:
    """``cfg.wm_vae_epochs`` epochs of Adam (``wm_vae_lr``, batch ``wm_vae_batch``) over ``frames`` uint8
    ``[N, C, 64, 64]``; returns the mean metrics of each epoch. A non-finite loss is a FloatingPointError."""
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.wm_vae_lr)
    device = next(vae.parameters()).device
    steps = cfg.wm_vae_epochs * -(-len(frames) // cfg.wm_vae_batch)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="V (VAE)", unit="upd", dynamic_ncols=True)
    history = []
    vae.train()
    try:
        for epoch in range(cfg.wm_vae_epochs):
            sums: dict[str, float] = {}
            count = 0
            for part in batches(frames, cfg.wm_vae_batch, rng):
                loss, metrics = vae.loss(to_unit(part, device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"VAE loss is not finite ({float(loss)}) in epoch {epoch}; lower "
                                             "wm_vae_lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(recon=f"{metrics['vae/recon']:.1f}", kl=f"{metrics['vae/kl']:.1f}")
            history.append({k: v / max(count, 1) for k, v in sums.items()})
    finally:
        if bar is not None:
            bar.close()
    vae.eval()
    return history


@torch.no_grad()
def encode_frames(vae: ConvVAE, frames: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean and log-variance ``[N, z]`` (float32) of uint8 frames ``[N, C, 64, 64]`` (hardmaru ``series.py``)."""
    device = next(vae.parameters()).device
    means, logvars = [], []
    for start in range(0, len(frames), batch):
        mean, logvar = vae.encode(to_unit(frames[start:start + batch], device))
        means.append(mean.cpu().numpy())
        logvars.append(logvar.cpu().numpy())
    z = vae.z
    return (np.concatenate(means) if means else np.zeros((0, z), np.float32),
            np.concatenate(logvars) if logvars else np.zeros((0, z), np.float32))


@torch.no_grad()
def reconstruction_error(vae: ConvVAE, frames: np.ndarray) -> float:
    """Mean squared error per pixel of the reconstructions of ``frames`` from their posterior means."""
    device = next(vae.parameters()).device
    x = to_unit(frames, device)
    return float(F.mse_loss(vae.decode(vae.encode(x)[0]), x))
