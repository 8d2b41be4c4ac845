"""Inference beside a CPU-bound neighbour: how much a busy machine slows an agent down, per thread setting (#31).

    python docs/experiments/neighbour.py [--repeats 3] [--out docs/bench/neighbour-DATE.json]

The workload is what `xdreamer app` does when it opens an agent and what `xdreamer record` does: record a fixed
number of steps of a bundled agent (``--checkpoint checkpoints/pong --steps 200``, mode policy, seed 0; one warm-up
of 10 steps first; the env and the agent are loaded before the clock starts). Each measurement is a fresh
process, so that the OpenMP environment variables of its setting are read when torch loads its OpenMP runtime:

- ``active``: torch's defaults (one intra-op thread per core; GNU OpenMP spins about 300,000 iterations at the end
  of every parallel region before it sleeps), the environment scrubbed of OMP_WAIT_POLICY, GOMP_SPINCOUNT,
  KMP_BLOCKTIME, OMP_NUM_THREADS and MKL_NUM_THREADS;
- ``passive``: the same with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep at once);
- ``threads1``: the same as ``active`` with OMP_NUM_THREADS=1;
- ``xdreamer``: the child calls ``xdreamer.threads.share_cpu()`` before importing torch, as every command does.

The neighbours are what the machine is busy with: ``busy`` is one pure-Python busy loop per core (a compiler,
another test process); ``torch`` is one process multiplying 512x512 float32 matrices in a loop with torch's default
threads (another PyTorch job or another test suite). For each repeat and setting the workload runs alone and then
beside each neighbour, back to back, and the slowdown is the ratio of the two. The machine's 1-minute load average
is recorded beside every number, since other users' work shares the cores too. The JSON keeps every time.

``--training small+toy atari`` instead times training updates (``xdreamer.bench.bench_agent``, random batches, one
warm-up update, median of ``--updates``) with ``active`` and ``passive`` waiting and no neighbour, the settings
alternating: the fix must not slow training on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRUB = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SETTINGS = {"active": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads1": {"OMP_NUM_THREADS": "1"},
            "xdreamer": {}}

CHILD = r"""
import json, os, sys, time
if sys.argv[3] == "xdreamer":
    from xdreamer.threads import share_cpu
    share_cpu()
