"""Attribution over time through the recurrent state (issue #27, item 3; ``explain.temporal``)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from xdreamer import checkpoint, explain
from xdreamer.envs import make
from xdreamer.explain.audit import randomised_copy
from xdreamer.explain.faithfulness import spearman
from xdreamer.explain.saliency import saliency, trace_inputs
from xdreamer.explain.temporal import temporal_attribution, window_inputs

ROOT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"
STEPS = list(range(6, 60, 5))  # 11 steps of one 60-step episode


def _recorded(name: str):
    agent = checkpoint.load(ROOT / name)
    env = make(agent.cfg.env)
    trace = explain.record(agent, env, episodes=1, seed=0, max_steps=60)
    env.close()
    return agent, trace


@pytest.fixture(scope="module")
def lanes():
    return _recorded("catch-lanes")


@pytest.fixture(scope="module")
def runs(lanes):
    """IG over 5 frames at 11 steps on catch-lanes; the blind twin and a randomised copy as negative controls."""
    agent, trace = lanes
    twin_agent, twin_trace = _recorded("catch-pixel-lanes")
    control = randomised_copy(agent)
    return {"trained": [temporal_attribution(agent, trace, t, k=4) for t in STEPS],
            "twin": [temporal_attribution(twin_agent, twin_trace, t, k=4) for t in STEPS],
            "random": [temporal_attribution(control, trace, t, k=4, method="frame_deletion") for t in STEPS]}


def test_window_stops_at_the_episode_start(lanes):
    _, trace = lanes
    w = window_inputs(trace, 2, 4)
    assert w["steps"] == [0, 1, 2] and w["start"] is None and w["is_first"] == [True, False, False]
    w = window_inputs(trace, 20, 3)
    assert w["steps"] == [17, 18, 19, 20] and w["start"] is not None and len(w["actions"]) == 4
    with pytest.raises(ValueError, match="k must be"):
        window_inputs(trace, 20, -1)


def test_refiltering_reproduces_the_agent_and_k0_is_current_frame_saliency(lanes):
    """With the one-hot mode (the agent's eval path) the re-filtered window gives the recorded action probabilities;
    with k=0 the relaxed score is the one current-frame saliency explains (score logprob)."""
    agent, trace = lanes
    probs = trace.arrays["action_probs"]
    for t in (9, 30):
        r = temporal_attribution(agent, trace, t, k=4, method="frame_deletion")
        a = r.action
        assert abs(abs(np.exp(r.value) - probs[t][a]) - r.relaxed_gap) < 1e-5  # gap measured against the agent
        inputs = trace_inputs(trace, t)
        s = saliency(agent, inputs["frame"], inputs["prev_state"], inputs["prev_action"], action=a,
                     is_first=inputs["is_first"], score="logprob", method="saliency")
        r0 = temporal_attribution(agent, trace, t, k=0, method="frame_deletion")
        assert r0.steps == [t] and abs(r0.value - s.value) < 1e-5


def test_ig_is_complete_and_agrees_with_erasing_frames(runs):
    """Completeness: the per-frame IG sums add up to f(frames) - f(all erased) (relative delta, median over steps);
    and IG's per-frame credit ranks the frames as erasing each one does (median Spearman; 0.60 measured)."""
    trained = runs["trained"]
    gaps = [abs(r.delta) / max(abs(r.value - r.baseline_value), 1e-6) for r in trained]
    assert np.median(gaps) < 0.05, gaps
    rho = [spearman(np.abs(r.per_frame), r.deletion_tv) for r in trained]
    assert np.nanmedian(rho) >= 0.4, rho


def test_seeing_agent_decides_from_history_and_its_controls_do_not(runs):
    """catch-lanes credits the frames before t with most of its decision (measured: IG past share 0.68; erasing
    one earlier frame moves p(action) by TV up to 0.94); its ball-blind twin's IG credits the current frame (its
    paddle: 0.18); a randomised copy's decision does not move when any frame is erased (summed TV 0.001 against
    1.01). Erasing a whole earlier frame also moves the twin (deletion past share 0.46): it erases the paddle's
    history too. Which *object* of the past frames matters is ``objects.object_attribution(k=...)``'s question."""
    share = {k: np.median([r.past_share for r in runs[k]]) for k in ("trained", "twin")}
    assert share["trained"] >= 0.5 > 0.3 >= share["twin"], share
    assert np.median([r.deletion_past_share for r in runs["trained"]]) >= 0.4
    moved = {k: np.mean([r.deletion_tv.sum() for r in runs[k]]) for k in ("trained", "random")}
    assert moved["trained"] > 0.3 and moved["random"] < 0.1 * moved["trained"], moved


def test_bad_input(lanes):
    agent, trace = lanes
    with pytest.raises(ValueError, match="unknown temporal method"):
        temporal_attribution(agent, trace, 10, method="occlusion")
    with pytest.raises(ValueError, match="out of range"):
        temporal_attribution(agent, trace, 10, action=99)
    with pytest.raises(ValueError, match="out of range"):
        temporal_attribution(agent, trace, 10_000)


def test_audit_over_time_separates_the_agent_from_its_randomised_copy(lanes):
    """``xdreamer audit --methods over_time`` (#27: every explanation carries its own test): the decision of the
    seeing agent depends on its window of frames (erasing them one at a time moves p(action) far more than for the
    randomised copy: the dependence check passes), and the same audit of the randomised copy does not pass it."""
    from xdreamer.explain.audit import run_audit

    agent, env = lanes[0], make("toy:catch-lanes")
    trained = run_audit(agent, env, methods=["over_time"], seeds=[0, 1], states=3).methods["over_time"]
    control = run_audit(randomised_copy(agent), env, methods=["over_time"], seeds=[0, 1],
                        states=3).methods["over_time"]
    env.close()
    assert trained["checks"]["dependence"]["verdict"] == "pass"
    assert control["checks"]["dependence"]["verdict"] != "pass"
    assert trained["checks"]["dependence"]["difference"][0] > control["checks"]["dependence"]["difference"][0] + 0.3
