"""World Models' view of an env: the shared env layer (``xdreamer.envs``), plus the paper's CarRacing preprocessing.

CarRacing's 96x96 frame has a dashboard bar in its bottom 12 rows; World Models crops it and resizes the rest to
64x64 (hardmaru/WorldModelsExperiments ``carracing/env.py`` ``_process_frame``: ``frame[0:84, :, :]``, then a resize
to 64x64). ``make_env`` asks the env layer for the native 96x96 frame (``size=96``) and ``CroppedEnv`` does the
crop and an area resize, so actions, rewards, seeds and branching (deterministic replay) stay the env layer's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from ..envs import Env, Obs, State
from ..training import make_env as make_shared_env

# env id prefix -> (native frame size, rows kept from the top)
CROPS = {"gym:CarRacing-": (96, 84)}


def crop_for(env_id: str) -> tuple[int, int] | None:
    return next((crop for prefix, crop in CROPS.items() if env_id.startswith(prefix)), None)


class CroppedEnv(Env):
    """``env`` (giving native ``size`` frames) observed through its top ``rows`` rows, resized to 64x64."""

    def __init__(self, env: Env, rows: int) -> None:
        self.env, self.rows = env, rows
        channels = env.spec.obs_shape[0]
        self.spec = dataclasses.replace(env.spec, obs_shape=(channels, 64, 64))

    def _view(self, obs: Obs) -> Obs:
        import cv2

        frame = np.transpose(obs["image"][:, :self.rows], (1, 2, 0))
        small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
        return {**obs, "image": np.ascontiguousarray(np.transpose(small.reshape(64, 64, -1), (2, 0, 1)))}

    def reset(self, seed: int | None = None) -> Obs:
        return self._view(self.env.reset(seed=seed))

    def step(self, action: Any) -> Obs:
        return self._view(self.env.step(action))

    def get_state(self) -> State:
        return self.env.get_state()

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.env.set_state(state)

    def close(self) -> None:
        self.env.close()


def make_env(cfg, seed: int | None = None) -> Env:
    """The env of ``cfg`` as World Models sees it (cropped CarRacing; any other env as the env layer makes it)."""
    crop = crop_for(cfg.env)
    if crop is None:
        return make_shared_env(cfg, seed=seed)
    from ..envs import make

    size, rows = crop
    return CroppedEnv(make(cfg.env, seed=seed, size=size), rows)
