"""Latent-class attributions, pixel saliency and faithfulness numbers (issue 3, parts 4, 5, 8).

Debug-size models only; every test is deterministic (torch.manual_seed / fixed env seeds).
"""

import json
import pathlib

import numpy as np
import pytest
import torch
from torch import nn

import xdreamer
from xdreamer.agent import Agent
from xdreamer.explain.attribution import (class_conditional_means, class_effect, class_effects, latent_attribution,
                                          prior_logits)
from xdreamer.explain.faithfulness import (completeness, deletion_insertion, deletion_insertion_curves,
                                           randomization_check, randomization_stages, rankdata, spearman)
from xdreamer.explain.saliency import (METHODS, PixelForward, attribute_pixels, attribution_guard, count_hooks,
                                       eval_mode, gaussian_blur, saliency)

# IntegratedGradients completeness tolerance for n_steps=32 (Gauss-Legendre, Captum's default rule).
# An n-node Gauss-Legendre rule is exact for polynomials of degree 2n-1 = 63; the integrand (the
# gradient along the straight path) of these ELU networks is smooth except where a pre-activation
# crosses 0, where ELU's second derivative jumps, so the error falls like O(n^-2) per crossing
# instead of exponentially. Measured on debug models (3 seeds, both targets): relative deltas
# 1e-6..1.2e-4 (latent) and 9e-6..3.5e-4 (pixels) at n=32, about 10x larger at n=8 -- consistent
# with that rate. 1% leaves more than an order of magnitude of margin and still catches real errors
# (a wrong baseline or a missing path segment gives O(1) relative deltas). The absolute floor covers
# float32 rounding of the sum over 4096 pixel / 64 latent attributions (observed ~2e-6 when the gap
# itself was only 2e-5).
IG_REL_TOL = 1e-2
IG_ABS_TOL = 1e-5


@pytest.fixture
def agent(debug_cfg, toy_spec):
    torch.manual_seed(0)
    return Agent(debug_cfg, toy_spec)


def step_inputs(agent, steps=3, seed=0):
    """Frame, previous state and action at step ``steps`` of a toy:catch episode under the eval policy."""
    from xdreamer.envs import make

    env = make("toy:catch")
    obs = env.reset(seed=seed)
    state = None
    for _ in range(steps):
        actions, state = agent.policy({"image": obs["image"][None], "is_first": np.array([obs["is_first"]])},
                                      state, mode="eval")
        obs = env.step(actions[0])
    env.close()
    return obs["image"], state


def posterior(agent, frame, state):
    with torch.no_grad():
        x = torch.as_tensor(frame[None]).float() / 255 - 0.5
        post, prior = agent.wm.rssm.obs_step(state.latent, state.action, agent.wm.encode(x), torch.zeros(1),
                                             sample=False)
    return post, prior


def assert_complete(delta, attr_sum, value, base):
    gap = value - base
    # Captum's delta is sum(attr) - (f(x) - f(b)); recompute it independently.
    assert abs(delta - (attr_sum - gap)) <= 1e-5 + 1e-4 * abs(gap)
    assert abs(delta) <= IG_REL_TOL * abs(gap) + IG_ABS_TOL, (delta, gap)


# ---- IntegratedGradients completeness ----------------------------------------------------------
@pytest.mark.parametrize("target", ["action", "value"])
def test_latent_ig_completeness(agent, target):
    frame, state = step_inputs(agent)
    post, prior = posterior(agent, frame, state)
    torch.manual_seed(1)
    sharp = post.logits[0] + 4 * torch.randn_like(post.logits[0])  # a confident posterior: a sizeable gap
    result = latent_attribution(agent, post.deter[0], sharp, target, n_steps=32)
    assert abs(result.value - result.baseline_value) > 1e-3
    assert_complete(result.delta, result.map.sum(), result.value, result.baseline_value)
    assert completeness(result)["relative"] <= IG_REL_TOL
    # the default baseline is the RSSM's own prior p(z | h)
    assert torch.allclose(prior_logits(agent, post.deter[0]), prior.logits[0], atol=1e-5)


