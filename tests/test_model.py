"""World model and actor-critic: shapes, gradients, KL balancing, lambda-returns, sequence == steps."""

import contextlib
import copy
import weakref

import numpy as np
import pytest
import torch

from conftest import random_batch
from xdreamer.agent import Agent
from xdreamer.behavior import lambda_return
from xdreamer.config import build_config
from xdreamer.rssm import RSSM, State


def test_shapes(debug_cfg, toy_spec):
    agent = Agent(debug_cfg, toy_spec)
    B, T = 3, 7
    data = agent.to_torch(random_batch(toy_spec, B, T))
    inp = agent.wm.preprocess(data)
    assert inp["image"].shape == (B, T, 1, 64, 64) and inp["image"].min() >= -0.5 and inp["image"].max() <= 0.5
    assert inp["action"].shape == (B, T, toy_spec.num_actions)
    embed = agent.wm.encode(inp["image"])
    assert embed.shape == (B, T, agent.wm.encoder.out_dim)
    post, prior = agent.wm.observe(embed, inp["action"], inp["is_first"])
    S, K = debug_cfg.stoch, debug_cfg.classes
    for state in (post, prior):
        assert state.deter.shape == (B, T, debug_cfg.deter)
        assert state.stoch.shape == state.logits.shape == (B, T, S, K)
        assert torch.allclose(state.stoch.sum(-1), torch.ones(B, T, S))
    feat = agent.wm.feat(post)
    assert feat.shape == (B, T, debug_cfg.deter + S * K)
    assert agent.wm.decode(feat).shape == (B, T, 1, 64, 64)
    states, actions = agent.wm.imagine(post[:, -1], agent.actor.sample, horizon=5)
    assert states.deter.shape == (B, 6, debug_cfg.deter) and actions.shape == (B, 6, toy_spec.num_actions)
    assert torch.all(actions[:, 0] == 0)


def test_paper_size_shapes():
    """The atari preset builds DreamerV2's sizes: 1536-d embedding, 600 + 32*32 feature."""
    from xdreamer.config import build_config
    from xdreamer.envs import EnvSpec

    spec = EnvSpec(id="atari:Pong", obs_shape=(1, 64, 64), discrete=True, num_actions=6,
                   action_names=tuple("abcdef"), object_names=(), can_branch=True, max_steps=27000)
    agent = Agent(build_config(["atari"]), spec)
    assert agent.wm.encoder.out_dim == 1536
    assert agent.wm.rssm.feat_dim == 600 + 1024
    image = torch.zeros(2, 1, 64, 64)
    assert agent.wm.decode(torch.zeros(2, 1624)).shape == (2, 1, 64, 64)
    assert agent.wm.encode(image).shape == (2, 1536)


def test_straight_through_gradients_reach_encoder(debug_cfg, toy_spec):
    agent = Agent(debug_cfg, toy_spec)
    inp = agent.wm.preprocess(agent.to_torch(random_batch(toy_spec, 2, 4)))
    post, _ = agent.wm.observe(agent.wm.encode(inp["image"]), inp["action"], inp["is_first"])
    # A loss on the one-hot samples only: without straight-through it would have no gradient.
    (post.stoch * torch.randn_like(post.stoch)).sum().backward()
    grads = [p.grad for p in agent.wm.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("balance", [0.0, 1.0, 0.8])
def test_kl_balancing_gradient_routing(balance):
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=4, action_dim=2, deter=8, hidden=8, stoch=3, classes=5)
    post_logits = torch.randn(2, 3, 3, 5, requires_grad=True)
    prior_logits = torch.randn(2, 3, 3, 5, requires_grad=True)
    dummy = torch.zeros(2, 3, 8)
    post = State(dummy, post_logits.softmax(-1), post_logits)
    prior = State(dummy, prior_logits.softmax(-1), prior_logits)
    loss, value = rssm.kl_loss(post, prior, balance=balance, free=0.0)
    loss.backward()
    post_grad, prior_grad = post_logits.grad.abs().sum().item(), prior_logits.grad.abs().sum().item()
    if balance == 1.0:  # only the alpha term: trains the prior only
        assert post_grad == 0 and prior_grad > 0
    elif balance == 0.0:  # only the (1 - alpha) term: trains the posterior only
        assert post_grad > 0 and prior_grad == 0
    else:
        assert post_grad > 0 and prior_grad > 0
        # gradient of the alpha term alone equals alpha * gradient of KL w.r.t. the prior
        ref_prior = prior_logits.detach().clone().requires_grad_(True)
        RSSM.kl(post_logits.detach(), ref_prior).mean().backward()
        assert torch.allclose(prior_logits.grad, balance * ref_prior.grad, atol=1e-6)
    assert value.shape == (2, 3) and torch.all(value >= 0)


def test_lambda_return_matches_naive_loop():
    torch.manual_seed(0)
    N, T, lam = 4, 9, 0.95
    reward, value, disc = torch.randn(N, T), torch.randn(N, T), torch.rand(N, T)
    bootstrap = torch.randn(N)
    out = lambda_return(reward, value, disc, bootstrap, lam)
    for n in range(N):
        for t in range(T):
            # Expand the recursion as a weighted sum of n-step returns (definition of TD(lambda)).
            ret, weight_left, acc_disc, acc_reward = 0.0, 1.0, 1.0, 0.0
            for k in range(t, T):
                acc_reward += acc_disc * reward[n, k].item()
                acc_disc *= disc[n, k].item()
                nxt = value[n, k + 1].item() if k + 1 < T else bootstrap[n].item()
                nstep = acc_reward + acc_disc * nxt
                w = weight_left * ((1 - lam) if k + 1 < T else 1.0)
                ret += w * nstep
                weight_left *= lam
            assert out[n, t].item() == pytest.approx(ret, rel=1e-4, abs=1e-4)
    # lambda = 0 gives one-step targets, lambda = 1 the discounted Monte Carlo return
    one = lambda_return(reward, value, disc, bootstrap, 0.0)
    nxt = torch.cat([value[:, 1:], bootstrap[:, None]], 1)
    assert torch.allclose(one, reward + disc * nxt, atol=1e-6)


