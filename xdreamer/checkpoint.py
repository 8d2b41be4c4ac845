"""Checkpoints are folders of data, never code.

::

    <checkpoint>/
      weights.safetensors   agent parameters (world model, actor, critic, slow critic)
      config.json           the resolved Config
      manifest.json         format version, versions, env spec, steps, eval returns, sha256 of weights
      trainer.pt            (training checkpoints only) optimiser + RNG state, read with weights_only=True

Writes are atomic: the folder is assembled under a temporary name and renamed into place.
Loading verifies the sha256, the format version and every tensor's name and shape, and names
the mismatching key when a checkpoint does not fit the env or the architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import shutil
import subprocess
import time
import uuid
from typing import Any, Mapping

import torch

from .config import Config, ConfigError
from .envs import EnvSpec

FORMAT_VERSION = 1
WEIGHTS, CONFIG, MANIFEST, TRAINER = "weights.safetensors", "config.json", "manifest.json", "trainer.pt"


class CheckpointError(ValueError):
    """Missing, corrupt or mismatching checkpoint."""


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("xdreamer", "torch", "numpy", "gymnasium", "ale-py", "mujoco", "safetensors"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=pathlib.Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _write_json(path: pathlib.Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def replace_folder(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing any folder there: the old one is
    renamed aside first and deleted only after ``tmp`` is in place."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save(path: str | os.PathLike, agent, *, steps: int, extra: Mapping[str, Any] | None = None,
         trainer_state: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write ``agent`` to the checkpoint folder ``path`` atomically; returns the path."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        save_file(agent.weights(), str(tmp / WEIGHTS))
        _write_json(tmp / CONFIG, agent.cfg.to_dict())
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "env": agent.spec.to_dict(),
            "steps": int(steps),
            "env_frames": int(steps) * (agent.cfg.action_repeat if agent.spec.id.startswith(("atari:", "mujoco:")) else 1),
            "updates": int(agent.updates),
            "weights_sha256": sha256(tmp / WEIGHTS),
            "versions": library_versions(),
            "commit": git_commit(),
            "hardware": f"{platform.machine()}, {os.cpu_count()} cores, torch device {agent.device}",
            **(extra or {}),
        }
        _write_json(tmp / MANIFEST, manifest)
        if trainer_state is not None:
            torch.save(dict(trainer_state), tmp / TRAINER)
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def update_manifest(path: str | os.PathLike, **fields: Any) -> None:
    """Atomically add fields (e.g. evaluation returns) to a checkpoint's manifest."""
    path = pathlib.Path(path)
    manifest = read_manifest(path)
    manifest.update(fields)
    tmp = path / f".{MANIFEST}.tmp"
    _write_json(tmp, manifest)
    os.replace(tmp, path / MANIFEST)


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint folder, or a run's logdir (then its latest checkpoint)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (path / MANIFEST).exists():
        return path
    latest = path / "checkpoints" / "latest"
    if latest.exists():
        target = path / "checkpoints" / latest.read_text().strip()
        if (target / MANIFEST).exists():
            return target
    raise CheckpointError(f"{path} is not a checkpoint (no {MANIFEST}) nor a run folder with checkpoints")


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see the old
    file or the new one, never a partial write."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_manifest(path: pathlib.Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {manifest.get('format_version')!r}; "
                              f"this xdreamer reads version {FORMAT_VERSION}")
    return manifest


def check_env(trained: EnvSpec, env: EnvSpec) -> None:
    """Raise CheckpointError naming the first field where ``env`` does not fit ``trained``."""
    for key in ("obs_shape", "discrete", "num_actions"):
        a, b = (tuple(x) if isinstance(x, list) else x for x in (getattr(trained, key), getattr(env, key)))
        if a != b:
            raise CheckpointError(f"checkpoint/env mismatch in {key}: checkpoint trained on {trained.id} has "
                                  f"{key}={a}, env {env.id} has {key}={b}")


def load(path: str | os.PathLike, device: str | torch.device | None = None,
         overrides: Mapping[str, Any] | None = None, trainer: bool = False):
    """Load an agent from a checkpoint folder or run folder, verifying integrity and fit.

    ``overrides`` may change run-time fields (device, precision); a change that alters the
    architecture fails with the name of the first mismatching tensor. Returns the ``Agent``
    (in eval mode) with ``.manifest`` and ``.path`` set, and, when ``trainer`` is true, the
    trainer state (optimiser, RNG, counters) as a second value.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .agent import Agent

    path = resolve(path)
    manifest = read_manifest(path)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).exists():
            raise CheckpointError(f"corrupt checkpoint {path}: missing {name}")
    if sha256(path / WEIGHTS) != manifest.get("weights_sha256"):
        raise CheckpointError(f"corrupt checkpoint {path}: sha256 of {WEIGHTS} does not match the manifest")
    try:
        cfg = Config.from_dict(json.loads((path / CONFIG).read_text()))
        if overrides:
            cfg = cfg.replace(**overrides)
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad {CONFIG}: {exc}") from None
    spec = EnvSpec.from_dict(manifest["env"])
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: {exc}") from None
    agent = Agent(cfg, spec, device=device)
    expected = agent.state_dict()
    for key in sorted(set(expected) | set(weights)):
        if key not in weights:
            raise CheckpointError(f"architecture mismatch: checkpoint lacks tensor {key}")
        if key not in expected:
            raise CheckpointError(f"architecture mismatch: checkpoint has unexpected tensor {key}")
        if tuple(weights[key].shape) != tuple(expected[key].shape):
            raise CheckpointError(f"architecture mismatch in {key}: checkpoint {tuple(weights[key].shape)}, "
                                  f"model {tuple(expected[key].shape)}")
    agent.load_state_dict(weights)
    agent.updates = int(manifest.get("updates", 0))
    agent.eval()
    agent.manifest, agent.path = manifest, path
    if not trainer:
        return agent
    state = torch.load(path / TRAINER, weights_only=True) if (path / TRAINER).exists() else None
    return agent, state
