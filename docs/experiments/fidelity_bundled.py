"""Dream fidelity on objects for the bundled agents (issue #27, item 5; docs/fidelity.md quotes its output).

    python docs/experiments/fidelity_bundled.py [--seeds 0 1 2] [--horizon 5] [--atari-steps 400] [--json out.json]
                                                [--agents catch-lanes catch-pixel-lanes ...]

For every agent and evaluation seed it records 2 evaluation episodes (``explain.record``, mode policy; Atari: 1
episode cut at ``--atari-steps``), dreams ``--horizon`` steps open loop from every step (``explain.fidelity``) and
prints, pooled over seeds, the mean object centroid error (px; a missing object counts 90.5) of the dream on the
recorded actions, of the dream whose actor re-chooses, of the "object stays where it was at t" baseline and of the
posterior's own reconstruction, the fraction of missing objects, the whole-frame pixel MAE beside its baselines
(repeat frame t; frame t+k with the objects erased), the actor dream's action agreement, and |Q_H - realised
lambda-return| beside |v - realised lambda-return|. ``random-catch-lanes`` is a freshly initialised copy of
catch-lanes (the negative control). Last, issue #27's target with 95 % bootstrap intervals over start steps.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdreamer import checkpoint  # noqa: E402
from xdreamer.checkpoint import atomic_write_text, git_commit  # noqa: E402
from xdreamer.explain import record  # noqa: E402
from xdreamer.explain.audit import randomised_copy  # noqa: E402
from xdreamer.explain.fidelity import MISSING_PX, OBJECT_KEYS, PIXEL_KEYS, fidelity  # noqa: E402
from xdreamer.report.jobs import make_env_for  # noqa: E402

AGENTS = ("catch-lanes", "catch-pixel-lanes", "random-catch-lanes", "catch-embednorm", "catch-pixel-embednorm",
          "catch", "catch-pixel", "pong", "breakout", "venture", "videopinball")


def load(name: str):
    if name.startswith("random-"):
        return randomised_copy(checkpoint.load(ROOT / "checkpoints" / name[len("random-"):]), seed=0)
    return checkpoint.load(ROOT / "checkpoints" / name)


def measure(name: str, seeds, horizon: int, atari_steps: int) -> list:
    agent = load(name)
    atari = agent.cfg.env.startswith("atari:")
    out = []
    for seed in seeds:
        env = make_env_for(agent)
        try:
            trace = record(agent, env, episodes=1 if atari else 2, seed=seed, max_steps=atari_steps if atari else None)
        finally:
            env.close()
        out.append(fidelity(agent, trace, horizon=horizon))
    return out


def pooled(fids, key: str, obj: str, stat: str = "mean") -> float:
    vals = np.concatenate([f.object_px[key][:, f.objects.index(obj)].reshape(-1) for f in fids])
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return float("nan")
    return float((vals >= MISSING_PX).mean()) if stat == "missing" else float(vals.mean())


def per_step(fids, key: str, obj: str) -> np.ndarray:
    """Mean error of each start step over its scored imagined steps ``[S]`` (the bootstrap's unit)."""
    rows = np.concatenate([f.object_px[key][:, f.objects.index(obj)] for f in fids])
    ok = np.isfinite(rows).any(1)
    return np.nanmean(rows[ok], 1)


def bootstrap(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n, len(x)))].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(fids) -> dict:
    objects = fids[0].objects
    pix = {k: float(np.nanmean(np.concatenate([f.pixel_mae[k].reshape(-1) for f in fids]))) for k in PIXEL_KEYS}
    agree = np.concatenate([f.agreement[:, 1:][f.valid[:, 1:]] for f in fids])
    real = np.concatenate([f.real_return for f in fids])
    ok = np.isfinite(real)

    def qerr(attr):
        return float(np.abs(np.concatenate([getattr(f, attr) for f in fids])[ok] - real[ok]).mean())

    check = {o: {k: float(np.mean([f.detector_check[o][k] for f in fids])) for k in ("found", "median_px")}
             for o in objects}
    return {"start_steps": int(sum(len(f.steps) for f in fids)), "detector_check": check,
            "object_px": {o: {k: pooled(fids, k, o) for k in OBJECT_KEYS} for o in objects},
            "missing": {o: {k: pooled(fids, k, o, "missing") for k in OBJECT_KEYS} for o in objects},
            "per_k": {o: [float(np.nanmean(np.concatenate([f.object_px["recorded"][:, f.objects.index(o), k]
                                                           for f in fids]))) for k in range(fids[0].horizon)]
                      for o in objects},
            "pixel_mae": pix, "agreement": float(agree.mean()) if agree.size else float("nan"),
            "q_abs_error": {"dream_q": qerr("q"), "dream_q_actor": qerr("q_actor"), "critic_value": qerr("value")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", nargs="+", default=list(AGENTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--atari-steps", type=int, default=400)
    p.add_argument("--json", type=pathlib.Path)
    args = p.parse_args()
    start = time.time()
    results, raw = {}, {}
    for name in args.agents:
        t0 = time.time()
        raw[name] = measure(name, args.seeds, args.horizon, args.atari_steps)
        results[name] = summarise(raw[name])
        results[name]["wall_s"] = round(time.time() - t0, 1)
    print(f"# dream fidelity, horizon {args.horizon}, seeds {args.seeds}, commit {git_commit()}, "
          f"{platform.processor() or platform.machine()}, {time.time() - start:.0f} s\n")
    print("| agent | object | dream, recorded actions | dream, actor re-chooses | stays at t | posterior recon | "
          "missing (dream / recon) | detector on real frames: found, median px from box centre |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for o, e in r["object_px"].items():
            m = r["missing"][o]
            print(f"| `{name}` | {o} | {e['recorded']:.1f} | {e['actor']:.1f} | {e['stay']:.1f} | {e['recon']:.1f} | "
                  f"{m['recorded']:.0%} / {m['recon']:.0%} | {r['detector_check'][o]['found']:.0%}, "
                  f"{r['detector_check'][o]['median_px']:.1f} |")
    print("\n| agent | pixel MAE: dream (recorded) | actor | repeat t | objects erased | recon | agreement k>=2 | "
          "\\|Q_H - R^λ\\| | \\|v - R^λ\\| | start steps | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        px, q = r["pixel_mae"], r["q_abs_error"]
        print(f"| `{name}` | {px['recorded']:.4f} | {px['actor']:.4f} | {px['repeat']:.4f} | {px['erased']:.4f} | "
              f"{px['recon']:.4f} | {r['agreement']:.0%} | {q['dream_q']:.3f} | {q['critic_value']:.3f} | "
              f"{r['start_steps']} | {r['wall_s']} |")
    if {"catch-lanes", "catch-pixel-lanes"} <= set(raw):
        print("\nTarget (issue #27): ball error over the first", args.horizon, "steps, mean of start steps [95 % CI]:")
        for label, name, key in (("catch-lanes dream", "catch-lanes", "recorded"),
                                 ("catch-lanes 'stays at t'", "catch-lanes", "stay"),
                                 ("catch-pixel-lanes dream", "catch-pixel-lanes", "recorded")):
            est, lo, hi = bootstrap(per_step(raw[name], key, "ball"))
            print(f"  {label}: {est:.2f} [{lo:.2f}, {hi:.2f}] px")
        for k in range(args.horizon):
            print(f"  k={k + 1}: " + ", ".join(f"{n} {results[n]['per_k']['ball'][k]:.1f}"
                                                 for n in ("catch-lanes", "catch-pixel-lanes")))
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args) | {"json": str(args.json)}, "commit": git_commit(),
                                                 "results": results}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
