"""DreamerV1 as a member of the family (issue #29): Gaussian latents, free-nats KL, the actor by value gradients through
the dynamics, exploration noise, a checkpoint round trip and every analysis entry point on a debug agent."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import analysis_commands, random_batch
from xdreamer import checkpoint, explain
from xdreamer.agent import Agent
from xdreamer.behavior import lambda_return
from xdreamer.config import ConfigError, build_config
from xdreamer.dreamerv1 import MIN_STD, ActorCriticV1, GaussianRSSM, WorldModelV1


@pytest.fixture
def v1_cfg():
    return build_config(["debug", "dreamerv1"], {"env": "toy:catch", "device": "cpu", "batch": 4, "length": 8,
                                                "stoch": 6, "deter": 32, "hidden": 32, "mlp_units": 32,
                                                "cnn_depth": 8, "horizon": 5})


@pytest.fixture(scope="module")
def pendulum_spec():
    from xdreamer.envs import make

    env = make("mujoco:InvertedPendulum")
    spec = env.spec
    env.close()
    return spec


def test_preset_carries_the_papers_values():
    cfg = build_config(["dreamerv1"])
    assert (cfg.algo, cfg.stoch, cfg.classes, cfg.deter, cfg.hidden) == ("dreamerv1", 30, 1, 200, 200)
    assert (cfg.kl_free, cfg.kl_scale, cfg.discount, cfg.discount_lambda, cfg.horizon) == (3.0, 1.0, 0.99, 0.95, 15)
    assert (cfg.model_lr, cfg.actor_lr, cfg.critic_lr, cfg.adam_eps, cfg.expl_amount) == (6e-4, 8e-5, 8e-5, 1e-7, 0.3)
    assert (cfg.batch, cfg.length, cfg.actor_ent, cfg.pred_discount) == (50, 50, 0.0, False)
    assert build_config([]).expl_amount == 0.0  # DreamerV2 explores by sampling only
    with pytest.raises(ConfigError):
        build_config(["dreamerv1"], {"expl_amount": 1.5})


def test_classes_must_be_one(toy_spec):
    with pytest.raises(ValueError, match="classes must be 1"):
        Agent(build_config(["dreamerv1", "debug"], {"env": "toy:catch"}), toy_spec)  # debug sets classes 8


def test_gaussian_latents_and_kl_by_hand(v1_cfg, toy_spec):
    agent = Agent(v1_cfg, toy_spec)
    rssm = agent.wm.rssm
    assert isinstance(rssm, GaussianRSSM) and rssm.latent_kind == "gaussian" and rssm.feat_dim == 32 + 6
    torch.manual_seed(0)
    flat = torch.randn(3, 12)
    stoch, stats = rssm._stoch_from_logits(flat, sample=False)
    mean, raw = flat.chunk(2, -1)
    assert torch.allclose(stoch[..., 0], mean) and torch.allclose(stats[..., 1], torch.nn.functional.softplus(raw) + 0.1)
    assert float(stats[..., 1].min()) >= MIN_STD
    other = rssm._stoch_from_logits(torch.randn(3, 12), sample=False)[1]
    m1, s1, m2, s2 = stats[..., 0], stats[..., 1], other[..., 0], other[..., 1]
    want = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2))
    assert torch.allclose(rssm.kl(stats, other), want.sum(-1), atol=1e-5)
    # free nats on the batch mean (dreamer.py: div = max(mean(KL), free_nats)); the gradient reaches both sides
    post = explain.dreams.State(torch.zeros(3, 32), stoch, stats.requires_grad_())
    prior = explain.dreams.State(torch.zeros(3, 32), stoch, other.requires_grad_())
    loss, value = rssm.kl_loss(post, prior, 0.8, free=1e6)
    assert float(loss) == 1e6
    loss, value = rssm.kl_loss(post, prior, 0.8, free=0.0)
    loss.backward()
    assert float(loss) == pytest.approx(float(want.sum(-1).mean()), rel=1e-5)
    assert stats.grad.abs().sum() > 0 and other.grad.abs().sum() > 0


def test_world_model_loss_terms(v1_cfg, toy_spec):
    agent = Agent(v1_cfg, toy_spec)
    torch.manual_seed(0)
    loss, post, m = agent.wm.loss(agent.to_torch(random_batch(toy_spec, 2, 6)))
    assert post.stoch.shape == (2, 6, 6, 1) and post.logits.shape == (2, 6, 6, 2)
    want = m["image_loss"] + m["reward_loss"] + max(float(m["kl"]), 3.0)  # kl scale 1, free nats 3
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert agent.wm.discount_head is None  # pcont False


def test_actor_loss_is_minus_discounted_lambda_returns(v1_cfg, toy_spec):
    """-mean(cumprod([1, gamma..]) * V_lambda) over all H returns, the critic's own values as bootstrap."""
    agent = Agent(v1_cfg, toy_spec)
    gen = torch.Generator().manual_seed(1)
    n, h, A = 3, 4, toy_spec.num_actions
    seq = {"feat": torch.randn(n, h + 1, agent.wm.rssm.feat_dim, generator=gen),
           "reward": torch.randn(n, h + 1, generator=gen), "discount": torch.full((n, h + 1), 0.99),
           "actor_out": torch.randn(n, h, A, generator=gen)}
    seq["weight"] = torch.cumprod(torch.cat([torch.ones(n, 1), seq["discount"][:, :-1]], 1), 1)
    with torch.no_grad():
        ret, value = agent.ac.target(seq)
        want = lambda_return(seq["reward"][:, :-1], agent.ac.critic(seq["feat"]).squeeze(-1)[:, :-1],
                             seq["discount"][:, :-1], agent.ac.critic(seq["feat"]).squeeze(-1)[:, -1], 0.95)
        loss, _ = agent.ac.actor_loss(seq, ret, value)
    assert torch.allclose(ret, want, atol=1e-6)
    assert float(loss) == pytest.approx(float(-(seq["weight"][:, :-1] * ret).mean()), rel=1e-6)
    assert agent.ac.actor_grad == "dynamics"


