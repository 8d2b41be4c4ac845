"""The encoder's first conv on CPU: oneDNN's native layer against im2col + one matmul (``nets.conv2d_as_matmul``).

    python docs/experiments/encoder_first_layer.py layer [CHANNELS]     # the layer alone, 800 paper-size frames
    python docs/experiments/encoder_first_layer.py update [ROUNDS]      # whole paper-size updates, both paths

``layer``: forward, and forward + backward with ELU, of ``[800, C, 64, 64] -> [800, 48, 31, 31]`` (kernel 4, stride
2), min and median of 6 after a warm-up; both paths end channels-last, as in ``ConvEncoder``.
``update``: one process, one agent (the ``atari`` preset, float32, random replay-shaped batches), 6 warm-up updates,
then ROUNDS rounds that run one update with the old encoder path (native first conv, then a channels-last copy)
and one with the current one, in alternating order; prints the world-model seconds of each. Alternating in one
process keeps the heap and the VM's load the same for both.

Measured on a 2-core AMD EPYC with AVX2 only (docs/benchmarks.md, 2026-12-01, fourth session): layer, grayscale,
forward + backward 378-450 -> 143-170 ms; RGB 363-434 -> 247-318 ms (forward alone slower: 126-143 -> 163-204 ms).
Update, 16 rounds: world model 5.03 -> 4.86 s mean (medians 5.08 -> 4.93); two runs of 8 rounds: 4.77 -> 4.89 s
and 4.95 -> 4.69 s.
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from xdreamer import nets
from xdreamer.training import configure_cpu


def best_and_median(fn, n=6):
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return f"min {1e3 * min(times):.1f} ms, median {1e3 * sorted(times)[n // 2]:.1f} ms"


def layer(channels: int) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 48, 4, stride=2)
    x = torch.rand(800, channels, 64, 64) - 0.5
    grad = torch.randn(800, 48, 31, 31).contiguous(memory_format=torch.channels_last)
    paths = {"native": lambda: F.elu(conv(x)).contiguous(memory_format=torch.channels_last),
             "matmul": lambda: F.elu(nets.conv2d_as_matmul(x, conv))}
    with torch.no_grad():
        diff = (paths["native"]() - paths["matmul"]()).abs().max().item()
    print(f"{channels} channel(s), max |native - matmul| = {diff:.2e}")
    for _ in range(2):
        for name, fn in paths.items():
            with torch.no_grad():
                fwd = best_and_median(fn)

            def fwd_bwd(fn=fn):
                conv.weight.grad = conv.bias.grad = None
                fn().backward(grad)
            print(f"  {name:7s} forward {fwd}; forward + backward {best_and_median(fwd_bwd)}")


def old_forward(self, image):
    """``ConvEncoder.forward`` before the first layer ran as a matmul."""
    lead = image.shape[:-3]
    x = image.reshape(-1, *image.shape[-3:])
    last_conv = len(self.net) - 2
    for i, module in enumerate(self.net):
        x = nets.conv2d_as_matmul(x, module) if i == last_conv and x.device.type == "cpu" else module(x)
        if i == 0 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
    return x.reshape(*lead, -1)


def update(rounds: int) -> None:
    from xdreamer.bench import bench_agent

    agent, batch = bench_agent("atari", "float32")
    new_forward = nets.ConvEncoder.forward
    for _ in range(6):
        agent.train_step(batch())
    seconds = {"old": [], "new": []}
    for r in range(rounds):
        order = [("old", old_forward), ("new", new_forward)]
        for name, forward in order if r % 2 == 0 else order[::-1]:
            nets.ConvEncoder.forward = forward
            agent.train_step(batch())
            seconds[name].append(agent.last_timings["model_s"])
    nets.ConvEncoder.forward = new_forward
    for name, s in seconds.items():
        print(f"{name}: world model mean {np.mean(s):.3f} s, median {np.median(s):.3f} s, min {min(s):.3f} s")


if __name__ == "__main__":
    configure_cpu()
    mode = sys.argv[1] if len(sys.argv) > 1 else "layer"
    if mode == "layer":
        layer(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    elif mode == "update":
        update(int(sys.argv[2]) if len(sys.argv) > 2 else 8)
    else:
        sys.exit(f"unknown mode {mode!r}: use 'layer' or 'update'")
