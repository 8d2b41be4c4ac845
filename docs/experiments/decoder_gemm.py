"""The decoder's small-input transposed conv as one GEMM plus col2im (``PhaseConvTranspose2d(impl="gemm")``) against
what ``impl="auto"`` ran before it (the native op on a channels-last input, with the split backward on AVX2).

    python docs/experiments/decoder_gemm.py layer            # each decoder shape alone, native vs gemm
    python docs/experiments/decoder_gemm.py update ROUNDS [PRESET]   # whole updates, alternating in one process
    python docs/experiments/decoder_gemm.py whatif REPEATS   # xdreamer bench's paper-size what-if, alternating
    python docs/experiments/decoder_gemm.py ops ROUNDS       # the layer's operators inside paper-size updates

``layer``: float32, channels-last inputs, min and median of 8 after 2 warm-ups: forward without gradients, and
forward + ELU + backward, at the paper size (192 -> 96 channels, 5x5 -> 13x13; 800 training frames and a what-if's
271), the small preset's (64 -> 32, 512 frames), the toy preset's (32 -> 16, 256 frames) and the paper size's
13x13 -> 30x30 layer (96 -> 48). ``update``: ``bench.alternating_updates`` with ``nets.GEMM_MIN_IN_CHANNELS`` at
its value (``gemm``) and out of reach (``native``). ``whatif``: ``bench.bench_analysis``'s what-if timing (18
branches x 15 steps with decoding) under each, alternating. ``ops``: after 4 warm-up updates, ROUNDS rounds of one
update per variant, each timed operator by operator (``op_efficiency.OpTimer``); prints the milliseconds of the
layer's operators (the transposed conv and its backward, or the GEMMs, col2im adds and im2col copy) and of all
operators, per update. Less noisy than whole updates on this VM: the layer is ~5 % of an update.
"""

import sys

import numpy as np
import torch

from xdreamer import bench, nets
from xdreamer.training import configure_cpu

GEMM_MIN = nets.GEMM_MIN_IN_CHANNELS


def timed(fn, repeats: int = 8) -> str:
    fn()  # a second warm-up: min_and_median_s makes one more
    low, median = bench.min_and_median_s(fn, repeats)
    return f"{1e3 * low:7.1f} / {1e3 * median:7.1f} ms"


def layer() -> None:
    configure_cpu()
    torch.manual_seed(0)
    print("forward | forward + ELU + backward, min / median")
    for cin, cout, kernel, size, frames in ((192, 96, 5, 5, 800), (192, 96, 5, 5, 271), (64, 32, 5, 5, 512),
                                            (32, 16, 5, 5, 256), (96, 48, 6, 13, 800)):
        out = (size - 1) * 2 + kernel
        x0 = torch.randn(frames, cin, size, size).contiguous(memory_format=torch.channels_last)
        g0 = torch.randn(frames, cout, out, out).contiguous(memory_format=torch.channels_last)
        native = nets.PhaseConvTranspose2d(cin, cout, kernel, impl="native")
        for impl in ("native", "gemm"):
            conv = nets.PhaseConvTranspose2d(cin, cout, kernel, impl=impl)
            conv.load_state_dict(native.state_dict())
            act = nets.ELU()
            if impl == "native":  # what auto ran before: channels-last, split backward on AVX2
                conv.impl = "auto"
                nets.GEMM_MIN_IN_CHANNELS = 10**9

            def forward():
                with torch.no_grad():
                    conv(x0)

            def train():
                x = x0.clone().requires_grad_(True)
                act(conv(x)).backward(g0)

            print(f"{cin:3d} -> {cout:3d}, {size:2d} -> {out:2d}, {frames:3d} frames, {impl:6s}: {timed(forward)} | "
                  f"{timed(train)}", flush=True)
            nets.GEMM_MIN_IN_CHANNELS = GEMM_MIN


def gemm_min(value: int):
    def switch(agent):
        nets.GEMM_MIN_IN_CHANNELS = value
    return switch


def update(rounds: int, preset: str = "atari") -> None:
    configure_cpu()
    try:
        bench.alternating_updates({"native": gemm_min(10**9), "gemm": gemm_min(GEMM_MIN)}, rounds, preset)
    finally:
        nets.GEMM_MIN_IN_CHANNELS = GEMM_MIN


def whatif(repeats: int) -> None:
    configure_cpu()
    agent, _ = bench.bench_agent("atari", "float32")
    seconds: dict[str, list[float]] = {"native": [], "gemm": []}
    try:
        for r in range(repeats):
            for name in (("native", "gemm") if r % 2 == 0 else ("gemm", "native")):
                nets.GEMM_MIN_IN_CHANNELS = 10**9 if name == "native" else GEMM_MIN
                seconds[name].append(bench.bench_analysis(agent, 3)["whatif_s"])
    finally:
        nets.GEMM_MIN_IN_CHANNELS = GEMM_MIN
    for name, s in seconds.items():
        print(f"{name}: what-if mean {np.mean(s):.3f} s, median {np.median(s):.3f} s, min {min(s):.3f} s")


def ops(rounds: int) -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from op_efficiency import OpTimer

    configure_cpu()
    agent, batch = bench.bench_agent("atari", "float32")
    for _ in range(4):
        agent.train_step(batch())

    def layer_op(op: str, shapes: tuple) -> bool:
        if op in ("convolution", "convolution_backward"):
            return any(s[1:] == (192, 5, 5) for s in shapes)  # the 5x5 layer's input, in any role
        if op == "mm":
            return any(192 in s and (2400 in s or 20000 in s) for s in shapes)
        return op in ("add_", "clone") and any(s[-1:] == (96,) and 5 in s for s in shapes)

    totals: dict[str, list[tuple[float, float]]] = {"native": [], "gemm": []}
    try:
        for r in range(rounds):
            for name in (("native", "gemm") if r % 2 == 0 else ("gemm", "native")):
                nets.GEMM_MIN_IN_CHANNELS = 10**9 if name == "native" else GEMM_MIN
                timer = OpTimer()
                with timer:
                    agent.train_step(batch())
                mine = sum(s for (op, shapes), s in timer.seconds.items() if layer_op(op, shapes))
                totals[name].append((mine, sum(timer.seconds.values())))
    finally:
        nets.GEMM_MIN_IN_CHANNELS = GEMM_MIN
    for name, pairs in totals.items():
        layer_s, all_s = np.array(pairs).T
        print(f"{name}: the layer's operators {1e3 * layer_s.mean():.0f} ms (per round: "
              f"{', '.join(f'{1e3 * s:.0f}' for s in layer_s)}), all operators {all_s.mean():.2f} s per update")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["layer"]:
        layer()
    elif args[:1] == ["update"] and len(args) in (2, 3):
        update(int(args[1]), *args[2:])
    elif args[:1] == ["whatif"] and len(args) == 2:
        whatif(int(args[1]))
    elif args[:1] == ["ops"] and len(args) == 2:
        ops(int(args[1]))
    else:
        sys.exit(__doc__)
