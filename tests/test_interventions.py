"""Latent attributions checked by intervention (issue #27, item 4; ``explain.interventions``)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from xdreamer import checkpoint, explain
from xdreamer.envs import make
from xdreamer.explain import interventions as iv
from xdreamer.explain.audit import randomised_copy

ROOT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(scope="module")
def lanes():
    agent = checkpoint.load(ROOT / "catch-lanes")
    env = make(agent.cfg.env)
    trace = explain.record(agent, env, episodes=2, seed=0, max_steps=60)
    env.close()
    return agent, trace


@pytest.fixture(scope="module")
def checks(lanes):
    """The check on catch-lanes and, as the negative control, on a freshly initialised copy at the same states."""
    agent, trace = lanes
    trained = iv.intervention_check(agent, trace, every=2, n_steps=16, n_random=10)
    control = iv.intervention_check(randomised_copy(agent), trace, steps=trained.steps, n_steps=16, n_random=10)
    return trained, control


def test_aggregate_posterior_counts_classes():
    m = iv.aggregate_posterior(np.array([[0, 2], [1, 2], [0, 2], [0, 1]]), 3)
    np.testing.assert_allclose(m, [[0.75, 0.25, 0.0], [0.0, 0.25, 0.75]])
    np.testing.assert_allclose(iv.aggregate_posterior(np.eye(3)[[[0, 2], [1, 2]]], 3), [[0.5, 0.5, 0], [0, 0, 1]])
    for bad in (np.zeros((0, 2), int), np.array([[0, 3]]), np.zeros(4, int)):
        with pytest.raises(ValueError):
            iv.aggregate_posterior(bad, 3)


def test_effects_are_the_hand_computed_switches(lanes):
    """effect_i = sum_c m_i(c) TV(pi, pi with variable i := c), computed here with the actor by hand; and the joint
    interchange on one variable over the recorded steps is the same expectation (m is their class frequency)."""
    agent, trace = lanes
    a = trace.arrays
    classes = np.asarray(a["post_class"]).astype(np.int64)
    K = agent.wm.rssm.classes
    marg = iv.aggregate_posterior(classes, K)
    t = 7
    eff = iv.variable_effects(agent, a["deter"][t], classes[t], marg)
    h = torch.as_tensor(a["deter"][t])[None]

    def probs(cls):
        z = torch.nn.functional.one_hot(torch.as_tensor(cls), K).float().reshape(1, -1)
        with torch.no_grad():
            return agent.actor.net(torch.cat([h, z], -1)).softmax(-1)[0].double().numpy()

    p0 = probs(classes[t])
    np.testing.assert_allclose(eff.probs, p0, atol=1e-6)
    for i in (0, 5, 11):
        tv = []
        for c in range(K):
            z = classes[t].copy()
            z[i] = c
            tv.append(0.5 * np.abs(probs(z) - p0).sum())
        assert eff.per_class_tv[i, classes[t][i]] == 0.0
        np.testing.assert_allclose(eff.per_class_tv[i], tv, atol=1e-6)
        np.testing.assert_allclose(eff.tv[i], np.dot(marg[i], tv), atol=1e-6)
        np.testing.assert_allclose(iv.joint_effect(agent, a["deter"][t], classes[t], [i], classes), eff.tv[i],
                                   atol=1e-6)
    with pytest.raises(ValueError, match="one-hot"):
        iv.variable_effects(agent, a["deter"][t], np.full((16, 16), 1 / 16), marg)
    with pytest.raises(ValueError, match="marginals"):
        iv.variable_effects(agent, a["deter"][t], classes[t], marg[:3])


def test_aggregate_attribution_predicts_interventions_and_prior_does_not(checks):
    """Issue #27's target: Spearman(|attribution|, intervention effect) >= 0.5 on catch-lanes. Measured over 46
    unsaturated steps of 2 episodes: aggregate-baseline FeatureAblation 0.68, IG 0.61; prior baseline 0.31-0.32
    (issue #27 measured 0.03 / -0.12 at the sampled z); surprise order 0.24; random order -0.02."""
    trained, _ = checks
    s = trained.summary()
    assert s["steps"] >= 10
    rho = {k: v["median"] for k, v in s["spearman"].items()}
    lo = {k: v["ci"][0] for k, v in s["spearman"].items()}
    hi = {k: v["ci"][1] for k, v in s["spearman"].items()}
    assert lo["aggregate_ablation"] >= 0.5 and rho["aggregate_ig"] >= 0.5, rho
    for null in ("prior_ig", "prior_ablation", "surprise", "random"):
        assert lo["aggregate_ablation"] > hi[null], (null, s["spearman"])
    # the joint test: the top-5 variables move p(action) more than 5 random ones, and no more than the oracle
    joint = s["joint"]
    assert joint["top:aggregate_ablation"]["ratio_to_random"] > 1.2
    assert joint["top:aggregate_ablation"]["mean_tv"] <= joint["oracle"]["mean_tv"] + 1e-9


def test_negative_control_depends_far_less_on_its_latents(checks):
    """A freshly initialised copy at the same states: its attribution ranks its own (small) dependence just as well
    (an attribution is faithful to whatever function it explains), but its decision moves about 3x less under the
    same interventions (measured: mean top-5 joint TV 0.29 against 0.07 on its own episodes)."""
    trained, control = checks
    assert np.mean(trained.effect) > 2 * np.mean(control.effect), (np.mean(trained.effect), np.mean(control.effect))
    top = [c.summary()["joint"]["top:aggregate_ablation"]["mean_tv"] for c in (trained, control)]
    assert top[0] > 2 * top[1], top


@pytest.mark.xfail(strict=True, reason="issue #27's '>= 2x' for 5 of catch-lanes' 16 variables: even the oracle "
                                       "(the 5 largest true effects) reaches 1.6x random-5 (docs/audit.md)")
def test_top5_moves_p_action_twice_as_much_as_random5(checks):
    assert checks[0].summary()["joint"]["top:aggregate_ablation"]["ratio_to_random"] >= 2.0


def test_check_rejects_bad_input(lanes):
    agent, trace = lanes
    with pytest.raises(ValueError, match="k must be"):
        iv.intervention_check(agent, trace, k=16)
    with pytest.raises(ValueError, match="out of range"):
        iv.intervention_check(agent, trace, steps=[10_000])
