"""Object-level simulator attribution (``explain.object_attribution``; issue #27 item 2, Atrey et al. 2020).

Invariants: the unedited row is the recorded decision; a re-rendered unedited state is the recorded frame; a held
``move`` edit equals editing the state k steps back and re-simulating the recorded actions. Faithfulness, each with
its negative controls (issue #27: a measure that a random agent also passes proves nothing): the bundled
``catch-lanes`` (sees its ball) against its ball-blind twin ``catch-pixel-lanes`` and a randomised copy of it.
One evaluation episode each (seed 0, about 90 steps), k=0 and k=3.
"""

from __future__ import annotations

import dataclasses
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
from xdreamer.explain.trace import weights_fingerprint

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
    editor = objects.object_editor(env)
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


def _copy(trace):
    return explain.Trace(dict(trace.arrays), trace.table.copy(), dict(trace.meta))


def test_record_objects_stores_per_step_effects(runs, tmp_path):
    """``xdreamer record --objects`` (``record_object_effects``): the trace stores ``object_attribution``'s whole
    result for every step (also in chunks), it survives a save / load, and separates the seeing agent from its
    controls as above."""
    stored = {}
    for name in ("catch-lanes", "catch-pixel-lanes", "random"):
        agent, env, trace, res = runs[name]
        trace = objects.record_object_effects(agent, env, _copy(trace), chunk=32)  # chunks: the same numbers
        back = objects.stored_object_attribution(explain.load_trace(explain.save(trace, tmp_path / f"{name}.npz")))
        want = res[0]
        assert (back.objects, back.variants, back.k, back.shift, back.horizon) == \
            (want.objects, want.variants, want.k, want.shift, want.horizon)
        for field in ("probs", "value", "q", "tv", "dvalue", "dq"):
            np.testing.assert_allclose(getattr(back, field), getattr(want, field), atol=1e-5, equal_nan=True)
        for field in ("applicable", "flip", "attempted", "landed", "visible", "saturated", "steps"):
            np.testing.assert_array_equal(getattr(back, field), getattr(want, field))
        np.testing.assert_allclose(trace.table["effect_ball"], want.effect()[:, 0], atol=1e-6)
        one = back.select([7])  # what the app's Frame panel shows at a step
        np.testing.assert_allclose(one.tv[0], want.tv[7], equal_nan=True)
        stored[name] = back.median_effect("ball")
    assert stored["catch-lanes"] >= 0.25 and stored["catch-lanes"] >= 5 * stored["random"], stored
    assert stored["catch-pixel-lanes"] <= 0.01, stored


