"""Object-level simulator attribution (``explain.object_attribution``; issue #27 item 2, Atrey et al. 2020).

Invariants: the unedited row is the recorded decision; a re-rendered unedited state is the recorded frame; a held
``move`` edit equals editing the state k steps back and re-simulating the recorded actions. Faithfulness, each with
its negative controls (issue #27: a measure that a random agent also passes proves nothing): the bundled
``catch-lanes`` (sees its ball) against its ball-blind twin ``catch-pixel-lanes`` and a randomised copy of it.
One evaluation episode each (seed 0, about 90 steps), k=0 and k=3.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from xdreamer import checkpoint, explain
from xdreamer.agent import Agent
from xdreamer.envs import make
from xdreamer.envs.toy import STATE_FIELDS
from xdreamer.explain import objects
from xdreamer.explain.objects import SATURATED, object_attribution

ROOT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"


def _randomised(agent, seed: int = 0):
    """The negative control: the same architecture freshly initialised with the agent's own initialiser."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Agent(agent.cfg, agent.spec)


@pytest.fixture(scope="module")
def runs():
    """name -> (agent, env, trace, {k: ObjectAttribution}) for catch-lanes, catch-pixel-lanes and the random copy."""
    out = {}
    trained = checkpoint.load(ROOT / "catch-lanes")
    for name, agent in (("catch-lanes", trained), ("catch-pixel-lanes", checkpoint.load(ROOT / "catch-pixel-lanes")),
                        ("random", _randomised(trained))):
        env = make(agent.cfg.env)
        trace = explain.record(agent, env, episodes=1, seed=0)
        out[name] = (agent, env, trace, {k: object_attribution(agent, env, trace, k=k) for k in (0, 3)})
    return out


def test_unedited_row_is_the_recorded_decision(runs):
    agent, env, trace, res = runs["catch-lanes"]
    q = explain.q_values(agent, trace)
    for k in (0, 3):
        r = res[k]
        assert r.variants == ("remove", "move-6", "move+6", "lane10", "lane30", "lane50")
        np.testing.assert_allclose(r.probs, trace.arrays["action_probs"], atol=1e-5)
        np.testing.assert_allclose(r.value, trace.arrays["value"], atol=1e-5)
        np.testing.assert_allclose(r.q, q, atol=1e-4)
        np.testing.assert_array_equal(r.saturated, trace.arrays["action_probs"].max(1) > SATURATED)
        # The paddle cannot be removed (no state of the game lacks it) and has no lanes; the ball has no own lane.
        assert not r.applicable[:, 1, [0, 3, 4, 5]].any() and r.applicable[:, 0, 0].all()
        assert (r.applicable[:, 0, 3:].sum(1) == 2).all()
        assert np.isnan(r.tv[~r.applicable]).all() and np.isfinite(r.tv[r.applicable]).all()
        assert (r.tv[r.applicable] >= 0).all() and (r.tv[r.applicable] <= 1 + 1e-6).all()


def test_rendered_states_and_held_edits(runs):
    agent, env, trace, _ = runs["catch-lanes"]
    editor = objects._editor(env)
    for t in range(len(trace)):  # re-observing an unedited state is the recorded frame
        np.testing.assert_array_equal(editor.render(trace.sim_state(t)), trace.arrays["frame"][t])
    removed = editor.render(editor.edit(trace.sim_state(5), "ball", objects._Variant("remove", "remove")))
    assert removed.sum() == 255 * 12 * 3  # only the paddle is left
    # A held move over t-3..t equals moving at t-3 and re-simulating the recorded actions, when no catch is resolved.
    f = {name: i for i, name in enumerate(STATE_FIELDS)}
    need = trace.arrays["sim/ints/data"].reshape(len(trace), -1)[:, f["need_spawn"]]
    t = next(t for t in range(3, len(trace)) if not need[t - 3:t + 1].any() and not trace.arrays["is_first"][t - 2:t + 1].any())
    for obj in ("ball", "paddle"):
        move = objects._Variant("move+6", "move", 6)
        env.set_state(editor.edit(trace.sim_state(t - 3), obj, move))
        for s in range(t - 2, t + 1):
            frame = env.step(int(trace.arrays["action"][s - 1]))["image"]
            np.testing.assert_array_equal(frame, editor.render(editor.edit(trace.sim_state(s), obj, move)))


