"""The analysis layer on World Models agents (issue #30): ``xdreamer.checkpoint.load`` returns the view of
``xdreamer/worldmodels/analysis.py`` and every analysis entry point runs on it; the view acts exactly as the agent,
its traces hold the agent's own memory, and its what-if dreams are M's rollouts."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import analysis_commands
from xdreamer import checkpoint, explain
from xdreamer.envs import make
from xdreamer.evaluation import evaluate
from xdreamer.training import env_kwargs
from xdreamer.worldmodels import load as load_worldmodels
from xdreamer.worldmodels.analysis import WorldModelsView

CKPT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "worldmodels" / "catch-lanes"


@pytest.fixture(scope="module")
def agents():
    return load_worldmodels(CKPT), checkpoint.load(CKPT)


@pytest.fixture(scope="module")
def trace(agents):
    view = agents[1]
    return explain.record(view, make(view.cfg.env, **env_kwargs(view.cfg)), episodes=1, seed=3, max_steps=40)


def test_checkpoint_load_gives_the_view_and_refuses_a_trainer_state(agents):
    inner, view = agents
    assert isinstance(view, WorldModelsView) and view.wm.rssm.latent_kind == "gaussian"
    assert view.manifest["weights_sha256"] == inner.manifest["weights_sha256"]
    assert not view.has_critic  # the bundled agent's C was trained by CMA-ES
    assert view.cfg.clip_rewards == "identity"  # M learns raw rewards: the analysis compares them unclipped
    with pytest.raises(checkpoint.CheckpointError, match="World Models checkpoint: resume"):
        checkpoint.load(CKPT, trainer=True)


def test_the_view_acts_exactly_as_the_agent(agents):
    """The same returns over the same seeds, one episode at a time and in lockstep (the evaluation's two paths)."""
    inner, view = agents
    env = lambda: make(inner.cfg.env, **env_kwargs(inner.cfg))  # noqa: E731
    expected = evaluate(inner, env(), 4, seed=1).returns
    assert evaluate(view, env(), 4, seed=1).returns == expected
    assert evaluate(view, env(), 4, seed=1, more_envs=[env()]).returns == expected


@torch.no_grad()
def test_trace_holds_the_agents_memory_and_ms_mixture(agents, trace):
    """deter at t is M's (h, c) after (z_{t-1}, a_{t-1}) as the agent computes it; post_stoch is V's mean; the
    mixture weights are M's at h_t; a CMA-ES agent's value is NaN, not a made-up number."""
    inner, view = agents
    a = trace.arrays
    z = inner.encode(a["frame"])
    np.testing.assert_allclose(a["post_stoch"], z.numpy(), atol=1e-5)
    state = inner.initial_state(1)
    for t in range(len(trace)):
        if a["is_first"][t]:
            state = inner.initial_state(1)
        h, c = state.lstm
        np.testing.assert_allclose(a["deter"][t], torch.cat([h, c], -1)[0].numpy(), atol=1e-5)
        action = torch.tensor([int(a["action"][t])])
        assert int(inner.controller.act(inner.feat(z[t:t + 1], state))[0]) == int(action[0])
        state = inner.advance(z[t:t + 1], action, state)
    mix = a["prior_mixture"]
    assert mix.shape == (len(trace), inner.cfg.wm_z, inner.cfg.wm_mixtures)
    np.testing.assert_allclose(mix.sum(-1), 1.0, atol=1e-5)
    assert np.isnan(a["value"]).all() and np.isfinite(a["pred_reward"]).all()


def test_whatif_dream_equals_a_manual_mdnrnn_rollout(agents, trace):
    """``explain.whatif`` from step t: for each first action, M's LSTM reads (z_t, a), z_{t+1} is each dimension's
    most likely component's mean, C acts on [z, h] after that; rewards are M's reward head. Written by hand here."""
    inner, view = agents
    step, horizon = 6, 4
    result = explain.whatif(view, trace, step, horizon=horizon)
    a = trace.arrays
    rnn = inner.cfg.wm_rnn
    for row, first in enumerate(result.first_actions):
        z = torch.as_tensor(a["post_stoch"][step])[None]
        deter = torch.as_tensor(a["deter"][step])[None]
        lstm = (deter[:, :rnn], deter[:, rnn:])
        rewards, actions = [], []
        for i in range(horizon):
            act = torch.tensor([int(first)]) if i == 0 else inner.controller.act(torch.cat([z, lstm[0]], -1))
            out, lstm = inner.mdn.step(z, F.one_hot(act, inner.action_dim).float(), lstm)
            z = out.mean.gather(-1, out.logpi.argmax(-1, keepdim=True))[..., 0]
            rewards.append(float(out.reward[0].detach()))
            actions.append(int(act[0]))
        np.testing.assert_allclose(result.reward[row, 1:], rewards, atol=1e-5)
        assert list(np.asarray(result.actions[row]).reshape(-1)) == actions
        # No critic: Q_H is the imagined reward discounted by M's own continuation (lambda = 1, bootstrap 0),
        # the start state's predicted reward included as in DreamerV2's convention.
        r, d = result.reward[row], result.discount[row]
        expected = sum(r[i] * np.prod(d[:i]) for i in range(horizon))
        assert result.q[row] == pytest.approx(expected, abs=1e-5)


def test_every_analysis_command_runs_on_a_world_models_checkpoint(tmp_path):
    """record, whatif (dream + grounded), saliency with the latent attribution over z, highlights, report and audit
    (the class-switching checks skipped, saying why) through the CLI on the bundled World Models agent; value
    targets are refused in one line (no critic)."""
    from xdreamer.cli import main

    trace_path = tmp_path / "t.npz"
    for argv in analysis_commands(CKPT, trace_path, tmp_path, saliency_method="integrated_gradients"):
        assert main(argv) == 0, argv
    data = json.loads((tmp_path / "w.json").read_text())
    assert len(data["dream"]["q"]) == 3 and len(data["grounded"]["real_return"]) == 3
    latent = json.loads((tmp_path / "s.json").read_text())["latent"]
    assert np.asarray(latent["per_variable"]).shape == (32,)
    assert len(json.loads((tmp_path / "h.json").read_text())["moments"]) == 2
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert "saliency" in audit["methods"] and "World Models" in audit["skipped"]["latent_ig"]
    assert main(["saliency", str(CKPT), "--trace", str(trace_path), "--step", "4", "--target", "value",
                 "--out", str(tmp_path / "v.png")]) == 2


def test_randomised_copy_is_a_fresh_agent_that_acts_on_its_inputs(agents):
    from xdreamer.explain.audit import randomised_copy

    view = agents[1]
    copy = randomised_copy(view, seed=0)
    assert isinstance(copy, WorldModelsView)
    weight = copy.actor.net.linear.weight
    assert weight.abs().sum() > 0  # not the all-zero C that training starts from
    assert not torch.equal(copy.wm.encoder[0].weight, view.wm.encoder[0].weight)


def test_a_ppo_agent_traces_its_critic(tmp_path, agents):
    """With PPO's critic, traces record its value and value targets are explained."""
    from xdreamer.worldmodels.agent import WorldModelsAgent

    inner = agents[0]
    ppo = WorldModelsAgent(inner.cfg.replace(wm_controller="ppo"), inner.spec)
    view = WorldModelsView(ppo)
    assert view.has_critic
    trace = explain.record(view, make(inner.cfg.env, **env_kwargs(inner.cfg)), episodes=1, max_steps=5)
    assert np.isfinite(trace.arrays["value"]).all()
    a = trace.arrays
    from xdreamer.explain.saliency import saliency

    sal = saliency(view, a["frame"][3], {"deter": a["deter"][2], "stoch": a["post_stoch"][2][:, None],
                                                 "logits": a["post_logits"][2]}, a["action"][2], target="value")
    assert sal.map.shape == (64, 64)


def test_app_shows_world_models_latents(tmp_path):
    """The explainer on the bundled World Models agent: every panel renders; the Latent panel says what z and M's
    mixture are and shows the mixture weights (no empty class panel)."""
    from test_app import check_gaussian_member

    check_gaussian_member(CKPT, "World Models: z is V's Gaussian posterior", "no value function")


def test_saliency_of_a_continuous_action_names_its_dimension(tmp_path):
    """A continuous-action agent (the bundled DreamerV1 pendulum; CarRacing's World Models agents alike) is explained
    per action dimension (its pre-tanh mean): --action picks it; without it, or out of range, one line and exit 2."""
    from xdreamer.cli import main

    ckpt = str(CKPT.parents[1] / "pendulum-dreamerv1")
    out = tmp_path / "s.json"
    assert main(["saliency", ckpt, "--step", "3", "--method", "saliency", "--action", "0", "--json", str(out),
                 "--out", str(tmp_path / "s.png")]) == 0
    assert json.loads(out.read_text())["action"] == 0
    for extra in ([], ["--action", "4"]):
        assert main(["saliency", ckpt, "--step", "3", "--out", str(tmp_path / "x.png"), *extra]) == 2


def test_bundle_reads_a_world_models_checkpoint_into_an_existing_folder(tmp_path):
    """``xdreamer bundle`` on a World Models agent, re-bundled in place with ``--command`` (which once clobbered the
    subcommand's name, so an existing --out folder was refused): the record holds both evaluations and the command."""
    import shutil

    from xdreamer.cli import main

    folder = tmp_path / "wm"
    shutil.copytree(CKPT, folder)
    assert main(["bundle", str(folder), "--out", str(folder), "--episodes", "2", "--no-progress",
                 "--command", "xdreamer train --preset worldmodels-debug"]) == 0
    record = checkpoint.read_manifest(folder)["bundle"]
    assert record["train_commands"] == ["xdreamer train --preset worldmodels-debug"]
    assert record["eval_mode"]["returns"] == checkpoint.read_manifest(CKPT)["bundle"]["eval_mode"]["returns"][:2]


def test_object_effects_of_a_world_models_agent_have_no_value_change(agents, trace):
    """``record --objects`` on a World Models agent: C has no critic, so the value and its change are NaN (as the
    trace's value), never a made-up 0; p(action) and Q_H changes are there."""
    from xdreamer.explain.objects import object_attribution

    view = agents[1]
    env = make(view.cfg.env, **env_kwargs(view.cfg))
    try:
        result = object_attribution(view, env, trace, steps=[5, 6, 7], horizon=3)
    finally:
        env.close()
    assert np.isnan(result.value).all() and np.isnan(result.dvalue).all()
    assert np.isfinite(result.tv[result.applicable]).all() and np.isfinite(result.dq[result.applicable]).all()
    assert np.isnan(trace.arrays["value"]).all()
