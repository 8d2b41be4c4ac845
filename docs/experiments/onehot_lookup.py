"""Sampled latents' share of a first layer as a lookup (``nets.linear_onehot``: ``F.embedding_bag`` over the weight
columns of their classes) against the matmul with the one-hot inputs. Same numbers up to float rounding.

    python docs/experiments/onehot_lookup.py op                    # one layer at the model's shapes
    python docs/experiments/onehot_lookup.py update ROUNDS PRESET  # whole updates alternated in one process

``op`` prints milliseconds per call (best of 20 after one warm-up call, 2 threads, ``configure_cpu()``) of
``lookup_columns`` + ``linear_onehot``'s lookup, of the matmul ``F.linear(onehot, W)``, and of ``argmax`` (the
obvious way to find the classes). ``update`` uses ``bench.alternating_updates`` and switches by
``nets.ONEHOT_LOOKUP_MIN`` (the default, or never); only the behaviour part changes.
"""
import sys
import time

import torch

from xdreamer import nets

DEFAULT_MIN = nets.ONEHOT_LOOKUP_MIN


def best_ms(fn, repeats: int = 20) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def lookup_min(value: int):
    def switch(agent):
        nets.ONEHOT_LOOKUP_MIN = value
    return switch


if sys.argv[1] == "op":
    from xdreamer.training import configure_cpu

    configure_cpu()
    torch.set_num_threads(2)
    nets.ONEHOT_LOOKUP_MIN = 0
    # rows, groups, classes, units: toy imagination step and heads; what-if step and heads; paper imagination
    # step (img_in, actor); paper heads on the imagined trajectory
    for rows, groups, classes, units in [(256, 16, 16, 128), (4096, 16, 16, 128), (18, 32, 32, 600),
                                         (288, 32, 32, 400), (800, 32, 32, 600), (800, 32, 32, 400),
                                         (12800, 32, 32, 400)]:
        probs = torch.rand(rows, groups, classes).softmax(-1)
        latents = nets.straight_through_onehot(probs, torch.randint(0, classes, (rows, groups)))
        flat = latents.flatten(-2)
        weight = torch.randn(units, groups * classes)
        cols = nets.lookup_columns(latents)
        assert torch.equal(cols, latents.argmax(-1) + torch.arange(0, groups * classes, classes))
        torch.testing.assert_close(nets._OneHotLinear.apply(cols, flat, weight), flat @ weight.t(),
                                   rtol=1e-5, atol=1e-5)
        lookup = best_ms(lambda: nets._OneHotLinear.apply(nets.lookup_columns(latents), flat, weight))
        matmul = best_ms(lambda: torch.nn.functional.linear(flat, weight))
        argmax = best_ms(lambda: latents.argmax(-1))
        print(f"[{rows} x {groups * classes}] -> {units}: lookup {lookup:.3f} ms (argmax alone {argmax:.3f}), "
              f"matmul {matmul:.3f} ms")
else:
    from xdreamer.bench import alternating_updates

    try:
        alternating_updates({"matmul": lookup_min(10**15), "lookup": lookup_min(DEFAULT_MIN)},
                            int(sys.argv[2]), sys.argv[3])
    finally:
        nets.ONEHOT_LOOKUP_MIN = DEFAULT_MIN
