"""World Models' iterative procedure (paper §5; issue #30): after the random-policy pass, each iteration collects
``wm_rollouts`` more episodes with the trained agent and retrains V, M and C on all of them, from where they are;
a run stopped after the first pass continues with ``--resume --set wm_iterations=N``."""

from __future__ import annotations

import json

import numpy as np
import torch

from test_worldmodels import agent_for
from xdreamer.cli import main
from xdreamer.worldmodels import load

TINY = ["--preset", "worldmodels-debug", "--env", "toy:catch-lanes", "--no-progress", "--set", "wm_rollouts=8",
        "wm_generations=2", "wm_rnn_steps=20", "wm_vae_epochs=1", "eval_episodes=2"]


def _status(run):
    return json.loads((run / "stages" / "status.json").read_text())


def test_two_iterations_collect_with_the_agent_and_retrain_everything(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--logdir", str(run), *TINY, "wm_iterations=2"]) == 0
    status = _status(run)
    first = status["iteration-2"]["before"]
    assert status["iterations"] == {"done": 2} and status["iteration-2"]["episodes"] == 16
    assert len(list((run / "replay").glob("*.npz"))) == 16
    # V and M were retrained on all 16 episodes (the first pass saw 8); C ran its budget twice
    assert status["vae"]["frames"] > first["vae"]["frames"] and status["mdnrnn"]["episodes"] > first["mdnrnn"]["episodes"]
    assert len(status["controller"]["progress"]["history"]) == 4
    manifest = load(run).manifest
    assert manifest["iterations"] == 2 and manifest["train_episodes"] == 16


def test_resume_adds_an_iteration_from_where_the_models_are(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--logdir", str(run), *TINY]) == 0
    vae_before = load(run).vae.state_dict()["mean.weight"].clone()
    assert "iteration-2" not in _status(run)
    assert main(["train", "--resume", "--logdir", str(run), "--no-progress", "--set", "wm_iterations=2"]) == 0
    status = _status(run)
    assert status["iterations"] == {"done": 2} and len(list((run / "replay").glob("*.npz"))) == 16
    # one more epoch from the first pass's V: close to it, not a fresh start
    after = load(run).vae.state_dict()["mean.weight"]
    assert 0 < float((after - vae_before).abs().mean()) < float(vae_before.abs().mean())


def test_an_exploring_step_feeds_the_taken_action_to_the_memory():
    from xdreamer.envs import make
    from xdreamer.worldmodels.rollouts import RandomPolicy, _agent_step

    agent = agent_for(env_id="toy:catch-lanes")
    env = make("toy:catch-lanes")
    obs = env.reset(seed=0)
    random = RandomPolicy(env.spec, np.random.default_rng(0))
    action, state = _agent_step(agent, obs, None, random)
    with torch.no_grad():
        z = agent.encode(obs["image"][None])
        expected = agent.advance(z, torch.tensor([action]), agent.initial_state(1))
    assert torch.allclose(state.lstm[0], expected.lstm[0])
    own, _ = _agent_step(agent, obs, None)
    with torch.no_grad():
        assert own == int(agent.controller.act(agent.feat(z, agent.initial_state(1)))[0])
    env.close()
