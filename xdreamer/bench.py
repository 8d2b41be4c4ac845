"""``xdreamer bench``: update speed per preset and precision, env speed, replay bytes per step, peak RSS.

``--device cuda`` runs the agent's parts (updates, matmul peak, analysis, replay-to-tensor) on a GPU, waiting for it
(``torch.cuda.synchronize``) wherever a time is read, and adds the peak GPU memory; env, replay and ``record``
timings stay on the CPU. This path has not run on a GPU yet (none has been lent to this project's sessions).

Each preset x precision is measured in its own subprocess so that its peak RSS is its own. Updates
run on random replay-shaped batches of the preset's size (batch x length, 64x64 grayscale, Pong's 6
actions); the first update is a warm-up and is not timed. The FLOPs of one update are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward) and
divided by the measured update time; the same subprocess measures the matmul peak of the precision
in use (a 2048^3 matmul, smaller where that would take long, see ``matmul_peak_gflops``), so "percent of
peak" compares numbers taken in the same run. The peak is measured twice, before the first update and after the
analysis timings, and the higher one is used: on a shared VM one short measurement can land in a slow moment
(a 2-core AMD EPYC measured 92 GFLOP/s once while the same process's update matmuls ran at 116-151).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np


def _machine(device: str = "cpu") -> dict[str, Any]:
    import torch

    from .nets import cpu_has_native_bf16

    gpu = {"gpu": torch.cuda.get_device_name(torch.device(device))} if device.startswith("cuda") else {}
    return {"machine": platform.machine(), "cpu": _cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_native_bf16(),
            "device": device, **gpu}


def synchronize(device) -> None:
    """``agent.synchronize`` (imported here when called: this module loads without torch)."""
    from .agent import synchronize as sync

    sync(device)


def check_device(device: str) -> str:
    """``device`` if the benchmark can run on it (``cpu``, ``cuda``, ``cuda:N`` with a GPU present), else ValueError.
    The name and the availability are checked by ``xdreamer.config.check_device`` (one rule for every command)."""
    from .config import check_device as check_any_device

    if device in ("auto", "mps"):
        raise ValueError(f"device {device!r}: the benchmark runs on cpu or cuda")
    return check_any_device(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def matmul_peak_gflops(dtype_name: str = "float32", size: int = 2048, repeats: int = 5,
                       budget_s: float = 0.25, device: str = "cpu") -> float:
    """Best-of-``repeats`` GFLOP/s of a ``size``^3 matmul in ``dtype_name`` with the current threads (on ``device``;
    on a GPU ``size`` should be larger than the default to approach its peak: ``bench_preset`` uses 8192).

    The size grows from 256 in doublings up to ``size`` only while one matmul takes under ``budget_s``: on a CPU
    without native bfloat16 (AVX2 only) a 2048^3 bfloat16 matmul takes ~50 s (0.34 GFLOP/s), and a smaller one
    measures that rate as well."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    n = min(256, size)
    while True:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # first use of the size: library set-up, not timed
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        first = time.perf_counter() - start
        if n >= size or first * 8 > budget_s:  # the next doubling would take ~8x as long
            break
        n *= 2
    best = first
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def count_update_flops(agent, batch) -> float:
    """FLOPs of one ``agent.train_step(batch)`` (forward + backward of world model and behaviour)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        agent.train_step(batch)
    return float(counter.get_total_flops())


# Operator categories of the update profile (``profile_update``), by ATen op name; everything else is "other".
OP_CATEGORIES = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                    "aten::convolution", "aten::conv2d"),
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"),
    "activation": ("aten::elu", "aten::elu_backward", "aten::sigmoid", "aten::sigmoid_backward", "aten::tanh",
                   "aten::tanh_backward", "aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax",
                   "aten::_log_softmax_backward_data", "aten::native_layer_norm",
                   "aten::native_layer_norm_backward"),
    "memory": ("aten::copy_", "aten::_to_copy", "aten::cat", "aten::stack", "aten::clone", "aten::contiguous",
               "aten::pixel_shuffle", "aten::pixel_unshuffle", "aten::empty", "aten::empty_strided",
               "aten::fill_", "aten::zero_", "aten::constant_pad_nd", "aten::index", "aten::index_put_"),
}


def profile_update(agent, batch, top: int = 12) -> dict[str, Any]:
    """Where one ``agent.train_step(batch)`` spends its time: ``torch.profiler`` self CPU time per operator
    category (``OP_CATEGORIES``), the ``top`` operators by name and by (name, input shapes). The profiled
    update runs slower than an unprofiled one (recording overhead); shares are what it is for. On a GPU the times
    are the operators' GPU (kernel) time and ``self_cpu_s`` is the sum of those (the key kept for one schema)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    gpu = agent.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]
    with profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        agent.train_step(batch)
        synchronize(agent.device)
        wall = time.perf_counter() - start

    def self_s(e) -> float:
        return (e.self_device_time_total if gpu else e.self_cpu_time_total) / 1e6

    def ops_only(events):  # on a GPU the kernels are events too; an op's self device time already holds them
        return [e for e in events if not gpu or e.device_type == torch.autograd.DeviceType.CPU]

    by_name = ops_only(prof.key_averages())
    total = sum(self_s(e) for e in by_name)
    category = {op: cat for cat, ops in OP_CATEGORIES.items() for op in ops}
    shares: dict[str, float] = {cat: 0.0 for cat in (*OP_CATEGORIES, "other")}
    for e in by_name:
        shares[category.get(e.key, "other")] += self_s(e)
    ops = sorted(by_name, key=lambda e: -self_s(e))[:top]
    shaped = sorted(ops_only(prof.key_averages(group_by_input_shape=True)), key=lambda e: -self_s(e))[:top]
    return {"profiled_update_s": wall, "self_cpu_s": total, "profiled_time": "gpu" if gpu else "cpu",
            "category_s": shares,
            "category_percent": {k: round(100 * v / total, 1) for k, v in shares.items()},
            "top_ops": [{"op": e.key, "self_s": self_s(e), "calls": e.count} for e in ops],
            "top_ops_by_shape": [{"op": e.key, "shapes": str(e.input_shapes), "self_s": self_s(e),
                                  "calls": e.count} for e in shaped]}


