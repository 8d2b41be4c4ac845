"""Tests of the environment layer (xdreamer.envs): observation contract, determinism, branching, annotations."""

from __future__ import annotations

import contextlib
import json
import sys
import textwrap

import numpy as np
import pytest

from xdreamer.envs import EnvSpec, import_modules, make

ALL_IDS = ["toy:catch", "toy:catch-pixel", "atari:Pong", "mujoco:HalfCheetah", "gym:CartPole-v1"]


def random_action(env, rng):
    if env.spec.discrete:
        return int(rng.integers(env.spec.num_actions))
    return rng.uniform(-1, 1, env.spec.num_actions)


def check_obs(env, obs, first):
    spec = env.spec
    assert set(obs) >= {"image", "reward", "is_first", "is_last", "is_terminal", "objects"}
    img = obs["image"]
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == spec.obs_shape
    assert isinstance(obs["reward"], float)
    for k in ("is_first", "is_last", "is_terminal"):
        assert isinstance(obs[k], bool)
    assert obs["is_first"] is first
    if obs["is_terminal"]:
        assert obs["is_last"]
    assert isinstance(obs["objects"], dict)
    assert set(obs["objects"]) == set(spec.object_names)
    for v in obs["objects"].values():
        assert v.dtype == np.float32 and v.shape == (4,)


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    made = {"_cwd": tmp_path_factory.mktemp("mujoco_log")}
    yield made
    for key, env in made.items():
        if key != "_cwd":
            env.close()


def get_env(envs, env_id):
    if env_id not in envs:
        # MuJoCo writes compiler warnings to ./MUJOCO_LOG.TXT; keep it out of the repo.
        with contextlib.chdir(envs["_cwd"]):
            envs[env_id] = make(env_id, seed=0)
    return envs[env_id]


# ----------------------------------------------------------------------------- contract, all families


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_observation_contract(envs, env_id):
    env = get_env(envs, env_id)
    spec = env.spec
    assert spec.id == env_id
    assert spec.obs_shape[1:] == (64, 64) and spec.obs_shape[0] in (1, 3)
    if spec.discrete:
        assert len(spec.action_names) == spec.num_actions
    else:
        assert spec.action_names == ()
    assert spec.max_steps > 0
    rng = np.random.default_rng(0)
    obs = env.reset()
    check_obs(env, obs, first=True)
    for _ in range(15):
        obs = env.step(random_action(env, rng))
        check_obs(env, obs, first=False)
        if obs["is_last"]:
            check_obs(env, env.reset(), first=True)
    if env_id.startswith("atari:"):
        assert obs["ram"].dtype == np.uint8 and obs["ram"].shape == (128,)


def test_spec_roundtrip(envs):
    for env_id in ["toy:catch", "atari:Pong"]:
        spec = get_env(envs, env_id).spec
        d = json.loads(json.dumps(spec.to_dict()))
        assert EnvSpec.from_dict(d) == spec
    assert get_env(envs, "atari:Pong").spec.action_names[:2] == ("NOOP", "FIRE")
    assert get_env(envs, "mujoco:HalfCheetah").spec.max_steps == 500
    with pytest.raises(ValueError, match="unknown key"):
        EnvSpec.from_dict({**spec.to_dict(), "bogus": 1})


@pytest.mark.parametrize(
    "env_id, match",
    [
        ("foo:bar", "known families"),
        ("CartPole-v1", "family"),
        ("toy:snake", "toy:catch"),
        ("atari:NotAGame", "not in ale-py"),
        ("mujoco:NoSuchBot", "mujoco:NoSuchBot"),
        ("gym:NoSuchEnv-v0", "gym:NoSuchEnv-v0"),
    ],
)
def test_bad_ids(env_id, match):
    with pytest.raises(ValueError, match=match):
        make(env_id)


