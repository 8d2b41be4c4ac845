"""Two more ways to compute the decoder's stride-2 transposed convs, timed against what ``PhaseConvTranspose2d`` runs.

    python docs/experiments/decoder_variants.py exact   # the 5->13 and 13->30 layers as four exact phase convs
    python docs/experiments/decoder_variants.py fold    # the image layer as one matmul + F.fold (col2im)
    python docs/experiments/decoder_variants.py layers  # the what-if, its decoding, each layer under every impl

``exact``: a stride-2 transposed conv is four ordinary convs, one per output phase ``(r, c)``, each with the kernel
taps ``(r + 2a, c + 2b)`` only (for a 5x5 kernel 3x3, 3x2, 2x3 and 2x2 taps: no zero taps, unlike
``conv_transpose2d_phases``, which pads the kernel to 6x6), interleaved into the output by strided copies.
``fold``: ``x`` as rows ``[N*H*W, Cin]`` times the weight ``[Cin, Cout*k*k]``, then ``F.fold`` adds the overlapping
patches. ``layers``: ``xdreamer bench``'s paper-size what-if (18 branches x 15 steps) with and without decoding,
decoding 271 frames, and each decoder layer's forward at 271 frames under every ``PhaseConvTranspose2d.impl``.
``exact`` and ``fold`` are checked against ``F.conv_transpose2d`` (max abs error printed) and timed forward (no grad) and
forward + backward (min and median), float32, channels-last inputs, at the what-if's 271 frames and a training
batch's 800 frames, paper sizes.
"""

import sys

import torch
import torch.nn.functional as F

from xdreamer import bench, nets
from xdreamer.training import configure_cpu


def exact_phases(x, weight, bias):
    cin, cout, k, _ = weight.shape
    out = (x.shape[-1] - 1) * 2 + k
    y = torch.empty(x.shape[0], cout, out, out, dtype=x.dtype, memory_format=torch.channels_last)
    for r in (0, 1):
        for c in (0, 1):
            w = weight[:, :, r::2, c::2]  # the taps k = r + 2a, l = c + 2b
            ar, ac = w.shape[2:]
            y[:, :, r::2, c::2] = F.conv2d(F.pad(x, (ac - 1, ac - 1, ar - 1, ar - 1)),
                                           w.flip(2, 3).transpose(0, 1), bias)
    return y


def matmul_fold(x, weight, bias):
    n, cin, h, w = x.shape
    _, cout, k, _ = weight.shape
    out = (h - 1) * 2 + k
    cols = x.permute(0, 2, 3, 1).reshape(n * h * w, cin) @ weight.reshape(cin, cout * k * k)
    y = F.fold(cols.reshape(n, h * w, cout * k * k).transpose(1, 2), (out, out), k, stride=2)
    return y + bias[:, None, None]


def timed(fn, repeats: int = 5) -> str:
    low, median = bench.min_and_median_s(fn, repeats)
    return f"min {1e3 * low:.0f} ms, median {1e3 * median:.0f} ms"


def compare(layer: nets.PhaseConvTranspose2d, variant, name: str, height: int) -> None:
    for frames in (271, 800):
        x = torch.randn(frames, layer.in_channels, height, height).contiguous(memory_format=torch.channels_last)
        ref = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2)
        err = (variant(x, layer.weight, layer.bias) - ref).abs().max().item()
        xg, grad = x.clone().requires_grad_(), torch.randn_like(ref)
        params = (xg, layer.weight, layer.bias)
        with torch.no_grad():
            fwd = (timed(lambda: layer(x)), timed(lambda: variant(x, layer.weight, layer.bias)))
        both = (timed(lambda: torch.autograd.grad(layer(xg), params, grad)),
                timed(lambda: torch.autograd.grad(variant(xg, layer.weight, layer.bias), params, grad)))
        print(f"{layer.in_channels}->{layer.out_channels} k{layer.kernel_size[0]} on {height}x{height}, "
              f"{frames} frames (max error {err:.1e}): forward {fwd[0]} as now, {fwd[1]} {name}; "
              f"forward + backward {both[0]} as now, {both[1]} {name}")


def layers() -> None:
    from xdreamer.explain.dreams import dream

    agent, _ = bench.bench_agent("atari")
    agent.eval()
    n = agent.spec.num_actions
    start = agent.wm.rssm.initial(1).map(lambda x: x.expand(18, *x.shape[1:]).contiguous())
    prefix = F.one_hot(torch.arange(18) % n, n).float()[:, None]
    print("what-if, 18 x 15:", timed(lambda: dream(agent, start, 15, prefix=prefix, decode=True), 7),
          "| without decoding:", timed(lambda: dream(agent, start, 15, prefix=prefix, decode=False), 7))
    decoder = agent.wm.decoder
    feat = torch.randn(271, decoder.linear.in_features)
    with torch.no_grad():
        print("decoding 271 frames:", timed(lambda: decoder(feat), 7))
        x = decoder.linear(feat).reshape(271, decoder.start_ch, 1, 1)
        for layer in decoder.net:
            if isinstance(layer, nets.PhaseConvTranspose2d):
                cells = []
                for impl in layer.IMPLS:
                    layer.impl = impl
                    cells.append(f"{impl} {timed(lambda: layer(x), 7)}")
                layer.impl = "auto"
                print(f"{tuple(x.shape)} -> {layer.out_channels} channels:", " | ".join(cells))
            x = layer(x)


if __name__ == "__main__":
    configure_cpu()
    torch.manual_seed(0)
    if sys.argv[1:] == ["exact"]:
        compare(nets.PhaseConvTranspose2d(192, 96, 5), exact_phases, "exact phases", 5)
        compare(nets.PhaseConvTranspose2d(96, 48, 6), exact_phases, "exact phases", 13)
    elif sys.argv[1:] == ["layers"]:
        layers()
    elif sys.argv[1:] == ["fold"]:
        compare(nets.PhaseConvTranspose2d(48, 1, 6), matmul_fold, "matmul + fold", 30)
    else:
        sys.exit(__doc__)
