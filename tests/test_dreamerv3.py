"""DreamerV3 as a member of the family (issue #29): each difference from DreamerV2 pinned against a hand-written
formula, an update, a checkpoint round trip and the CLI's analysis commands on a debug agent."""

import argparse
import json
import math

import numpy as np
import pytest
import torch

from conftest import analysis_commands, random_batch
from xdreamer import checkpoint
from xdreamer.agent import Agent
from xdreamer.behavior import lambda_return
from xdreamer.config import build_config
from xdreamer.dreamerv3 import (BINS, RETURN_DECAY, ActorCriticV3, WorldModelV3, bins, categorical_kl, symexp,
                                symlog, twohot, twohot_mean, twohot_nll)


@pytest.fixture
def v3_cfg():
    return build_config(["dreamerv3", "debug"], {"env": "toy:catch", "device": "cpu"})


def test_presets_carry_the_papers_values(v3_cfg):
    cfg = build_config(["dreamerv3"])
    assert cfg.algo == "dreamerv3" and cfg.unimix == 0.01 and cfg.kl_free == 1.0
    assert (cfg.dyn_scale, cfg.rep_scale, cfg.actor_ent, cfg.slow_target_fraction) == (0.5, 0.1, 3e-4, 0.02)
    assert cfg.discount == pytest.approx(1 - 1 / 333, abs=1e-5)
    xl = build_config(["dreamerv3", "dreamerv3-xl"])
    assert (xl.deter, xl.cnn_depth, xl.mlp_units, xl.mlp_layers) == (4096, 96, 1024, 5)
    assert build_config([]).algo == "dreamerv2"


def test_symlog_symexp_inverse():
    x = torch.tensor([-1e4, -20.0, -1.0, -0.1, 0.0, 0.3, 2.0, 1e5], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12)
    assert float(symlog(torch.tensor(math.e - 1))) == pytest.approx(1.0)


def test_twohot_code_by_hand():
    centres = bins()
    assert len(centres) == BINS and float(centres[0]) == -20 and float(centres[-1]) == 20
    step = 40 / (BINS - 1)
    x = torch.tensor([0.25 * step + float(centres[130]), float(centres[7]), 25.0, -30.0])
    code = twohot(x, centres)
    assert torch.allclose(code.sum(-1), torch.ones(4))
    # 1/4 of the way from bin 130 to 131: weights 3/4 and 1/4
    assert float(code[0, 130]) == pytest.approx(0.75, abs=1e-4) and float(code[0, 131]) == pytest.approx(0.25, abs=1e-4)
    assert float(code[1, 7]) == pytest.approx(1.0)  # exactly on a bin
    assert float(code[2, -1]) == 1.0 and float(code[3, 0]) == 1.0  # beyond the range: the end bins
    # The code's mean is x (within range), so a perfect prediction's mean is the target.
    assert torch.allclose((code[:2] * centres).sum(-1), x[:2], atol=1e-5)
    logits = torch.log(code[:2] + 1e-12)
    assert torch.allclose(twohot_mean(logits), symexp(x[:2]), rtol=1e-3)


