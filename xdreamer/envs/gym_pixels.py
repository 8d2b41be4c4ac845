"""`gym:<id>`: any registered Gymnasium env, observed as 64x64 pixels.

If the env's observation space is an image (uint8 Box of shape HxW, HxWx1 or HxWx3) the observation is used;
otherwise the env is made with `render_mode="rgb_array"` and `render()` is used (RGBA frames lose alpha). Frames are
resized to 64x64 with `cv2.INTER_AREA` and made channels-first (C=1 for grayscale, 3 for RGB).

Actions: `Discrete(n, start)` -> int in [0, n) (shifted by `start`); 1-D `Box` -> float array in [-1, 1] rescaled to
the bounds (infinite bounds are passed through unscaled). Other spaces are rejected. `action_repeat` (default 1)
repeats an action and sums rewards. The episode limit is the env's registered `max_episode_steps` (TimeLimit
truncation, is_last only) / action_repeat, or `time_limit` agent steps (default 10,000 when the env has none).

Generic envs cannot restore their simulator state, so `can_branch=False` and get_state/set_state raise
`NotImplementedError`. Register your own envs first with `import_modules(["mypkg.envs"])` (`--import` on the CLI).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Env, EnvSpec, Obs, make_obs, repeat_step, rescale_action

__all__ = ["GymPixelEnv", "make_gym"]

_DEFAULTS = dict(action_repeat=1, size=64, time_limit=None)
DEFAULT_TIME_LIMIT = 10_000


def _is_image_space(space: Any) -> bool:
    from gymnasium.spaces import Box

    if not isinstance(space, Box) or space.dtype != np.uint8:
        return False
    shape = space.shape
    return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))


class GymPixelEnv(Env):
    """Wraps a registered Gymnasium env; see module docstring."""

    def __init__(self, gym_id: str, seed: int | None = None, action_repeat: int = 1, size: int = 64, time_limit: int | None = None):
        import gymnasium as gym
        from gymnasium.spaces import Box, Discrete

        if gym_id not in gym.registry:
            raise ValueError(
                f"unknown Gymnasium env 'gym:{gym_id}': not registered (use --import MODULE to register it first)"
            )
        if action_repeat < 1:
            raise ValueError(f"gym:{gym_id}: action_repeat must be >= 1, got {action_repeat}")
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
            can_branch=False,
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
        obs, _ = self._env.reset(seed=seed)
        self._started = True
        self._done = False
        self._steps = 0
        return make_obs(self._image(obs), 0.0, is_first=True)

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
        self._steps += 1
        truncated = truncated or self._steps >= self._limit
        self._done = terminated or truncated
        return make_obs(self._image(obs), reward, is_last=self._done, is_terminal=terminated)

    def close(self) -> None:
        self._env.close()


def make_gym(gym_id: str, seed: int | None = None, **overrides: Any) -> GymPixelEnv:
    """Build `gym:<id>`; overrides: action_repeat (1), size (64), time_limit (agent steps)."""
    bad = sorted(set(overrides) - set(_DEFAULTS))
    if bad:
        raise ValueError(f"gym:{gym_id}: unknown override(s) {bad}; allowed: {sorted(_DEFAULTS)}")
    return GymPixelEnv(gym_id, seed=seed, **overrides)