def test_observe_equals_step_loop(debug_cfg, toy_spec):
    torch.manual_seed(0)
    agent = Agent(debug_cfg, toy_spec)
    inp = agent.wm.preprocess(agent.to_torch(random_batch(toy_spec, 2, 6)))
    inp["is_first"][:, 3] = 1.0  # a reset mid-sequence
    embed = agent.wm.encode(inp["image"])
    post, prior = agent.wm.observe(embed, inp["action"], inp["is_first"], sample=False)
    state = agent.wm.rssm.initial(2)
    for t in range(6):
        state, p = agent.wm.rssm.obs_step(state, inp["action"][:, t], embed[:, t], inp["is_first"][:, t], sample=False)
        assert torch.allclose(state.deter, post.deter[:, t], atol=1e-6)
        assert torch.allclose(state.logits, post.logits[:, t], atol=1e-6)
        assert torch.allclose(p.logits, prior.logits[:, t], atol=1e-6)


def _graph_has(fn, name: str) -> bool:
    seen, todo = set(), [fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == name:
            return True
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return False


def test_elu_saves_its_result_and_matches_f_elu():
    """nets.ELU runs in place on a fresh intermediate (autograd then keeps the result: EluBackward1) with F.elu's
    values and gradients; on a view, without gradients, with hooks or with in_place off it is F.elu and leaves its input
    alone."""
    from xdreamer.nets import ELU

    torch.manual_seed(0)
    x = torch.randn(64, 32, dtype=torch.float64, requires_grad=True)
    lin = torch.nn.Linear(32, 48).double()
    g = torch.randn(64, 48, dtype=torch.float64)
    ref = torch.nn.functional.elu(lin(x))
    ref_grads = torch.autograd.grad(ref, (x, lin.weight), g)
    pre = lin(x)
    got = ELU()(pre)
    assert got.data_ptr() == pre.data_ptr() and type(got.grad_fn).__name__ == "EluBackward1"
    assert torch.equal(got, ref)
    for a, b in zip(torch.autograd.grad(got, (x, lin.weight), g), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    view = lin(x).t()  # a view: in place would make autograd copy the base's gradient
    out = ELU()(view)
    assert out.data_ptr() != view.data_ptr() and type(out.grad_fn).__name__ == "EluBackward0"
    with torch.no_grad():
        pre = lin(x)
        kept = pre.clone()
        ELU()(pre)
        assert torch.equal(pre, kept)
    hooked, seen = ELU(), []
    hooked.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    pre = lin(x)
    kept = pre.detach().clone()
    hooked(pre)
    assert torch.equal(seen[0], kept)  # a hook (Captum's DeepLift) sees the input it was given
    try:
        ELU.in_place = False
        pre = lin(x)
        assert type(ELU()(pre).grad_fn).__name__ == "EluBackward0"
    finally:
        ELU.in_place = True


@pytest.mark.parametrize("precision", ["float64", "bfloat16"])
def test_loop_weight_gradient_equals_autograd(debug_cfg, toy_spec, precision, monkeypatch):
    """``observe(loop_weights=True)`` (the training loss) computes the gradients of the four weights its loop uses
    at every step once over all steps (``nets.LoopWeight``): the same outputs and gradients (of every parameter,
    the embedding and the actions) as autograd's per-step ones. float64 to rounding; under bfloat16 autocast to
    bfloat16 precision. Models below ``LOOP_WEIGHTS_MIN_GRU`` (like this debug one) keep the per-step path."""
    from xdreamer import rssm as rssm_module

    torch.manual_seed(0)
    agent = Agent(debug_cfg, toy_spec)
    rssm = agent.wm.rssm
    inp0 = agent.wm.preprocess(agent.to_torch(random_batch(toy_spec, 2, 3)))
    with torch.enable_grad():
        post, _ = rssm.observe(torch.randn(2, 3, agent.wm.encoder.out_dim), inp0["action"], inp0["is_first"],
                               loop_weights=True)
    assert not _graph_has(post.deter.grad_fn, "_GatherLoopGradBackward")  # below the size gate
    monkeypatch.setattr(rssm_module, "LOOP_WEIGHTS_MIN_GRU", 0)
    inp = agent.wm.preprocess(agent.to_torch(random_batch(toy_spec, 3, 7)))
    inp["is_first"][:, 4] = 1.0  # a reset mid-sequence
    embed = torch.randn(3, 7, agent.wm.encoder.out_dim)
    action = inp["action"]
    if precision == "float64":
        rssm.double()
        embed, action = embed.double(), action.double()
    embed.requires_grad_(True)
    action.requires_grad_(True)
    params = [p for p in rssm.parameters()]
    results = {}
    for loop in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            post, prior = rssm.observe(embed, action, inp["is_first"], sample=False, loop_weights=loop)
            # a loss that reaches every output, with different weights per step
            steps = torch.arange(1, 8, dtype=post.deter.dtype)
            loss = ((post.deter.float().sin().sum(-1) + post.logits.float().cos().sum((-1, -2))
                     + prior.logits.float().pow(2).sum((-1, -2))) * steps).sum()
        assert _graph_has(loss.grad_fn, "_GatherLoopGradBackward") is loop
        grads = torch.autograd.grad(loss, [*params, embed, action], allow_unused=True)
        results[loop] = (post.deter.detach(), post.logits.detach(), grads)
    tol = {"float64": 1e-9, "bfloat16": 3e-2}[precision]
    (d0, l0, g0), (d1, l1, g1) = results[False], results[True]
    assert torch.allclose(d0, d1, atol=tol) and torch.allclose(l0, l1, atol=tol)
    names = [n for n, _ in rssm.named_parameters()] + ["embed", "action"]
    for name, a, b in zip(names, g0, g1):
        if a is None:
            assert b is None, name
            continue
        scale = a.abs().max().item()
        assert scale > 0 and (a - b).abs().max().item() <= tol * max(scale, 1.0), (name, scale, (a - b).abs().max())


def test_is_first_resets_state(debug_cfg, toy_spec):
    torch.manual_seed(0)
    agent = Agent(debug_cfg, toy_spec)
    rssm = agent.wm.rssm
    embed = torch.randn(2, agent.wm.encoder.out_dim)
    action = torch.eye(toy_spec.num_actions)[[1, 2]]
    fresh, _ = rssm.obs_step(rssm.initial(2), torch.zeros(2, toy_spec.num_actions), embed, torch.ones(2), sample=False)
    busy = State(torch.randn(2, debug_cfg.deter), rssm.initial(2).stoch + 1.0 / debug_cfg.classes,
                 torch.randn(2, debug_cfg.stoch, debug_cfg.classes))
    reset, _ = rssm.obs_step(busy, action, embed, torch.ones(2), sample=False)
    kept, _ = rssm.obs_step(busy, action, embed, torch.zeros(2), sample=False)
    assert torch.allclose(reset.deter, fresh.deter) and torch.allclose(reset.logits, fresh.logits)
    assert not torch.allclose(kept.deter, fresh.deter)


def test_imagine_fixed_actions_then_policy(debug_cfg, toy_spec):
    agent = Agent(debug_cfg, toy_spec)
    start = agent.wm.rssm.initial(3)
    acts = torch.eye(3)[[0, 1, 2]][:, None].repeat(1, 2, 1)  # 2 fixed steps, then the actor
    states, actions = agent.wm.imagine(start, agent.actor.sample, horizon=4, actions=acts)
    assert torch.equal(actions[:, 1:3], acts) and actions.shape == (3, 5, 3)
    with pytest.raises(ValueError):
        agent.wm.imagine(start, None, horizon=4, actions=acts)


def test_train_step_finite_and_changes_params(debug_cfg, toy_spec):
    torch.manual_seed(0)
    agent = Agent(debug_cfg, toy_spec)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics = agent.train_step(random_batch(toy_spec, debug_cfg.batch, debug_cfg.length))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    after = agent.state_dict()
    for prefix in ("wm.encoder", "wm.rssm", "wm.decoder", "ac.actor", "ac.critic."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix


def _on_meta(agent) -> None:
    """Move ``agent``'s parameters and buffers to the meta device (shapes only, no values)."""
    def meta(t):
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")

    for module in agent.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(meta(p.detach()), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = meta(b)
    agent.device = torch.device("meta")


class _MetaSGD(torch.optim.Optimizer):
    """Plain SGD that honours ``found_inf`` like the fused AdamW kernels (which do not run on meta tensors)."""
    _step_supports_amp_scaling = True

    def __init__(self, params):
        super().__init__(params, {"lr": 1e-3})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(p.grad * (1 - self.found_inf) * group["lr"])  # every trained parameter has a gradient


@pytest.mark.parametrize("preset,discrete", [("debug", True), ("atari", True), ("debug", False), ("toy", True)])
def test_update_runs_on_the_meta_device_without_host_syncs(preset, discrete):
    """The whole update (world model, imagination, actor and critic, optimizer steps) on the meta device, which has
    shapes but no values: a tensor made on another device fails it, and so does every read of a value on the host
    (``.item()``, ``bool(t)``, a distribution validating its arguments), i.e. a point where a GPU would wait for the
    CPU. ``atari`` is the paper size (the observe loop's ``LoopWeight`` path); ``debug`` continuous is MuJoCo's
    tanh-Normal actor; ``toy`` has the batch-normalised embedding."""
    from xdreamer.envs import EnvSpec

    cfg = build_config([preset], {})
    spec = (EnvSpec(id="x", obs_shape=(1, 64, 64), discrete=True, num_actions=6) if discrete
            else EnvSpec(id="x", obs_shape=(3, 64, 64), discrete=False, num_actions=4))
    agent = Agent(cfg, spec, device="cpu")
    _on_meta(agent)
    agent.optimizers = {"model": _MetaSGD(agent.wm.parameters()), "actor": _MetaSGD(agent.ac.actor.parameters()),
                        "critic": _MetaSGD(agent.ac.critic.parameters())}
    B, T = cfg.batch, cfg.length
    flags = torch.zeros(B, T, dtype=torch.bool, device="meta")
    data = {"image": torch.zeros(B, T, *spec.obs_shape, dtype=torch.uint8, device="meta"),
            "action": (torch.zeros(B, T, dtype=torch.int32, device="meta") if discrete
                       else torch.zeros(B, T, spec.num_actions, device="meta")),
            "reward": torch.zeros(B, T, device="meta"), "is_first": flags, "is_last": flags, "is_terminal": flags}
    metrics = agent.device_update(data)
    assert {"model_loss", "actor_loss", "critic_loss", "model_grad_norm", "skipped"} <= set(metrics)
    assert all(v.device.type == "meta" and v.shape == () for v in metrics.values()), metrics
    with pytest.raises(RuntimeError, match="meta"):  # what the update must never do
        bool(metrics["skipped"])


def test_non_finite_loss_skips_the_steps_and_raises(debug_cfg, toy_spec):
    """A non-finite loss raises FloatingPointError after the update; the skipped optimizer steps (fused AdamW's
    ``found_inf``) leave every parameter and optimizer state as it was, and training then goes on."""
    torch.manual_seed(0)
    agent = Agent(debug_cfg, toy_spec)
    agent.train_step(random_batch(toy_spec, debug_cfg.batch, debug_cfg.length))
    params = {k: v.clone() for k, v in agent.state_dict().items()}
    states = copy.deepcopy(agent.optimizer_state())
    bad = random_batch(toy_spec, debug_cfg.batch, debug_cfg.length, seed=1)
    bad["reward"][0, 3] = np.nan
    with pytest.raises(FloatingPointError, match="model loss is not finite"):
        agent.train_step(bad)
    assert agent.updates == 1
    assert all(torch.equal(params[k], v) for k, v in agent.state_dict().items())
    for name, state in agent.optimizer_state().items():
        for p, s in state["state"].items():
            for key, value in s.items():
                assert torch.equal(value, states[name]["state"][p][key]), (name, p, key)
    metrics = agent.train_step(random_batch(toy_spec, debug_cfg.batch, debug_cfg.length, seed=2))
    assert agent.updates == 2 and all(np.isfinite(v) for v in metrics.values()), metrics
    assert any(not torch.equal(params[k], v) for k, v in agent.state_dict().items())


@pytest.mark.parametrize("actor_grad", ["reinforce", "both", "dynamics"])
def test_behaviour_loss_matches_reference(debug_cfg, toy_spec, actor_grad):
    """``ActorCritic.loss`` reuses the slow critic's values as the actor's baseline, the critic's own values for
    ``imag_value`` and the actor outputs that drew the imagined actions for the actor loss; spelled out here as
    separate forward passes (dreamerv2 ``ActorCritic``), the losses, metrics and the actor's and critic's
    gradients agree to float rounding."""
    from xdreamer.agent import frozen

    torch.manual_seed(0)
    agent = Agent(debug_cfg.replace(actor_grad=actor_grad), toy_spec)
    ac, cfg = agent.ac, agent.cfg
    with torch.no_grad():
        post, _ = agent.wm.observe(*_observe_inputs(agent, toy_spec))
    start = post.map(lambda x: x.flatten(0, 1))
    is_terminal = torch.zeros(start.deter.shape[0])

    def grads(loss, module):
        return torch.autograd.grad(loss, list(module.parameters()), retain_graph=True)

    with frozen(agent.wm):
        torch.manual_seed(1)
        actor_loss, critic_loss, metrics = ac.loss(agent.wm, start, is_terminal)
        got = (actor_loss, critic_loss, metrics["imag_value"], grads(actor_loss, ac.actor), grads(critic_loss, ac.critic))
        torch.manual_seed(1)  # the reference: the same imagination, every value from its own forward pass
        with torch.no_grad() if actor_grad == "reinforce" else contextlib.nullcontext():
            seq = ac.imagine(agent.wm, start, is_terminal)
        value = ac.value(seq["feat"], target=True)
        target = lambda_return(seq["reward"][:, :-1], value[:, :-1], seq["discount"][:, :-1], value[:, -1],
                               cfg.discount_lambda)
        dist = ac.actor(seq["feat"][:, :-2].detach())
        advantage = (target[:, 1:] - ac.value(seq["feat"][:, :-2], target=True)).detach()
        objective = ac.actor.log_prob(dist, seq["action"][:, 1:-1].detach()) * advantage
        if actor_grad == "dynamics":
            objective = target[:, 1:]
        if actor_grad == "both":
            objective = cfg.actor_grad_mix * target[:, 1:] + (1 - cfg.actor_grad_mix) * objective
        objective = objective + cfg.actor_ent * ac.actor.entropy(dist)
        ref_actor = -(seq["weight"][:, :-2].detach() * objective).mean()
        critic_value = ac.value(seq["feat"][:, :-1].detach())
        ref_critic = 0.5 * (seq["weight"][:, :-1].detach() * (critic_value - target.detach()).pow(2)).mean()
        ref_value = ac.value(seq["feat"][:, 0].detach()).mean()
        want = (ref_actor, ref_critic, ref_value, grads(ref_actor, ac.actor), grads(ref_critic, ac.critic))
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for ga, gb in zip(got[3] + got[4], want[3] + want[4]):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)


def _observe_inputs(agent, spec):
    data = agent.wm.preprocess(agent.to_torch(random_batch(spec, 3, 6)))
    return agent.wm.encode(data["image"]), data["action"], data["is_first"]


def test_continuous_dynamics_backprop(debug_cfg):
    """Continuous actions use dynamics backprop: the actor gets gradients through the model,
    while the world model's parameters are not changed by the actor loss."""
    from xdreamer.envs import EnvSpec

    spec = EnvSpec(id="mujoco:Test", obs_shape=(3, 64, 64), discrete=False, num_actions=2, action_names=(),
                   object_names=(), can_branch=True, max_steps=100)
    agent = Agent(debug_cfg.replace(actor_grad="auto"), spec)
    assert agent.ac.actor_grad == "dynamics"
    metrics = agent.train_step(random_batch(spec, 2, 8))
    assert np.isfinite(metrics["actor_loss"]) and metrics["actor_grad_norm"] > 0


def test_same_seed_same_parameters(debug_cfg, toy_spec):
    def run():
        torch.manual_seed(123)
        agent = Agent(debug_cfg, toy_spec)
        for i in range(3):
            agent.train_step(random_batch(toy_spec, 2, 8, seed=i))
        return agent.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cin,cout,kernel,padding,size", [
    (6, 4, 5, 0, 1),    # dreamerv2 first layer: 1x1 input -> matmul path
    (6, 4, 5, 0, 5),    # dreamerv2 odd kernel (zero-padded to 6)
    (5, 3, 6, 0, 13),   # dreamerv2 kernel 6
    (4, 1, 6, 0, 30),
    (8, 4, 4, 1, 4),    # dreamerv3 layout: kernel 4, padding 1
    (4, 1, 4, 1, 32),
])
def test_phase_conv_transpose_equals_native(cin, cout, kernel, padding, size):
    """The decoder's fast path (four phase convs + pixel shuffle) gives the native transposed
    conv's outputs and gradients (float64, so any indexing mistake shows as an O(1) error)."""
    from xdreamer.nets import conv_transpose2d_phases

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, size, size, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(cin, cout, kernel, kernel, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, generator=gen, requires_grad=True)
    ref = torch.nn.functional.conv_transpose2d(x, w, b, stride=2, padding=padding)
    got = conv_transpose2d_phases(x, w, b, padding)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    for a, c in zip(torch.autograd.grad(ref, (x, w, b), g), torch.autograd.grad(got, (x, w, b), g)):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cin,cout,size,stride", [(192, 8, 6, 2), (3, 5, 9, 1), (2, 4, 7, 3)])
def test_conv2d_as_matmul_equals_native(cin, cout, size, stride):
    """The encoder's last-layer fast path (unfold + one matmul) gives ``nn.Conv2d``'s outputs and gradients
    (float64, so an indexing mistake shows as an O(1) error); the output has the conv's shape."""
    from xdreamer.nets import conv2d_as_matmul

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 4 if size > 4 else 3, stride=stride).double()
    x = torch.randn(3, cin, size, size, dtype=torch.float64, requires_grad=True)
    ref, got = conv(x), conv2d_as_matmul(x, conv)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn(ref.shape, dtype=torch.float64)
    params = (x, conv.weight, conv.bias)
    for a, c in zip(torch.autograd.grad(ref, params, g), torch.autograd.grad(got, params, g)):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels", [1, 3])
