"""ELU whose backward uses its result (``nets.ELU``, in place) against ``F.elu``.

    python docs/experiments/elu_result.py layer
    python docs/experiments/elu_result.py update ROUNDS [PRESET]
    python docs/experiments/elu_result.py compiled ROUNDS

``layer``: ``elu_backward`` from the input (``F.elu``'s autograd) and from the result (``nets.ELU``'s) on the
update's ELU shapes, and the forward out of place and in place; min and median of 20 calls (the paper-size conv
shape is allocated once, so no page faults).
``update``: the two alternated in one process, update by update (``bench.alternating_updates``), at paper size by
default or at ``PRESET`` (e.g. ``small+toy``, the learning test's preset), float32; prints world model, behaviour
and both.
``compiled``: the in-place ELU's forward as an Inductor-compiled kernel (``x.copy_(F.elu(x))`` on the flattened
tensor, dynamic shapes, compiled once before timing; tensors of >= 1M elements, in an autograd function with the
same result-based backward) against ATen's, alone on two shapes and then alternated in paper-size updates.
Not used by the package: it made no difference to whole updates (docs/benchmarks.md).
"""

import sys

import torch
import torch.nn.functional as F

from xdreamer import bench, nets
from xdreamer.training import configure_cpu


def use(in_place: bool):
    def switch(agent) -> None:
        nets.ELU.in_place = in_place
    return switch


def min_median_us(fn, repeats: int = 20) -> str:
    low, median = bench.min_and_median_s(fn, repeats)
    return f"min {1e6 * low:.0f} us, median {1e6 * median:.0f} us"


def layer() -> None:
    configure_cpu()
    torch.manual_seed(0)
    for shape in [(256, 128), (4096, 128), (12800, 400), (800, 48, 30, 30)]:
        x = torch.randn(shape)
        y, g = F.elu(x), torch.randn(shape)
        buf = x.clone()
        bwd = torch.ops.aten.elu_backward
        print(shape,
              f"backward from input: {min_median_us(lambda: bwd(g, 1.0, 1, 1.0, False, x))};",
              f"from result: {min_median_us(lambda: bwd(g, 1.0, 1, 1.0, True, y))};",
              f"forward: {min_median_us(lambda: F.elu(x))};",
              f"in place: {min_median_us(lambda: F.elu_(buf.copy_(x)))} (with a copy)")


def compiled(rounds: int) -> None:
    configure_cpu()
    kernel = torch.compile(lambda x: x.copy_(F.elu(x)), dynamic=True, fullgraph=True)

    class CompiledELU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            with torch.no_grad():
                kernel(x.view(-1))
            ctx.mark_dirty(x)
            ctx.save_for_backward(x)
            return x

        @staticmethod
        def backward(ctx, grad):
            return torch.ops.aten.elu_backward(grad, 1.0, 1, 1.0, True, ctx.saved_tensors[0])

    aten_forward = nets.ELU.forward

    def compiled_forward(self, x):
        if x.grad_fn is not None and not x._is_view() and x.numel() >= 1 << 20 and x.is_contiguous():
            return CompiledELU.apply(x)
        return aten_forward(self, x)

    for shape in [(12800 * 400,), (800 * 48 * 30 * 30,)]:
        x = torch.randn(shape)
        kernel(x.clone())  # compile (once: dynamic shapes)
        print(shape, f"ATen elu_: {min_median_us(lambda: F.elu_(x))}; compiled: {min_median_us(lambda: kernel(x))}")

    def use(forward):
        def switch(agent) -> None:
            nets.ELU.forward = forward
        return switch

    try:
        bench.alternating_updates({"ATen": use(aten_forward), "compiled": use(compiled_forward)}, rounds, "atari")
    finally:
        nets.ELU.forward = aten_forward


if __name__ == "__main__":
    if sys.argv[1:2] == ["layer"]:
        layer()
    elif sys.argv[1:2] == ["update"]:
        rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
        preset = sys.argv[3] if len(sys.argv) > 3 else "atari"
        try:
            bench.alternating_updates({"F.elu": use(False), "ELU in place": use(True)}, rounds, preset,
                                      warmup=6 if preset == "atari" else 20)
        finally:
            nets.ELU.in_place = True
    elif sys.argv[1:2] == ["compiled"]:
        compiled(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    else:
        sys.exit(__doc__)
