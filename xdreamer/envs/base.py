"""Shared pieces of the environment layer: `EnvSpec`, the `Env` base class and small helpers.

Every environment returns the same observation dict from `reset()` and `step()`::

    image        np.uint8 [C, 64, 64]
    reward       float
    is_first     bool   (True only for the observation returned by reset)
    is_last      bool   (episode over: terminal or truncated)
    is_terminal  bool   (Gymnasium `terminated`; truncation sets only is_last)
    objects      dict name -> np.float32 [x, y, w, h] in 64x64 frame coordinates (NaN when absent)
    ram          np.uint8 [128] (Atari only)

States returned by `get_state()` are dicts of numpy arrays only, so they can be stored with
`np.savez` and loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np

__all__ = ["EnvSpec", "Env", "Obs", "State"]

Obs = dict[str, Any]
State = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static description of an environment (JSON-serialisable via `to_dict`)."""

    id: str
    obs_shape: tuple[int, int, int]
    discrete: bool
    num_actions: int
    action_names: tuple[str, ...] = ()
    object_names: tuple[str, ...] = ()
    can_branch: bool = False
    max_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {
            "id": self.id,
            "obs_shape": [int(v) for v in self.obs_shape],
            "discrete": bool(self.discrete),
            "num_actions": int(self.num_actions),
            "action_names": list(self.action_names),
            "object_names": list(self.object_names),
            "can_branch": bool(self.can_branch),
            "max_steps": int(self.max_steps),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EnvSpec":
        """Inverse of `to_dict`; unknown keys are an error naming the key."""
        fields = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - fields)
        if extra:
            raise ValueError(f"EnvSpec.from_dict: unknown key(s) {extra}")
        missing = sorted(fields - set(d) - {"action_names", "object_names", "can_branch", "max_steps"})
        if missing:
            raise ValueError(f"EnvSpec.from_dict: missing key(s) {missing}")
        return cls(
            id=str(d["id"]),
            obs_shape=tuple(int(v) for v in d["obs_shape"]),  # type: ignore[arg-type]
            discrete=bool(d["discrete"]),
            num_actions=int(d["num_actions"]),
            action_names=tuple(str(v) for v in d.get("action_names", ())),
            object_names=tuple(str(v) for v in d.get("object_names", ())),
            can_branch=bool(d.get("can_branch", False)),
            max_steps=int(d.get("max_steps", 0)),
        )