@pytest.mark.parametrize("target", ["action", "value"])
def test_pixel_ig_completeness(agent, target):
    frame, state = step_inputs(agent)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, frame.shape, dtype=np.uint8)  # far from its baselines: a sizeable gap
    for baseline in ("zero", "blur"):
        result = saliency(agent, noisy, state.latent, state.action, target, "integrated_gradients",
                          baseline=baseline, n_steps=32)
        assert_complete(result.delta, result.channels.sum(), result.value, result.baseline_value)
        if baseline == "zero":
            assert abs(result.value - result.baseline_value) > 1e-2  # the check is not vacuous


# ---- hooks and modes ---------------------------------------------------------------------------
def _flags(agent):
    return [m.training for m in agent.modules()], [p.requires_grad for p in agent.parameters()]


def test_no_hooks_and_modes_restored(agent):
    frame, state = step_inputs(agent)
    agent.train()
    agent.wm.decoder.eval()  # mixed modes must come back exactly
    next(agent.ac.critic.parameters()).requires_grad_(False)
    before = _flags(agent)
    assert count_hooks(agent) == 0
    for method in METHODS:
        opts = {"window": 8, "stride": 8} if method == "occlusion" else {}
        if method == "greydanus":
            opts = {"greydanus_stride": 8}
        saliency(agent, frame, state.latent, state.action, "action", method, **opts)
        assert count_hooks(agent) == 0, method
        assert _flags(agent) == before, method
    post, _ = posterior(agent, frame, state)
    latent_attribution(agent, post.deter[0], post.logits[0], "value")
    class_effect(agent, post.deter[0], post.stoch[0], 0, 1)
    assert count_hooks(agent) == 0 and _flags(agent) == before
    assert all(p.grad is None for p in agent.parameters())  # no gradient leaks into the weights


def test_hooks_and_modes_restored_after_exception(agent):
    frame, state = step_inputs(agent)
    agent.train()
    before = _flags(agent)
    calls = {"n": 0}

    def explode(module, inputs):  # fails mid-way through the attribution (3rd forward of the actor)
        calls["n"] += 1
        assert not module.training  # the attribution runs in eval mode
        if calls["n"] == 3:
            raise RuntimeError("boom")

    handle = agent.actor.net.register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            saliency(agent, frame, state.latent, state.action, "action", "integrated_gradients")
        assert count_hooks(agent) == 1  # only the test's own, pre-existing hook survives
        assert _flags(agent) == before
    finally:
        handle.remove()
    assert count_hooks(agent) == 0

    # Hooks registered during a guarded attribution (e.g. by a layer method) are removed, also on error.
    global_before = len(torch.nn.modules.module._global_forward_hooks)
    with pytest.raises(ValueError):
        with attribution_guard(agent):
            agent.wm.encoder.register_forward_hook(lambda *a: None)
            agent.actor.net.register_full_backward_hook(lambda *a: None)
            agent.wm.rssm.register_forward_pre_hook(lambda *a: None)
            torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
            assert all(not m.training for m in agent.modules())
            raise ValueError("mid-way")
    assert count_hooks(agent) == 0
    assert len(torch.nn.modules.module._global_forward_hooks) == global_before
    assert _flags(agent) == before

    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    net[1].eval()
    with pytest.raises(KeyError):
        with eval_mode(net):
            assert not net.training and not net[0].training
            raise KeyError
    assert net.training and net[0].training and not net[1].training


