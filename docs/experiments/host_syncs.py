"""Count the host reads of tensor values (``aten::_local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``, a
distribution validating its arguments) in one ``Agent.train_step`` on CPU: on a GPU each is a synchronisation, the
CPU waiting for the device before it can queue more work.

    python docs/experiments/host_syncs.py [PRESET]      # default atari (paper size)

Prints the count and, for each Python call site inside xdreamer that caused one, how often. ``F.one_hot``'s range
checks are listed apart: ATen runs them on CPU only (on CUDA, MPS and XLA it relies on the device assert of its
scatter). The metrics' one ``.tolist()`` after the update is not an ``aten`` op and is not counted. Run with
``PYTHONPATH=<another checkout>`` to count another version (it prints which one it imported).
"""
import collections
import sys
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import xdreamer
from xdreamer.bench import bench_agent


class CountScalarReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sites = collections.Counter()
        self.in_one_hot = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            frames = [f for f in traceback.extract_stack() if "/xdreamer/" in f.filename and "/experiments/" not in f.filename]
            where = "F.one_hot range check (CPU only) at " if self.in_one_hot else ""
            self.sites[where + f"{frames[-1].filename.split('/xdreamer/')[-1]}:{frames[-1].lineno}" if frames else "?"] += 1
        return func(*args, **(kwargs or {}))


def marking_one_hot(one_hot):
    def wrapped(*args, **kwargs):
        counter.in_one_hot = True
        try:
            return one_hot(*args, **kwargs)
        finally:
            counter.in_one_hot = False
    return wrapped


print("xdreamer from", xdreamer.__file__)
agent, batch = bench_agent(sys.argv[1] if len(sys.argv) > 1 else "atari", "float32")
agent.train_step(batch())
data = batch()
counter = CountScalarReads()
torch.nn.functional.one_hot = marking_one_hot(torch.nn.functional.one_hot)
with counter:
    agent.train_step(data)
print(f"host reads of tensor values in one update: {sum(counter.sites.values())}")
for site, n in counter.sites.most_common():
    print(f"  {n:4d}  {site}")