def test_bad_override():
    with pytest.raises(ValueError, match="unknown override"):
        make("toy:catch", stikcy=0.1)
    with pytest.raises(ValueError, match="unknown override"):
        make("atari:Pong", stikcy=0.1)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_invalid_actions(envs, env_id):
    env = get_env(envs, env_id)
    env.reset()
    n = env.spec.num_actions
    bad = [n, -1, 1.5, "x", None, True, np.array([0])] if env.spec.discrete else [np.zeros(n + 1), np.zeros((1, n)), [np.nan] * n, "x", 3]
    for a in bad:
        with pytest.raises(ValueError) as info:
            env.step(a)
        assert "\n" not in str(info.value)
    # valid forms still work
    env.step(np.array(0) if env.spec.discrete else np.full(n, 5.0))  # continuous actions are clipped


# ----------------------------------------------------------------------------- toy games


def run_actions(env, actions, seed=None):
    out = [env.reset(seed=seed)] if seed is not None else []
    for a in actions:
        out.append(env.step(int(a)))
        if out[-1]["is_last"]:
            break
    return out


def test_toy_determinism():
    actions = np.random.default_rng(1).integers(0, 3, 120)
    a = run_actions(make("toy:catch"), actions, seed=7)
    b = run_actions(make("toy:catch", seed=123), actions, seed=7)
    assert len(a) == len(b)
    for oa, ob in zip(a, b):
        assert np.array_equal(oa["image"], ob["image"]) and oa["reward"] == ob["reward"]
    # make(seed) seeds the first reset; reset() without seed continues the RNG stream.
    e1, e2 = make("toy:catch", seed=3), make("toy:catch", seed=3)
    assert np.array_equal(e1.reset()["image"], e2.reset(seed=3)["image"])
    cols = {tuple(e1.reset()["objects"]["ball"][:2]) for _ in range(6)}
    assert len(cols) > 1


@pytest.mark.parametrize("big_id,pixel_id", [("toy:catch", "toy:catch-pixel"),
                                              ("toy:catch-lanes", "toy:catch-pixel-lanes")])
def test_catch_vs_catch_pixel(big_id, pixel_id):
    actions = np.random.default_rng(2).integers(0, 3, 120)
    big = run_actions(make(big_id), actions, seed=5)
    pix = run_actions(make(pixel_id), actions, seed=5)
    assert len(big) == len(pix)
    assert make(pixel_id).spec.id == pixel_id
    for ob, op in zip(big, pix):
        assert ob["reward"] == op["reward"] and ob["is_last"] == op["is_last"] and ob["is_terminal"] == op["is_terminal"]
        bb, bp = ob["objects"]["ball"], op["objects"]["ball"]
        assert tuple(bb[2:]) == (4, 4) and tuple(bp[2:]) == (1, 1)
        assert tuple(bp[:2]) == (bb[0] + 2, bb[1] + 2)  # the pixel is the 4x4 ball's centre (rounded half up)
        np.testing.assert_array_equal(ob["objects"]["paddle"], op["objects"]["paddle"])
        above = slice(0, 60)  # paddle rows are 60..62; count ball pixels above them
        x, y = int(bb[0]), int(bb[1])
        assert ob["image"][0, above].sum() // 255 == min(4, 60 - y) * 4
        assert op["image"][0, above].sum() // 255 == 1
        assert (ob["image"][0, y : min(60, y + 4), x : x + 4] == 255).all()
        if "lanes" in big_id:
            assert x in (10, 30, 50)


@pytest.mark.parametrize("policy", ["random", "track"])
def test_toy_episode_length_and_outcomes(policy):
    env = make("toy:catch", seed=11)
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs = env.reset()
        rewards, steps = [], 0
        while not obs["is_last"]:
            if policy == "random":
                a = int(rng.integers(3))
            else:
                ball, pad = obs["objects"]["ball"], obs["objects"]["paddle"]
                d = (ball[0] + 2) - (pad[0] + 6)
                a = 0 if abs(d) < 2 else (2 if d > 0 else 1)
            obs = env.step(a)
            steps += 1
            if obs["reward"] != 0:
                rewards.append(obs["reward"])
        assert obs["is_terminal"] and steps < 100 and steps <= env.spec.max_steps
        assert len(rewards) == 5 and set(rewards) <= {-1.0, 1.0}
        if policy == "track":
            assert rewards == [1.0] * 5
    with pytest.raises(RuntimeError):
        env.step(0)