def bench_agent(preset: str, precision: str = "float32", device: str = "cpu"):
    """``(agent, batch)`` for timing updates: a fresh agent of ``preset`` (seed 0) on ``device`` for a Pong-shaped env
    (64x64 grayscale, 6 actions) and ``batch()``, which draws a random replay-shaped batch of the preset's size
    (batch x length) from its own seeded generator. Also applies ``configure_cpu`` as ``xdreamer train`` does. On a
    GPU the agent waits for the device at the split between world model and behaviour (``Agent.sync_timings``),
    so that both parts of ``last_timings`` are its own."""
    import torch

    from .agent import Agent
    from .config import build_config
    from .envs import EnvSpec
    from .training import configure_cpu

    configure_cpu()
    cfg = build_config(preset.split("+"), {"precision": precision})  # "small+toy": presets applied in order
    spec = EnvSpec(id="atari:Pong", obs_shape=(1, 64, 64), discrete=True, num_actions=6,
                   action_names=("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"),
                   object_names=(), can_branch=True, max_steps=cfg.time_limit)
    torch.manual_seed(0)
    agent = Agent(cfg, spec, device=device)
    agent.sync_timings = True
    rng = np.random.default_rng(0)
    B, T = cfg.batch, cfg.length

    def batch() -> dict[str, np.ndarray]:
        is_first = np.zeros((B, T), bool)
        is_first[:, 0] = True
        return {"image": rng.integers(0, 256, (B, T, 1, 64, 64), dtype=np.uint8),
                "action": rng.integers(0, 6, (B, T)).astype(np.int32),
                "reward": rng.normal(size=(B, T)).astype(np.float32),
                "is_first": is_first, "is_last": np.zeros((B, T), bool), "is_terminal": np.zeros((B, T), bool)}

    return agent, batch


