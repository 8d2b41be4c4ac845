"""DreamerV2 made exact (issue #29): weight decay, the heads' Normal(mu, 1) likelihood, the Atari action set and the
evaluation latents, each pinned against a hand-written formula or the released config's value."""

import numpy as np
import pytest
import torch

from conftest import random_batch
from xdreamer.agent import Agent
from xdreamer.config import Config, build_config, read_config_file
from xdreamer.training import env_kwargs


def test_weight_decay_is_dreamerv2s_shrink_per_step(debug_cfg, toy_spec):
    """dreamerv2 ``Optimizer._apply_weight_decay``: every weight times (1 - wd) per step, whatever the learning
    rate. A loss with zero gradients isolates it (Adam's step is then exactly zero)."""
    agent = Agent(debug_cfg, toy_spec)
    agent.init_optimizers()
    params = list(agent.ac.critic.parameters())
    before = [p.detach().clone() for p in params]
    loss = sum((p * 0).sum() for p in params)
    agent._step("critic", loss, params, torch.zeros(()))
    wd = debug_cfg.weight_decay
    assert wd == 1e-6  # configs.yaml *_opt.wd
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b * (1 - wd), rtol=0, atol=0)
        assert not torch.equal(p.detach(), b) or not b.any()  # the decay is not rounded away (AdamW's lr*wd was)
    # A skipped step leaves the weights alone, decay included.
    again = [p.detach().clone() for p in params]
    agent._step("critic", sum((p * 0).sum() for p in params), params, torch.ones(()))
    for p, b in zip(params, again):
        assert torch.equal(p.detach(), b)


def test_weight_decay_off(debug_cfg, toy_spec):
    agent = Agent(debug_cfg.replace(weight_decay=0.0), toy_spec)
    agent.init_optimizers()
    params = list(agent.ac.critic.parameters())
    before = [p.detach().clone() for p in params]
    agent._step("critic", sum((p * 0).sum() for p in params), params, torch.zeros(()))
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_reward_loss_is_half_squared_error(debug_cfg, toy_spec):
    """dreamerv2 reward head ``mse`` = Normal(mu, 1): -log p = 0.5 (r - mu)^2 (constant dropped)."""
    agent = Agent(debug_cfg, toy_spec)
    data = agent.to_torch(random_batch(toy_spec, 3, 6))
    data["reward"] = torch.linspace(-2, 2, 18).reshape(3, 6)
    _, post, metrics = agent.wm.loss(data)
    with torch.no_grad():
        mu = agent.wm.reward(agent.wm.feat(post))
        expected = np.mean([0.5 * (float(m) - float(np.tanh(r))) ** 2
                            for m, r in zip(mu.flatten(), data["reward"].flatten())])
    assert float(metrics["reward_loss"]) == pytest.approx(expected, rel=1e-5)


def test_critic_loss_is_half_weighted_squared_error(debug_cfg, toy_spec):
    agent = Agent(debug_cfg, toy_spec)
    n, h, f = 4, debug_cfg.horizon, agent.wm.rssm.feat_dim
    gen = torch.Generator().manual_seed(0)
    seq = {"feat": torch.randn(n, h + 1, f, generator=gen), "weight": torch.rand(n, h + 1, generator=gen)}
    target = torch.randn(n, h, generator=gen)
    loss, value = agent.ac.critic_loss(seq, target)
    v = agent.ac.critic(seq["feat"][:, :-1]).squeeze(-1).detach()
    expected = sum(0.5 * float(seq["weight"][i, t]) * (float(v[i, t]) - float(target[i, t])) ** 2
                   for i in range(n) for t in range(h)) / (n * h)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_atari_action_set_field():
    assert Config().atari_actions == "minimal"  # released code: Atari(all_actions=False)
    assert build_config(["atari-paper"]).atari_actions == "full"  # the paper's protocol
    cfg = build_config(["atari-paper"], {"env": "atari:Pong"})
    assert env_kwargs(cfg)["full_action_space"] is True
    from xdreamer.envs import make

    env = make(cfg.env, **env_kwargs(cfg))
    try:
        assert env.spec.num_actions == 18
    finally:
        env.close()
    assert env_kwargs(cfg.replace(atari_actions="minimal"))["full_action_space"] is False


def test_eval_latent_defaults_and_legacy(tmp_path):
    """New configs evaluate with sampled latents (dreamerv2 eval_state_mean False); a config.json written before the
    field existed keeps the posterior mode it was evaluated with, so bundled agents reproduce their manifests."""
    assert Config().eval_latent == "sample"
    assert Config.from_dict({}).eval_latent == "mode"
    assert Config.from_dict({"eval_latent": "sample"}).eval_latent == "sample"
    assert read_config_file("checkpoints/catch/config.json").eval_latent == "mode"
    with pytest.raises(ValueError, match="eval_latent"):
        Config.from_dict({"eval_latent": "argmax"})


def test_sampled_latent_evaluation_is_seeded_and_leaves_the_callers_stream(debug_cfg, toy_spec):
    from xdreamer.envs import make
    from xdreamer.evaluation import evaluate

    agent = Agent(debug_cfg, toy_spec)
    assert agent.cfg.eval_latent == "sample"
    env = make("toy:catch")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = evaluate(agent, env, 2, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is untouched
    second = evaluate(agent, env, 2, seed=5, more_envs=[make("toy:catch")])  # batching cannot change it
    assert first.returns == second.returns and first.lengths == second.lengths
    # The posterior is drawn: the policy state differs from the mode path's on the same frames.
    obs = env.reset(seed=0)
    torch.manual_seed(0)
    _, sampled = agent.act(obs, None, mode="eval", sample_latent=True)
    _, mode = agent.act(obs, None, mode="eval")
    assert torch.allclose(mode.latent.stoch, torch.nn.functional.one_hot(
        mode.latent.logits.argmax(-1), mode.latent.stoch.shape[-1]).float())
    assert not torch.allclose(sampled.latent.stoch, mode.latent.stoch)  # untrained: near-uniform, so a draw differs
