"""`mujoco:<Name>`: Gymnasium MuJoCo `<Name>-v5` tasks observed from 64x64 RGB pixels.

`MUJOCO_GL` defaults to `egl` (headless Mesa EGL) and is set before mujoco is imported (the import is lazy, inside
`make_mujoco`). Actions are float arrays in [-1, 1], clipped and rescaled to the task's bounds, repeated
`action_repeat` times (default 2, rewards summed). `max_steps` = the task's step limit / action repeat
(HalfCheetah: 1000 -> 500). The image is `env.render()` with the task's default camera; by default
(`fast_render=True`) shadows and floor reflections are switched off, which makes software (llvmpipe) EGL rendering
~15x faster on CPU machines and removes a distracting mirror image; `fast_render=False` renders as Gymnasium does.

Branching: `get_state()` stores qpos, qvel, act, ctrl, qacc_warmstart (the solver warm start, so replays match
to ~1e-12), the simulation time, the env's numpy RNG (reset noise) and the step bookkeeping.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from .base import Env, EnvSpec, Obs, State, array_to_rng, make_obs, repeat_step, rescale_action, rng_to_array

__all__ = ["MujocoPixelEnv", "make_mujoco"]

_DEFAULTS = dict(action_repeat=2, size=64, time_limit=None, fast_render=True)


class MujocoPixelEnv(Env):
    """A Gymnasium MuJoCo v5 task rendered to pixels."""

    def __init__(
        self,
        name: str,
        seed: int | None = None,
        action_repeat: int = 2,
        size: int = 64,
        time_limit: int | None = None,
        fast_render: bool = True,
    ):
        os.environ.setdefault("MUJOCO_GL", "egl")
        import gymnasium as gym

        gid = f"{name}-v5"
        if gid not in gym.registry or "mujoco" not in str(gym.registry[gid].entry_point):
            raise ValueError(f"unknown MuJoCo task 'mujoco:{name}': {gid} is not a registered Gymnasium MuJoCo env (e.g. mujoco:HalfCheetah)")
        if action_repeat < 1:
            raise ValueError(f"mujoco:{name}: action_repeat must be >= 1, got {action_repeat}")
        self._wrapped = gym.make(gid, render_mode="rgb_array", width=int(size), height=int(size))
        # Step the unwrapped env: we do our own time limit and keep no wrapper state to branch.
        self._env = self._wrapped.unwrapped
        self._repeat = int(action_repeat)
        self._fast_render = bool(fast_render)
        self._viewer_patched = False
        space = self._env.action_space
        self._low = np.asarray(space.low, dtype=np.float64)
        self._high = np.asarray(space.high, dtype=np.float64)
        if time_limit is None:  # the task's limit in env steps -> agent steps
            time_limit = (self._wrapped.spec.max_episode_steps or 1000) // self._repeat
        self._limit = int(time_limit)
        self._seed = seed
        self._started = False
        self._done = True
        self._steps = 0
        self.spec = EnvSpec(
            id=f"mujoco:{name}",
            obs_shape=(3, int(size), int(size)),
            discrete=False,
            num_actions=int(space.shape[0]),
            action_names=(),
            object_names=(),
            can_branch=True,
            max_steps=self._limit,
        )

    def _image(self) -> np.ndarray:
        if self._fast_render and not self._viewer_patched:
            self._patch_viewer()
        frame = self._env.render()
        return np.ascontiguousarray(np.transpose(frame, (2, 0, 1)), dtype=np.uint8)

    def _patch_viewer(self) -> None:
        # Software EGL (llvmpipe) spends ~90 ms/frame on the 4096^2 shadow map and the floor reflection;
        # without them a 64x64 frame takes ~5 ms. Flags live on the viewer's mjvScene and persist across renders.
        import mujoco

        viewer = self._env.mujoco_renderer._get_viewer("rgb_array")
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._viewer_patched = True

    def reset(self, seed: int | None = None) -> Obs:
        if seed is None and not self._started:
            seed = self._seed
        self._env.reset(seed=seed)
        self._started = True
        self._done = False
        self._steps = 0
        return make_obs(self._image(), 0.0, is_first=True)

    def step(self, action: Any) -> Obs:
        a = rescale_action(self._check_action(action), self._low, self._high).astype(np.float32)
        if self._done:
            raise RuntimeError(f"env {self.spec.id}: call reset() before step() (episode over or not started)")
        _, reward, terminated, truncated = repeat_step(self._env, a, self._repeat)
        self._steps += 1
        truncated = truncated or self._steps >= self._limit
        self._done = terminated or truncated
        return make_obs(self._image(), reward, is_last=self._done, is_terminal=terminated)

    def render(self) -> Obs:
        """Observation of the current state (e.g. after `set_state`), with reward 0 and no flags."""
        return make_obs(self._image(), 0.0)

    def close(self) -> None:
        self._wrapped.close()

    # ------------------------------------------------------------------ branching
    def get_state(self) -> State:
        if not self._started:
            raise RuntimeError(f"env {self.spec.id}: call reset() before get_state()")
        d = self._env.data
        state = self._state_header()
        state["qpos"] = d.qpos.copy()
        state["qvel"] = d.qvel.copy()
        state["act"] = d.act.copy()
        state["ctrl"] = d.ctrl.copy()
        state["qacc_warmstart"] = d.qacc_warmstart.copy()
        state["time"] = np.array(d.time, dtype=np.float64)
        state["np_rng"] = rng_to_array(self._env.np_random)
        state["ints"] = np.array([self._steps, int(self._done)], dtype=np.int64)
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._check_state_header(state, ("qpos", "qvel", "time", "ints"))
        import mujoco

        m, d = self._env.model, self._env.data
        qpos, qvel = np.asarray(state["qpos"], np.float64), np.asarray(state["qvel"], np.float64)
        if qpos.shape != (m.nq,) or qvel.shape != (m.nv,):
            raise ValueError(f"state for {self.spec.id}: qpos/qvel shapes {qpos.shape}/{qvel.shape} != ({m.nq},)/({m.nv},)")
        mujoco.mj_resetData(m, d)
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        if "act" in state and m.na:
            d.act[:] = state["act"]
        if "ctrl" in state:
            d.ctrl[:] = state["ctrl"]
        if "qacc_warmstart" in state:
            d.qacc_warmstart[:] = state["qacc_warmstart"]
        d.time = float(state["time"])
        mujoco.mj_forward(m, d)
        if "np_rng" in state:
            array_to_rng(self._env.np_random, state["np_rng"])
        steps, done = (int(v) for v in np.asarray(state["ints"]))
        self._steps, self._done = steps, bool(done)
        self._started = True


def make_mujoco(name: str, seed: int | None = None, **overrides: Any) -> MujocoPixelEnv:
    """Build `mujoco:<name>`; overrides: action_repeat (2), size (64), time_limit (agent steps), fast_render (True)."""
    bad = sorted(set(overrides) - set(_DEFAULTS))
    if bad:
        raise ValueError(f"mujoco:{name}: unknown override(s) {bad}; allowed: {sorted(_DEFAULTS)}")
    return MujocoPixelEnv(name, seed=seed, **overrides)