def min_and_median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """``(min, median)`` seconds over ``repeats`` calls of ``fn`` after one warm-up call (layer-level A/B in
    ``docs/experiments``)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), sorted(times)[repeats // 2]


def min_and_median_ms(fn: Callable[[], Any], repeats: int) -> str:
    """``"min X ms, median Y ms"`` of :func:`min_and_median_s`."""
    low, median = min_and_median_s(fn, repeats)
    return f"min {1e3 * low:.1f} ms, median {1e3 * median:.1f} ms"


def alternating_updates(variants: dict[str, Callable[[Any], None]], rounds: int, preset: str = "atari",
                        warmup: int = 6) -> dict[str, list[float]]:
    """World-model seconds of updates (``bench_agent(preset, "float32")``, paper size by default) under each
    variant, in one process: ``warmup`` updates, then ``rounds`` rounds of one update per variant in alternating
    order (forward on even rounds, reversed on odd ones), each preceded by its variant's switch function, called
    with the agent.
    Alternating in one process keeps the heap and the VM's load the same for all variants. Prints the mean, median
    and min per variant, and the behaviour's and both parts' too; the caller restores what the switches changed."""
    agent, batch = bench_agent(preset, "float32")
    for _ in range(warmup):
        agent.train_step(batch())
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    behaviour: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants.items())
    for r in range(rounds):
        for name, switch in order if r % 2 == 0 else order[::-1]:
            switch(agent)
            agent.train_step(batch())
            seconds[name].append(agent.last_timings["model_s"])
            behaviour[name].append(agent.last_timings["behavior_s"])
    for name, s in seconds.items():
        total = np.add(s, behaviour[name])
        print(f"{name}: world model mean {np.mean(s):.3f} s, median {np.median(s):.3f} s, min {min(s):.3f} s; "
              f"behaviour mean {np.mean(behaviour[name]):.3f} s; both mean {total.mean():.3f} s, "
              f"median {np.median(total):.3f} s")
    return seconds


def bench_preset(preset: str, repeats: int, precision: str = "float32", compile: str = "off",
                 profile: bool = False, device: str = "cpu") -> dict[str, Any]:
    import torch

    agent, batch = bench_agent(preset, precision, device)
    gpu = agent.device.type == "cuda"
    cfg = agent.cfg
    peak_args = {"size": 8192, "budget_s": 5.0, "device": device} if gpu else {}
    peaks = [matmul_peak_gflops(precision, **peak_args)]  # and again at the end (module docstring)
    B, T = cfg.batch, cfg.length

    # Warm-up: with freed memory kept in the process (keep_freed_memory) the heap reaches its working size
    # over the first ~3 paper-size updates (431k, 72k, 23k minor page faults, then 0-12k); time after that.
    for _ in range(3):
        agent.train_step(batch())
    flops = count_update_flops(agent, batch())  # counted on the eager networks
    compile_s = 0.0
    if compile != "off":
        start = time.perf_counter()
        agent.compile_networks(compile)
        for _ in range(2):  # compile the training graphs (grad and frozen-world-model variants)
            agent.train_step(batch())
        compile_s = time.perf_counter() - start
    model_s, behavior_s, total_s = [], [], []
    faults, kernel_s = 0, 0.0
    for _ in range(repeats):
        data = batch()
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        agent.train_step(data)
        total_s.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        # Minor page faults and kernel CPU time: large activations freshly mapped from the kernel on every
        # update cost both (docs/benchmarks.md, "Page faults"); keep_freed_memory() should keep them near 0.
        faults += after.ru_minflt - before.ru_minflt
        kernel_s += after.ru_stime - before.ru_stime
        model_s.append(agent.last_timings["model_s"])
        behavior_s.append(agent.last_timings["behavior_s"])
    params = sum(p.numel() for p in agent.parameters())
    profiled = {"profile": profile_update(agent, batch())} if profile else {}
    analysis = bench_analysis(agent, repeats)
    sample_s = bench_replay_sample(agent, B, T, repeats=max(repeats, 5))
    recording = bench_record(cfg)
    peaks.append(matmul_peak_gflops(precision, **peak_args))
    peak = max(peaks)
    update_s = float(np.mean(total_s))
    gpu_memory = {"peak_gpu_memory_mb": torch.cuda.max_memory_allocated(agent.device) / 2**20} if gpu else {}
    achieved = flops / update_s / 1e9
    return {"preset": preset, "precision": precision, "compile": compile, "compile_s": compile_s,
            "batch": B, "length": T, "horizon": cfg.horizon,
            "parameters": params, "repeats": repeats, "world_model_update_s": float(np.mean(model_s)),
            "behavior_update_s": float(np.mean(behavior_s)), "update_s": update_s,
            "updates_per_s": 1.0 / update_s, "minor_page_faults_per_update": faults / repeats,
            "kernel_cpu_s_per_update": kernel_s / repeats, "update_gflop": flops / 1e9, "achieved_gflops": achieved,
            "matmul_peak_gflops": peak, "matmul_peak_gflops_samples": peaks,
            "percent_of_matmul_peak": 100 * achieved / peak,
            "replay_sample_s": sample_s, "replay_sample_percent_of_update": 100 * sample_s / update_s,
            **analysis, **recording, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **gpu_memory, "machine": _machine(device), **profiled}


def bench_record(cfg, episodes: int = 3, env_id: str = "toy:catch") -> dict[str, float]:
    """Seconds for plain evaluation versus ``xdreamer record`` (a full decision trace: reconstruction,
    prior, heads, simulator states) of the same ``episodes`` seeded episodes, with a fresh agent of
    ``cfg``'s size on ``env_id`` (toy:catch: episodes under 100 steps, so the model dominates)."""
    import torch

    from .agent import Agent
    from .envs import make
    from .evaluation import evaluate
    from .explain.trace import record

    env = make(env_id, seed=0)
    torch.manual_seed(0)
    agent = Agent(cfg, env.spec, device="cpu")
    agent.eval()
    evaluate(agent, env, 1, seed=0)  # warm-up
    start = time.perf_counter()
    evaluate(agent, env, episodes, seed=0)
    eval_s = time.perf_counter() - start
    start = time.perf_counter()
    trace = record(agent, env, episodes=episodes, seed=0)
    record_s = time.perf_counter() - start
    env.close()
    steps = len(trace.arrays["action"])
    return {"record_env": env_id, "record_steps": steps, "eval_s": eval_s, "record_s": record_s,
            "record_over_eval": record_s / eval_s}