# ---- shapes ------------------------------------------------------------------------------------
def test_output_shapes(agent, debug_cfg):
    frame, state = step_inputs(agent)
    S, K = debug_cfg.stoch, debug_cfg.classes
    for target in ("action", "value"):
        for method in METHODS:
            opts = {"window": 8, "stride": 8} if method == "occlusion" else {}
            if method == "greydanus":
                opts = {"greydanus_stride": 8}
            result = saliency(agent, frame, state.latent, state.action, target, method, **opts)
            assert result.map.shape == (64, 64) and result.channels.shape == (1, 64, 64)
            assert np.isfinite(result.map).all() and result.method == method and result.target == target
            assert (result.action is None) == (target == "value")
            json.dumps(result.to_dict())
            if method in ("saliency", "smoothgrad"):
                assert (result.map >= 0).all()
    post, _ = posterior(agent, frame, state)
    for target in ("action", "value"):
        for base in ("prior", "uniform"):
            res = latent_attribution(agent, post.deter[0], post.logits[0], target, baseline=base)
            assert res.map.shape == (S, K) and res.per_variable.shape == (S,)
            assert res.per_variable_ablation.shape == (S,) and np.isfinite(res.per_variable_ablation).all()
            assert np.allclose(res.per_variable, res.map.sum(1)) and isinstance(res.delta, float)
            json.dumps(res.to_dict())
    assert class_effect(agent, post.deter[0], post.stoch[0], 1, 2).shape == (1, 64, 64)
    assert class_effects(agent, post.deter[0], post.stoch[0], 1).shape == (K, 1, 64, 64)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (12, 1, 64, 64), dtype=np.uint8)
    classes = rng.integers(0, K - 1, (12, S))  # class K-1 never occurs
    onehot = np.eye(K)[classes]
    means, counts = class_conditional_means(frames, onehot)
    assert means.shape == (S, K, 1, 64, 64) and counts.shape == (S, K) and (counts.sum(1) == 12).all()
    assert np.isnan(means[:, K - 1]).all() and (counts[:, K - 1] == 0).all()
    i, c = 3, classes[0, 3]
    assert np.allclose(means[i, c], frames[classes[:, i] == c].astype(np.float32).mean(0), atol=1e-4)


def test_latent_ablation_matches_manual(agent):
    frame, state = step_inputs(agent)
    post, _ = posterior(agent, frame, state)
    res = latent_attribution(agent, post.deter[0], post.logits[0], "value", ablation_baseline="uniform")
    z = post.logits[0].softmax(-1).clone()
    with torch.no_grad():
        full = agent.ac.value(torch.cat([post.deter, z.reshape(1, -1)], -1))
        z[2] = 1.0 / z.shape[-1]
        ablated = agent.ac.value(torch.cat([post.deter, z.reshape(1, -1)], -1))
    assert res.per_variable_ablation[2] == pytest.approx(float(full - ablated), abs=1e-6)


def test_class_effect_identity_is_zero(agent, debug_cfg):
    frame, state = step_inputs(agent)
    post, _ = posterior(agent, frame, state)
    stoch = post.stoch[0]
    for var in range(debug_cfg.stoch):
        same = int(stoch[var].argmax())
        assert np.all(class_effect(agent, post.deter[0], stoch, var, same) == 0.0)
        assert np.all(class_effects(agent, post.deter[0], stoch, var)[same] == 0.0)
    other = (int(stoch[0].argmax()) + 1) % debug_cfg.classes
    assert np.abs(class_effect(agent, post.deter[0], stoch, 0, other)).max() > 0
    with pytest.raises(ValueError):
        class_effect(agent, post.deter[0], stoch, debug_cfg.stoch, 0)


# ---- a planted single-pixel effect -------------------------------------------------------------
def test_occlusion_finds_planted_pixel_in_hand_made_function():
    r, c = 37, 11
    frame = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    frame[0, 0, r, c] = 1.0

    def forward(x):  # responds to one pixel only
        return torch.tanh(3 * x[:, 0, r, c]) + 0 * x.sum((1, 2, 3))

    out = attribute_pixels(forward, frame, "occlusion", window=1, stride=1, baseline="zero",
                           perturbations_per_eval=512)
    amap = out["attr"][0].abs()
    assert divmod(int(amap.argmax()), 64) == (r, c)
    assert amap[r, c] > 0 and (amap.sum() - amap[r, c]) == 0


class OnePixelEncoder(nn.Module):
    """Replaces the agent's encoder: the embedding depends on pixel (r, c) only."""

    def __init__(self, out_dim, r, c):
        super().__init__()
        self.r, self.c = r, c
        gen = torch.Generator().manual_seed(0)
        self.bias = nn.Parameter(torch.randn(out_dim, generator=gen))
        self.weight = nn.Parameter(5 * torch.randn(out_dim, generator=gen))
        self.out_dim = out_dim

    def forward(self, image):
        return self.bias + self.weight * image[..., 0, self.r, self.c, None]


