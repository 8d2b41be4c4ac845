"""Network building blocks of DreamerV2: conv encoder/decoder, MLP heads, layer-normed GRU.

Sizes follow danijar/dreamerv2 ``common/nets.py``: the encoder has four stride-2 convs with
kernels 4,4,4,4 and depths d, 2d, 4d, 8d (64x64 -> 2x2); the decoder maps the feature to
32d channels at 1x1 and has four stride-2 transposed convs with kernels 5,5,6,6 (1x1 -> 64x64).
"""

from __future__ import annotations

import torch
from torch import nn


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """Indices of one categorical sample per row of ``probs`` ``[..., K]`` (no gradient).

    Inverse-CDF sampling: one uniform number per row, compared with the cumulative
    probabilities. Exact up to float rounding, and on CPU about 20x faster than Gumbel-max or
    ``torch.multinomial`` (which draw K exponentials per row): 2.7 ms versus 53 ms for the
    paper-size imagination batch [800, 32, 32] on 2 cores.
    """
    probs = probs.detach().float()
    u = torch.rand(probs.shape[:-1] + (1,), device=probs.device)
    return (probs.cumsum(-1) < u).sum(-1).clamp_(max=probs.shape[-1] - 1)


def straight_through_onehot(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One-hot of ``index`` in the forward pass, gradients of ``probs`` in the backward pass
    (straight-through estimator, DreamerV2 §2 / Algorithm 1)."""
    onehot = torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def init_weights(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the Keras defaults that dreamerv2 trains with
    (PyTorch's default Kaiming-uniform(a=sqrt(5)) init learned the toy game's ball markedly
    slower in our CPU runs)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvEncoder(nn.Module):
    """Image ``[B, C, 64, 64]`` float in [-0.5, 0.5] -> embedding ``[B, 32 * depth]``."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = channels
        for i, kernel in enumerate((4, 4, 4, 4)):  # encoder_kernels [4,4,4,4]
            out_ch = depth * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride=2), nn.ELU()]
            in_ch = out_ch
        self.net = nn.Sequential(*layers)
        self.out_dim = 8 * depth * 2 * 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape[-2:] == (64, 64), f"expected 64x64 images, got {tuple(image.shape)}"
        lead = image.shape[:-3]
        x = self.net(image.reshape(-1, *image.shape[-3:]))
        return x.reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Feature ``[..., F]`` -> image mean ``[..., C, 64, 64]`` (centred, unit-variance Gaussian)."""

    def __init__(self, feat_dim: int, channels: int, depth: int) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(feat_dim, 32 * depth)
        layers: list[nn.Module] = []
        in_ch = 32 * depth
        kernels = (5, 5, 6, 6)  # decoder_kernels [5,5,6,6]
        for i, kernel in enumerate(kernels):
            last = i == len(kernels) - 1
            out_ch = channels if last else depth * 2 ** (len(kernels) - i - 2)
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=2))
            if not last:
                layers.append(nn.ELU())
            in_ch = out_ch
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = self.net(x.reshape(x.shape[0], -1, 1, 1))
        assert x.shape[-2:] == (64, 64), tuple(x.shape)
        return x.reshape(*lead, self.channels, 64, 64)


class MLP(nn.Module):
    """``layers`` x (Linear, ELU) followed by a linear output of size ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(in_dim, units), nn.ELU()]
            in_dim = units
        mods.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LayerNormGRUCell(nn.Module):
    """GRU cell with layer norm on the fused gates (dreamerv2 ``GRUCell(norm=True)``).

    ``update_bias=-1`` makes the cell keep its state by default early in training.
    """

    def __init__(self, in_dim: int, size: int, update_bias: float = -1.0) -> None:
        super().__init__()
        self.size = size
        self.update_bias = update_bias
        self.linear = nn.Linear(in_dim + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size, eps=1e-3)  # tf LayerNormalization default eps 1e-3

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.linear(torch.cat([x, state], -1)))
        reset, cand, update = parts.split(self.size, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * state