def test_ball_matters_for_catch_lanes_and_not_for_its_controls(runs):
    """The separating measure is the size of the ball's effect, not the ranking.

    Measured (1 episode, seed 0, shift 6): median over eligible steps of the ball's largest TV: catch-lanes 0.40
    (k=0) / 0.78 (k=3), random copy 0.04 / 0.06, catch-pixel-lanes 0.000 / 0.000 (its one-pixel ball changes no
    posterior class, so no decision)."""
    for k in (0, 3):
        lanes, pixel, rand = (runs[n][3][k] for n in ("catch-lanes", "catch-pixel-lanes", "random"))
        assert lanes.eligible("ball").sum() >= 30 and pixel.eligible("ball").sum() >= 30
        ball = lanes.median_effect("ball")
        assert ball >= 0.25, (k, ball)
        assert ball >= 5 * rand.median_effect("ball"), (k, ball, rand.median_effect("ball"))
        # catch-pixel-lanes: the ball barely matters (issue #27's target for it), nor is it ever first.
        assert pixel.median_effect("ball") <= 0.01 and pixel.top_fraction("ball") <= 0.05
        assert ball >= 20 * max(pixel.median_effect("ball"), 1e-3)
        # The decision flips under some ball edit on most eligible catch-lanes steps, almost never for the controls.
        flips = {n: r.flip[r.eligible("ball"), 0].any(1).mean() for n, r in (("lanes", lanes), ("pixel", pixel))}
        assert flips["lanes"] >= 0.4 and flips["pixel"] <= 0.05, flips
        # Ball-first ranking alone is no evidence: the random copy's paddle moves change almost nothing, so its
        # ball comes first more often than catch-lanes' does.
        assert rand.top_fraction("ball") > lanes.top_fraction("ball")


@pytest.mark.xfail(strict=True, reason=(
    "issue #27 target not reached by the bundled catch-lanes: with matched interventions (both objects shifted 6 px) "
    "the ball is first on 31 % (k=0) / 49 % (k=3) of eligible steps of this episode (over all ball variants, "
    "removal and lane jumps included: 37 % / 58 %); moving the paddle changes the decision about as much as moving "
    "the ball (docs/experiments/object_attribution.py)"))
def test_ball_first_on_80_percent_of_eligible_catch_lanes_steps(runs):
    res = runs["catch-lanes"][3]
    for k in (0, 3):
        assert res[k].top_fraction("ball", res[k].shared_variants()) >= 0.8


def test_bad_arguments(runs):
    agent, env, trace, _ = runs["catch-lanes"]
    for kwargs in ({"k": -1}, {"k": 1.5}, {"shift": 0}, {"interventions": ("bogus",)}, {"interventions": ()},
                   {"steps": [len(trace)]}, {"horizon": 0}):
        with pytest.raises(ValueError):
            object_attribution(agent, env, trace, **kwargs)
    with pytest.raises(ValueError, match="not on"):
        object_attribution(agent, make("toy:catch"), trace)
    with pytest.raises(ValueError, match="other weights"):
        object_attribution(runs["random"][0], env, trace)


def test_atari_says_it_is_not_implemented(runs):
    pytest.importorskip("ale_py")
    agent, _, trace, _ = runs["catch-lanes"]
    env = make("atari:Pong")
    try:
        with pytest.raises(NotImplementedError, match="setRAM"):
            object_attribution(agent, env, trace)
    finally:
        env.close()