def test_encoder_fast_path_matches_native(channels):
    """``ConvEncoder.forward`` (channels-last conversion, first and last layers as matmuls on CPU; an RGB first
    layer only with gradients on) gives the plain ``nn.Sequential`` of its layers' embedding and gradients,
    for the parameters and for the image (saliency differentiates the encoder by its input). Float64, so an
    indexing mistake shows as an O(1) error."""
    from xdreamer.nets import ConvEncoder

    torch.manual_seed(0)
    enc = ConvEncoder(channels, 4).double()
    image = (torch.rand(2, 3, channels, 64, 64, dtype=torch.float64) - 0.5).requires_grad_()
    fast = enc(image)
    ref = enc.net(image.reshape(6, channels, 64, 64)).reshape(2, 3, -1)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(enc(image), ref.detach(), rtol=1e-10, atol=1e-10)
    g = torch.randn(ref.shape, dtype=torch.float64)
    inputs = [image, *enc.parameters()]
    for a, c in zip(torch.autograd.grad(ref, inputs, g), torch.autograd.grad(fast, inputs, g)):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transposed,cin,cout,kernel,size", [(True, 6, 5, 6, 7), (True, 8, 4, 5, 5),
                                                             (False, 3, 5, 4, 15)])
def test_split_backward_conv_equals_autograd(transposed, cin, cout, kernel, size):
    """The decoder's split backward (input and weight gradients in two calls, a transposed conv's weight gradient
    as the swapped ordinary conv's) gives autograd's gradients for input, weight and bias (float64, stride 2)."""
    import torch.nn.functional as F

    from xdreamer.nets import _SplitBackwardConv

    torch.manual_seed(0)
    shape = (cin, cout, kernel, kernel) if transposed else (cout, cin, kernel, kernel)
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, cin, size, size, dtype=torch.float64, requires_grad=True)
    ref = (F.conv_transpose2d if transposed else F.conv2d)(x, w, b, stride=2)
    got = _SplitBackwardConv.apply(x, w, b, 2, transposed)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(ref.shape, dtype=torch.float64)
    expected = torch.autograd.grad(ref, (x, w, b), g)
    for a, c in zip(expected, torch.autograd.grad(got, (x, w, b), g)):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)
    # only the gradients asked for: the weight's, without input or bias
    gw, = torch.autograd.grad(_SplitBackwardConv.apply(x.detach(), w, None, 2, transposed), (w,), g)
    torch.testing.assert_close(gw, expected[1], rtol=1e-10, atol=1e-10)