def test_occlusion_and_greydanus_find_planted_pixel_in_agent(agent):
    r, c = 20, 45
    agent.wm.encoder = OnePixelEncoder(agent.wm.encoder.out_dim, r, c)
    _, state = step_inputs(agent)
    frame = np.zeros((1, 64, 64), np.uint8)
    frame[0, r, c] = 255  # a one-pixel "ball" on a black screen
    occ = saliency(agent, frame, state.latent, state.action, "action", "occlusion", window=2, stride=1,
                   perturbations_per_eval=512)
    amap = np.abs(occ.map)
    assert divmod(int(amap.argmax()), 64) == (r, c)  # covered by 4 windows, its neighbours by 1 or 2
    # only windows over the pixel matter (elsewhere: float noise of batched vs single forward passes)
    rows, cols = np.nonzero(amap > 1e-4 * amap.max())
    assert np.abs(rows - r).max() <= 1 and np.abs(cols - c).max() <= 1
    occ = saliency(agent, frame, state.latent, state.action, "value", "occlusion", window=2, stride=2,
                   perturbations_per_eval=512)
    amap = np.abs(occ.map)
    rows, cols = np.nonzero(amap > 1e-4 * amap.max())
    assert amap[r, c] > 0 and set(rows) <= {20, 21} and set(cols) <= {44, 45}  # the one 2x2 block over it
    grey = saliency(agent, frame, state.latent, state.action, "action", "greydanus")
    gmap = np.abs(grey.map)
    pr, pc = divmod(int(gmap.argmax()), 64)
    # The peak lies within one mask sigma (5 px) of the pixel: not necessarily on it, since the score
    # need not be monotone in the pixel's blurred value. Beyond 3 sigma the mask leaves the pixel alone.
    assert np.hypot(pr - r, pc - c) <= 5
    yy, xx = np.mgrid[:64, :64]
    assert gmap[np.hypot(yy - r, xx - c) > 25].max() <= 1e-3 * gmap.max()
    grad = saliency(agent, frame, state.latent, state.action, "action", "saliency")
    assert divmod(int(grad.map.argmax()), 64) == (r, c) and (grad.map > 0).sum() == 1  # exact: one input pixel


# ---- faithfulness ------------------------------------------------------------------------------
def test_deletion_auc_below_insertion_auc_for_planted_case():
    frame = torch.full((1, 1, 64, 64), 0.1)
    frame[..., 10:18, 40:48] = 1.0  # a bright object the score depends on

    def forward(x):  # probability-like score of "the object is there"
        return torch.sigmoid(20 * (x[:, 0, 10:18, 40:48].mean((-1, -2)) - 0.6))

    smap = saliency_map = attribute_pixels(forward, frame, "saliency")["attr"][0].numpy()
    curves = deletion_insertion_curves(forward, frame, saliency_map, steps=32)
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and curves.deletion.shape == (33,)
    assert curves.deletion_auc < curves.insertion_auc
    assert curves.deletion_auc < 0.1 and curves.insertion_auc > 0.9
    # deleting everything = the blurred frame = inserting nothing
    assert curves.deletion[-1] == pytest.approx(curves.insertion[0], abs=1e-6)
    rng = np.random.default_rng(0)
    random_curves = deletion_insertion_curves(forward, frame, rng.random(smap.shape), steps=32)
    assert random_curves.deletion_auc > curves.deletion_auc


def test_deletion_insertion_on_agent(agent):
    r, c = 30, 30
    agent.wm.encoder = OnePixelEncoder(agent.wm.encoder.out_dim, r, c)
    _, state = step_inputs(agent)
    frame = np.zeros((1, 64, 64), np.uint8)
    frame[0, r, c] = 255
    occ = saliency(agent, frame, state.latent, state.action, "action", "occlusion", window=2, stride=2,
                   perturbations_per_eval=512)
    curves = deletion_insertion(agent, frame, occ, state.latent, state.action, steps=16)
    assert curves.action == occ.action and curves.deletion.shape == curves.insertion.shape == (17,)
    assert ((curves.deletion >= 0) & (curves.deletion <= 1)).all()
    # the planted pixel is ranked first: after the first deletion step the score equals the fully deleted one
    assert curves.deletion[1] == pytest.approx(curves.deletion[-1], abs=1e-5)
    assert curves.insertion[1] == pytest.approx(curves.insertion[-1], abs=1e-5)


