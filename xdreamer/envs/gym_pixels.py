"""`gym:<id>`: any registered Gymnasium env, observed as 64x64 pixels.

If the env's observation space is an image (uint8 Box of shape HxW, HxWx1 or HxWx3) the observation is used;
otherwise the env is made with `render_mode="rgb_array"` and `render()` is used (RGBA frames lose alpha). Frames are
resized to 64x64 with `cv2.INTER_AREA` and made channels-first (C=1 for grayscale, 3 for RGB).

Actions: `Discrete(n, start)` -> int in [0, n) (shifted by `start`); 1-D `Box` -> float array in [-1, 1] rescaled to
the bounds (infinite bounds are passed through unscaled). Other spaces are rejected. `action_repeat` (default 1)
repeats an action and sums rewards. The episode limit is the env's registered `max_episode_steps` (TimeLimit
truncation, is_last only) / action_repeat, or `time_limit` agent steps (default 10,000 when the env has none).
`crop` (default none) keeps the top `crop` rows of the native frame before the resize: World Models' CarRacing view
(issue #30; `xdreamer.training.env_kwargs` sets it for World Models agents).

Branching by deterministic replay (issue #30): a generic env cannot restore its simulator's internals, so its state is
the episode's seed and the actions taken since the reset. Every episode gets an explicit seed (drawn from a generator
seeded by `make`'s seed where `reset` is given none), and `set_state` resets with that seed and replays the actions.
That holds for every seeded deterministic Gymnasium env (classic control, Box2D's CarRacing, ...); `set_state` checks
the replayed frame against a digest of the recorded one and refuses an env that does not replay exactly. Replaying
costs the steps since the reset. A trace stores only the seed and step count per step (`REPLAY_KEY`) and rebuilds the
actions from its own recorded actions (`Trace.sim_state`), so states stay O(1) per step.

Register your own envs first with `import_modules(["mypkg.envs"])` (`--import` on the CLI).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import hashlib

from .base import (Env, EnvSpec, Obs, State, array_to_rng, check_int_fields, make_obs, repeat_step, rescale_action,
                   rng_to_array)

__all__ = ["GymPixelEnv", "make_gym", "REPLAY_KEY"]

# A state with this key is a replay state: seed + actions since the reset (``GymPixelEnv.get_state``).
REPLAY_KEY = "replay"
MAX_SEED = 2**31 - 1

_DEFAULTS = dict(action_repeat=1, size=64, time_limit=None, crop=None)
DEFAULT_TIME_LIMIT = 10_000


def _is_image_space(space: Any) -> bool:
    from gymnasium.spaces import Box

    if not isinstance(space, Box) or space.dtype != np.uint8:
        return False
    shape = space.shape
    return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))


class GymPixelEnv(Env):
    """Wraps a registered Gymnasium env; see module docstring."""

    def __init__(self, gym_id: str, seed: int | None = None, action_repeat: int = 1, size: int = 64,
                 time_limit: int | None = None, crop: int | None = None):
        import gymnasium as gym
        from gymnasium.spaces import Box, Discrete

        if gym_id not in gym.registry:
            raise ValueError(
                f"unknown Gymnasium env 'gym:{gym_id}': not registered (use --import MODULE to register it first)"
            )
        if action_repeat < 1:
            raise ValueError(f"gym:{gym_id}: action_repeat must be >= 1, got {action_repeat}")
        if crop is not None and int(crop) < 1:
            raise ValueError(f"gym:{gym_id}: crop must be >= 1 rows, got {crop}")
        env = gym.make(gym_id)
        self._use_render = not _is_image_space(env.observation_space)
        if self._use_render:
            env.close()
            try:
                env = gym.make(gym_id, render_mode="rgb_array")
            except Exception as e:  # noqa: BLE001 - env-specific errors
                raise ValueError(f"gym:{gym_id}: observations are not images and rgb_array rendering failed: {e}") from e
        self._env = env
        self._size = int(size)
        self._crop = None if crop is None else int(crop)
        self._repeat = int(action_repeat)
        space = env.action_space
        if isinstance(space, Discrete):
            self._discrete = True
            self._start = int(space.start)
            n = int(space.n)
            meanings = getattr(env.unwrapped, "get_action_meanings", None)
            names = tuple(str(v) for v in meanings()) if callable(meanings) else tuple(f"action_{i}" for i in range(n))
            if len(names) != n:
                names = tuple(f"action_{i}" for i in range(n))
        elif isinstance(space, Box) and len(space.shape) == 1:
            self._discrete = False
            n = int(space.shape[0])
            names = ()
            low = np.asarray(space.low, np.float64)
            high = np.asarray(space.high, np.float64)
            finite = np.isfinite(low) & np.isfinite(high)
            self._low, self._high, self._finite = low, high, finite
            self._act_dtype = space.dtype
        else:
            env.close()
            raise ValueError(f"gym:{gym_id}: unsupported action space {space} (need Discrete or 1-D Box)")
        if time_limit is None:
            limit = env.spec.max_episode_steps if env.spec is not None else None
            time_limit = (limit + self._repeat - 1) // self._repeat if limit else DEFAULT_TIME_LIMIT
        self._limit = int(time_limit)
        if self._use_render:
            channels = 3
        elif len(env.observation_space.shape) == 2:
            channels = 1
        else:
            channels = int(env.observation_space.shape[2])
        self._seed = seed
        self._seeds = np.random.default_rng(seed)  # episode seeds where reset() is given none
        self._episode_seed = 0
        self._actions: list[Any] = []  # this episode's actions, as given to step()
        self._started = False
        self._done = True
        self._steps = 0
        self.spec = EnvSpec(
            id=f"gym:{gym_id}",
            obs_shape=(channels, self._size, self._size),
            discrete=self._discrete,
            num_actions=n,
            action_names=names,
            object_names=(),
            can_branch=True,  # by deterministic replay
            max_steps=self._limit,
        )

    def _image(self, obs: Any) -> np.ndarray:
        import cv2

        frame = self._env.render() if self._use_render else obs
        if frame is None:
            raise RuntimeError(f"env {self.spec.id}: render() returned None")
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[2] == 4:
            frame = frame[:, :, :3]
        if frame.dtype != np.uint8:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
        if self._crop is not None:
            frame = frame[:self._crop]
        if frame.shape[:2] != (self._size, self._size):
            frame = cv2.resize(frame, (self._size, self._size), interpolation=cv2.INTER_AREA)
        if frame.ndim == 2:
            frame = frame[:, :, None]
        c = self.spec.obs_shape[0]
        if frame.shape[2] != c:
            raise RuntimeError(f"env {self.spec.id}: frame has {frame.shape[2]} channels, expected {c}")
        return np.ascontiguousarray(np.transpose(frame, (2, 0, 1)))

    def reset(self, seed: int | None = None) -> Obs:
        if seed is None and not self._started:
            seed = self._seed
        if seed is None:  # every episode has a known seed, so that it can be replayed
            seed = int(self._seeds.integers(0, MAX_SEED))
        self._episode_seed = int(seed)
        obs, _ = self._env.reset(seed=self._episode_seed)
        self._started = True
        self._done = False
        self._steps = 0
        self._actions = []
        self._last_image = self._image(obs)
        return make_obs(self._last_image, 0.0, is_first=True)

    def step(self, action: Any) -> Obs:
        a = self._check_action(action)
        if self._done:
            raise RuntimeError(f"env {self.spec.id}: call reset() before step() (episode over or not started)")
        if self._discrete:
            env_action: Any = int(a) + self._start
        else:
            scaled = np.where(self._finite, rescale_action(a, np.nan_to_num(self._low), np.nan_to_num(self._high)), a)
            env_action = scaled.astype(self._act_dtype)
        obs, reward, terminated, truncated = repeat_step(self._env, env_action, self._repeat)
        self._actions.append(a)
        self._steps += 1
        truncated = truncated or self._steps >= self._limit
        self._done = terminated or truncated
        self._last_image = self._image(obs)
        return make_obs(self._last_image, reward, is_last=self._done, is_terminal=terminated)

    # ------------------------------------------------------------------ branching by replay
    def get_state(self) -> State:
        """The episode's seed, the actions since its reset, the step count and a digest of the current frame."""
        if not self._started:
            raise RuntimeError(f"env {self.spec.id}: call reset() before get_state()")
        state = self._state_header()
        state[REPLAY_KEY] = np.ones(1, np.int8)
        state["seed"] = np.array([self._episode_seed], np.int64)
        state["ints"] = np.array([self._steps, int(self._done)], np.int64)
        state["actions"] = self.actions_array(self._actions)
        state["seeds_rng"] = rng_to_array(self._seeds)  # the next unseeded reset draws the same seed after a restore
        state["frame_sha256"] = np.frombuffer(hashlib.sha256(self._last_image.tobytes()).digest(), np.uint8).copy()
        return state

    def actions_array(self, actions: list[Any]) -> np.ndarray:
        """Actions as stored in a state: int64 ``[t]`` (discrete) or float32 ``[t, A]``."""
        if self._discrete:
            return np.asarray(actions, np.int64).reshape(-1)
        return np.asarray(actions, np.float32).reshape(-1, self.spec.num_actions)

    def set_state(self, state) -> None:
        """Reset with the state's seed and replay its actions; a frame that differs from the recorded one is a
        one-line ValueError (the env is not deterministic under replay)."""
        self._check_state_header(state, (REPLAY_KEY, "seed", "ints", "actions", "frame_sha256"))
        ints = check_int_fields(self.spec.id, state["ints"], {"steps": (0, self._limit), "done": (0, 1)})
        seed = check_int_fields(self.spec.id, state["seed"], {"seed": (0, 2**63 - 1)})["seed"]
        actions = np.asarray(state["actions"])
        if len(actions) != ints["steps"]:
            raise ValueError(f"state for {self.spec.id}: {len(actions)} actions for {ints['steps']} steps")
        want = np.asarray(state["frame_sha256"], np.uint8).tobytes()
        self.reset(seed=seed)
        for action in actions:
            if self._done:
                raise ValueError(f"state for {self.spec.id}: the episode ended before its {len(actions)} "
                                 "actions were replayed (the env is not deterministic under replay)")
            self.step(action if not self._discrete else int(action))
        if hashlib.sha256(self._last_image.tobytes()).digest() != want:
            raise ValueError(f"env {self.spec.id} is not deterministic under replay: the frame after replaying "
                             f"{len(actions)} actions from seed {seed} differs from the recorded one")
        self._done = bool(ints["done"])
        if "seeds_rng" in state:
            array_to_rng(self._seeds, state["seeds_rng"])

    def close(self) -> None:
        self._env.close()


def make_gym(gym_id: str, seed: int | None = None, **overrides: Any) -> GymPixelEnv:
    """Build `gym:<id>`; overrides: action_repeat (1), size (64), time_limit (agent steps), crop (rows kept)."""
    bad = sorted(set(overrides) - set(_DEFAULTS))
    if bad:
        raise ValueError(f"gym:{gym_id}: unknown override(s) {bad}; allowed: {sorted(_DEFAULTS)}")
    return GymPixelEnv(gym_id, seed=seed, **overrides)