def bench_replay_sample(agent, batch: int, length: int, repeats: int = 5, episodes: int = 20,
                        episode_len: int = 500) -> float:
    """Seconds to sample one ``batch x length`` batch from an on-disk replay of ``episodes``
    random 64x64 episodes and turn it into the update's tensors (``Agent.to_torch``)."""
    from .replay import Replay

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        replay = Replay(tmp, capacity=10**7)
        for _ in range(episodes):
            n = episode_len
            replay.add_episode({
                "image": rng.integers(0, 256, (n, *agent.spec.obs_shape), dtype=np.uint8),
                "action": rng.integers(0, agent.spec.num_actions, n).astype(np.int32),
                "reward": rng.normal(size=n).astype(np.float32), "is_first": np.arange(n) == 0,
                "is_last": np.arange(n) == n - 1, "is_terminal": np.zeros(n, bool)})
        replay.sample(batch, length)
        start = time.perf_counter()
        for _ in range(repeats):
            agent.to_torch(replay.sample(batch, length))
        synchronize(agent.device)
        return (time.perf_counter() - start) / repeats


def bench_analysis(agent, repeats: int, actions: int = 18, horizon: int = 15) -> dict[str, float]:
    """Analysis hot paths on ``agent``'s world model: a what-if for ``actions`` first actions x
    ``horizon`` steps with decoding (one batched ``imagine``), and pixel IntegratedGradients (32
    steps) for one frame. Atari's full action set has 18 actions; the agent's own action count is
    used for the one-hot inputs, repeated up to ``actions`` rows."""
    import torch

    from .explain.dreams import dream
    from .explain.saliency import saliency

    agent.eval()
    n = agent.spec.num_actions
    start = agent.wm.rssm.initial(1, agent.device).map(lambda x: x.expand(actions, *x.shape[1:]).contiguous())
    prefix = torch.nn.functional.one_hot(torch.arange(actions, device=agent.device) % n, n).float()[:, None]
    frame = np.random.default_rng(0).integers(0, 256, agent.spec.obs_shape, dtype=np.uint8)

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            synchronize(agent.device)
            times.append(time.perf_counter() - t0)
        return float(np.mean(times))

    return {"whatif_s": timed(lambda: dream(agent, start, horizon, prefix=prefix, decode=True)),
            "whatif_actions": actions, "whatif_horizon": horizon,
            "integrated_gradients_s": timed(lambda: saliency(agent, frame, None, None,
                                                            method="integrated_gradients"))}