def test_randomization_check(agent):
    frame, state = step_inputs(agent)
    weights = {k: v.clone() for k, v in agent.state_dict().items()}
    stages = randomization_stages(agent, "action")
    assert stages[0].startswith("ac.actor.net") and stages[-1] == "wm.encoder.net.0"
    assert any(s.startswith("wm.rssm.obs_out") for s in stages)
    check = randomization_check(agent, frame, state.latent, state.action, "action", "saliency")
    assert check.correlations.shape == (len(stages),) and check.maps.shape == (len(stages) + 1, 64, 64)
    assert np.isfinite(check.correlations).all()
    assert ((check.correlations >= -1) & (check.correlations <= 1)).all()
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in weights.items())  # agent untouched
    json.dumps(check.to_dict())
    value_stages = randomization_stages(agent, "value")
    assert value_stages[0].startswith("ac.critic")


def test_spearman_and_ranks():
    a = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    assert rankdata(a).tolist() == [4.0, 1.0, 2.5, 2.5, 5.0]
    assert spearman(a, a) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(spearman(a, np.ones(5)))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=200), rng.normal(size=200)  # no ties: ranks = argsort of argsort
    rx, ry = x.argsort().argsort().astype(float), y.argsort().argsort().astype(float)
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
    assert -1 <= spearman(rng.integers(0, 3, 50), rng.integers(0, 3, 50)) <= 1


def test_gaussian_blur_preserves_mass_and_smooths():
    x = torch.zeros(1, 1, 64, 64)
    x[..., 32, 32] = 1.0
    b = gaussian_blur(x, 5.0)
    assert b.sum() == pytest.approx(1.0, abs=1e-4) and b.max() < 0.01
    assert torch.allclose(gaussian_blur(torch.ones(1, 1, 64, 64), 5.0), torch.ones(1, 1, 64, 64), atol=1e-5)


def test_bad_inputs(agent):
    frame, state = step_inputs(agent)
    with pytest.raises(ValueError, match="unknown saliency method"):
        saliency(agent, frame, state.latent, state.action, "action", "lrp")
    with pytest.raises(ValueError, match="out of range"):
        saliency(agent, frame, state.latent, state.action, "action", "saliency", action=99)
    with pytest.raises(ValueError, match="expects"):
        saliency(agent, np.zeros((3, 64, 64), np.uint8), state.latent, state.action)
    with pytest.raises(ValueError, match="deter"):
        saliency(agent, frame, {"deter": np.zeros(5), "stoch": np.zeros((8, 8))}, 0)
    post, _ = posterior(agent, frame, state)
    with pytest.raises(ValueError, match="post_logits"):
        latent_attribution(agent, post.deter[0], np.zeros((3, 3)))
    assert count_hooks(agent) == 0


def test_first_step_and_policy_state_inputs(agent):
    """At an episode start the previous state is irrelevant (zeroed by obs_step)."""
    frame, state = step_inputs(agent)
    a = saliency(agent, frame, None, None, "value", "saliency", is_first=True)
    b = saliency(agent, frame, state.latent, state.action, "value", "saliency", is_first=True)
    assert np.array_equal(a.map, b.map)
    c = saliency(agent, frame, state, state.action, "value", "saliency")  # a PolicyState works too
    d = saliency(agent, frame, {"deter": state.latent.deter[0].numpy(), "logits": state.latent.logits[0].numpy()},
                 int(state.action.argmax()), "value", "saliency")
    assert np.allclose(c.map, d.map, atol=1e-7)
    fwd = PixelForward(agent, state.latent, state.action, target="action", score="prob")
    x = torch.as_tensor(frame[None]).float() / 255
    with torch.no_grad():
        fwd.resolve_action(x)
        p = fwd(x)
    assert 0 < float(p) <= 1


