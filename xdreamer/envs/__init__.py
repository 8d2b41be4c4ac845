"""Environment layer of xdreamer: one observation-dict contract over toy games, Atari, MuJoCo and Gymnasium envs.

    env = make("atari:Pong", seed=0)          # or toy:catch, toy:catch-pixel, mujoco:HalfCheetah, gym:CartPole-v1
    obs = env.reset()                          # dict: image uint8 [C,64,64], reward, is_first, is_last,
    obs = env.step(action)                     #       is_terminal, objects {name: float32 [x,y,w,h]}, (ram)
    s = env.get_state(); ...; env.set_state(s) # branch the real simulator (env.spec.can_branch)

Heavy dependencies (gymnasium, ale-py, mujoco, cv2) are imported lazily, only for the family being made.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Env, EnvSpec, Obs, State

__all__ = ["Env", "EnvSpec", "Obs", "State", "make", "import_modules", "FAMILIES"]

FAMILIES = ("toy", "atari", "mujoco", "gym")


def make(env_id: str, seed: int | None = None, **overrides: Any) -> Env:
    """Create an environment from an id `family:name`.

    Families: `toy:catch`, `toy:catch-pixel`, `toy:catch-lanes`, `toy:catch-pixel-lanes`, `atari:<Game>`
    (e.g. `atari:Pong`), `mujoco:<Name>` (e.g. `mujoco:HalfCheetah`), `gym:<registered id>`. `seed` seeds the
    first `reset()`; `overrides` are family-specific knobs (atari: sticky, noops, time_limit, size, grayscale,
    frame_skip; mujoco: action_repeat, size, time_limit; gym: action_repeat, size, time_limit; toy: drift,
    balls, and lanes for the `-lanes` games). Bad ids or overrides raise ValueError.
    """
    if not isinstance(env_id, str) or ":" not in env_id:
        raise ValueError(f"bad env id {env_id!r}: expected 'family:name' with family one of {', '.join(FAMILIES)}")
    family, name = env_id.split(":", 1)
    if not name:
        raise ValueError(f"bad env id {env_id!r}: empty name after '{family}:'")
    if family == "toy":
        from .toy import make_toy

        return make_toy(name, seed=seed, **overrides)
    if family == "atari":
        from .atari import make_atari

        return make_atari(name, seed=seed, **overrides)
    if family == "mujoco":
        from .mujoco_pixels import make_mujoco

        return make_mujoco(name, seed=seed, **overrides)
    if family == "gym":
        if ":" in name:  # Gymnasium's "module:EnvId" form: the module registers the env when imported
            module, name = name.split(":", 1)
            _check_imported(module, env_id)
            if ":" in name:  # gymnasium.make would import the next "module:" part itself
                raise ValueError(f"bad env id {env_id!r}: expected gym:<id> or gym:<module>:<id>")
        if name.startswith("ALE/"):
            from .atari import _register

            _register()
        from .gym_pixels import make_gym

        return make_gym(name, seed=seed, **overrides)
    raise ValueError(f"unknown env family {family!r} in {env_id!r}; known families: {', '.join(FAMILIES)}")


def import_modules(names: list[str]) -> None:
    """Import user modules (e.g. ones that call `gymnasium.register`); failures raise ValueError.

    This is the only place xdreamer imports a module by name, and its callers pass only names the user gave:
    `--import` on the CLI or an explicit call from Python. An env id read from a file never gets here (#28).
    """
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure in user code becomes one clear error
            raise ValueError(f"could not import module {name}: {type(e).__name__}: {e}") from e


def _check_imported(module: str, env_id: str) -> None:
    """Refuse `gym:<module>:<id>` unless ``module`` is already imported.

    Env ids come from checkpoints' ``config.json`` and traces, which the manifest's hash does not cover:
    importing the module they name ran code from a downloaded folder (``xdreamer record .`` with an
    ``xdpayload.py`` beside the config, issue #28). A module that is already in ``sys.modules`` was imported by
    the user (``--import``, or their own code), so resolving it executes nothing new.
    """
    import sys

    if module not in sys.modules:
        raise ValueError(f"env {env_id!r} needs module {module!r}, which xdreamer does not import from a file or "
                         f"an env id: pass --import {module} (Python: xdreamer.envs.import_modules([{module!r}]))")