class Env:
    """Base class of all xdreamer environments (see module docstring for the obs contract)."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> Obs:
        raise NotImplementedError

    def step(self, action: Any) -> Obs:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "set_state" in cls.__dict__:
            cls.set_state = _guard_set_state(cls.__dict__["set_state"])

    def get_state(self) -> State:
        raise NotImplementedError(f"env {self.spec.id} cannot branch (no get_state/set_state)")

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError(f"env {self.spec.id} cannot branch (no get_state/set_state)")

    def close(self) -> None:
        pass

    def __enter__(self) -> "Env":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.id}>"

    # ----------------------------------------------------------------- helpers for subclasses
    def _check_action(self, action: Any) -> int | np.ndarray:
        """Validate an action: int in [0, n) for discrete, float [n] (clipped to [-1, 1]) otherwise."""
        spec = self.spec
        if spec.discrete:
            return check_discrete_action(action, spec.num_actions, spec.id)
        return check_continuous_action(action, spec.num_actions, spec.id)

    def _state_header(self) -> State:
        return {"env_id": str_to_array(self.spec.id)}

    def _check_state_header(self, state: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> None:
        if "env_id" in state:
            sid = array_to_str(state["env_id"])
            if sid != self.spec.id:
                raise ValueError(f"state was saved from env {sid!r}, cannot restore it into {self.spec.id!r}")
        missing = [k for k in ("env_id",) + keys if k not in state]
        if missing:
            raise ValueError(f"state for {self.spec.id} is missing key(s) {missing}")


def _guard_set_state(method):
    """Every env's ``set_state`` raises a one-line ValueError for a state it cannot restore. States come from
    trace files: a garbled Atari state raised KeyError, RuntimeError or a nanobind SystemError (issue #28)."""
    import functools

    @functools.wraps(method)
    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"state for {self.spec.id} must be a mapping of arrays, got {type(state).__name__}")
        try:
            method(self, state)
        except (ValueError, NotImplementedError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the simulator raises on garbage becomes one line
            line = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(f"state for {self.spec.id} cannot be restored ({type(exc).__name__}: {line})") from None

    return set_state


def check_int_fields(env_id: str, ints: np.ndarray, bounds: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """``ints`` (one value per field of ``bounds``, in order) as a dict, each within its inclusive bounds."""
    ints = np.asarray(ints)
    if ints.shape != (len(bounds),) or ints.dtype.kind not in "iu":
        raise ValueError(f"state for {env_id}: 'ints' must be {len(bounds)} integers, got {ints.dtype} {ints.shape}")
    out = {}
    for (name, (low, high)), value in zip(bounds.items(), ints.tolist()):
        if not low <= value <= high:
            raise ValueError(f"state for {env_id}: {name}={value} is outside {low}..{high}")
        out[name] = int(value)
    return out


def check_discrete_action(action: Any, n: int, env_id: str) -> int:
    """Return `action` as a python int in [0, n) or raise a one-line ValueError."""
    a = action
    if isinstance(a, np.ndarray):
        if a.shape != () or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(
                f"env {env_id}: discrete action must be an int or 0-d int array, got array dtype={a.dtype} shape={a.shape}"
            )
        a = a.item()
    elif isinstance(a, np.integer):
        a = int(a)
    if isinstance(a, bool) or not isinstance(a, int):
        raise ValueError(f"env {env_id}: discrete action must be an int in [0, {n}), got {action!r}")
    if not 0 <= a < n:
        raise ValueError(f"env {env_id}: action {a} out of range [0, {n})")
    return a


def check_continuous_action(action: Any, dim: int, env_id: str) -> np.ndarray:
    """Return `action` as float64 [dim] clipped to [-1, 1] or raise a one-line ValueError."""
    try:
        a = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"env {env_id}: continuous action must be a float array of shape ({dim},), got {action!r}") from None
    if a.shape != (dim,):
        raise ValueError(f"env {env_id}: continuous action must have shape ({dim},), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"env {env_id}: continuous action contains NaN/inf: {a.tolist()}")
    return np.clip(a, -1.0, 1.0)


def rescale_action(a: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action in [-1, 1] to [low, high]."""
    return low + (a + 1.0) * 0.5 * (high - low)


def nan_box() -> np.ndarray:
    return np.full(4, np.nan, dtype=np.float32)


def box(x: float, y: float, w: float, h: float) -> np.ndarray:
    return np.array([x, y, w, h], dtype=np.float32)


def box_slices(box: np.ndarray, size: int = 64) -> tuple[slice, slice] | None:
    """Pixel footprint (rows, cols) of a box ``[x, y, w, h]`` in frame coordinates; None when absent/empty."""
    if not np.all(np.isfinite(box)):
        return None
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + max(w, 1e-3))), size), min(int(np.ceil(y + max(h, 1e-3))), size)
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1)


def str_to_array(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-8"), dtype=np.uint8).copy()


def array_to_str(a: np.ndarray) -> str:
    return np.asarray(a, dtype=np.uint8).tobytes().decode("utf-8")


def rng_to_array(gen: np.random.Generator) -> np.ndarray:
    """Serialise a numpy Generator's bit-generator state (JSON, as uint8 bytes; no pickle)."""
    return str_to_array(json.dumps(gen.bit_generator.state))


def array_to_rng(gen: np.random.Generator, a: np.ndarray) -> None:
    """Restore a Generator's state in place from `rng_to_array` output (a one-line ValueError if garbled)."""
    try:
        state = json.loads(array_to_str(a))
        if not isinstance(state, dict) or state.get("bit_generator") != gen.bit_generator.state["bit_generator"]:
            raise ValueError(f"not a {gen.bit_generator.state['bit_generator']} state")
        gen.bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise ValueError(f"bad random-generator state ({type(exc).__name__}: {exc})") from None


def make_obs(
    image: np.ndarray,
    reward: float = 0.0,
    is_first: bool = False,
    is_last: bool = False,
    is_terminal: bool = False,
    objects: dict[str, np.ndarray] | None = None,
    **extra: Any,
) -> Obs:
    obs: Obs = {
        "image": image,
        "reward": float(reward),
        "is_first": bool(is_first),
        "is_last": bool(is_last),
        "is_terminal": bool(is_terminal),
        "objects": objects if objects is not None else {},
    }
    obs.update(extra)
    return obs


def repeat_step(env: Any, action: Any, repeat: int) -> tuple[Any, float, bool, bool]:
    """Step a Gymnasium env ``repeat`` times with the same action (rewards summed), stopping at the
    episode's end. Returns ``(last_obs, reward, terminated, truncated)``."""
    obs, reward, terminated, truncated = None, 0.0, False, False
    for _ in range(repeat):
        obs, r, terminated, truncated, _ = env.step(action)
        reward += float(r)
        if terminated or truncated:
            break
    return obs, reward, bool(terminated), bool(truncated)