# ---- CLI ---------------------------------------------------------------------------------------
def test_saliency_command(agent, tmp_path):
    import argparse

    import imageio.v2 as imageio

    from xdreamer import checkpoint
    from xdreamer.explain.saliency_commands import add_commands, jet

    ckpt = checkpoint.save(tmp_path / "ckpt", agent, steps=0)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    png, js = tmp_path / "map.png", tmp_path / "out.json"
    args = parser.parse_args(["saliency", str(ckpt), "--seed", "0", "--step", "3", "--method", "saliency",
                              "--out", str(png), "--json", str(js), "--faithfulness", "--latent"])
    assert args.func(args) == 0
    image = imageio.imread(png)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    record = json.loads(js.read_text())
    assert record["step"] == 3 and record["method"] == "saliency" and "faithfulness" in record and "latent" in record
    # same map as the Python API on the same inputs
    frame, state = step_inputs(checkpoint.load(ckpt), steps=3, seed=_eval_seed(0))
    npz = tmp_path / "map.npz"
    args = parser.parse_args(["saliency", str(ckpt), "--seed", "0", "--step", "3", "--method", "saliency",
                              "--out", str(npz)])
    assert args.func(args) == 0
    direct = saliency(checkpoint.load(ckpt), frame, state.latent, state.action, "action", "saliency")
    assert np.allclose(np.load(npz)["map"], direct.map, atol=1e-6)
    assert jet(np.array([0.0, 1.0])).shape == (2, 3)
    # a trace from `xdreamer record` gives the same step inputs
    from xdreamer.envs import make
    from xdreamer.explain import trace as trace_mod

    trace = trace_mod.record(checkpoint.load(ckpt), make("toy:catch"), episodes=1, seed=0, max_steps=5)
    path = trace_mod.save(trace, tmp_path / "trace.npz")
    args = parser.parse_args(["saliency", str(ckpt), "--trace", str(path), "--step", "3", "--method", "saliency",
                              "--out", str(tmp_path / "t.npz")])
    assert args.func(args) == 0
    assert np.allclose(np.load(tmp_path / "t.npz")["map"], direct.map, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        args = parser.parse_args(["saliency", str(ckpt), "--trace", str(path), "--step", "99"])
        args.func(args)


def _eval_seed(seed):
    from xdreamer.evaluation import EVAL_SEED_OFFSET, episode_seed

    return EVAL_SEED_OFFSET + episode_seed(seed, 0)


# ---- pointing game on a trained agent (issue 3) ----------------------------------------------------
BUNDLED_CATCH = pathlib.Path(__file__).resolve().parents[1] / "checkpoints" / "catch"
# Measured on checkpoints/catch, episode seed 0 (93 steps): IntegratedGradients' peak hits ball or paddle
# (grown by 2 px) at 100 % of steps (90 % the paddle, 10 % the ball) against 3.7 % chance; seed 1 the same.
# Plain gradients hit 17 % (4.6x chance). Thresholds leave margin for other CPUs' float rounding.
POINTING_MIN_HIT_RATE = 0.8
POINTING_MIN_RATIO = 10.0


def test_pointing_game_on_trained_catch_agent():
    """On the bundled small agent trained on toy:catch, the peak of the action's IntegratedGradients map lies
    on the ball or the paddle (boxes grown by 2 px) far more often than a uniformly placed peak would."""
    from xdreamer.explain.faithfulness import pointing_game
    from xdreamer.explain import record
    from xdreamer.training import make_env

    agent = xdreamer.load(BUNDLED_CATCH)
    trace = record(agent, make_env(agent.cfg), episodes=1, seed=0)
    game = pointing_game(agent, trace, method="integrated_gradients", target="action", margin=2)
    assert len(game.steps) >= 40 and 0 < game.chance < 0.1
    assert game.hit_rate >= POINTING_MIN_HIT_RATE, (game.hit_rate, game.chance)
    assert game.hit_rate >= POINTING_MIN_RATIO * game.chance, (game.hit_rate, game.chance)
    with pytest.raises(ValueError, match="no boxes"):
        pointing_game(agent, trace, objects=["player"])