def test_toy_speed():
    env = make("toy:catch", seed=0)
    env.reset()
    import time

    t = time.perf_counter()
    n = 0
    while n < 2000:
        n += 1
        if env.step(n % 3)["is_last"]:
            env.reset()
    assert n / (time.perf_counter() - t) > 2000  # "thousands of steps per second" (measured ~40k/s)


# ----------------------------------------------------------------------------- branching


def branch_twice(env, n_steps, seed, warmup=10, tmp_path=None):
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(warmup):
        env.step(random_action(env, rng))
    state = env.get_state()
    for v in state.values():
        assert isinstance(v, np.ndarray)
    if tmp_path is not None:  # must survive an .npz round trip without pickle
        np.savez(tmp_path / "state.npz", **state)
        with np.load(tmp_path / "state.npz", allow_pickle=False) as f:
            state = dict(f)
    actions = [random_action(env, rng) for _ in range(n_steps)]

    def rollout():
        env.set_state(state)
        out = []
        for a in actions:
            o = env.step(a)
            out.append(o)
            if o["is_last"]:
                o = env.reset()  # reset after restore must be reproducible too (RNG is in the state)
                out.append(o)
        return out

    first = rollout()
    env.step(random_action(env, rng))  # perturb
    second = rollout()
    return first, second


def test_toy_branch_exact(tmp_path):
    for env_id in ["toy:catch", "toy:catch-pixel"]:
        a, b = branch_twice(make(env_id), 150, seed=4, tmp_path=tmp_path)  # crosses an episode boundary
        assert len(a) == len(b)
        for oa, ob in zip(a, b):
            assert np.array_equal(oa["image"], ob["image"]) and oa["reward"] == ob["reward"]
            assert oa["is_last"] == ob["is_last"] and oa["is_first"] == ob["is_first"]


def test_atari_branch_exact_with_sticky_actions(tmp_path):
    env = make("atari:Pong", seed=1, sticky=0.25)
    a, b = branch_twice(env, 50, seed=1, warmup=20, tmp_path=tmp_path)
    for oa, ob in zip(a, b):
        assert np.array_equal(oa["image"], ob["image"])
        assert np.array_equal(oa["ram"], ob["ram"])
        assert oa["reward"] == ob["reward"] and oa["is_last"] == ob["is_last"]
    env.close()


def test_render_after_set_state_matches_last_obs():
    for env_id in ["toy:catch", "atari:Pong"]:
        env = make(env_id, seed=0)
        env.reset()
        for _ in range(5):
            env.step(1)
        s = env.get_state()
        last = env.step(2)
        env.step(0)
        env.set_state(s)
        env.step(2)
        assert np.array_equal(env.render()["image"], last["image"])
        env.close()


def test_atari_state_rejects_other_env():
    toy = make("toy:catch", seed=0)
    toy.reset()
    pong = make("atari:Pong", seed=0)
    pong.reset()
    with pytest.raises(ValueError, match="toy:catch"):
        pong.set_state(toy.get_state())
    pong.close()


def test_mujoco_branch(envs):
    env = get_env(envs, "mujoco:HalfCheetah")
    a, b = branch_twice(env, 10, seed=2, warmup=3)
    for oa, ob in zip(a, b):
        assert abs(oa["reward"] - ob["reward"]) < 1e-9
        assert np.abs(oa["image"].astype(int) - ob["image"].astype(int)).max() <= 1