def test_actor_gradient_flows_through_the_dynamics(v1_cfg, toy_spec):
    """The actor's parameters get a gradient through the imagined states, for discrete (straight-through) and
    continuous (reparameterised tanh-Normal) actions."""
    agent = Agent(v1_cfg, toy_spec)
    start = agent.wm.rssm.initial(4)
    start = start._replace(stoch=torch.randn_like(start.stoch))
    for p in agent.wm.parameters():
        p.requires_grad_(False)
    actor_loss, critic_loss, _ = agent.ac.loss(agent.wm, start, None)
    actor_loss.backward()
    grads = [p.grad for p in agent.ac.actor.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_continuous_actor_parameterisation_and_exploration(pendulum_spec):
    cfg = build_config(["debug", "dreamerv1"], {"env": "mujoco:InvertedPendulum", "stoch": 6})
    agent = Agent(cfg, pendulum_spec)
    actor = agent.actor
    out = torch.zeros(1000, 2 * pendulum_spec.num_actions)
    dist = actor.distribution(out)
    base = dist.base_dist.base_dist
    assert torch.allclose(base.stddev, torch.full_like(base.stddev, 5.0 + 1e-4), atol=1e-4)  # action_init_std 5
    big = actor.distribution(torch.full((1, 2), 100.0)).base_dist.base_dist
    assert float(big.mean.max()) <= 5.0  # mean = 5 tanh(mu / 5)
    feat = torch.zeros(2000, agent.wm.rssm.feat_dim)
    torch.manual_seed(0)
    a = actor.explore(feat)
    assert float(a.abs().max()) <= 1.0
    torch.manual_seed(0)
    plain = actor.sample(feat)
    assert float((a - plain).abs().mean()) > 0.1  # noise of std 0.3 on top of the sample
    actor.expl_amount = 0.0
    torch.manual_seed(0)
    assert torch.equal(actor.explore(feat), plain)


def test_discrete_exploration_is_epsilon_greedy(v1_cfg, toy_spec):
    agent = Agent(v1_cfg.replace(expl_amount=1.0), toy_spec)
    feat = torch.zeros(3000, agent.wm.rssm.feat_dim)
    with torch.no_grad():
        agent.actor.net.net[-1].bias.copy_(torch.tensor([50.0, -50.0, -50.0]))
    counts = agent.actor.explore(feat).argmax(-1).bincount(minlength=3).float() / 3000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.04)  # epsilon 1: uniformly random
    agent.actor.expl_amount = 0.0
    assert int(agent.actor.explore(feat).argmax(-1).sum()) == 0  # the actor's near-certain choice