def test_record_objects_every_nth_step(runs, tmp_path):
    """``record --objects-every 4``: the trace stores the same numbers as a full attribution at steps 0, 4, 8, ...
    only; the other steps read as not stored (``at_steps`` None, table NaN), and a report's per-episode slice of a
    two-episode trace keeps each stored step on its own frame."""
    from xdreamer.report.jobs import episode_trace

    agent, env, trace, res = runs["catch-lanes"]
    want = res[0]
    every = objects.record_object_effects(agent, env, _copy(trace), every=4, chunk=5)
    back = objects.stored_object_attribution(explain.load_trace(explain.save(every, tmp_path / "every.npz")))
    rows = np.arange(0, len(trace), 4)
    np.testing.assert_array_equal(back.steps, rows)
    assert every.meta["object_effects"]["every"] == 4
    for field in ("tv", "dvalue", "dq", "probs"):
        np.testing.assert_allclose(getattr(back, field), getattr(want, field)[rows], atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(back.visible, want.visible[rows])
    assert back.at_steps([5]) is None
    np.testing.assert_allclose(back.at_steps([8]).tv[0], want.tv[8], atol=1e-5, equal_nan=True)
    column = every.table["effect_ball"].to_numpy()
    assert np.isnan(np.delete(column, rows)).all()
    np.testing.assert_allclose(column[rows], want.effect()[rows, 0], atol=1e-6, equal_nan=True)

    two = explain.record(agent, env, episodes=2, seed=0, max_steps=30)
    two = objects.record_object_effects(agent, env, two, every=7, horizon=2)
    second = episode_trace(two, 1)
    start = int(np.flatnonzero(two.arrays["episode"] == 1)[0])
    kept = objects.stored_object_attribution(second)
    full = objects.stored_object_attribution(two)
    assert len(kept.steps) and all((s + start) % 7 == 0 for s in kept.steps)
    for s in kept.steps:
        np.testing.assert_allclose(kept.at_steps([s]).tv, full.at_steps([s + start]).tv, equal_nan=True)
        np.testing.assert_array_equal(kept.at_steps([s]).visible, full.at_steps([s + start]).visible)


def test_corrupt_stored_effects_are_refused(runs, tmp_path):
    agent, env, trace, _ = runs["catch-lanes"]
    trace = objects.record_object_effects(agent, env, _copy(trace), horizon=2)
    n = len(trace)

    def put(key, value):
        return lambda t: t.arrays.__setitem__(key, value)

    for edit, message in ((put("object_tv", np.full((n, 2, 6), 2.0, np.float32)), "outside 0..1"),
                          (put("object_tv", np.zeros((n, 3, 6), np.float32)), "object_tv must be floats of shape"),
                          (put("object_flip", np.zeros((n, 2, 6), np.float32)), "object_flip must be booleans"),
                          (lambda t: t.arrays.pop("object_dq"), "exactly the arrays"),
                          (put("object_extra", np.zeros(n, np.float32)), "exactly the arrays"),
                          (lambda t: t.meta.pop("object_effects"), "need meta.object_effects"),
                          (lambda t: t.meta["object_effects"].__setitem__("objects", ["ball", "ghost"]),
                           "no boxes for"),
                          (lambda t: t.meta["object_effects"].__setitem__("code", "os.system"), "object_effects"),
                          (put("object_steps", np.arange(n)[::-1].copy()), "object_steps must be increasing"),
                          (put("object_steps", np.arange(1, n + 1)), "object_steps must be increasing"),
                          (put("object_steps", np.arange(0, n, 2)), "must be floats of shape"),
                          (put("object_steps", np.linspace(0, 1, n)), "object_steps must be increasing"),
                          (lambda t: t.meta["object_effects"].__setitem__("every", 0), "object_effects")):
        bad = _copy(trace)
        bad.meta = {**trace.meta, "object_effects": dict(trace.meta["object_effects"])}
        edit(bad)
        path = explain.save(bad, tmp_path / "bad.npz")
        with pytest.raises(ValueError, match=message):
            explain.load_trace(path)


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


# ---- Atari: RAM edits (``_AtariObjects``), verified on the raw screen ----------------------------------------
ATARI_STEPS = 50  # one Pong episode cut at 50 agent steps: the ball is in play from step 2


@pytest.fixture(scope="module")
def pong():
    """(agent, env, trace, editor) for the bundled Pong agent, one evaluation episode (seed 0) of ATARI_STEPS."""
    pytest.importorskip("ale_py")
    agent = checkpoint.load(ROOT / "pong")
    env = make(agent.cfg.env)
    trace = explain.record(agent, env, episodes=1, seed=0, max_steps=ATARI_STEPS)
    yield agent, env, trace, objects.object_editor(env)
    env.close()


def test_atari_unedited_reobservation_is_the_recorded_frame(pong):
    """Restore s-1, prime the sticky action, re-run a_{s-1}: bit-identical to the recorded o_s on every step (without
    the priming, 23 of 200 steps of this episode differ on a second re-observation)."""
    _, _, trace, editor = pong
    for s in range(1, len(trace)):
        np.testing.assert_array_equal(editor._unedited(trace, s)[0], trace.arrays["frame"][s])
        np.testing.assert_array_equal(editor._unedited(trace, s)[0], trace.arrays["frame"][s])
    editor._base.clear()
    for s in (7, 7, 6, 7):  # out of order, repeated: still the recorded frame
        np.testing.assert_array_equal(editor._unedited(trace, s)[0], trace.arrays["frame"][s])


def _ram_box(env, ram, name):
    """The object's box in 64x64 frame px from RAM_OBJECTS' read-out fit (independent of the pixel detector)."""
    return env.objects_from_ram(ram)[name]


@pytest.mark.parametrize("obj", ["ball", "player", "enemy"])
def test_atari_ram_move_moves_the_object_by_the_intended_pixels(pong, obj):
    """``move+6`` / ``move-6`` (6 px of the 64x64 frame = 20 raw px down / up) moves the object on the raw screen by
    20 +- 2 raw px and, by RAM_OBJECTS' read-out fit of the bytes after the step, by 6 +- 1 frame px; the observed
    frame changes. Landing rates over the episode stay near the measured ones (docs/audit.md)."""
    _, env, trace, editor = pong
    landed = tried = 0
    for s in range(2, len(trace)):
        base = editor._unedited(trace, s)
        if not isinstance(base[1][obj], tuple):
            continue
        for v in editor.variants(["move"], 6):
            image = editor.frame(trace, s, obj, v)
            if (s, obj, v.label) not in editor.outcomes:
                continue  # target off the field: not attempted
            tried += 1
            if image is None:
                continue
            landed += 1
            got = editor.detect(editor.ale.getScreenRGB())[obj]
            assert abs(got[1] - (base[1][obj][1] + np.sign(v.arg) * 20)) <= editor.TOL and got[0] == base[1][obj][0]
            box = _ram_box(env, editor.ale.getRAM(), obj)
            env.set_state(trace.sim_state(s))
            old = _ram_box(env, editor.ale.getRAM(), obj)
            if np.isfinite(old).all():  # the read-out fit calls a ball at the top edge (y 34) out of the field
                assert abs((box[1] - old[1]) - v.arg) <= 1.0, (s, v.label, box, old)
            assert not np.array_equal(image, trace.arrays["frame"][s])
    assert tried >= 40
    floor = {"ball": 0.85, "player": 0.9, "enemy": 0.5}[obj]  # measured 0.94 / 0.98 / 0.67 over 200 steps
    assert landed / tried >= floor, (obj, landed, tried)


def test_atari_remove_removes_the_ball_and_only_where_ram_says_absent(pong):
    """Holding ram[54] = 0 (Pong's "ball not in play") removes the ball from the raw screen and from RAM_OBJECTS'
    read-out; the paddles have no "absent" value, so their ``remove`` is never attempted."""
    _, env, trace, editor = pong
    remove = objects._Variant("remove", "remove")
    done = 0
    for s in range(2, len(trace)):
        image = editor.frame(trace, s, "ball", remove)
        for paddle in ("player", "enemy"):
            assert editor.frame(trace, s, paddle, remove) is None
            assert (s, paddle, "remove") not in editor.outcomes
        if image is None:
            continue
        done += 1
        assert editor.detect(editor.ale.getScreenRGB())["ball"] is None
        assert np.isnan(_ram_box(env, editor.ale.getRAM(), "ball")).all()
    tried = sum(1 for (s, o, v) in editor.outcomes if o == "ball" and v == "remove")
    assert done >= 35 and done == tried  # every attempted removal landed


def test_atari_object_attribution_separates_the_agent_from_a_random_copy(pong):
    """Negative control on a bundled Atari agent. Measured (this 50-step episode, k=0, shift 6, horizon 5): median
    largest TV over the steps with a landed edit: ball 0.25 and enemy paddle 0.34 for checkpoints/pong, exactly 0
    for the randomised copy (means 0.008 / 0.003: its posterior mode hardly ever changes); the agent's own paddle
    barely matters to it (median 0, mean 0.03). Landing rates (ball 0.97, player 0.95, enemy 0.52) are the same for
    both: the edits do not depend on the agent."""
    agent, env, trace, _ = pong
    trained = object_attribution(agent, env, trace, horizon=5)
    rand = _randomised(agent)
    meta = {**trace.meta, "weights_sha256": None, "weights_fingerprint": weights_fingerprint(rand)}
    control = object_attribution(rand, env, dataclasses.replace(trace, meta=meta), horizon=5)
    assert trained.variants == ("remove", "move-6", "move+6") and trained.objects == ("ball", "player", "enemy")
    np.testing.assert_array_equal(trained.landed, control.landed)
    np.testing.assert_array_equal(trained.applicable, trained.landed)
    assert trained.landing_rate("ball") >= 0.85 and np.isnan(trained.landing_rate("player", "remove"))
    np.testing.assert_allclose(trained.probs, trace.arrays["action_probs"], atol=1e-5)
    eff, ctl = trained.effect(), control.effect()
    for name in ("ball", "enemy"):
        o = trained.objects.index(name)
        ours, theirs = np.nanmedian(eff[:, o]), np.nanmedian(ctl[:, o])
        assert ours >= 0.1 and ours >= 10 * max(theirs, 1e-3), (name, ours, theirs)
    d = trained.to_dict()
    assert d["landing_rate"]["ball"] >= 0.85 and d["landing_rate"]["player"] is not None


def test_atari_games_without_verified_edits_are_refused(pong):
    """VideoPinball and Venture have RAM read-out fits but no verified write: one line naming the object."""
    agent, _, trace, _ = pong
    for game, obj in (("VideoPinball", "ball"), ("Venture", "player")):
        env = make(f"atari:{game}")
        try:
            with pytest.raises(NotImplementedError, match=f"no verified RAM edit for object.*'{obj}'"):
                object_attribution(agent, env, trace)
        finally:
            env.close()


def test_atari_object_attribution_in_the_audit(pong):
    """``xdreamer audit``'s ``objects`` method runs on Atari (it was skipped before) and reports the landing rate."""
    from xdreamer.explain import audit
    from xdreamer.explain.audit_commands import verdict_lines

    agent, env, trace, _ = pong
    result = audit.run_audit(agent, env, methods=("objects",), trace=trace, states=2).to_dict()
    assert "objects" not in result["skipped"]
    rates = result["methods"]["objects"]["checks"]["effect"]["edit_landing_rate"]
    assert set(rates) == {"ball", "player", "enemy"} and all(r is None or 0 <= r <= 1 for r in rates.values())
    assert any("edits landed" in line for line in verdict_lines(result))


def test_audit_object_summary_without_any_applied_edit():
    """An audited Atari state where no edit applied (Breakout's ball touching the paddle: not detectable) has no
    ranks to compare; a summary of only such states is inconclusive, not a crash."""
    import warnings

    from xdreamer.explain import audit

    none = dict.fromkeys(("spearman_abs", "spearman_signed", "ssim"))
    rows = [{"step": 52, "seed": 0, "objects": ["ball", "player"], "effect": [np.nan, np.nan], "top": None,
             "stage_effect": [[np.nan, np.nan]], "stages": [none], "attempted": [0, 0], "landed": [0, 0]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN medians
        result = audit.summarise("object", rows, [("encoder", ["encoder"])])
    assert result["verdict"] == "inconclusive" and "randomisation" not in result["checks"]
    assert result["checks"]["effect"]["edit_landing_rate"] == {"ball": None, "player": None}
