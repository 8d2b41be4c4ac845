"""Latent attributions against interventions (issue #27, item 4) and attribution over time (item 3) on the bundled
toy agents: the numbers quoted in docs/audit.md ("Latent attributions checked by intervention", "Over time").

    python docs/experiments/interventions_and_time.py [--seeds 0 1 2]

For each agent and evaluation seed, one episode (cut at 60 steps) is recorded with the eval policy; a freshly
initialised copy of catch-lanes (``audit.randomised_copy``, seed 0) is scored on catch-lanes' own recorded states
as the negative control. Prints two markdown tables.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

AGENTS = ("catch-lanes", "catch-embednorm", "catch-pixel-lanes")


def main() -> None:
    from xdreamer import checkpoint, explain
    from xdreamer.envs import make
    from xdreamer.explain.audit import randomised_copy
    from xdreamer.explain.audit_checks import bootstrap_ci
    from xdreamer.explain.faithfulness import spearman
    from xdreamer.explain.interventions import intervention_check
    from xdreamer.explain.temporal import temporal_attribution

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    def ci(values, stat=np.median):
        est, lo, hi = bootstrap_ci(values, stat)
        return f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    latent = ["| agent | steps | aggregate FeatureAblation | aggregate IG | prior IG | surprise | random | "
              "top-5 / random-5 (oracle) | mean effect (TV) |", "|---|---|---|---|---|---|---|---|---|"]
    over = ["| agent | steps | IG past share | IG vs erasing frames (Spearman) | erasing one frame: summed TV | "
            "IG completeness (median rel. delta) |", "|---|---|---|---|---|---|"]
    for name in (*AGENTS, "catch-lanes, randomised copy"):
        start = time.perf_counter()
        agent = checkpoint.load(f"checkpoints/{name.split(',')[0]}")
        env = make(agent.cfg.env)
        traces = [explain.record(agent, env, episodes=1, seed=s, max_steps=60) for s in args.seeds]
        env.close()
        if "randomised" in name:
            agent = randomised_copy(agent, 0)
        checks = [intervention_check(agent, tr) for tr in traces]
        rho = {k: np.concatenate([c.spearman[k] for c in checks]) for k in checks[0].spearman}
        joint = {k: np.concatenate([c.joint[k] for c in checks]) for k in checks[0].joint}
        ratio = joint["top:aggregate_ablation"].mean() / joint["random"].mean()
        oracle = joint["oracle"].mean() / joint["random"].mean()
        effect = np.concatenate([c.effect.ravel() for c in checks]).mean()
        latent.append(f"| {name} | {len(rho['random'])} | {ci(rho['aggregate_ablation'])} | "
                      f"{ci(rho['aggregate_ig'])} | {ci(rho['prior_ig'])} | {ci(rho['surprise'])} | "
                      f"{ci(rho['random'])} | {ratio:.2f} ({oracle:.2f}) | {effect:.3f} |")
        runs = [temporal_attribution(agent, tr, t, k=4, method="integrated_gradients")
                for tr in traces for t in range(6, len(tr), 5)]
        over.append(f"| {name} | {len(runs)} | {ci([r.past_share for r in runs])} | "
                    f"{ci([spearman(np.abs(r.per_frame), r.deletion_tv) for r in runs])} | "
                    f"{ci([r.deletion_tv.sum() for r in runs], np.mean)} | "
                    f"{np.median([abs(r.delta) / max(abs(r.value - r.baseline_value), 1e-6) for r in runs]):.3f} |")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    print("\n".join(latent))
    print()
    print("\n".join(over))


if __name__ == "__main__":
    main()
