"""How close each operator of a warm update runs to this CPU's matmul peak, and what the decoder's transposed convs
would get as GEMMs.

    python docs/experiments/op_efficiency.py update [PRESET] [WARMUP] [TIMED] [OUT.json]   # default atari 4 3
    python docs/experiments/op_efficiency.py gemm [FRAMES]                                 # default 800

``update``: builds ``xdreamer bench``'s agent for PRESET (float32, random replay-shaped batches), runs WARMUP updates
(the heap reaches its working size, docs/benchmarks.md "Page faults"), then times every ATen operator of TIMED
updates with a dispatch mode (``time.perf_counter`` around each call; on a CPU every op is synchronous). This has no
profiler artefacts: ``torch.profiler`` put 363 ms on the encoder's first ``elu_backward`` in one update that takes
under 20 ms here. Each operator's FLOPs come from ``torch.utils.flop_counter``'s formulas (convolutions and matmuls
only). Prints, per (operator, input shapes), the milliseconds per update, GFLOP and GFLOP/s, and the totals per
category, against a 2048^3 matmul peak measured in the same process before and after; OUT.json gets the same
numbers.

``gemm``: the decoder's two middle transposed convs (paper size, channels-last) forward, against the GEMM that the
same layer is as a matmul + col2im (``[frames x H x W, Cin] @ [Cin, Cout x k x k]``), and against the ordinary conv
that is their adjoint (the layer's input gradient). On the 2-core AVX2 EPYC the K = 192 GEMM ran at 62-84 GFLOP/s,
no faster than oneDNN's transposed conv (docs/benchmarks.md, tenth session).
"""

import collections
import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from xdreamer.bench import bench_agent, matmul_peak_gflops, min_and_median_s
from xdreamer.training import configure_cpu

CONV = ("convolution", "convolution_backward", "_convolution", "mkldnn_convolution")
MATMUL = ("mm", "addmm", "bmm", "baddbmm")


class OpTimer(TorchDispatchMode):
    """Wall time, calls and FLOPs per (ATen op, input shapes) of everything run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict = collections.defaultdict(float)
        self.calls: dict = collections.Counter()
        self.flops: dict = collections.Counter()
        self.faults = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        key = (func.overloadpacket.__name__, shapes)
        self.seconds[key] += elapsed
        self.calls[key] += 1
        if func.overloadpacket in flop_registry:
            self.flops[key] += flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)
        return out


def category(op: str) -> str:
    return "convolution" if op in CONV else "matmul" if op in MATMUL else "other"


def update(preset: str = "atari", warmup: int = 4, timed: int = 3, out: str | None = None) -> None:
    configure_cpu()
    agent, batch = bench_agent(preset, "float32")
    peaks = [matmul_peak_gflops("float32")]
    for _ in range(warmup):
        agent.train_step(batch())
    timer, walls = OpTimer(), []
    for _ in range(timed):
        data = batch()
        start = time.perf_counter()
        with timer:
            agent.train_step(data)
        walls.append(time.perf_counter() - start)
    peaks.append(matmul_peak_gflops("float32"))
    peak = max(peaks)
    rows = []
    for key, seconds in timer.seconds.items():
        op, shapes = key
        s = seconds / timed
        gflop = timer.flops[key] / timed / 1e9
        rows.append({"op": op, "shapes": [list(x) for x in shapes], "category": category(op),
                     "calls_per_update": timer.calls[key] // timed, "ms_per_update": 1e3 * s, "gflop": gflop,
                     "gflops": gflop / s if gflop else None})
    rows.sort(key=lambda r: -r["ms_per_update"])
    totals = {}
    for cat in ("convolution", "matmul", "other"):
        mine = [r for r in rows if r["category"] == cat]
        s = sum(r["ms_per_update"] for r in mine) / 1e3
        gflop = sum(r["gflop"] for r in mine)
        totals[cat] = {"s_per_update": s, "gflop": gflop, "gflops": gflop / s if gflop else None,
                       "percent_of_peak": 100 * gflop / s / peak if gflop else None}
    result = {"preset": preset, "warmup": warmup, "timed": timed, "update_s_with_timer": float(np.mean(walls)),
              "ops_s_per_update": sum(r["ms_per_update"] for r in rows) / 1e3,
              "minor_page_faults_per_update": timer.faults // timed, "matmul_peak_gflops": peak,
              "matmul_peak_gflops_samples": peaks, "categories": totals, "ops": rows,
              "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    print(f"{preset}: {result['update_s_with_timer']:.2f} s per update under the timer, ops {result['ops_s_per_update']:.2f} s, "
          f"{result['minor_page_faults_per_update']} faults per update, matmul peak {peak:.0f} GFLOP/s "
          f"({', '.join(f'{p:.0f}' for p in peaks)})")
    for cat, t in totals.items():
        rate = f"{t['gflop']:.0f} GFLOP, {t['gflops']:.0f} GFLOP/s = {t['percent_of_peak']:.0f} % of peak" if t["gflop"] else ""
        print(f"  {cat:12s} {t['s_per_update']:6.2f} s  {rate}")
    print(f"{'ms/update':>10s} {'calls':>5s} {'GFLOP':>7s} {'GFLOP/s':>8s}  op  shapes")
    for r in rows[:30]:
        rate = f"{r['gflops']:8.0f}" if r["gflops"] else " " * 8
        print(f"{r['ms_per_update']:10.1f} {r['calls_per_update']:5d} {r['gflop']:7.2f} {rate}  {r['op']}  "
              f"{r['shapes'][:3]}")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", out)


def best_ms(fn, repeats: int = 6) -> float:
    return 1e3 * min_and_median_s(fn, repeats)[0]


def gemm(frames: int = 800) -> None:
    configure_cpu()
    torch.manual_seed(0)
    print(f"matmul peak {matmul_peak_gflops('float32'):.0f} GFLOP/s; {frames} frames, float32, min of 6")
    for cin, cout, k, h in ((192, 96, 5, 5), (96, 48, 6, 13)):
        x = torch.randn(frames, cin, h, h).contiguous(memory_format=torch.channels_last)
        w = torch.randn(cin, cout, k, k) * 0.05
        out = (h - 1) * 2 + k
        gflop = 2 * frames * h * h * cin * cout * k * k / 1e9
        rows = x.permute(0, 2, 3, 1).reshape(-1, cin)
        cols = w.permute(0, 2, 3, 1).reshape(cin, -1)
        grad = torch.randn(frames, cout, out, out).contiguous(memory_format=torch.channels_last)
        timings = {"transposed conv (oneDNN)": best_ms(lambda: F.conv_transpose2d(x, w, stride=2)),
                   f"GEMM [{rows.shape[0]}, {cin}] @ [{cin}, {cols.shape[1]}]": best_ms(lambda: rows @ cols),
                   "adjoint conv2d (its input gradient)": best_ms(lambda: F.conv2d(grad, w, stride=2))}
        print(f"{cin} -> {cout}, {h}x{h} -> {out}x{out}, {gflop:.1f} GFLOP:")
        for name, ms in timings.items():
            print(f"  {name:42s} {ms:7.1f} ms  {gflop / ms * 1e3:5.0f} GFLOP/s")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("update", "gemm"):
        sys.exit(__doc__)
    if args[0] == "update":
        preset = args[1] if len(args) > 1 else "atari"
        update(preset, *(int(a) for a in args[2:4]), *(args[4:5]))
    else:
        gemm(*(int(a) for a in args[1:2]))
