"""The training loss's observe loop with per-step weight gradients (autograd's) against ``nets.LoopWeight`` (the
gradients of the four weights the loop uses at every step as one matmul over all steps; ``RSSM.observe``'s
``loop_weights``, on in ``WorldModel.loss``).

    python docs/experiments/loop_weights.py [ROUNDS] [PRESET]     # default 10 rounds, atari (paper size)

One process and agent (``bench_agent(PRESET, "float32")``), 6 warm-up updates, then ROUNDS rounds with each path
in alternating order; prints the world-model seconds per path. The per-step path is the one compiled cores use
(``RSSM.compile_steps`` keeps autograd's per-step gradients), switched on here by the same flag. The script lifts
the size gate (``rssm.LOOP_WEIGHTS_MIN_GRU``, which keeps models smaller than paper size on the per-step path) so
that both paths run at any preset.

Measured on a 2-core AMD EPYC with AVX2 only (docs/benchmarks.md, fifth session): atari, world model mean
4.77 -> 4.65 s and median 4.83 -> 4.71 s (10 rounds); small 0.538 -> 0.540 s and debug 0.059 -> 0.062 s
(40 rounds each; no difference at their sizes).
"""
import sys

from xdreamer import rssm
from xdreamer.bench import alternating_updates
from xdreamer.training import configure_cpu


def use(loop: bool):
    def switch(agent) -> None:
        agent.wm.rssm._core_compiled = not loop  # the flag that sends observe down the per-step path
    return switch


if __name__ == "__main__":
    configure_cpu()
    rssm.LOOP_WEIGHTS_MIN_GRU = 0
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    preset = sys.argv[2] if len(sys.argv) > 2 else "atari"
    alternating_updates({"per-step weight gradients": use(False), "loop weights": use(True)}, rounds, preset=preset)
