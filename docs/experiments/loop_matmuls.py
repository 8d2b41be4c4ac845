"""The observe loop's 16-row matmuls (paper size) with ``F.linear``, MKL-packed weights and oneDNN's linear.

    python docs/experiments/loop_matmuls.py

Each product reads its whole weight (the GRU's ``[1800, 1200]``: 8.6 MB) for 16 rows, so it is bound by memory
bandwidth; a packed weight (``torch.ops.mkl._mkl_reorder_linear_weight``, what Inductor's CPU freezing uses for
inference) would only help if ``F.linear`` spent its time packing. Mean of 200 calls after 10 warm-ups, float32.
"""

import time

import torch
import torch.nn.functional as F

from xdreamer.training import configure_cpu


def mean_us(fn, repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e6 * (time.perf_counter() - start) / repeats


if __name__ == "__main__":
    configure_cpu()
    torch.manual_seed(0)
    for rows, k, n in [(16, 1200, 1800), (16, 1800, 1200), (16, 600, 1024), (16, 1024, 600), (18, 1200, 1800)]:
        x, w = torch.randn(rows, k), torch.randn(n, k)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
        x_dnn, w_dnn = x.to_mkldnn(), w.to_mkldnn()
        linear = mean_us(lambda: F.linear(x, w))
        print(f"[{rows}, {k}] x [{k}, {n}]: F.linear {linear:.0f} us "
              f"({4 * w.numel() / linear / 1e3:.1f} GB/s of weight), "
              f"MKL packed {mean_us(lambda: torch.ops.mkl._mkl_linear(x, packed, w, None, rows)):.0f} us, "
              f"mkldnn_linear {mean_us(lambda: torch._C._nn.mkldnn_linear(x_dnn, w_dnn).to_dense()):.0f} us")
