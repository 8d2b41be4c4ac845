"""Analysis layer: traces, what-if dreams, interventions, grounded branches, HIGHLIGHTS, videos, CLI handlers."""

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xdreamer import checkpoint
from xdreamer.agent import Agent
from xdreamer.config import build_config
from xdreamer.envs import make
from xdreamer.explain import (add_commands, check_trace_matches, ground, highlights, intervene, load_trace, record,
                              save, start_state, top_k, whatif, whatif_frames, write_whatif_video)
from xdreamer.explain.dreams import dream

STEPS = 24  # actions per recorded toy episode (keeps tests fast on 2 shared cores)


def _agent(env_id, spec, seed=0, member=()):
    torch.manual_seed(seed)
    agent = Agent(build_config([*member, "debug"], {"env": env_id, "device": "cpu"}), spec)
    agent.eval()
    return agent


# Every analysis entry point runs on a debug agent of each member of the family (issue #29).
@pytest.fixture(scope="module", params=[(), ("dreamerv3",)], ids=["dreamerv2", "dreamerv3"])
def toy(request):
    env = make("toy:catch")
    agent = _agent("toy:catch", env.spec, member=request.param)
    trace = record(agent, env, episodes=2, seed=3, max_steps=STEPS)
    yield agent, env, trace
    env.close()


# ---- trace ----------------------------------------------------------------------------------
def test_trace_contents_and_actions_match_agent_policy(toy):
    agent, env, trace = toy
    n = len(trace)
    assert n == 2 * (STEPS + 1) and list(trace.table["episode"].unique()) == [0, 1]
    a = trace.arrays
    assert a["frame"].shape == (n, 1, 64, 64) and a["frame"].dtype == np.uint8
    assert a["recon"].dtype == np.uint8 and a["recon_sqerr"].shape == (n, 1, 64, 64)
    assert a["post_logits"].shape == a["prior_logits"].shape == (n, 8, 8) and a["deter"].shape == (n, 64)
    assert np.allclose(a["action_probs"].sum(1), 1, atol=1e-5) and (a["surprise"] >= -1e-6).all()
    assert np.isfinite(a["objects/ball"]).all() and a["objects/paddle"].shape == (n, 4)
    assert set(trace.table.columns) >= {"episode", "t", "action", "action_name", "reward", "pred_reward",
                                        "pred_discount", "value", "entropy", "surprise", "recon_error",
                                        "is_first", "is_last"}
    # The recorded actions are Agent.policy's (eval mode) on the recorded frames.
    state = None
    for i in range(n):
        actions, state = agent.policy({"image": a["frame"][i][None], "is_first": a["is_first"][i][None]},
                                      state, mode="eval")
        assert actions[0] == a["action"][i], i
        assert torch.equal(state.latent.deter[0], torch.as_tensor(a["deter"][i]))
    # prev_action is the previous step's action within an episode.
    assert (a["prev_action"][a["is_first"]] == -1).all()
    assert np.array_equal(a["prev_action"][1:STEPS + 1], a["action"][:STEPS])
    # The same posterior as the world model's own observe over the episode.
    ep = a["episode"] == 0
    data = agent.to_torch({"image": a["frame"][ep][None], "action": a["prev_action"][ep].clip(0)[None],
                           "is_first": a["is_first"][ep][None]})
    with torch.no_grad():
        inp = agent.wm.preprocess(data)
        post, prior = agent.wm.observe(agent.wm.encode(inp["image"]), inp["action"], inp["is_first"], sample=False)
    assert np.allclose(post.deter[0].numpy(), a["deter"][ep], atol=1e-5)
    assert np.array_equal(post.stoch[0].argmax(-1).numpy(), a["post_class"][ep])
    assert np.allclose(prior.logits[0].numpy(), a["prior_logits"][ep], atol=1e-4)
    # Simulator states restore the recorded frames.
    env.set_state(trace.sim_state(7))
    assert np.array_equal(env.render()["image"], a["frame"][7])


