"""Attribution over the recurrent memory h_t and the latent z_t jointly (issue #30: "attribution over the 32 z
dimensions and the LSTM state"; ``xdreamer/explain/memory.py``), on DreamerV2 and World Models agents: exact where a
hand computation exists, and checked by forgetting against a randomised copy's ranking (the negative control)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

import xdreamer
from xdreamer.cli import main
from xdreamer.envs import make
from xdreamer.explain.audit import randomised_copy, run_audit
from xdreamer.explain.memory import ablate_units, memory_attribution
from xdreamer.explain.trace import record
from xdreamer.training import env_kwargs

ROOT = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"


def _trace(name: str, steps: int = 40):
    agent = xdreamer.load(ROOT / name)
    env = make(agent.cfg.env, **env_kwargs(agent.cfg))
    return agent, env, record(agent, env, episodes=1, seed=0, max_steps=steps).arrays


@pytest.mark.parametrize("name", ["catch-lanes", "worldmodels/catch-lanes", "catch-dreamerv3"])
def test_completeness_and_single_unit_ablation(name):
    agent, _, a = _trace(name)
    for t in (5, 20, 35):
        m = memory_attribution(agent, a["deter"][t], a["post_logits"][t])
        # IG's completeness over h and z together (Gauss-Legendre, 32 steps)
        assert abs(m.per_unit.sum() + m.per_latent.sum() - (m.value - m.baseline_value)) < 1e-2 * max(
            1.0, abs(m.value - m.baseline_value))
        # FeatureAblation of one unit is the intervention ablate_units makes on a group of one
        unit = m.top_units(1)[0]
        assert m.per_unit_ablation[unit] == pytest.approx(
            ablate_units(agent, a["deter"][t], a["post_logits"][t], [unit], action=m.action), abs=1e-5)
        assert 0 < m.memory_share < 1


def test_world_models_memory_is_m_hidden_state_through_c():
    """C is linear on [z, h]: the score's dependence on h goes through C's h-columns only, so the cell state c
    gets nothing, and a unit's ablation equals a hand computation with C's weights."""
    agent, _, a = _trace("worldmodels/catch-lanes")
    rnn = agent.wm.rssm.rnn
    t = 20
    m = memory_attribution(agent, a["deter"][t], a["post_logits"][t])
    assert np.all(m.per_unit[rnn:] == 0) and np.all(m.per_unit_ablation[rnn:] == 0)
    weight, bias = agent.wm._inner.controller.linear.weight.detach(), agent.wm._inner.controller.linear.bias.detach()
    z = torch.as_tensor(a["post_logits"][t][:, 0]).float()
    h = torch.as_tensor(a["deter"][t][:rnn]).float()

    def logp(hh):
        return torch.log_softmax(weight @ torch.cat([z, hh]) + bias, -1)[m.action]

    unit = m.top_units(1)[0]
    edited = h.clone()
    edited[unit] = 0.0  # the initial memory
    assert m.per_unit_ablation[unit] == pytest.approx(float(logp(h) - logp(edited)), abs=1e-5)


@pytest.mark.parametrize("name", ["catch-lanes", "worldmodels/catch-lanes"])
def test_forgetting_the_agents_top_units_beats_the_randomised_copys(name):
    """The negative control: the units a randomised copy of the agent ranks first, forgotten in the agent, lower
    its log p(action) far less than the agent's own top units do (audited on 2 episodes x 4 states)."""
    agent, env, _ = _trace(name, steps=5)
    audit = run_audit(agent, env, methods=["memory"], seeds=(0, 1), states=4)
    check = audit.methods["memory"]["checks"]["forgetting"]
    assert check["verdict"] == "pass", check
    assert check["drop"]["method"][0] > 3 * max(check["drop"]["random_agent"][0], 0.01)
    share = audit.methods["memory"]["checks"]["memory_share"]["share"][0]
    assert 0.3 < share < 0.95
    # the randomised copy's own maps are not the agent's: the signed per-unit maps decorrelate
    randomisation = audit.methods["memory"]["checks"]["randomisation"]
    assert randomisation["signed_verdict"] == "pass"


def test_cli_saliency_memory_and_audit(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["saliency", str(ROOT / "worldmodels" / "carracing"), "--step", "3", "--action", "0", "--method",
                 "saliency", "--memory", "--out", str(tmp_path / "s.png"), "--json", str(out)]) == 0
    mem = json.loads(out.read_text())["memory"]
    assert len(mem["per_unit"]) == 512 and len(mem["per_latent"]) == 32 and mem["action"] == 0
    assert "of the attribution is on the recurrent state" in capsys.readouterr().out
    assert main(["audit", str(ROOT / "catch-lanes"), "--methods", "memory", "--states", "2",
                 "--out", str(tmp_path / "audit")]) == 0
    assert "forgetting" in capsys.readouterr().out
