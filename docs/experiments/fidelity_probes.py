"""Latent probes held out by episode, with control tasks, on bundled agents (issue #27, item 6; docs/fidelity.md).

    python docs/experiments/fidelity_probes.py [--agents catch-lanes catch catch-pixel-lanes pong] [--seed 0]
                                               [--episodes 4] [--atari-steps 400]

For each agent it records ``--episodes`` evaluation episodes (``explain.record``, mode policy; Atari episodes cut
at ``--atari-steps``), fits the report's probes (``report.probes.probe_table``) held out by episode (the report's
default with two or more episodes) and, for comparison, by blocks of steps, and prints per object coordinate the
best latent R^2 (of ``deter``, ``stoch``, ``feat``), its control-task R^2 and selectivity, the pixel probe's R^2,
the solver, and whether the object counts as "encoded" under the report's rule (every varying coordinate decodable
from the latent: R^2 >= 0.5 and at most 0.3 below the pixels').
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdreamer import checkpoint  # noqa: E402
from xdreamer.checkpoint import git_commit  # noqa: E402
from xdreamer.explain import record  # noqa: E402
from xdreamer.report.jobs import make_env_for  # noqa: E402
from xdreamer.report.probes import heldout_mask, probe_table, samples_from_trace  # noqa: E402

LATENTS = ("deter", "stoch", "feat")


def rows(table) -> dict:
    out = {}
    for var, g in table.groupby("variable", sort=True):
        g = g.set_index("features")
        lat = g.loc[list(LATENTS)]
        if not np.isfinite(lat["r2"]).any():
            continue  # a constant coordinate
        best = lat["r2"].idxmax()
        out[var] = {"latent": best, "r2": g.loc[best, "r2"], "control": g.loc[best, "control_r2"],
                    "selectivity": g.loc[best, "selectivity"], "pixels": g.loc["pixels", "r2"],
                    "solver": ",".join(sorted(set(g["solver"]) - {""}))}
    return out


def encoded(found: dict) -> dict:
    objects = {}
    for var, r in found.items():
        ok = r["r2"] >= 0.5 and (not np.isfinite(r["pixels"]) or r["r2"] >= r["pixels"] - 0.3)
        objects.setdefault(var.rsplit("_", 1)[0], []).append(bool(ok))
    return {o: all(v) for o, v in objects.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", nargs="+", default=["catch-lanes", "catch", "catch-pixel-lanes", "pong"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--atari-steps", type=int, default=400)
    args = p.parse_args()
    print(f"# probes: {args.episodes} episodes, seed {args.seed}, commit {git_commit()}\n")
    print("| agent | split | coordinate | best latent R² (set) | control R² | selectivity | pixels R² | solver |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = {}
    for name in args.agents:
        t0 = time.time()
        agent = checkpoint.load(ROOT / "checkpoints" / name)
        atari = agent.cfg.env.startswith("atari:")
        env = make_env_for(agent)
        try:
            trace = record(agent, env, episodes=args.episodes, seed=args.seed,
                           max_steps=args.atari_steps if atari else None)
        finally:
            env.close()
        samples = samples_from_trace(trace, None)
        classes = trace.arrays["post_logits"].shape[-1]
        for split, test in (("episode", None), ("block", heldout_mask(len(trace)))):
            found = rows(probe_table(samples, classes, test=test))
            for var, r in found.items():
                print(f"| `{name}` | {split} | {var} | {r['r2']:.2f} ({r['latent']}) | {r['control']:.2f} | "
                      f"{r['selectivity']:.2f} | {r['pixels']:.2f} | {r['solver']} |")
            verdicts[(name, split)] = encoded(found)
        print(f"<!-- {name}: {len(trace)} steps, {time.time() - t0:.0f} s -->")
    print("\n'encoded' (every varying coordinate decodable from the latent):")
    for (name, split), enc in verdicts.items():
        print(f"  {name} ({split}): " + ", ".join(f"{o} {'yes' if v else 'no'}" for o, v in enc.items()))


if __name__ == "__main__":
    main()
