"""Updates with and without flushing denormals to zero (``torch.set_flush_denormal``), alternated in one process.

    python docs/experiments/flush_denormal.py ROUNDS [PRESET]

``training.configure_cpu`` (which ``bench_agent`` applies, as ``xdreamer train`` does) flushes denormals; an
earlier session found CPU updates 2-3x slower early in training without it. This alternates the flush off and on
over the benchmark's random batches. Default preset ``small+toy`` (the learning test's), float32.
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