def _decoder_under_impls(dec, feat, impls):
    """The decoder's images and parameter gradients (of the images' squared sum) with every transposed conv forced
    to each ``PhaseConvTranspose2d.impl`` in turn."""
    from xdreamer.nets import PhaseConvTranspose2d

    outs, grads = {}, {}
    for impl in impls:
        for m in dec.modules():
            if isinstance(m, PhaseConvTranspose2d):
                m.impl = impl
        dec.zero_grad()
        outs[impl] = dec(feat)
        outs[impl].square().sum().backward()
        grads[impl] = [p.grad.clone() for p in dec.parameters()]
    return outs, grads


@pytest.mark.parametrize("cin,cout,kernel,size,bias", [(6, 5, 5, 5, True), (8, 3, 6, 3, False), (4, 4, 4, 7, True)])
def test_gemm_conv_transpose_equals_autograd(cin, cout, kernel, size, bias):
    """The transposed conv as a GEMM + col2im (``impl="gemm"``) gives the native op's output and autograd's
    gradients for input, weight and bias (float64, stride 2), with a channels-last output that is not a view (so the
    ELU after it runs in place), and only the gradients asked for."""
    import torch.nn.functional as F

    from xdreamer.nets import PhaseConvTranspose2d

    torch.manual_seed(0)
    conv = PhaseConvTranspose2d(cin, cout, kernel, impl="gemm").double()
    with torch.no_grad():
        conv.bias.normal_()
    if not bias:
        conv.bias = None
    x = torch.randn(3, cin, size, size, dtype=torch.float64, requires_grad=True)
    ref = F.conv_transpose2d(x, conv.weight, conv.bias, stride=2)
    got = conv(x)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got._is_view()
    g = torch.randn(ref.shape, dtype=torch.float64)
    inputs = [x, conv.weight, *([conv.bias] if bias else [])]
    expected = torch.autograd.grad(ref, inputs, g)
    for a, c in zip(expected, torch.autograd.grad(got, inputs, g)):
        torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-10)
    gw, = torch.autograd.grad(conv(x.detach()), (conv.weight,), g)
    torch.testing.assert_close(gw, expected[1], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="without padding"):
        PhaseConvTranspose2d(cin, cout, kernel, padding=1, impl="gemm")(x)


