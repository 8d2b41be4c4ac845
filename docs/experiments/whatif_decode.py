"""Where a paper-size what-if's time goes (18 first actions x 15 steps, decoded), and two ways of decoding tried.

    python docs/experiments/whatif_decode.py breakdown   # dream with and without decoding; the decoder layer by layer
    python docs/experiments/whatif_decode.py chunks      # decoding the 271 frames in chunks of 271, 136, 68, 34, 17
    python docs/experiments/whatif_decode.py gemm_fold   # the transposed convs as one GEMM + col2im (F.fold)
    python docs/experiments/whatif_decode.py small_mm    # imagination's GRU matmul at 18 rows, caches flushed

A fresh paper-size agent (``bench.bench_agent("atari")``, float32, 2 threads, ``configure_cpu()``), as
``xdreamer bench`` times it. Times are min and median of 7 (``breakdown``, ``chunks``) or 9 calls after one warm-up.
"""
import sys
import time

import torch
import torch.nn.functional as F

from xdreamer.bench import bench_agent, min_and_median_ms
from xdreamer.explain.dreams import dream

ACTIONS, HORIZON, FRAMES = 18, 15, 271  # 1 shared first frame + 18 x 15


def timed(fn, n=7) -> str:
    return min_and_median_ms(fn, n)


agent, _ = bench_agent("atari")
agent.eval()
dec = agent.wm.decoder
feat = torch.randn(FRAMES, dec.linear.in_features)
mode = sys.argv[1] if len(sys.argv) > 1 else "breakdown"
if mode == "breakdown":
    n = agent.spec.num_actions
    start = agent.wm.rssm.initial(1, agent.device).map(lambda x: x.expand(ACTIONS, *x.shape[1:]).contiguous())
    prefix = F.one_hot(torch.arange(ACTIONS) % n, n).float()[:, None]
    print("what-if, decoded  ", timed(lambda: dream(agent, start, HORIZON, prefix=prefix, decode=True)))
    print("what-if, no frames", timed(lambda: dream(agent, start, HORIZON, prefix=prefix, decode=False)))
    with torch.inference_mode():
        print(f"decode {FRAMES} frames ", timed(lambda: agent.wm.decode(feat)))
        x = dec.linear(feat).reshape(FRAMES, dec.start_ch, dec.start, dec.start)
        for layer in dec.net:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                cin, cout, k, _ = layer.weight.shape
                gflop = 2 * FRAMES * cin * cout * k * k * x.shape[-2] * x.shape[-1] / 1e9
                print(f"  {type(layer).__name__} {tuple(x.shape)} {gflop:.1f} GFLOP", timed(lambda: layer(x)))
            else:
                print(f"  {type(layer).__name__} {tuple(x.shape)}", timed(lambda: layer(x)))
            x = layer(x)
elif mode == "chunks":
    with torch.inference_mode():
        for size in (271, 136, 68, 34, 17):
            print(f"chunks of {size:3d}", timed(lambda: torch.cat([agent.wm.decode(f) for f in feat.split(size)])))
elif mode == "gemm_fold":
    with torch.inference_mode():
        for cin, cout, k, hw in [(192, 96, 5, 5), (96, 48, 6, 13), (48, 1, 6, 30)]:
            x = torch.randn(FRAMES, cin, hw, hw)
            w, b = torch.randn(cin, cout, k, k) / 30, torch.randn(cout)
            out = (hw - 1) * 2 + k
            w2 = w.reshape(cin, cout * k * k)

            def gemm():
                return x.permute(0, 2, 3, 1).reshape(-1, cin) @ w2

            def gemm_fold():
                cols = gemm().reshape(FRAMES, hw * hw, cout * k * k).transpose(1, 2)
                return F.fold(cols, (out, out), k, stride=2) + b[:, None, None]

            err = (gemm_fold() - F.conv_transpose2d(x, w, b, stride=2)).abs().max().item()
            xc = x.contiguous(memory_format=torch.channels_last)
            print(f"{cin}->{cout} k{k} {hw}x{hw}: native channels-last",
                  timed(lambda: F.conv_transpose2d(xc, w, b, stride=2), 9), "| GEMM alone", timed(gemm, 9),
                  "| GEMM + fold", timed(gemm_fold, 9), f"| max diff {err:.1e}")
elif mode == "small_mm":
    # The GRU's [18, 1200] x [1200, 1800] of a what-if step, with a 64 MB copy before each call so that the
    # weight comes from memory as it does between the steps of a dream (median of 30).
    w, x = torch.randn(1800, 1200), torch.randn(ACTIONS, 1200)
    junk = torch.randn(16_000_000)
    sink = torch.empty_like(junk)

    def cold(fn, n=30):
        times = []
        for _ in range(n):
            sink.copy_(junk)
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return f"{sorted(times)[n // 2] * 1e3:.2f} ms"

    packed = torch.ops.mkldnn._reorder_linear_weight(w, ACTIONS)  # oneDNN's prepacked weight (inference only)
    print("F.linear                 ", cold(lambda: F.linear(x, w)))
    print("oneDNN prepacked weight  ", cold(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")))
    print("reading the weight alone ", cold(lambda: w.sum()))
else:
    sys.exit(f"unknown mode {mode!r}: breakdown, chunks, gemm_fold or small_mm")
