"""Time updates of two checkouts of xdreamer in alternating fresh processes (``bench_agent(PRESET, "float32")``,
5 warm-up updates, then UPDATES timed ones; mean seconds per update).

    python docs/experiments/checkout_ab.py OLD_CHECKOUT NEW_CHECKOUT PRESET UPDATES PAIRS

e.g. ``git worktree add /tmp/old <commit>`` then ``python docs/experiments/checkout_ab.py /tmp/old . small+toy 40 5``.
Pairs alternate which checkout runs first. For changes that cannot be switched inside one process
(``bench.alternating_updates`` is the better tool where they can).
"""
import os
import subprocess
import sys

CHILD = """
import sys, time
import xdreamer
from xdreamer.bench import bench_agent
agent, batch = bench_agent(sys.argv[1], "float32")
for _ in range(5):
    agent.train_step(batch())
start = time.perf_counter()
for _ in range(int(sys.argv[2])):
    agent.train_step(batch())
print(xdreamer.__file__, (time.perf_counter() - start) / int(sys.argv[2]))
"""


def run(checkout: str, preset: str, updates: int) -> float:
    checkout = os.path.abspath(checkout)  # also the cwd: ``python -c`` puts the cwd first on sys.path
    env = dict(os.environ, PYTHONPATH=checkout)
    out = subprocess.run([sys.executable, "-c", CHILD, preset, str(updates)], env=env, cwd=checkout, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0].startswith(checkout), f"imported {out[0]}, not from {checkout}"
    return float(out[1])


if __name__ == "__main__":
    old, new, preset, updates, pairs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for i in range(pairs):
        order = [("old", old), ("new", new)] if i % 2 == 0 else [("new", new), ("old", old)]
        times = {name: run(path, preset, updates) for name, path in order}
        print(f"pair {i + 1}: old {times['old']:.3f} s, new {times['new']:.3f} s (ran {order[0][0]} first)", flush=True)