def test_update_is_finite_and_checkpoint_round_trip(tmp_path, v1_cfg, toy_spec):
    torch.manual_seed(0)
    agent = Agent(v1_cfg, toy_spec)
    for _ in range(3):
        metrics = agent.train_step(random_batch(toy_spec, 4, 8))
    assert all(math.isfinite(v) for v in metrics.values())
    path = checkpoint.save(tmp_path / "ckpt", agent, steps=3)
    loaded = checkpoint.load(path)
    assert isinstance(loaded.wm, WorldModelV1) and isinstance(loaded.ac, ActorCriticV1)
    assert json.loads((path / "config.json").read_text())["algo"] == "dreamerv1"
    obs = {"image": random_batch(toy_spec, 1, 1)["image"][0, 0], "is_first": True}
    assert loaded.act(obs, mode="eval")[0] == agent.act(obs, mode="eval")[0]


def test_analysis_layer_on_a_dreamerv1_agent(tmp_path, v1_cfg, toy_spec):
    """record (the latent values kept as post_stoch), whatif (dream + grounded), saliency with the latent attribution
    over dimensions, highlights, report and audit (the class-switching checks skipped, saying why) through the CLI;
    latent attribution's completeness and the class helpers' refusal from Python."""
    from xdreamer.cli import main
    from xdreamer.explain.attribution import class_effects, latent_attribution

    agent = Agent(v1_cfg, toy_spec)
    ckpt = checkpoint.save(tmp_path / "ckpt", agent, steps=0)
    trace_path = tmp_path / "t.npz"
    for argv in analysis_commands(ckpt, trace_path, tmp_path, saliency_method="integrated_gradients"):
        assert main(argv) == 0, argv
    trace = explain.load_trace(trace_path)
    a = trace.arrays
    assert a["post_stoch"].shape == (len(trace), 6) and a["post_logits"].shape == (len(trace), 6, 2) and not a["post_class"].any()
    np.testing.assert_allclose(a["post_stoch"], a["post_logits"][..., 0], atol=1e-6)  # mode policy: the mean
    data = json.loads((tmp_path / "w.json").read_text())
    assert len(data["dream"]["q"]) == toy_spec.num_actions and len(data["grounded"]["real_return"]) == 3
    assert "latent" in json.loads((tmp_path / "s.json").read_text())
    assert len(json.loads((tmp_path / "h.json").read_text())["moments"]) == 2
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert "saliency" in audit["methods"] and "gaussian" in audit["skipped"]["latent_ig"]
    la = latent_attribution(agent, a["deter"][4], a["post_logits"][4], prior=a["prior_logits"][4])
    assert la.map.shape == (6, 1) and la.relative_delta < 0.05
    with pytest.raises(ValueError, match="no classes"):
        class_effects(agent, a["deter"][4], a["post_class"][4], 0)
    with pytest.raises(ValueError, match="no classes"):
        explain.intervene(agent, trace, 4, 0, 1)


def test_app_shows_gaussian_latents(tmp_path, v1_cfg, toy_spec):
    """The explainer on a DreamerV1 agent: every panel renders; the Latent panel says the latents are Gaussian and
    draws means, stds and the attribution per dimension instead of a class heat map (issue #29)."""
    from test_app import check_gaussian_member

    ckpt = checkpoint.save(tmp_path / "ckpt", Agent(v1_cfg, toy_spec), steps=0)
    check_gaussian_member(ckpt, "Gaussian latents (DreamerV1)", "baseline: the prior mean")