def bench_env(env_id: str, steps: int) -> dict[str, Any]:
    from .envs import make
    from .evaluation import random_action
    from .replay import EpisodeBuilder, Replay

    env = make(env_id, seed=0)
    rng = np.random.default_rng(0)
    builder = EpisodeBuilder(env.spec.discrete, env.spec.num_actions)
    with tempfile.TemporaryDirectory() as tmp:
        replay = Replay(tmp, capacity=10**7)
        obs = env.reset(seed=0)
        builder.add(obs, None)
        start = time.perf_counter()
        for i in range(steps):
            action = random_action(env.spec, rng)
            obs = env.step(action)
            episode = builder.add(obs, action)
            if obs["is_last"]:
                if episode is not None:
                    replay.add_episode(episode)
                obs = env.reset(seed=i)
                builder.add(obs, None)
        elapsed = time.perf_counter() - start
        if builder.steps:  # store the partial episode too, for the bytes-per-step figure
            replay.add_episode(builder.stacked())
        stored = replay.stored_bytes() / max(replay.total_steps, 1)
        sample_start = time.perf_counter()
        for _ in range(10):
            replay.sample(16, 50)
        sample_s = (time.perf_counter() - sample_start) / 10
    env.close()
    return {"env": env_id, "steps": steps, "env_steps_per_s": steps / elapsed,
            "replay_bytes_per_step": stored, "replay_sample_16x50_s": sample_s}