def test_twohot_nll_is_cross_entropy_on_symlog_target():
    logits = torch.randn(3, BINS, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0.0, 5.0, -120.0])
    code = twohot(symlog(target), bins())
    expected = -(code * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(twohot_nll(logits, target), expected)


def test_kl_free_bits_and_scales(v3_cfg, toy_spec):
    """dyn 0.5 * max(1, KL[sg(post) || prior]) + rep 0.1 * max(1, KL[post || sg(prior)]), per (b, t), averaged."""
    agent = Agent(v3_cfg, toy_spec)
    torch.manual_seed(0)
    _, post, metrics = agent.wm.loss(agent.to_torch(random_batch(toy_spec, 2, 5)))
    torch.manual_seed(0)
    data = agent.to_torch(random_batch(toy_spec, 2, 5))
    inp = agent.wm.preprocess(data)
    with torch.no_grad():
        _, prior = agent.wm.observe(agent.wm.encode(inp["image"], batch_stats=True), inp["action"], inp["is_first"])
    p = post.logits.detach().softmax(-1)
    kl = (p * (p.log() - prior.logits.log_softmax(-1))).sum((-1, -2))
    assert torch.allclose(categorical_kl(post.logits, prior.logits), kl, atol=1e-5)
    want = 0.5 * kl.clamp(min=1.0).mean() + 0.1 * kl.clamp(min=1.0).mean()
    assert float(metrics["kl_loss"].detach()) == pytest.approx(float(want), rel=1e-4)


def test_heads_start_at_zero_and_continue_head_targets(v3_cfg, toy_spec):
    agent = Agent(v3_cfg, toy_spec)
    feat = torch.randn(4, agent.wm.rssm.feat_dim)
    for pred in (agent.wm.reward(feat), agent.ac.value(feat), agent.ac.value(feat, target=True)):
        assert torch.allclose(pred, torch.zeros(4), atol=1e-6)  # uniform bins: mean 0 up to float rounding
    # discount = gamma * P(continue), with the head trained on 1 - is_terminal
    d = agent.wm.discount(feat)
    assert torch.all(d <= v3_cfg.discount) and torch.all(d > 0)


def test_actor_unimix_floor(v3_cfg, toy_spec):
    agent = Agent(v3_cfg, toy_spec)
    out = torch.tensor([[50.0, -50.0, -50.0]])
    probs = agent.actor.distribution(out).probs
    assert float(probs.min()) == pytest.approx(0.01 / 3, rel=1e-4)


def test_lambda_returns_read_the_next_states_reward(v3_cfg, toy_spec):
    """R_t = r_{t+1} + d_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1}), R_H = v_H (dreamerv3 ``score``)."""
    agent = Agent(v3_cfg, toy_spec)
    gen = torch.Generator().manual_seed(1)
    n, h = 2, 4
    seq = {"feat": torch.randn(n, h + 1, agent.wm.rssm.feat_dim, generator=gen),
           "reward": torch.randn(n, h + 1, generator=gen), "discount": torch.rand(n, h + 1, generator=gen)}
    with torch.no_grad():
        for p in agent.ac.critic.parameters():  # a critic with non-zero values
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        ret, value = agent.ac.target(seq)
    lam = v3_cfg.discount_lambda
    r, d, v = seq["reward"], seq["discount"], value
    for i in range(n):
        want = [0.0] * h
        nxt = float(v[i, h])
        for t in reversed(range(h)):
            nxt = float(r[i, t + 1]) + float(d[i, t + 1]) * ((1 - lam) * float(v[i, t + 1]) + lam * nxt)
            want[t] = nxt
        assert np.allclose(ret[i].numpy(), want, atol=1e-5)


def test_return_normalisation_by_percentile_ema(v3_cfg, toy_spec):
    agent = Agent(v3_cfg, toy_spec)
    first = torch.linspace(0, 100, 101)
    scale = agent.ac.return_scale(first)
    low, high = (1 - RETURN_DECAY) * 5.0, (1 - RETURN_DECAY) * 95.0
    assert float(scale) == pytest.approx(max(1.0, high - low))  # 0.9: the floor of 1 holds
    for _ in range(300):
        scale = agent.ac.return_scale(first)
    assert float(scale) == pytest.approx(90.0, rel=0.06)  # the EMA approaches P95 - P5


def test_update_is_finite_and_learns_the_reward(v3_cfg, toy_spec):
    torch.manual_seed(0)
    agent = Agent(v3_cfg.replace(model_lr=3e-3), toy_spec)
    batch = random_batch(toy_spec, 4, 16, seed=0)
    batch["reward"] = np.full_like(batch["reward"], 3.0)
    for _ in range(30):
        metrics = agent.train_step(batch)
    assert all(math.isfinite(v) for v in metrics.values())
    with torch.no_grad():
        inp = agent.wm.preprocess(agent.to_torch(batch))
        post, _ = agent.wm.observe(agent.wm.encode(inp["image"]), inp["action"], inp["is_first"])
        pred = agent.wm.reward(agent.wm.feat(post))
    assert float(pred.mean()) > 1.0  # from 0 towards the constant reward 3, on the env's scale (no tanh clip)


def test_checkpoint_round_trip(tmp_path, v3_cfg, toy_spec):
    agent = Agent(v3_cfg, toy_spec)
    agent.train_step(random_batch(toy_spec, 2, 8))
    path = checkpoint.save(tmp_path / "ckpt", agent, steps=3)
    loaded = checkpoint.load(path)
    assert isinstance(loaded.wm, WorldModelV3) and isinstance(loaded.ac, ActorCriticV3)
    assert torch.equal(loaded.ac.return_range, agent.ac.return_range)
    obs = {"image": random_batch(toy_spec, 1, 1)["image"][0, 0], "is_first": True}
    assert loaded.act(obs, mode="eval")[0] == agent.act(obs, mode="eval")[0]


def test_cli_analysis_commands_on_a_dreamerv3_agent(tmp_path, v3_cfg, toy_spec):
    """record, whatif (dream + grounded), saliency with latent attribution, highlights, report and audit through the CLI."""
    from xdreamer.cli import main

    agent = Agent(v3_cfg, toy_spec)
    ckpt = checkpoint.save(tmp_path / "ckpt", agent, steps=0)
    for argv in analysis_commands(ckpt, tmp_path / "t.npz", tmp_path):
        assert main(argv) == 0, argv
    data = json.loads((tmp_path / "w.json").read_text())
    assert len(data["dream"]["q"]) == toy_spec.num_actions and len(data["grounded"]["real_return"]) == 3
    assert (tmp_path / "s.png").stat().st_size > 1000 and "latent" in json.loads((tmp_path / "s.json").read_text())
    assert len(json.loads((tmp_path / "h.json").read_text())["moments"]) == 2
    assert (tmp_path / "report" / "index.html").stat().st_size > 1000
    assert {"saliency", "latent_ig"} <= set(json.loads((tmp_path / "audit" / "audit.json").read_text())["methods"])
