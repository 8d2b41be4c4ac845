"""Every bundled checkpoint under checkpoints/ loads, has a complete manifest, and reproduces the
evaluation its manifest records (issue 6)."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

import xdreamer
from xdreamer import bundle as bundle_mod
from xdreamer import checkpoint
from xdreamer.evaluation import evaluate, lockstep_envs
from xdreamer.training import make_env

ROOT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"
# World Models agents live one level down (checkpoints/worldmodels/<name>, issue #30); xdreamer.load reads them too
BUNDLED = sorted(p for p in [*ROOT.glob("*"), *ROOT.glob("worldmodels/*")] if (p / checkpoint.MANIFEST).exists())
RERUN = 3  # episodes re-run per policy: the first RERUN of the recorded seeds ...
RERUN_STEPS = 6_000  # ... or fewer, so that the recorded lengths of those re-run stay within this many agent
# steps (at least one episode): an Atari agent that never serves lasts the full 27,000-step limit.


# CarRacing steps at about 80 a second through Box2D: one episode per policy (3 + 3 took 94 s of the suite)
RERUN_BUDGET = {"gym:CarRacing-v3": 1_000}


def _rerun_count(lengths, budget: int = RERUN_STEPS):
    total, count = 0, 0
    for length in lengths[:RERUN]:
        total += length
        if count and total > budget:
            break
        count += 1
    return count


def test_default_checkpoint_is_bundled():
    # The README's main command opens checkpoints/catch-lanes (xdreamer.app.DEFAULT_SOURCE).
    from xdreamer.app import DEFAULT_SOURCE

    assert DEFAULT_SOURCE == ROOT / "catch-lanes"
    assert (DEFAULT_SOURCE / checkpoint.MANIFEST).exists(), "checkpoints/catch-lanes is the bundled default"


def test_bundle_sizes():
    total = 0
    for folder in BUNDLED:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        assert size <= bundle_mod.MAX_BYTES, f"{folder.name} is {size / 2**20:.1f} MB"
        total += size
    assert total <= 100 * 2**20, f"bundled checkpoints total {total / 2**20:.1f} MB > 100 MB"


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.relative_to(ROOT).as_posix() for p in BUNDLED])
def test_bundled_checkpoint_reproduces_its_manifest(folder):
    assert sorted(f.name for f in folder.iterdir()) == sorted(bundle_mod.BUNDLE_FILES)
    manifest = checkpoint.read_manifest(folder)
    for key in ("format_version", "env", "steps", "updates", "weights_sha256", "versions", "bundle"):
        assert key in manifest, f"{folder.name}: manifest lacks {key}"
    digest = hashlib.sha256((folder / checkpoint.WEIGHTS).read_bytes()).hexdigest()
    assert digest == manifest["weights_sha256"]
    record = manifest["bundle"]
    assert record["episodes"] >= 10 and record["train_commands"], f"{folder.name}: incomplete bundle record"
    assert manifest["steps"] > 0 and manifest["updates"] > 0

    agent = xdreamer.load(folder)
    env = make_env(agent.cfg)
    for policy, key in (("mode", "eval_mode"), ("random", "eval_random")):
        count = _rerun_count(record[key]["lengths"], RERUN_BUDGET.get(manifest["env"]["id"], RERUN_STEPS))
        recorded = record[key]["returns"][:count]
        cut = None
        if sum(record[key]["lengths"][:count]) > RERUN_STEPS and record[key].get("prefix_returns"):
            # one episode longer than the budget (a stalled Atari policy): re-run only its recorded prefix
            cut = record[key]["prefix_steps"]
            recorded = record[key]["prefix_returns"][:count]
        with lockstep_envs(lambda: make_env(agent.cfg), count if policy == "mode" else 1) as more:
            # mode episodes in lockstep, as `xdreamer eval` runs them (VideoPinball 25 -> 20 s, Pong 11 -> 8 s here)
            result = evaluate(agent, env, count, seed=record["seed"], policy=policy, max_steps=cut, more_envs=more)
        rerun = result.returns
        if policy == "random":  # no network involved: numpy's seeded RNG and the env reproduce exactly
            lengths = [min(n, cut or n) for n in record[key]["lengths"][:count]]
            assert (rerun, result.lengths) == (recorded, lengths), folder.name
            continue
        # Same seeds, same weights: identical on the machine that bundled it. Elsewhere floating-point
        # differences can flip a near-tied action, so allow each episode one changed ball (2 points on catch,
        # a point or two in Pong), or 5 % of the return where returns are in the thousands (VideoPinball).
        tol = max(2.0, 0.05 * max(abs(r) for r in recorded))
        assert abs(np.mean(rerun) - np.mean(recorded)) <= tol, (folder.name, policy, rerun, recorded)
