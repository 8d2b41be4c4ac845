"""Object attribution on Atari through RAM writes (issue #27, item 2): edit landing rates, trained vs randomised.

For each bundled Atari agent (``checkpoints/pong``, ``checkpoints/breakout``) and a randomised copy of it (the same
architecture freshly initialised, ``tests/test_objects.py``'s negative control): record one evaluation episode
(seed 0, cut at STEPS agent steps), run ``explain.object_attribution`` (k=0, ``remove`` and ``move`` +-6 px of
the 64x64 frame), and report

* the landing rate per object and variant: the fraction of attempted RAM edits that the raw screen shows where
  they were meant to be (``_AtariObjects`` verifies each edit; edits that missed are not attributed);
* per object, the median over the steps with a landed edit of the largest total-variation change of p(action)
  (``effect``), for the trained agent and the randomised copy; and the same over the eligible steps (object on
  screen, p(action) not saturated);
* how often the ball ranks first among the objects where it is on screen (all variants, and only the ``move``
  variants that every object takes, ``shared_variants``).

The randomised copy is evaluated on the trained agent's trace (its frames, states and actions), as the audit's
cascade does, so both see the same edits.

    python docs/experiments/atari_objects.py [STEPS] [OUT.json]   # default 200 docs/bench/atari_objects.json

Torch runs on one thread (``OMP_NUM_THREADS=1``); the numbers are quoted in docs/audit.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdreamer import checkpoint, explain  # noqa: E402
from xdreamer.agent import Agent  # noqa: E402
from xdreamer.envs import make  # noqa: E402
from xdreamer.explain.objects import object_attribution  # noqa: E402
from xdreamer.explain.trace import weights_fingerprint  # noqa: E402


def randomised(agent, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Agent(agent.cfg, agent.spec)


def relabel(trace, agent):
    """The trace with ``agent``'s fingerprint, so ``object_attribution`` explains ``agent`` on the same states."""
    meta = {**trace.meta, "weights_sha256": None, "weights_fingerprint": weights_fingerprint(agent)}
    return dataclasses.replace(trace, meta=meta)


def nanmed(x) -> float | None:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return round(float(np.median(x)), 4) if x.size else None


def summarise(res) -> dict:
    out = {"landing": {}, "median_effect_landed": {}, "mean_effect_landed": {}, "share_effect_above_0.01": {},
           "median_effect_eligible": {}, "steps_with_landed_edit": {}}
    eff = res.effect()
    for o, name in enumerate(res.objects):
        out["landing"][name] = {v: {"attempted": int(res.attempted[:, o, i].sum()),
                                    "landed": int(res.landed[:, o, i].sum()),
                                    "rate": (round(res.landing_rate(name, v), 3)
                                             if res.attempted[:, o, i].any() else None)}
                                for i, v in enumerate(res.variants)}
        out["median_effect_landed"][name] = nanmed(eff[:, o])
        landed = eff[:, o][np.isfinite(eff[:, o])]
        out["mean_effect_landed"][name] = round(float(landed.mean()), 4) if landed.size else None
        out["share_effect_above_0.01"][name] = round(float(np.mean(landed > 0.01)), 3) if landed.size else None
        out["median_effect_eligible"][name] = nanmed(res.median_effect(name))
        out["steps_with_landed_edit"][name] = int(np.isfinite(eff[:, o]).sum())
    if "ball" in res.objects:
        out["ball_first"] = {"all_variants": res.top_fraction("ball"),
                             "shared_variants": res.top_fraction("ball", res.shared_variants()),
                             "eligible_steps": int(res.eligible("ball").sum())}
        # Where the ball is on screen (whatever the saturation): how often it is first.
        top = res.top()
        vis = res.visible[:, res.objects.index("ball")]
        out["ball_first"]["visible_steps"] = int(vis.sum())
        out["ball_first"]["all_visible"] = (float(np.mean(top[vis] == res.objects.index("ball")))
                                            if vis.any() else None)
    out["saturated_steps"] = int(res.saturated.sum())
    return out


def main() -> None:
    torch.set_num_threads(1)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    out_path = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "docs" / "bench" / "atari_objects.json")
    result = {"steps": steps, "seed": 0, "k": 0, "shift_px": 6, "interventions": ["remove", "move"],
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip(),
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "games": {}}
    for name in ("pong", "breakout"):
        t0 = time.time()
        agent = checkpoint.load(ROOT / "checkpoints" / name)
        env = make(agent.cfg.env)
        trace = explain.record(agent, env, episodes=1, seed=0, max_steps=steps)
        trained = object_attribution(agent, env, trace)
        rand = randomised(agent)
        control = object_attribution(rand, env, relabel(trace, rand))
        env.close()
        result["games"][agent.cfg.env] = {"trained": summarise(trained), "randomised": summarise(control),
                                          "trace_steps": len(trace), "seconds": round(time.time() - t0, 1)}
        print(json.dumps({agent.cfg.env: result["games"][agent.cfg.env]}, indent=1), flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