import torch
from xdreamer import checkpoint
from xdreamer.envs import make
from xdreamer.explain.trace import record
from xdreamer.training import configure_cpu, env_kwargs
configure_cpu()
agent = checkpoint.load(sys.argv[1], device="cpu")
env = make(agent.cfg.env, **env_kwargs(agent.cfg))
record(agent, env, episodes=1, seed=0, max_steps=10)
load = os.getloadavg()[0]
start = time.perf_counter()
trace = record(agent, env, episodes=1, seed=0, max_steps=int(sys.argv[2]))
seconds = time.perf_counter() - start
print(json.dumps({"s": seconds, "steps": len(trace), "threads": torch.get_num_threads(), "load_before": load,
                  "load_after": os.getloadavg()[0], "wait_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""

TRAIN_CHILD = r"""
import json, os, sys, time
from xdreamer.bench import bench_agent
import torch
agent, batch = bench_agent(sys.argv[1], "float32")
agent.train_step(batch())
seconds = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    agent.train_step(batch())
    seconds.append(time.perf_counter() - start)
print(json.dumps({"update_s": sorted(seconds)[len(seconds) // 2], "all_s": seconds, "load": os.getloadavg()[0],
                  "threads": torch.get_num_threads()}))
"""

NEIGHBOURS = {
    "busy": ["-c", "while True: pass"],
    "torch": ["-c", "import torch\na = torch.randn(512, 512)\nwhile True: a @ a"],
}


def start_neighbour(kind: str) -> list[subprocess.Popen]:
    count = (os.cpu_count() or 1) if kind == "busy" else 1
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}  # the neighbour spins as torch does by default
    procs = [subprocess.Popen([sys.executable, *NEIGHBOURS[kind]], env=env) for _ in range(count)]
    time.sleep(1.0)  # let it reach its loop
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def child(code: str, setting: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(SETTINGS[setting])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, "-c", code, *args, setting], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(setting: str, checkpoint: str, steps: int) -> dict:
    return child(CHILD, setting, checkpoint, str(steps))


def training(presets: list[str], updates: int, repeats: int) -> dict:
    """Training updates with the default (active) and passive waiting, no neighbour, settings alternating
    (``--training``): the fix must not slow training on a quiet machine."""
    runs: dict[str, list] = {f"{p}/{s}": [] for p in presets for s in ("active", "passive")}
    for r in range(repeats):
        for preset in presets:
            for setting in ("active", "passive") if r % 2 == 0 else ("passive", "active"):
                result = child(TRAIN_CHILD, setting, preset, str(updates))
                runs[f"{preset}/{setting}"].append(result)
                print(f"repeat {r} {preset:<10} {setting:<8} {result['update_s']:.3f} s per update  "
                      f"load {result['load']:.2f}", flush=True)
    summary = {key: statistics.median(x["update_s"] for x in v) for key, v in runs.items()}
    return {"summary": summary, "runs": runs}


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    openmp = [line.strip() for line in torch.__config__.parallel_info().splitlines() if "OpenMP" in line]
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "openmp": openmp,
            "python": platform.python_version(), "commit": commit, "load_average_at_end": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/pong")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--neighbours", nargs="+", default=list(NEIGHBOURS), choices=list(NEIGHBOURS))
    parser.add_argument("--out", default=f"docs/bench/neighbour-{datetime.date.today()}.json")
    parser.add_argument("--training", nargs="*", metavar="PRESET",
                        help="instead: time training updates of these presets (default small+toy atari) with "
                             "active and passive waiting, no neighbour")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per process (--training)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()} at the start", flush=True)
    if args.training is not None:
        data = {"command": "python docs/experiments/neighbour.py " + " ".join(sys.argv[1:]),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine(), "updates": args.updates, "repeats": args.repeats,
                **training(args.training or ["small+toy", "atari"], args.updates, args.repeats)}
        write(args.out, data)
        return
    runs: dict[str, list] = {f"{s}/{n}": [] for s in args.settings for n in ["alone", *args.neighbours]}
    for r in range(args.repeats):
        for setting in args.settings:
            for neighbour in ["alone", *args.neighbours]:
                procs = [] if neighbour == "alone" else start_neighbour(neighbour)
                try:
                    result = measure(setting, args.checkpoint, args.steps)
                finally:
                    stop(procs)
                runs[f"{setting}/{neighbour}"].append(result)
                print(f"repeat {r} {setting:<9} {neighbour:<6} {result['s']:7.2f} s  threads {result['threads']}  "
                      f"load {result['load_before']:.2f}", flush=True)
    # Two ratios: beside a neighbour against the same setting alone (back to back), and against the fastest run
    # alone of any setting (what the machine can do: "alone" also shares the cores with other users' work)
    best = min(x["s"] for s in args.settings for x in runs[f"{s}/alone"])
    summary = {"best_alone_s": best}
    for setting in args.settings:
        alone = [x["s"] for x in runs[f"{setting}/alone"]]
        row = {"alone_s": statistics.median(alone), "alone_vs_best": round(statistics.median(alone) / best, 2)}
        for n in args.neighbours:
            beside = [x["s"] for x in runs[f"{setting}/{n}"]]
            row[f"{n}_s"] = statistics.median(beside)
            row[f"{n}_slowdown"] = round(statistics.median(b / a for a, b in zip(alone, beside)), 2)
            row[f"{n}_vs_best"] = round(statistics.median(beside) / best, 2)
        summary[setting] = row
    data = {"command": "python docs/experiments/neighbour.py " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "checkpoint": args.checkpoint, "steps": args.steps, "repeats": args.repeats,
            "summary": summary, "runs": runs}
    write(args.out, data)


def write(out: str, data: dict) -> None:
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data.get("summary"), indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