def test_trace_save_load_roundtrip(toy, tmp_path):
    agent, env, trace = toy
    path = save(trace, tmp_path / "trace.npz")
    with np.load(path, allow_pickle=False) as npz:  # no object arrays inside
        assert all(npz[k].dtype != object for k in npz.files)
    loaded = load_trace(path)
    assert loaded.meta["version"] == 1 and loaded.meta["env"] == "toy:catch" and loaded.meta["seed"] == 3
    assert set(loaded.arrays) == set(trace.arrays)
    for key, value in trace.arrays.items():
        assert np.array_equal(loaded.arrays[key], value, equal_nan=value.dtype.kind == "f"), key
    assert loaded.table.equals(trace.table)
    for k, v in trace.sim_state(5).items():
        assert np.array_equal(loaded.sim_state(5)[k], v)
    check_trace_matches(loaded, agent)
    # Clear errors for missing, corrupt and foreign-version files.
    with pytest.raises(ValueError, match="trace file not found"):
        load_trace(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt trace file"):
        load_trace(tmp_path / "bad.npz")
    meta = dict(trace.meta, version=99, columns=[])
    np.savez(tmp_path / "v99.npz", meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="format version 99"):
        load_trace(tmp_path / "v99.npz")


def test_trace_from_another_checkpoint_is_rejected(toy, tmp_path):
    agent, env, trace = toy
    other = _agent("toy:catch", env.spec, seed=1)
    with pytest.raises(ValueError, match="other weights"):
        check_trace_matches(trace, other)
    a = checkpoint.load(checkpoint.save(tmp_path / "a", agent, steps=0))
    b = checkpoint.load(checkpoint.save(tmp_path / "b", other, steps=0))
    t = record(a, env, max_steps=3)
    check_trace_matches(t, a)
    with pytest.raises(ValueError, match="recorded with checkpoint"):
        check_trace_matches(t, b)


# ---- dreams ---------------------------------------------------------------------------------
def test_dream_with_recorded_actions_matches_world_model_imagine(toy):
    agent, env, trace = toy
    step, H = 4, 6
    recorded = trace.arrays["action"][step:step + H]
    result = whatif(agent, trace, step, horizon=H, actions=[int(recorded[0])], follow=[int(x) for x in recorded[1:]])
    with torch.no_grad():
        start = start_state(agent, trace, step)
        seq = F.one_hot(torch.as_tensor(recorded), 3).float()[None]
        states, actions = agent.wm.imagine(start, actions=seq, horizon=H, sample=False)
        feat = agent.wm.feat(states)
        frames = ((agent.wm.decode(feat) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        reward = agent.wm.reward(feat).numpy()
    assert np.array_equal(result.frames, frames)
    assert np.array_equal(result.reward, reward)
    assert np.array_equal(result.actions[0], recorded)
    assert result.frames.shape == (1, H + 1, 1, 64, 64) and result.returns.shape == (1, H)
    # The start state is the posterior the agent acted on; frame 0 is its reconstruction.
    diff = np.abs(result.frames[0, 0].astype(int) - trace.arrays["recon"][step])
    assert diff.max() <= 1  # same decoder input; batch size may move a value across a rounding boundary
    assert np.isclose(result.value[0, 0], trace.arrays["value"][step], atol=1e-5)
    # Q is the agent's own lambda-return (ActorCritic.target with the online critic).
    from xdreamer.behavior import lambda_return

    r, v, d = (torch.as_tensor(x) for x in (result.reward, result.value, result.discount))
    q = lambda_return(r[:, :-1], v[:, :-1], d[:, :-1], v[:, -1], agent.cfg.discount_lambda)[:, 0]
    assert np.allclose(result.q, q.numpy())


def test_whatif_all_actions_batched_equals_single(toy):
    agent, env, trace = toy
    every = whatif(agent, trace, 10, horizon=5)
    assert every.frames.shape == (3, 6, 1, 64, 64) and every.labels == ["NOOP", "LEFT", "RIGHT"]
    assert list(every.actions[:, 0]) == [0, 1, 2]
    for a in range(3):
        one = whatif(agent, trace, 10, horizon=5, actions=[a])
        assert np.allclose(one.q, every.q[a], atol=1e-5)
        assert np.array_equal(one.actions[0], every.actions[a])


def test_dream_decodes_a_shared_first_frame_once(toy):
    """Branches from one state share frame 0: ``dream`` decodes it once; the frames equal decoding every state."""
    agent, env, trace = toy
    start = agent.wm.rssm.initial(1).map(lambda x: (x + torch.randn_like(x)).expand(3, *x.shape[1:]).contiguous())
    prefix = F.one_hot(torch.arange(3), 3).float()[:, None]
    out = dream(agent, start, 4, prefix=prefix)
    with torch.no_grad():
        full = agent.wm.decode(agent.wm.feat(out["states"]))
    torch.testing.assert_close(out["frames"], full, rtol=1e-5, atol=1e-5)
    other = start.map(lambda x: x.clone())
    other.deter[1] += 1.0  # different starts: every frame decoded as is
    out = dream(agent, other, 4, prefix=prefix)
    with torch.no_grad():
        full = agent.wm.decode(agent.wm.feat(out["states"]))
    torch.testing.assert_close(out["frames"], full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["frames"][0, 0], out["frames"][1, 0])


def test_identity_intervention_reproduces_baseline(toy):
    agent, env, trace = toy
    step = 6
    base = whatif(agent, trace, step, horizon=5)
    cls = int(trace.arrays["post_class"][step, 2])
    same = intervene(agent, trace, step, variable=2, cls=cls, horizon=5, actions=[0, 1, 2])
    assert np.array_equal(same.frames, base.frames) and np.array_equal(same.q, base.q)
    # The intervene hook of imagine with the identity reproduces it as well.
    start = start_state(agent, trace, np.full(3, step))
    prefix = F.one_hot(torch.arange(3), 3).float()[:, None]
    plain = dream(agent, start, 5, prefix)
    hooked = dream(agent, start, 5, prefix, intervene=lambda i, s: s)
    assert torch.equal(plain["frames"], hooked["frames"]) and torch.equal(plain["returns"], hooked["returns"])
    # A real intervention changes the start state's class (and, persisted, every step's).
    other = (cls + 1) % 8
    changed = intervene(agent, trace, step, variable=2, cls=other, horizon=5, persist=True)
    assert (changed.stoch_class[0, :, 2] == other).all() and changed.intervention["recorded_class"] == cls
    prior = intervene(agent, trace, step, variable=2, cls="prior", horizon=3)
    assert prior.stoch_class[0, 0, 2] == trace.arrays["prior_class"][step, 2]
    soft = intervene(agent, trace, step, variable=2, cls="prior_probs", horizon=3, actions=[1])
    assert soft.frames.shape == (1, 4, 1, 64, 64)


# ---- grounded -------------------------------------------------------------------------------
def _check_reproduces(agent, env, trace, step, H):
    recorded = trace.arrays["action"][step:step + H]
    future = trace.arrays["frame"][step + 1:step + H + 1]
    # Actor's mode on the real frames (the policy that recorded the trace) ...
    g = ground(agent, env, trace, step, actions=[int(recorded[0])], horizon=H)
    assert np.array_equal(g.real_frames[0, 1:], future)
    assert np.array_equal(g.real_actions[0], recorded)
    assert np.array_equal(g.real_reward[0, 1:], trace.arrays["reward"][step + 1:step + H + 1])
    # ... and the fixed recorded action sequence.
    g = ground(agent, env, trace, step, actions=[int(recorded[0])], horizon=H,
               follow=[int(x) for x in recorded[1:]])
    assert np.array_equal(g.real_frames[0, 1:], future) and g.valid.all()
    for name in trace.object_names:
        real = trace.arrays[f"objects/{name}"][step:step + H + 1]
        assert np.array_equal(g.objects[name][0], real, equal_nan=True)
    return g


def test_grounded_branch_reproduces_recorded_frames_toy(toy):
    agent, env, trace = toy
    g = _check_reproduces(agent, env, trace, 5, 8)
    assert g.pixel_mse.shape == (1, 9) and np.isfinite(g.pixel_mse).all()
    assert np.isfinite(g.object_mse["ball"]).all() and g.reward_error.shape == (1, 9)
    every = ground(agent, env, trace, 5, horizon=4)
    assert every.real_frames.shape == (3, 5, 1, 64, 64) and every.real_return.shape == (3,)
    assert (every.real_actions[:, 0] == [0, 1, 2]).all() and 0 <= every.action_agreement.min() <= 1
    # Branches are really different: LEFT and RIGHT move the paddle apart.
    assert not np.array_equal(every.real_frames[1, 1], every.real_frames[2, 1])
    json.dumps(every.to_dict(), allow_nan=False)
    # A branch that outlives the episode is marked invalid after its end (one-ball episodes are short).
    short_env = make("toy:catch", balls=1)
    short = record(agent, short_env)
    n = len(short)
    assert short.arrays["is_last"][-1] and n < 25
    g = ground(agent, short_env, short, n - 3, actions=[int(short.arrays["action"][n - 3])], horizon=5)
    assert g.valid[0].tolist() == [True, True, True, False, False, False]
    assert np.array_equal(g.real_frames[0, 1:3], short.arrays["frame"][n - 2:])
    assert np.isnan(g.pixel_mse[0, 3:]).all() and np.isfinite(g.real_return).all()
    assert g.to_dict()["pixel_mse"][0][3] is None


def test_grounded_branch_reproduces_recorded_frames_pong():
    env = make("atari:Pong")
    try:
        agent = _agent("atari:Pong", env.spec)
        trace = record(agent, env, max_steps=14)
        assert "sim/ale/data" in trace.arrays and trace.object_names == ["ball", "player", "enemy"]
        _check_reproduces(agent, env, trace, 3, 8)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["gym:CartPole-v1", "gym:Pendulum-v1", "gym:CarRacing-v3"])
def test_grounded_branch_reproduces_recorded_frames_gym(env_id):
    """gym: envs branch by replaying the episode's seed and actions (#30), a classic-control pair and Box2D's
    CarRacing (World Models' env); the trace stores only seed and step count per step and rebuilds the actions."""
    env = make(env_id)
    try:
        agent = _agent(env_id, env.spec)
        trace = record(agent, env, seed=1, max_steps=20)
        assert "sim/replay/data" in trace.arrays and "sim/actions/data" not in trace.arrays
        step, horizon = 4, 5
        recorded = trace.arrays["action"][step:step + horizon]
        future = trace.arrays["frame"][step + 1:step + horizon + 1]
        first = [int(recorded[0])] if env.spec.discrete else [recorded[0]]
        rest = [int(x) for x in recorded[1:]] if env.spec.discrete else list(recorded[1:])
        g = ground(agent, env, trace, step, actions=first, horizon=horizon, follow=rest)
        assert np.array_equal(g.real_frames[0, 1:], future) and g.valid.all()
        assert np.allclose(g.real_reward[0, 1:], trace.arrays["reward"][step + 1:step + horizon + 1])
        g = ground(agent, env, trace, step, actions=first, horizon=horizon)  # the actor on the real frames
        assert np.array_equal(g.real_frames[0, 1:], future)
    finally:
        env.close()


# ---- bad inputs -----------------------------------------------------------------------------
def test_bad_inputs_give_clear_errors(toy):
    agent, env, trace = toy
    n = len(trace)
    for step in (-1, n, 10**6):
        with pytest.raises(ValueError, match="out of range"):
            whatif(agent, trace, step)
    with pytest.raises(ValueError, match="step must be an integer"):
        whatif(agent, trace, 1.5)
    for action in (3, -1):
        with pytest.raises(ValueError, match="invalid action"):
            whatif(agent, trace, 2, actions=[0, action])
    with pytest.raises(ValueError, match="must be integers"):
        whatif(agent, trace, 2, actions=[0.5])
    with pytest.raises(ValueError, match="invalid action"):
        whatif(agent, trace, 2, horizon=4, actions=[0], follow=[1, 7])
    with pytest.raises(ValueError, match="only 3 steps follow"):
        whatif(agent, trace, 2, horizon=4, actions=[0], follow=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="horizon"):
        whatif(agent, trace, 2, horizon=0)
    with pytest.raises(ValueError, match="variable"):
        intervene(agent, trace, 2, variable=8, cls=0)
    with pytest.raises(ValueError, match="cls"):
        intervene(agent, trace, 2, variable=0, cls=8)
    with pytest.raises(ValueError, match="out of range"):
        ground(agent, env, trace, n, horizon=3)
    last = int(np.flatnonzero(trace.arrays["episode"] == 0)[-1])
    trace.arrays["is_last"][last] = True  # (the cut step of a max_steps trace is not is_last)
    try:
        with pytest.raises(ValueError, match="last step"):
            ground(agent, env, trace, last, horizon=3)
    finally:
        trace.arrays["is_last"][last] = False
    gym_env = make("gym:CartPole-v1")
    try:
        with pytest.raises(ValueError, match="not on gym:CartPole-v1"):
            ground(agent, gym_env, trace, 2, horizon=3)
    finally:
        gym_env.close()
    with pytest.raises(ValueError, match="not on toy:catch-pixel"):
        ground(agent, make("toy:catch-pixel"), trace, 2, horizon=3)


# ---- HIGHLIGHTS -----------------------------------------------------------------------------
def test_highlights_importance_and_diverse_top_k(toy):
    agent, env, trace = toy
    hl = highlights(agent, trace, k=3, context=2, min_gap=5, horizon=5, batch_size=30)
    assert hl.importance.shape == (len(trace),) and hl.q.shape == (len(trace), 3)
    for step in (0, 13, len(trace) - 1):
        q = whatif(agent, trace, step, horizon=5, decode=False).q
        assert np.isclose(hl.importance[step], q.max() - q.min(), atol=1e-5)
    assert len(hl.moments) == 3
    assert hl.moments[0].importance == pytest.approx(float(hl.importance.max()))
    for i, m in enumerate(hl.moments):
        assert (trace.arrays["episode"][m.context] == m.episode).all() and m.step in m.context
        assert len(m.context) <= 5
        for other in hl.moments[:i]:
            assert other.episode != m.episode or abs(other.t - m.t) >= 5
    assert "importance" in trace.table and [m.step for m in top_k(trace, 3, 2, 5)] == [m.step for m in hl.moments]
    assert len(top_k(trace, 100, 0, 0)) == len(trace)


# ---- rendering and CLI handlers ---------------------------------------------------------------
def test_whatif_video_frames(toy, tmp_path):
    agent, env, trace = toy
    w = whatif(agent, trace, 3, horizon=4)
    g = ground(agent, env, trace, 3, horizon=4, dream=w)
    frames = whatif_frames(trace, w, g)
    assert frames.dtype == np.uint8 and frames.shape[0] == 5 and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    # real future + taken dream + 2 alternatives x (dream, real branch) = 6 panels of 256 px
    assert frames.shape[2] >= 6 * 256
    path = write_whatif_video(tmp_path / "w.gif", trace, w, alternatives=[1])
    assert path.stat().st_size > 0


def _parser():
    parser = argparse.ArgumentParser(prog="xdreamer")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_handlers_write_trace_video_and_json(toy, tmp_path, capsys):
    agent, env, _ = toy
    ckpt = checkpoint.save(tmp_path / "ckpt", agent, steps=0)
    parser = _parser()
    trace_path = tmp_path / "t.npz"
    args = parser.parse_args(["record", str(ckpt), "--episodes", "1", "--seed", "2", "--max-steps", "12",
                              "--out", str(trace_path), "--no-progress"])
    assert args.func(args) == 0 and load_trace(trace_path).meta["seed"] == 2
    video, out = tmp_path / "w.mp4", tmp_path / "w.json"
    args = parser.parse_args(["whatif", str(ckpt), "--trace", str(trace_path), "--step", "3", "--horizon", "4",
                              "--grounded", "--video", str(video), "--json", str(out), "--no-progress"])
    assert args.func(args) == 0
    assert video.stat().st_size > 1000
    data = json.loads(out.read_text())
    assert len(data["dream"]["q"]) == 3 and len(data["grounded"]["real_return"]) == 3
    assert np.array(data["grounded"]["pixel_mse"]).shape == (3, 5)
    # --seed instead of --trace, a subset of actions, no grounding
    args = parser.parse_args(["whatif", str(ckpt), "--seed", "1", "--step", "2", "--horizon", "3",
                              "--actions", "0", "2", "--json", str(out), "--no-progress"])
    assert args.func(args) == 0 and json.loads(out.read_text())["dream"]["first_actions"] == [0, 2]
    q32 = np.array(json.loads(out.read_text())["dream"]["q"])
    # --precision bfloat16 runs the same query under bf16 autocast: same Q estimates up to bf16 rounding
    args = parser.parse_args(["whatif", str(ckpt), "--seed", "1", "--step", "2", "--horizon", "3",
                              "--actions", "0", "2", "--json", str(out), "--no-progress", "--precision", "bfloat16"])
    assert args.func(args) == 0
    assert np.allclose(np.array(json.loads(out.read_text())["dream"]["q"]), q32, atol=0.05)
    hl_out = tmp_path / "hl.json"
    args = parser.parse_args(["highlights", str(ckpt), "--trace", str(trace_path), "--k", "2", "--horizon", "3",
                              "--min-gap", "3", "--json", str(hl_out), "--image", str(tmp_path / "hl.png"),
                              "--no-progress"])
    assert args.func(args) == 0
    assert len(json.loads(hl_out.read_text())["moments"]) == 2 and (tmp_path / "hl.png").exists()
    # A trace from another checkpoint and a step out of range are one-line errors.
    other = checkpoint.save(tmp_path / "other", _agent("toy:catch", env.spec, seed=5), steps=0)
    args = parser.parse_args(["whatif", str(other), "--trace", str(trace_path), "--step", "3"])
    with pytest.raises(ValueError, match="recorded with checkpoint"):
        args.func(args)
    args = parser.parse_args(["whatif", str(ckpt), "--trace", str(trace_path), "--step", "99"])
    with pytest.raises(ValueError, match="out of range"):
        args.func(args)


def test_saliency_overlay_video(toy, tmp_path):
    from xdreamer.explain.render import write_saliency_video

    agent, env, _ = toy
    trace = record(agent, env, episodes=1, seed=0, max_steps=6)
    path = write_saliency_video(tmp_path / "sal.mp4", agent, trace, method="saliency")
    import imageio.v3 as iio

    frames = iio.imread(path)
    assert frames.shape[0] == len(trace) and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0
    with pytest.raises(ValueError, match="no steps"):
        write_saliency_video(tmp_path / "none.mp4", agent, trace, steps=[])


def test_grounded_real_q_is_the_lambda_target_of_the_recorded_episode(toy):
    """The dream's Q_H grounded (#27 item 5): on the taken action with the recorded actions after it, the real
    branch is the recorded episode, so ``real_q`` is the agent's own lambda-target along the trace (clipped rewards,
    the recorded values, gamma x (1 - terminal), bootstrapped from v(s_{t+H})), written out here by hand; the
    terminal end of a one-ball episode stops the return there."""
    agent, env, trace = toy
    a = trace.arrays
    lam, gamma = agent.cfg.discount_lambda, agent.cfg.discount
    clip = (np.tanh if agent.cfg.clip_rewards == "tanh" else (lambda x: x))

    def by_hand(arrays, t, H, valid):
        ret = float(arrays["value"][t + H]) if valid == H + 1 else 0.0
        for i in reversed(range(min(H, valid))):
            j = t + i
            d = 0.0 if arrays["is_terminal"][j] else gamma
            nxt = float(arrays["value"][j + 1]) if i + 1 < valid else 0.0
            ret = float(clip(arrays["reward"][j])) + d * ((1 - lam) * nxt + lam * ret)
        return ret

    t, H = 5, 8
    g = ground(agent, env, trace, t, actions=[int(a["action"][t])], horizon=H,
               follow=[int(x) for x in a["action"][t + 1:t + H]])
    np.testing.assert_allclose(g.real_value[0], a["value"][t:t + H + 1], atol=1e-5)
    assert g.real_q[0] == pytest.approx(by_hand(a, t, H, H + 1), abs=1e-4)
    short_env = make("toy:catch", balls=1)
    short = record(agent, short_env)
    n, s = len(short), len(short) - 3
    g = ground(agent, short_env, short, s, actions=[int(short.arrays["action"][s])], horizon=5,
               follow=[int(x) for x in short.arrays["action"][s + 1:]])
    assert short.arrays["is_terminal"][-1]
    assert g.real_q[0] == pytest.approx(by_hand(short.arrays, s, 5, n - s), abs=1e-4)