def test_gym_branches_by_deterministic_replay(envs):
    """A gym env's state is its episode seed + the actions since the reset (#30): restoring replays them, and a
    replay that does not reproduce the recorded frame is refused rather than silently wrong."""
    env = get_env(envs, "gym:CartPole-v1")
    assert env.spec.can_branch is True
    a, b = branch_twice(env, 6, seed=2, warmup=4)
    for oa, ob in zip(a, b):
        assert oa["reward"] == ob["reward"] and np.array_equal(oa["image"], ob["image"])
    env.reset()  # an unseeded reset still draws a known seed, so the episode replays
    for _ in range(3):
        env.step(1)
    state = env.get_state()
    assert state["actions"].tolist() == [1, 1, 1] and state["ints"].tolist() == [3, 0]
    frame = env.step(0)["image"]
    env.set_state(state)
    assert np.array_equal(env.step(0)["image"], frame)
    bad = dict(state, frame_sha256=np.zeros(32, np.uint8))
    with pytest.raises(ValueError, match="not deterministic under replay"):
        env.set_state(bad)
    with pytest.raises(ValueError, match="2 actions for 3 steps"):
        env.set_state(dict(state, actions=state["actions"][:2]))


# ----------------------------------------------------------------------------- Atari RAM annotations


@pytest.mark.parametrize("game, obj", [("Pong", "ball"), ("Pong", "player"), ("Breakout", "ball"), ("Breakout", "player")])
def test_atari_ram_annotation_lands_on_object(game, obj):
    env = make(f"atari:{game}", seed=0, sticky=0.0)
    obs = env.reset()
    rng = np.random.default_rng(0)
    hits = checked = 0
    background = int(np.bincount(obs["image"].ravel()).argmax())
    for t in range(150):
        a = 1 if (game == "Breakout" and t % 20 == 0) else int(rng.integers(env.spec.num_actions))  # FIRE serves
        obs = env.step(a)
        if obs["is_last"]:
            obs = env.reset()
        x, y, w, h = obs["objects"][obj]
        if np.isnan(x):
            continue
        if obj == "ball":
            assert 0.5 < w < 1.2 and 1.0 < h < 1.5  # 2x4 screen px at 64/160 x 64/210
        checked += 1
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        x1, y1 = int(np.ceil(x + w)), int(np.ceil(y + h))
        patch = obs["image"][0, y0:y1, x0:x1].astype(int)
        hits += int(np.abs(patch - background).max() > 20)
    env.close()
    assert checked >= 30
    assert hits >= 0.9 * checked


# ----------------------------------------------------------------------------- gym: generic envs, --import

USER_MODULE = textwrap.dedent(
    '''
    import gymnasium as gym
    import numpy as np

    class TinyPixelEnv(gym.Env):
        """32x48 RGB observations, 2-D Box actions in [0, 10]; the red channel shows the last action."""

        def __init__(self):
            self.observation_space = gym.spaces.Box(0, 255, (32, 48, 3), np.uint8)
            self.action_space = gym.spaces.Box(0.0, 10.0, (2,), np.float32)
            self.last_action = None

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros((32, 48, 3), np.uint8), {}

        def step(self, action):
            self.last_action = np.array(action)
            self.t += 1
            img = np.zeros((32, 48, 3), np.uint8)
            img[..., 0] = int(action[0] * 20)
            return img, float(self.t), False, False, {}

    gym.register("XdTinyPixel-v0", entry_point=TinyPixelEnv, max_episode_steps=5)
    '''
)


