"""The decoder's transposed convs on CPU: one ``convolution_backward`` call against the split backward of
``nets._SplitBackwardConv`` (input and weight gradients in two calls; the weight gradient as the swapped ordinary
conv's).

    python docs/experiments/conv_backward_split.py layer CIN COUT KERNEL SIZE   # e.g. 96 48 6 13, or 192 96 5 5
    python docs/experiments/conv_backward_split.py update [ROUNDS]             # paper-size updates, both paths

``layer``: 800 frames, channels-last, float32; min and median of 5 after a warm-up for the forward, the combined
backward, its input and weight gradients alone, and the weight gradient computed the swapped way; checks that
the swapped weight gradient equals the combined one. ``update``: one process and agent (``atari`` preset, float32),
6 warm-up updates, then ROUNDS rounds with the split off and on in alternating order; world-model seconds.

Measured on a 2-core AMD EPYC with AVX2 only (docs/benchmarks.md, 2026-12-01, fourth session): 96 48 6 13:
combined 912-917 ms, input 302-325, weight 469-610, weight swapped 417-434 (bit-identical) over two runs;
192 96 5 5: 325, 104, 193, 165.
Update, 10 rounds, two runs: world model 4.79 -> 4.47 s and 4.76 -> 4.73 s.
"""
import sys

import torch
import torch.nn.functional as F

from xdreamer import nets
from xdreamer.bench import alternating_updates, min_and_median_ms
from xdreamer.training import configure_cpu


def layer(cin: int, cout: int, kernel: int, size: int) -> None:
    torch.manual_seed(0)
    cl = torch.channels_last
    w = torch.randn(cin, cout, kernel, kernel) * 0.05
    x = torch.randn(800, cin, size, size).contiguous(memory_format=cl)
    g = torch.randn_like(F.conv_transpose2d(x, w, stride=2)).contiguous(memory_format=cl)
    back = torch.ops.aten.convolution_backward
    s, z, o = [2, 2], [0, 0], [1, 1]
    runs = {"forward": lambda: F.conv_transpose2d(x, w, stride=2),
            "backward, one call": lambda: back(g, x, w, [cout], s, z, o, True, z, 1, [True, True, True]),
            "input gradient alone": lambda: back(g, x, w, None, s, z, o, True, z, 1, [True, False, False]),
            "weight gradient alone": lambda: back(g, x, w, None, s, z, o, True, z, 1, [False, True, False]),
            "weight gradient swapped": lambda: back(x, g, w, None, s, z, o, False, z, 1, [False, True, False])}
    for name, fn in runs.items():
        print(f"{name:24s} {min_and_median_ms(fn, 5)}")
    diff = (runs["backward, one call"]()[1] - runs["weight gradient swapped"]()[1]).abs().max().item()
    print(f"max |weight gradient - swapped| = {diff:.2e}")


def update(rounds: int) -> None:
    split = nets.split_backward_applies

    def use(rule):
        return lambda agent: setattr(nets, "split_backward_applies", rule)
    try:
        alternating_updates({"one call": use(lambda x: False), "split": use(split)}, rounds)
    finally:
        nets.split_backward_applies = split


if __name__ == "__main__":
    configure_cpu()
    mode = sys.argv[1] if len(sys.argv) > 1 else "layer"
    if mode == "layer":
        layer(*(int(a) for a in (sys.argv[2:6] if len(sys.argv) >= 6 else (96, 48, 6, 13))))
    elif mode == "update":
        update(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    else:
        sys.exit(f"unknown mode {mode!r}: use 'layer' or 'update'")