def run_benchmark(presets: list[str], out: str | os.PathLike, repeats: int = 3,
                  precisions: tuple[str, ...] = ("float32",), compiles: tuple[str, ...] = ("off",),
                  envs: tuple[str, ...] = ("toy:catch", "atari:Pong"), env_steps: int = 2000,
                  report_episodes: int = 10, profile: bool = False, device: str = "cpu") -> dict[str, Any]:
    check_device(device)
    results: dict[str, Any] = {"machine": _machine(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "presets": {}, "envs": {}}
    from .nets import cpu_has_native_bf16

    if "bfloat16" in precisions and device == "cpu" and not cpu_has_native_bf16():
        print("bench: warning: this CPU has no native bfloat16 matmuls (AVX512-BF16 or AMX); the bfloat16 rows run "
              "on a reference path, hundreds of times slower than float32 (a paper-size update: hours)",
              file=sys.stderr, flush=True)
    # World Models presets (issue #30: ``--presets worldmodels worldmodels-cpu``) have rows of their own: V, M and C
    # updates and CarRacing steps/s (xdreamer/worldmodels/bench.py), measured on the CPU.
    from .config import PRESETS

    worldmodels = [p for p in presets if any(PRESETS.get(n, {}).get("algo") == "worldmodels" for n in p.split("+"))]
    presets = [p for p in presets if p not in worldmodels]
    for preset in presets:
        results["presets"][preset] = {}
        for precision in precisions:
            for mode in compiles:
                # key: the precision for the eager path, e.g. "bfloat16+compile-default" for a compiled one
                key = precision if mode == "off" else f"{precision}+compile-{mode}"
                print(f"bench: preset {preset} ({key}) ...", file=sys.stderr, flush=True)
                proc = subprocess.run([sys.executable, "-m", "xdreamer.bench", "preset", preset, str(repeats),
                                       precision, mode, *(["profile"] if profile else []), f"device={device}"],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"benchmark of preset {preset} ({key}) failed:\n{proc.stderr[-2000:]}")
                results["presets"][preset][key] = json.loads(proc.stdout.strip().splitlines()[-1])
    for env_id in envs:
        print(f"bench: env {env_id} ...", file=sys.stderr, flush=True)
        results["envs"][env_id] = bench_env(env_id, env_steps)
    if worldmodels:
        from .worldmodels.bench import run as bench_worldmodels

        print("bench: worldmodels ...", file=sys.stderr, flush=True)
        results["worldmodels"] = bench_worldmodels(tuple(worldmodels), repeats)
    if report_episodes:  # `xdreamer report` over a fresh small-preset toy:catch agent x report_episodes episodes
        from .report import bench_report

        print("bench: report ...", file=sys.stderr, flush=True)
        results["report"] = bench_report(episodes=report_episodes)
        results["report_s"] = results["report"]["report_s"]
    from .checkpoint import atomic_write_text

    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    return results


def summary(results: dict[str, Any]) -> str:
    """A few lines for the terminal from ``run_benchmark``'s results (the JSON file has everything)."""
    lines = [f"{'preset':<14} {'precision':<24} {'update s':>9} {'= model':>8} {'+ behav.':>8} {'upd/s':>7} "
             f"{'GFLOP/s':>8} {'% peak':>7} {'what-if s':>9} {'IG s':>6} {'RSS MB':>7}"]
    for preset, rows in results["presets"].items():
        for key, r in rows.items():
            lines.append(f"{preset:<14} {key:<24} {r['update_s']:>9.3f} {r['world_model_update_s']:>8.3f} "
                         f"{r['behavior_update_s']:>8.3f} {r['updates_per_s']:>7.2f} {r['achieved_gflops']:>8.0f} "
                         f"{r['percent_of_matmul_peak']:>6.0f}% {r['whatif_s']:>9.3f} "
                         f"{r['integrated_gradients_s']:>6.3f} {r['peak_rss_mb']:>7.0f}"
                         + (f"  GPU {r['peak_gpu_memory_mb']:.0f} MB" if "peak_gpu_memory_mb" in r else ""))
    for env_id, r in results["envs"].items():
        lines.append(f"env {env_id}: {r['env_steps_per_s']:,.0f} steps/s, {r['replay_bytes_per_step']:.0f} B per "
                     f"stored step, a 16x50 batch in {1e3 * r['replay_sample_16x50_s']:.1f} ms")
    if "worldmodels" in results:
        from .worldmodels.bench import summary_lines

        lines.extend(summary_lines(results["worldmodels"]))
    if "report_s" in results:
        lines.append(f"report: {results['report_s']:.1f} s")
    return "\n".join(lines)


def _main(argv: list[str]) -> None:
    """``python -m xdreamer.bench preset NAME REPEATS [PRECISION [COMPILE]] [profile] [device=DEVICE]``: one preset's
    JSON on stdout (the subprocess ``run_benchmark`` starts; also handy alone)."""
    flags = [a for a in argv[4:] if a == "profile" or a.startswith("device=")]
    positional = [a for a in argv[4:] if a not in flags]
    devices = [a.split("=", 1)[1] for a in flags if a.startswith("device=")]
    if len(argv) < 4 or argv[1] != "preset" or len(positional) > 2 or len(devices) > 1 or not argv[3].isdigit():
        sys.exit("usage: python -m xdreamer.bench preset NAME REPEATS [PRECISION [COMPILE]] [profile] "
                 "[device=DEVICE] (use `xdreamer bench`)")
    try:
        device = check_device(devices[0]) if devices else "cpu"
    except ValueError as e:
        sys.exit(f"xdreamer.bench: {e}")
    print(json.dumps(bench_preset(argv[2], int(argv[3]), *positional, profile="profile" in flags, device=device)))


if __name__ == "__main__":
    _main(sys.argv)