def test_import_modules_and_custom_gym_env(tmp_path, monkeypatch):
    (tmp_path / "xd_user_envs.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="could not import module xd_no_such_module"):
        import_modules(["xd_no_such_module"])
    import_modules(["xd_user_envs"])
    env = make("gym:XdTinyPixel-v0", seed=0, action_repeat=1)
    assert env.spec.obs_shape == (3, 64, 64) and not env.spec.discrete and env.spec.num_actions == 2
    assert env.spec.max_steps == 5
    obs = env.reset()
    check_obs(env, obs, first=True)
    obs = env.step(np.array([0.0, 1.0]))  # -> rescaled to [5, 10]
    np.testing.assert_allclose(env._env.unwrapped.last_action, [5.0, 10.0])
    assert obs["image"][0].min() == 100 and obs["image"][1:].max() == 0 and obs["reward"] == 1.0
    steps = 1
    while not obs["is_last"]:
        obs = env.step(np.zeros(2))
        steps += 1
    assert steps == 5 and not obs["is_terminal"]  # TimeLimit truncation is not terminal
    assert env.get_state()["ints"].tolist() == [5, 1]  # branchable by replay (#30)
    env.close()
    sys.modules.pop("xd_user_envs", None)


def test_gym_module_colon_form(tmp_path, monkeypatch):
    (tmp_path / "xd_user_envs2.py").write_text(USER_MODULE.replace("XdTinyPixel-v0", "XdTinyPixel2-v0"))
    (tmp_path / "marker_payload.py").write_text("open(__file__ + '.ran', 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # An env id names a module but never imports it (#28): ids come from files; only import_modules does.
    for env_id in ("gym:xd_user_envs2:XdTinyPixel2-v0", "gym:marker_payload:CartPole-v1"):
        with pytest.raises(ValueError, match="pass --import"):
            make(env_id)
    with pytest.raises(ValueError, match="bad env id"):
        make("gym:sys:marker_payload:CartPole-v1")  # gymnasium.make would import marker_payload itself
    assert "xd_user_envs2" not in sys.modules and not (tmp_path / "marker_payload.py.ran").exists()
    import_modules(["xd_user_envs2"])
    env = make("gym:xd_user_envs2:XdTinyPixel2-v0")
    assert env.spec.id == "gym:XdTinyPixel2-v0"
    env.close()
    sys.modules.pop("xd_user_envs2", None)


def test_catch_lanes_count():
    """`lanes=N` spreads N ball columns over 0..60; 3 is the default game and 61 is toy:catch itself."""
    actions = np.random.default_rng(4).integers(0, 3, 150)
    full = run_actions(make("toy:catch"), actions, seed=9)
    every = run_actions(make("toy:catch-lanes", lanes=61), actions, seed=9)  # the same RNG draws as toy:catch
    assert len(full) == len(every)
    for a, b in zip(full, every):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["reward"] == b["reward"] and a["is_last"] == b["is_last"]
    default = run_actions(make("toy:catch-lanes"), actions, seed=9)
    three = run_actions(make("toy:catch-lanes", lanes=3), actions, seed=9)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(default, three))
    six = run_actions(make("toy:catch-pixel-lanes", lanes=6), actions, seed=9)
    assert {int(o["objects"]["ball"][0]) - 2 for o in six} <= {0, 12, 24, 36, 48, 60}
    for bad in (0, 62):
        with pytest.raises(ValueError, match="lanes must be in"):
            make("toy:catch-lanes", lanes=bad)
    with pytest.raises(ValueError, match="unknown override"):
        make("toy:catch", lanes=3)


def test_atari_states_restore_out_of_order_with_their_own_sticky_action():
    """The ALE's previous action (which sticky actions repeat) is not in its cloned state; ``get_state`` keeps it and
    ``set_state`` primes it, so a state restored out of order re-runs its step exactly (without that, 10 of 150
    random-action Pong steps differed). A state without it (older traces: 4 ints) still loads."""
    env = make("atari:Pong")
    rng = np.random.default_rng(0)
    env.reset(seed=1)
    states, actions, frames = [], [], []
    for _ in range(80):
        states.append(env.get_state())
        actions.append(int(rng.integers(env.spec.num_actions)))
        frames.append(env.step(actions[-1])["image"].copy())
    for t in np.random.default_rng(5).permutation(80):
        env.set_state(states[t])
        assert np.array_equal(env.step(actions[t])["image"], frames[t]), t
    old = dict(states[10], ints=states[10]["ints"][:4])
    env.set_state(old)
    env.step(0)
    env.close()
