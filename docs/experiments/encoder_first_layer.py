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

import torch
import torch.nn.functional as F

from xdreamer import nets
from xdreamer.bench import alternating_updates, min_and_median_ms
from xdreamer.training import configure_cpu


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
                fwd = min_and_median_ms(fn, 6)

            def fwd_bwd(fn=fn):
                conv.weight.grad = conv.bias.grad = None
                fn().backward(grad)
            print(f"  {name:7s} forward {fwd}; forward + backward {min_and_median_ms(fwd_bwd, 6)}")


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
    new_forward = nets.ConvEncoder.forward

    def use(forward):
        return lambda agent: setattr(nets.ConvEncoder, "forward", forward)
    try:
        alternating_updates({"old": use(old_forward), "new": use(new_forward)}, rounds)
    finally:
        nets.ConvEncoder.forward = new_forward


if __name__ == "__main__":
    configure_cpu()
    mode = sys.argv[1] if len(sys.argv) > 1 else "layer"
    if mode == "layer":
        layer(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    elif mode == "update":
        update(int(sys.argv[2]) if len(sys.argv) > 2 else 8)
    else:
        sys.exit(f"unknown mode {mode!r}: use 'layer' or 'update'")
