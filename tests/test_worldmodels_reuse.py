"""A second controller on one world model (issue #30): ``xdreamer train --world-model CKPT --controller ppo`` keeps
the checkpoint's V and M bit for bit and trains a new C on them, so CMA-ES and PPO are compared on the same V and
M (how the bundled CarRacing PPO agent was made)."""

from __future__ import annotations

import json
import pathlib

import torch

from xdreamer.cli import main
from xdreamer.worldmodels import load

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "worldmodels" / "catch-lanes"
PPO = ["--controller", "ppo", "--no-progress", "--set", "wm_ppo_iterations=2", "wm_ppo_horizon=128",
       "wm_ppo_envs=4", "eval_episodes=2"]


def _status(run):
    return json.loads((run / "stages" / "status.json").read_text())


def test_a_ppo_controller_on_the_bundled_world_model_keeps_v_and_m(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--world-model", str(SOURCE), "--logdir", str(run), *PPO]) == 0
    source, agent = load(SOURCE), load(run)
    for name, tensor in source.state_dict().items():
        if name.startswith(("vae.", "mdn.")):
            assert torch.equal(agent.state_dict()[name], tensor), name
    # a new C of the other kind: PPO's stochastic controller and its critic, trained (not the zero init)
    assert source.cfg.wm_controller == "cmaes" and agent.cfg.wm_controller == "ppo" and agent.critic is not None
    assert float(agent.controller.linear.weight.abs().sum()) > 0
    status = _status(run)
    assert all(status[k]["done"] and status[k]["from"] == str(SOURCE) for k in ("rollouts", "vae", "mdnrnn"))
    assert status["controller"]["done"] and status["controller"]["controller"] == "ppo"
    assert not (run / "replay").exists() and not (run / "stages" / "series.npz").exists()
    manifest = agent.manifest
    assert manifest["world_model"]["weights_sha256"] == source.manifest["weights_sha256"]
    # the world model's cost is counted once, as the source's stage records say
    assert manifest["stages"]["vae"]["seconds"] == source.manifest["stages"]["vae"]["seconds"]
    assert agent.cfg.env == source.cfg.env and agent.cfg.wm_z == source.cfg.wm_z


def test_a_dream_controller_starts_from_encoded_resets(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--world-model", str(SOURCE), "--logdir", str(run), *PPO, "wm_dream=true"]) == 0
    assert _status(run)["controller"]["dream"] is True and load(run).cfg.wm_dream


def test_world_model_refusals_are_one_line(tmp_path, capsys):
    cases = [
        (["--set", "wm_z=16"], "cannot set wm_z"),
        (["--preset", "worldmodels-debug"], "drop --preset"),
        (["--env", "toy:catch"], "drop --env"),
        (["--set", "wm_iterations=2"], "cannot set wm_iterations"),
        (["--world-model", str(tmp_path / "missing")], "checkpoint not found"),  # the last --world-model counts
        (["--world-model", str(SOURCE.parents[1] / "catch-lanes")], "is not a World Models checkpoint"),
    ]
    for extra, message in cases:
        args = ["train", "--world-model", str(SOURCE), "--logdir", str(tmp_path / "run"), "--no-progress", *extra]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_a_budget_lowered_on_resume_to_where_c_stopped_marks_it_done(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--world-model", str(SOURCE), "--logdir", str(run), *PPO[:-4], "wm_ppo_iterations=1",
                 "wm_ppo_horizon=128", "wm_ppo_envs=4", "eval_episodes=2"]) == 0
    status = _status(run)  # as if stopped after 1 of 3 iterations
    status["controller"]["done"] = False
    (run / "stages" / "status.json").write_text(json.dumps(status))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "wm_ppo_iterations": 3}))
    weights = load(run).controller.linear.weight.clone()
    assert main(["train", "--resume", "--logdir", str(run), "--no-progress", "--set", "wm_ppo_iterations=1"]) == 0
    status = _status(run)
    assert status["controller"]["done"] is True and len(status["controller"]["progress"]["history"]) == 1
    assert torch.equal(load(run).controller.linear.weight, weights)  # nothing more was trained