def test_decoder_picks_the_gemm_for_the_paper_size_small_input_layer(monkeypatch):
    """``impl="auto"`` on an AVX2 CPU in float32 runs the paper-size decoder's 5x5 -> 13x13 layer (192 channels in) as
    the GEMM and no other layer; elsewhere (other CPUs, bfloat16) none. The decoder's images and gradients equal the
    all-native decoder's."""
    from xdreamer import nets
    from xdreamer.nets import ConvDecoder

    torch.manual_seed(0)
    dec = ConvDecoder(40, 1, 48)  # paper depth: 1536 -> 192 -> 96 -> 48 -> 1 channels
    feat = torch.randn(2, 40)
    ran = []
    apply = nets._GemmConvTranspose2d.apply
    monkeypatch.setattr(nets._GemmConvTranspose2d, "apply", lambda *a: ran.append(a[0].shape) or apply(*a))
    outs, grads = _decoder_under_impls(dec, feat, ("native", "auto"))
    assert ran == ([torch.Size([2, 192, 5, 5])] if nets._cpu_is_avx2() else [])
    torch.testing.assert_close(outs["auto"], outs["native"], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["auto"], grads["native"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not nets.gemm_applies(torch.randn(2, 192, 5, 5), dec.net[2])
    assert nets.gemm_applies(torch.randn(2, 192, 5, 5), dec.net[2]) == nets._cpu_is_avx2()
    assert not nets.gemm_applies(torch.randn(2, 96, 13, 13), dec.net[4])  # the 13 -> 30 layer: slower as a GEMM


@pytest.mark.parametrize("layout", ["dreamerv2", "dreamerv3"])
def test_decoder_fast_path_matches_native(layout):
    """The decoder's per-layer choice of transposed-conv computation (``impl="auto"``) and forced
    phases give the native op's images and gradients; both layouts produce 64x64 images."""
    from xdreamer.nets import ConvDecoder

    torch.manual_seed(0)
    dec = ConvDecoder(20, 1, 4, layout)
    feat = torch.randn(2, 5, 20)
    outs, grads = _decoder_under_impls(dec, feat, ("native", "auto", "phases", "phases_cl"))
    assert outs["auto"].shape == (2, 5, 1, 64, 64)
    for impl in ("auto", "phases", "phases_cl"):
        torch.testing.assert_close(outs[impl], outs["native"], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads[impl], grads["native"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def _losses(agent, data, seed, feat=None):
    """World-model losses of one update's forward pass (no optimiser step), and the actor's logits
    and the critic's values on given features ``feat`` (the same input for both precisions, so that
    only the heads' arithmetic differs)."""
    torch.manual_seed(seed)
    with torch.no_grad(), agent.autocast():
        model_loss, post, metrics = agent.wm.loss(data)
        feat = agent.wm.feat(post).float() if feat is None else feat
        return {"image": metrics["image_loss"], "reward": metrics["reward_loss"], "kl": metrics["kl"],
                "model": model_loss, "actor_logits": agent.actor(feat).logits,
                "value": agent.ac.value(feat).float(), "feat": feat}


def test_bfloat16_autocast_matches_float32(toy_spec):
    """``precision=bfloat16`` (autocast) computes the same losses and outputs as float32 on a fixed batch.

    Tolerance: bfloat16 keeps 8 significand bits, a relative rounding error of 2^-9 ~ 0.2 % per op,
    which adds up over encoder, RSSM, decoder and heads. Measured on the debug preset (3 inits x 12
    seeds, 2026-12-01): relative gaps <= 0.01 % (image), <= 0.02 % (model loss), <= 2.7 % (reward
    loss) and <= 1.8 % (KL), where an occasional latent sample flips because its probabilities moved
    by a rounding error (in 5-6 of the 36 cases the reward gap exceeds 0.5 %), absolute gaps <= 0.009
    on actor logits and values. The bounds leave >= 2x margin; an autocast bug (a loss or a
    distribution computed in bf16, a wrong cast of the uint8 image) moves them by far more.
    """
    from xdreamer.config import build_config

    for init in range(3):
        cfg32 = build_config(["debug"], {"env": "toy:catch"})
        cfg16 = build_config(["debug"], {"env": "toy:catch", "precision": "bfloat16"})
        torch.manual_seed(init)
        agent32, agent16 = Agent(cfg32, toy_spec), Agent(cfg16, toy_spec)
        agent16.load_state_dict(agent32.state_dict())
        data = agent32.to_torch(random_batch(toy_spec, 4, 16, seed=init))
        for seed in range(3):
            ref = _losses(agent32, data, seed)
            got = _losses(agent16, data, seed, feat=ref["feat"])
            for key, bound in (("image", 0.001), ("model", 0.001), ("reward", 0.06), ("kl", 0.04)):
                assert got[key].dtype == torch.float32, key
                rel = abs(float(got[key]) - float(ref[key])) / abs(float(ref[key]))
                assert rel < bound, (init, seed, key, float(ref[key]), float(got[key]))
            assert got["actor_logits"].dtype == torch.float32
            for key in ("actor_logits", "value"):
                assert (got[key] - ref[key]).abs().max() < 0.02, (init, seed, key)


def test_bfloat16_warns_on_a_cpu_without_native_bf16(toy_spec, monkeypatch):
    """Without AVX512-BF16 or AMX, bf16 matmuls take a reference path hundreds of times slower than float32:
    the first bf16 autocast says so (once per process), float32 and native-bf16 CPUs stay silent."""
    import warnings

    import xdreamer.agent as agent_module
    from xdreamer.config import build_config

    agent16 = Agent(build_config(["debug"], {"env": "toy:catch", "precision": "bfloat16"}), toy_spec)
    agent32 = Agent(build_config(["debug"], {"env": "toy:catch"}), toy_spec)
    for native in (True, False):
        monkeypatch.setattr(agent_module, "cpu_has_native_bf16", lambda: native)
        agent_module._warn_slow_bfloat16.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                with agent16.autocast(), agent32.autocast():
                    pass
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == (0 if native else 1), messages
        assert native or "precision=float32" in messages[0]


@pytest.mark.slow
@pytest.mark.parametrize("lookup", [False, True])
def test_compiled_update_matches_eager(debug_cfg, toy_spec, lookup, monkeypatch):
    """``compile=default`` (torch.compile of the networks, ``Agent.compile_networks``) trains like the
    eager path: the same losses in each of three updates and the same parameters after them. ``lookup``: with the
    latents' first-layer shares looked up (``nets.linear_onehot``), as at paper size; the debug preset is below
    ``nets.ONEHOT_LOOKUP_MIN``.

    Sampling stays eager, so both draw the same random numbers; what differs is only the order of
    float32 operations inside fused kernels (relative error ~1e-7 per op), which after three Adam
    updates leaves parameter differences far below the 1e-4 bound. A wrong graph (a missing
    residual, a stale weight, a sample drawn inside the compiled region) misses it by orders of magnitude.
    """
    from torch._dynamo.utils import counters

    from xdreamer import nets

    monkeypatch.setattr(nets, "ONEHOT_LOOKUP_MIN", 0 if lookup else 10**12)
    runs = {}
    for mode in ("off", "default"):
        torch.manual_seed(7)
        agent = Agent(debug_cfg.replace(compile=mode), toy_spec)
        agent.init_optimizers()
        agent.compile_networks()
        torch._dynamo.reset()  # count this run's graphs, not cache hits on an earlier test's (same code, shapes)
        counters.clear()
        metrics = []
        for i in range(3):
            torch.manual_seed(100 + i)
            metrics.append(agent.train_step(random_batch(toy_spec, 2, 8, seed=i)))
        runs[mode] = (metrics, agent.state_dict())
        # the compiled run really ran compiled graphs: encoder, decoder, heads, actor, critics, RSSM steps
        assert (counters["stats"]["unique_graphs"] >= 8) == (mode == "default"), dict(counters["stats"])
    (m_eager, p_eager), (m_comp, p_comp) = runs["off"], runs["default"]
    for a, b in zip(m_eager, m_comp):
        for key in ("image_loss", "reward_loss", "kl", "model_loss", "actor_loss", "critic_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), key
    assert p_eager.keys() == p_comp.keys()  # compiling does not rename the weights
    for key in p_eager:
        torch.testing.assert_close(p_comp[key], p_eager[key], rtol=1e-4, atol=1e-4)


def test_embed_batch_norm():
    """``embed_norm=batch``: batch norm without affine parameters over ``[B, T, E]`` while training (gradients
    through the batch statistics: every feature's input gradients sum to zero over the batch, so no push shared
    by all frames reaches the encoder), a fixed map with the running statistics otherwise."""
    from xdreamer.world_model import EmbedBatchNorm

    torch.manual_seed(0)
    x = (torch.randn(4, 6, 10, dtype=torch.float64) * 3 + 5).requires_grad_()
    norm, ref = EmbedBatchNorm(10).double(), torch.nn.BatchNorm1d(10, affine=False).double()
    out = norm(x, batch_stats=True)
    torch.testing.assert_close(out, ref(x.reshape(24, 10)).reshape(4, 6, 10))
    torch.testing.assert_close(norm.running_mean, ref.running_mean)
    torch.testing.assert_close(norm.running_var, ref.running_var)
    shifted = EmbedBatchNorm(10).double()(x + 7.0, batch_stats=True)
    torch.testing.assert_close(shifted, out)  # a shift shared by all frames is removed
    (out * torch.randn_like(out)).sum().backward()
    torch.testing.assert_close(x.grad.sum((0, 1)), torch.zeros(10, dtype=torch.float64))
    ref.eval()
    one = x[:1, :1].detach()
    torch.testing.assert_close(norm(one), ref(one.reshape(1, 10)).reshape(1, 1, 10))  # a single frame: running stats
    torch.testing.assert_close(norm(one, batch_stats=True), norm(one))  # one row has no batch statistics


def test_embed_norm_world_model(debug_cfg, toy_spec):
    """The world model trains with batch statistics and acts with running ones; ``none`` has no such module."""
    assert Agent(debug_cfg, toy_spec).wm.embed_norm is None
    torch.manual_seed(0)
    agent = Agent(debug_cfg.replace(embed_norm="batch"), toy_spec)
    norm = agent.wm.embed_norm
    agent.train_step(random_batch(toy_spec, 2, 8))
    moved = norm.running_mean.clone()
    assert moved.abs().sum() > 0
    obs = {"image": random_batch(toy_spec, 1, 1)["image"][:, 0], "is_first": np.array([True])}
    agent.eval()
    agent.policy(obs, None, mode="eval")
    torch.testing.assert_close(norm.running_mean, moved)  # acting leaves the statistics alone
    image = agent.wm.preprocess(agent.to_torch(random_batch(toy_spec, 1, 3)))["image"]
    torch.testing.assert_close(agent.wm.encode(image)[0, :1], agent.wm.encode(image[:, :1])[0])


class _CudaGraphTrees:
    """A CPU model of what CUDA graph trees (``torch.compile`` in ``reduce-overhead`` or ``max-autotune`` mode on
    CUDA; torch/_inductor/cudagraph_trees.py) do to the outputs of compiled callables, to test the code that meets
    them without a GPU. Each call is a graph replay whose outputs live in memory the trees own. A call starts a new
    generation unless forwards still wait for their backward ("in inference we start a new iteration on each
    invocation", docs torch.compiler_cudagraph_trees "Limitations"), and a new generation reuses the memory of
    every earlier output; PyTorch then makes any access to those tensors raise ("accessing tensor output of
    CUDAGraphs that has been overwritten by a subsequent run"), this model fills them with NaN. Graph capture
    itself, static inputs and re-recording are not modelled."""

    def __init__(self):
        self.outputs, self.pending_backward, self.calls = [], False, 0

    def compile(self, fn, **kwargs):
        def replay(*args, **kw):
            self.calls += 1
            if not self.pending_backward:  # a new generation
                for ref in self.outputs:
                    if (t := ref()) is not None:
                        with torch.no_grad():
                            t.fill_(float("nan"))
                self.outputs.clear()
            return torch.utils._pytree.tree_map_only(torch.Tensor, self._own, fn(*args, **kw))
        return replay

    def _own(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()  # the trees' memory, not the caller's
        if t.requires_grad:
            self.pending_backward = True
            t.register_hook(self._backward_ran)
        self.outputs.append(weakref.ref(t))
        return t

    def _backward_ran(self, grad):
        self.pending_backward = False


@pytest.mark.parametrize("mode,discrete", [("reduce-overhead", True), ("max-autotune", False)])
def test_compiled_outputs_survive_cuda_graph_generations(debug_cfg, toy_spec, mode, discrete, monkeypatch):
    """With CUDA graphs (``compile=reduce-overhead`` or ``max-autotune`` on CUDA) a compiled network's outputs
    are overwritten by the next call in inference, yet imagination keeps every step's state and acting keeps the
    latent between env steps. On the model of CUDA graph trees above, two updates, a what-if and three acting steps
    give exactly the eager results. Without the copies (``nets.clone_outputs``, on the networks or on the RSSM
    steps) the what-if and acting read overwritten states (NaN here); the updates do not, as the actor's forwards
    inside imagination wait for their backward. Discrete (REINFORCE) and continuous (dynamics backprop) actors."""
    from xdreamer import nets
    from xdreamer.envs import EnvSpec
    from xdreamer.explain.dreams import dream

    if not discrete:
        toy_spec = EnvSpec(id="x", obs_shape=(3, 64, 64), discrete=False, num_actions=4)

    def run(agent):
        torch.manual_seed(3)
        out = [agent.train_step(random_batch(toy_spec, 2, 8, seed=i)) for i in range(2)]
        start = agent.wm.rssm.initial(3)
        prefix = torch.eye(toy_spec.num_actions)[:3, None]
        d = dream(agent, start, 4, prefix=prefix)
        out += [d["states"].deter, d["frames"], d["value"]]
        state, rng = None, np.random.default_rng(0)
        for t in range(3):
            obs = {"image": rng.integers(0, 256, (2, *toy_spec.obs_shape), dtype=np.uint8),
                   "is_first": np.array([t == 0, t == 0])}
            action, state = agent.policy(obs, state, mode="explore")
            out.append(action)
        return out + [state.latent.deter, agent.state_dict()]

    torch.manual_seed(7)
    eager = run(Agent(debug_cfg, toy_spec))
    trees = _CudaGraphTrees()
    monkeypatch.setattr(torch, "compile", trees.compile)
    monkeypatch.setattr(nets, "CUDA_GRAPH_DEVICES", ("cpu",))  # the CPU stands in for CUDA
    torch.manual_seed(7)
    agent = Agent(debug_cfg.replace(compile=mode), toy_spec)
    agent.compile_networks()
    graphed = run(agent)
    assert trees.calls > 50  # the networks and RSSM steps ran as "graphs" (76 calls)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)


def test_cuda_graph_modes_are_torchs():
    """``nets.CUDA_GRAPH_MODES`` are the compile modes whose inductor options turn CUDA graphs on, in this torch."""
    from torch._inductor import list_mode_options

    from xdreamer.config import COMPILE_MODES
    from xdreamer.nets import CUDA_GRAPH_MODES, compiled_outputs_need_clones

    on = [m for m in COMPILE_MODES if m != "off" and list_mode_options(m).get("triton.cudagraphs")]
    assert on == list(CUDA_GRAPH_MODES)
    assert compiled_outputs_need_clones("reduce-overhead", "cuda:0")
    assert not compiled_outputs_need_clones("reduce-overhead", "cpu")
    assert not compiled_outputs_need_clones("default", "cuda")


def test_clone_outputs_copies_every_tensor_and_keeps_gradients():
    from xdreamer.nets import clone_outputs

    x = torch.randn(3, 4, requires_grad=True)
    raw = {}

    def fn(x):
        raw["out"] = (x * 2, [State(x + 1, x - 1, x * 3)], {"y": x.sum()}, 5)
        return raw["out"]

    out = clone_outputs(fn)(x)
    (a, [state], extra, five), (ra, [rstate], rextra, _) = out, raw["out"]
    assert isinstance(state, State) and five == 5
    for copy_, orig in [(a, ra), *zip(state, rstate), (extra["y"], rextra["y"])]:
        assert torch.equal(copy_, orig) and copy_.data_ptr() != orig.data_ptr()
    (a.sum() + state.stoch.sum() + extra["y"]).backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))


def _straight_through_latents(rows, groups, classes, seed=0):
    """Sampled latents as the RSSM makes them: ``onehot + p - p.detach()`` (one-hot up to rounding at the ones)."""
    from xdreamer.nets import straight_through_onehot

    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(rows, groups, classes, generator=gen).softmax(-1)
    index = torch.randint(0, classes, (rows, groups), generator=gen)
    return straight_through_onehot(probs, index).detach(), index


def test_onehot_lookup_matches_the_matmul(monkeypatch):
    """``nets.linear_onehot`` / ``MLP(..., onehot_tail)`` with ``columns``: the latents' share of the first layer as a
    lookup gives the matmul's outputs and weight gradients up to float rounding, with the one-hot part first (the
    RSSM's ``img_in``) or last (the heads' feature), and under bfloat16 autocast; ``lookup_columns`` finds every
    one and declines inputs that need a gradient or are too small for the lookup to pay."""
    from xdreamer import nets

    torch.manual_seed(0)
    rows, groups, classes, dense_dim = 96, 8, 16, 24
    latents, index = _straight_through_latents(rows, groups, classes)
    assert nets.lookup_columns(latents) is None  # 96 x 128 is below ONEHOT_LOOKUP_MIN: the matmul is faster
    monkeypatch.setattr(nets, "ONEHOT_LOOKUP_MIN", 0)
    columns = nets.lookup_columns(latents)
    assert torch.equal(columns, index + classes * torch.arange(groups))  # g * K + class, as in flatten(-2)
    assert nets.lookup_columns(latents.clone().requires_grad_()) is None  # the lookup passes no input gradient
    dense = torch.randn(rows, dense_dim)
    for first in (False, True):
        layer = torch.nn.Linear(dense_dim + groups * classes, 32)
        x = torch.cat([latents.flatten(-2), dense] if first else [dense, latents.flatten(-2)], -1)
        grad = torch.randn(rows, 32)
        ref = layer(x)
        ref.backward(grad)
        ref_grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        got = nets.linear_onehot(layer, dense, latents.flatten(-2), columns, onehot_first=first)
        got.backward(grad)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        for p, g in zip(layer.parameters(), ref_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-5)
    mlp = nets.MLP(dense_dim + groups * classes, 5, 2, 32, onehot_tail=(groups, classes))
    feat = torch.cat([dense, latents.flatten(-2)], -1).reshape(4, 24, -1)  # [B, T, F] like imagined features
    cols = mlp.lookup_columns(feat)
    assert cols.shape == (4, 24, groups)
    torch.testing.assert_close(mlp(feat, cols), mlp(feat), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", torch.bfloat16):
        fast, slow = mlp(feat, cols), mlp(feat)
    assert fast.dtype == slow.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), slow.float(), rtol=0.02, atol=0.02)  # bf16 rounding: 2^-8 relative
    needs_grad = feat.clone().requires_grad_()
    torch.testing.assert_close(mlp(needs_grad, cols), mlp(feat))  # falls back to the matmul: gradients reach x
    mlp(needs_grad, cols).sum().backward()
    assert needs_grad.grad[..., dense_dim:].abs().sum() > 0


@pytest.mark.parametrize("discrete", [True, False])
def test_behaviour_loss_with_lookups_matches_matmuls(debug_cfg, toy_spec, discrete, monkeypatch):
    """The behaviour loss with the latents looked up (imagination's ``img_in``, actor, critics, reward and
    discount heads; the paper size does so, ``nets.ONEHOT_LOOKUP_MIN``) equals the all-matmul one on the same
    random numbers: the same losses and gradients up to float rounding. With dynamics backprop (continuous) the
    imagined states need gradients, so only the actor's (detached) input and the detached start are looked up."""
    from xdreamer import nets
    from xdreamer.envs import EnvSpec

    spec = toy_spec if discrete else EnvSpec(id="x", obs_shape=(1, 64, 64), discrete=False, num_actions=2)
    torch.manual_seed(0)
    agent = Agent(debug_cfg, spec)
    data = agent.to_torch(random_batch(spec, 4, 16, seed=1))
    with torch.no_grad():
        _, post, _ = agent.wm.loss(data)
    start = post.map(lambda x: x.reshape(-1, *x.shape[2:]).detach())
    calls = []
    lookup = nets._OneHotLinear.apply
    monkeypatch.setattr(nets._OneHotLinear, "apply", lambda *a: calls.append(a[0].shape) or lookup(*a))
    results = {}
    for minimum in (10**12, 0):  # never, always
        monkeypatch.setattr(nets, "ONEHOT_LOOKUP_MIN", minimum)
        calls.clear()
        agent.ac.zero_grad()
        agent.wm.requires_grad_(False)
        torch.manual_seed(5)
        actor_loss, critic_loss, _ = agent.ac.loss(agent.wm, start, None)
        (actor_loss + critic_loss).backward()
        grads = {k: p.grad.clone() for k, p in agent.ac.named_parameters() if p.grad is not None}
        results[minimum] = (actor_loss.detach(), critic_loss.detach(), grads, len(calls))
    (a0, c0, g0, n0), (a1, c1, g1, n1) = results[10**12], results[0]
    horizon = debug_cfg.horizon
    # matmuls only, then: the actor at every step, img_in at every step (continuous: only the first, from the
    # detached start; later states carry the actions' gradients) and the four heads on the trajectory (discrete)
    assert n0 == 0 and n1 == (2 * horizon + 4 if discrete else horizon + 1), (n0, n1, calls)
    torch.testing.assert_close(a1, a0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c1, c0, rtol=1e-4, atol=1e-5)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-3, atol=1e-5, msg=k)
