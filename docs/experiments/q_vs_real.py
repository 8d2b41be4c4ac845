"""Q_H against each first action's own simulator branch, over the bundled toy agents (issue #27, item 5: "Q_H against
the real lambda-return of each branch where they differ"; docs/fidelity.md quotes its output).

    python docs/experiments/q_vs_real.py [--seeds 0 1] [--every 6] [--horizon 15] [--json out.json]
                                         [--agents catch-lanes catch-pixel-lanes ...]

For every agent and seed it records one evaluation episode (mode policy), and at every ``--every``-th step runs
``explain.ground``: each first action dreamed by the world model (Q_H, the dream's lambda-return) and executed in the
restored simulator (``real_q``, the agent's own lambda-target over the real branch: real rewards, the critic on the
states filtered from the real frames). Per agent it prints, over the (step, action) pairs:

* ``|q - real_q|``: the mean absolute error of Q_H;
* ``rank r``: the Pearson correlation of Q_H with real_q after removing each step's mean over actions, i.e. whether
  the dream orders the first actions as the simulator does;
* ``best agrees``: at the steps where the real branches differ (max - min real_q > ``--spread``), the fraction where
  the dream's best first action is the real one's (chance: 1 / actions).

Intervals are 95 % percentile bootstraps over steps. Numbers depend on the machine's float rounding only.
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
from xdreamer.envs import make  # noqa: E402
from xdreamer.explain.audit_checks import bootstrap_ci  # noqa: E402
from xdreamer.explain.grounded import ground  # noqa: E402
from xdreamer.explain.trace import record  # noqa: E402
from xdreamer.training import env_kwargs  # noqa: E402

AGENTS = ["catch-lanes", "catch-embednorm", "catch-pixel-lanes", "catch-pixel-embednorm", "catch", "catch-pixel",
          "catch-dreamerv3", "catch-dreamerv1", "worldmodels/catch-lanes"]


def measure(name: str, seeds, every: int, horizon: int, spread: float) -> dict:
    agent = checkpoint.load(ROOT / "checkpoints" / name)
    env = make(agent.cfg.env, **env_kwargs(agent.cfg))
    rows = []  # per step: q [K], real_q [K]
    for seed in seeds:
        trace = record(agent, env, episodes=1, seed=seed)
        last = np.flatnonzero(trace.arrays["is_last"])
        end = int(last[0]) if len(last) else len(trace.arrays["is_last"])
        for step in range(every // 2, end - horizon, every):
            g = ground(agent, env, trace, step, horizon=horizon)
            rows.append((np.asarray(g.dream.q, np.float64), np.asarray(g.real_q, np.float64)))
    q = np.stack([r[0] for r in rows])
    real = np.stack([r[1] for r in rows])
    err = np.abs(q - real).mean(1)
    qc, rc = q - q.mean(1, keepdims=True), real - real.mean(1, keepdims=True)

    def corr(index):
        a, b = qc[index].ravel(), rc[index].ravel()
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")

    rng = np.random.default_rng(0)
    boots = [corr(rng.integers(0, len(q), len(q))) for _ in range(1000)]
    differ = (real.max(1) - real.min(1)) > spread
    agree = (q.argmax(1) == real.argmax(1))[differ].astype(np.float64)
    return {"agent": name, "steps": len(q), "actions": int(q.shape[1]),
            "abs_error": list(bootstrap_ci(err, np.mean)),
            "rank_r": [corr(np.arange(len(q))), *np.nanpercentile(boots, [2.5, 97.5]).tolist()],
            "steps_where_branches_differ": int(differ.sum()),
            "best_agrees": list(bootstrap_ci(agree, np.mean)) if len(agree) else None,
            "q_spread": float(np.mean(q.max(1) - q.min(1))), "real_q_spread": float(np.mean(real.max(1) - real.min(1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", default=AGENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--spread", type=float, default=0.1, help="real_q range over actions for 'differ'")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    start, results = time.time(), []
    print("| agent | steps | \\|q - real_q\\| | rank r (centred per step) | steps where branches differ | dream's best "
          "= real best | mean q spread / real_q spread |")
    print("|---|---|---|---|---|---|---|")
    for name in args.agents:
        r = measure(name, args.seeds, args.every, args.horizon, args.spread)
        results.append(r)
        fmt = lambda ci: "n/a" if ci is None else f"{ci[0]:.2f} [{ci[1]:.2f}, {ci[2]:.2f}]"  # noqa: E731
        print(f"| {name} | {r['steps']} | {fmt(r['abs_error'])} | {fmt(r['rank_r'])} | "
              f"{r['steps_where_branches_differ']} | {fmt(r['best_agrees'])} (chance {1 / r['actions']:.2f}) | "
              f"{r['q_spread']:.2f} / {r['real_q_spread']:.2f} |", flush=True)
    meta = {"seeds": args.seeds, "every": args.every, "horizon": args.horizon, "spread": args.spread,
            "seconds": round(time.time() - start, 1), "machine": platform.processor() or platform.machine(),
            "amx": "amx_tile" in pathlib.Path("/proc/cpuinfo").read_text()}
    print(f"{meta['seconds']} s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
