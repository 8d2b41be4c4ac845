"""Time paper-size updates (``atari`` preset, float32, random replay-shaped batches) in a fresh process.

    python docs/experiments/paper_updates.py [WARMUP] [TIMED]        # default 6 warm-up, 4 timed updates
    python docs/experiments/paper_updates.py 0 8 elu                 # + the decoder's last ELU backward per update
    python docs/experiments/paper_updates.py 4 5 json                # + a JSON line of the numbers, printed last

Prints the mean and min seconds per update, the world-model and behaviour parts and the minor page faults of each
timed update. Lighter than ``python -m xdreamer.bench preset atari ...`` (no FLOP count, analysis or replay), for
alternating A/B runs: e.g. ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's CPU allocator puts buffers of >= 2 MB on
transparent huge pages) against the default, docs/benchmarks.md (2026-12-01, fourth session). With ``elu``, the
decoder's last ELU (``[800, 48, 30, 30]``) runs through an equivalent ``autograd.Function`` that times its backward
and counts the minor page faults inside it, printed per update (warm-up updates included).
"""
import json
import resource
import sys
import time

import numpy as np
import torch

from xdreamer.bench import bench_agent

agent, batch = bench_agent("atari", "float32")


elu_log: list[tuple[float, int]] = []


class TimedELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.elu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        out = torch.ops.aten.elu_backward(grad, 1.0, 1, 1, False, x)
        elu_log.append((round(1e3 * (time.perf_counter() - start), 1),
                        resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
        return out


class TimedELUModule(torch.nn.Module):
    def forward(self, x):
        return TimedELU.apply(x)


if "elu" in sys.argv[3:]:
    assert isinstance(agent.wm.decoder.net[5], torch.nn.ELU)
    agent.wm.decoder.net[5] = TimedELUModule()
warmup = int(sys.argv[1]) if len(sys.argv) > 1 else 6
timed = int(sys.argv[2]) if len(sys.argv) > 2 else 4
for _ in range(warmup):
    agent.train_step(batch())
total, model, behavior, faults = [], [], [], []
for _ in range(timed):
    data = batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    agent.train_step(data)
    total.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    model.append(agent.last_timings["model_s"])
    behavior.append(agent.last_timings["behavior_s"])
if elu_log:
    print("decoder's last ELU backward per update (ms, minor page faults):", elu_log)
print(f"update {np.mean(total):.2f} s (min {min(total):.2f}), world model {np.mean(model):.2f} s, "
      f"behaviour {np.mean(behavior):.2f} s, minor page faults per update {faults}")
if "json" in sys.argv[3:]:  # one machine-readable line last (docs/experiments/peer_vs_xdreamer.py reads it)
    print(json.dumps({"seconds_per_update": round(float(np.mean(total)), 3), "min_seconds": round(min(total), 3),
                      "each": [round(t, 2) for t in total], "world_model_s": round(float(np.mean(model)), 3),
                      "behaviour_s": round(float(np.mean(behavior)), 3), "minor_page_faults": faults}))
