"""``straight_through_onehot``'s one-hot: ``F.one_hot(index, K).to(dtype)`` (before) against scattering into zeros
of the probabilities' dtype (now). Same values.

    python docs/experiments/onehot_scatter.py op                  # the op alone at the model's shapes
    python docs/experiments/onehot_scatter.py update ROUNDS PRESET # whole updates alternated in one process

``op`` prints microseconds per call (mean of 2,000 after 100 warm-up calls, 2 threads, ``configure_cpu()``); ``update`` uses
``bench.alternating_updates`` and swaps the function where the RSSM and the actor imported it.
"""
import sys
import time

import torch

from xdreamer import behavior, nets, rssm


def with_one_hot(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def use(fn):
    def switch(agent):
        rssm.straight_through_onehot = behavior.straight_through_onehot = fn
    return switch


if sys.argv[1] == "op":
    from xdreamer.training import configure_cpu

    configure_cpu()  # as in training: freed memory kept, so no page faults on the 6.5 MB int64 one-hot
    torch.set_num_threads(2)
    # paper observe loop [16, 32] x 32, paper imagination [800, 32] x 32, toy imagination [256, 16] x 16
    for shape, classes in [((16, 32), 32), ((800, 32), 32), ((256, 16), 16), ((16, 16), 16)]:
        probs = torch.rand(*shape, classes)
        index = torch.randint(0, classes, shape)
        assert torch.equal(with_one_hot(probs, index), nets.straight_through_onehot(probs, index))
        line = []
        for name, fn in (("F.one_hot", with_one_hot), ("scatter", nets.straight_through_onehot)):
            for _ in range(100):
                fn(probs, index)
            start = time.perf_counter()
            for _ in range(2000):
                fn(probs, index)
            line.append(f"{name} {(time.perf_counter() - start) / 2000 * 1e6:.1f} us")
        print(f"{list(shape)} x {classes}: " + ", ".join(line))
else:
    from xdreamer.bench import alternating_updates

    try:
        alternating_updates({"F.one_hot": use(with_one_hot), "scatter": use(nets.straight_through_onehot)},
                            int(sys.argv[2]), sys.argv[3])
    finally:
        use(nets.straight_through_onehot)(None)
