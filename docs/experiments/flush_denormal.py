"""Updates with and without flushing denormals to zero (``torch.set_flush_denormal``), alternated in one process.

    python docs/experiments/flush_denormal.py ROUNDS [PRESET]

TensorFlow and XLA run CPU kernels with denormals flushed; PyTorch does not by default. If the update's numbers
went denormal, flushing would make it faster. Default preset ``small+toy`` (the learning test's), float32.
"""

import sys

import torch

from xdreamer import bench


def flush(on: bool):
    def switch(agent) -> None:
        torch.set_flush_denormal(on)
    return switch


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    preset = sys.argv[2] if len(sys.argv) > 2 else "small+toy"
    try:
        bench.alternating_updates({"denormals kept": flush(False), "flushed": flush(True)}, rounds, preset,
                                  warmup=6 if preset == "atari" else 20)
    finally:
        torch.set_flush_denormal(False)
