"""Checkpoints are folders of data, never code.

::

    <checkpoint>/
      weights.safetensors   agent parameters (world model, actor, critic, slow critic)
      config.json           the resolved Config
      manifest.json         format version, versions, env spec, steps, eval returns, sha256 of weights
      trainer.pt            (training checkpoints only) optimiser + RNG state, read with weights_only=True

Writes are atomic: the folder is assembled under a temporary name (``.<name>.tmp-<pid>-<uuid8>``) and
renamed into place; the temporaries of killed writes are removed by the next write into that folder
(``clean_stale_temps``). Loading treats every file as hostile (issue #28) and checks, before anything
large is allocated: manifest and config against ``xdreamer.schema``, the ``latest`` pointer (a plain
folder name inside ``checkpoints/``), the weights file's size against the architecture, its sha256, every
tensor's name, shape and dtype, and that no float tensor holds NaN or infinity. ``trainer.pt`` is read with
``weights_only=True`` and its structure checked. Every problem is a one-line ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import platform
import re
import shutil
import subprocess
import time
import uuid
from typing import Any, Mapping

import torch

from .config import Config, ConfigError, check_device, read_config_file
from .envs import EnvSpec
from .schema import (MAX_MANIFEST_BYTES, MAX_POINTER_BYTES, SAFETENSORS_HEADER_PER_TENSOR, SAFETENSORS_HEADER_SLACK,
                     TRAINER_STATE_SLACK, validate_manifest, validate_trainer_state)

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


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """The most telling line of an exception's message (a parser's can span 10 lines), cut to ``limit``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # torch's weights_only refusal opens with advice to load the file unsafely; the line that matters names the global
    line = next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), lines[0] if lines else type(exc).__name__)
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ---- temporary names and their clean-up (#28: killed writes left .step-*.tmp-* folders behind forever) ----------
# Only names this module writes, or wrote before #28, are ever removed (a user's ~/.bashrc.old is not one):
#   .<name>.<tmp|old>-<pid>-<uuid8>  temp_path (now): removed once <pid> is gone
#   .<name>.tmp-<pid>                atomic_write_text before #28: the same
#   .<name>.<tmp|old>-<uuid8>        save / replace_folder before #28, no pid: removed once LEGACY_TEMP_AGE_S old
#   .latest.tmp, .manifest.json.tmp  Trainer.save / update_manifest before #28: the same
_TEMP_PID = re.compile(r"\.(?P<name>.+)\.(?:(?:tmp|old)-(?P<pid>[0-9]+)-[0-9a-f]{8}|tmp-(?P<pid_only>[0-9]+))")
_TEMP_LEGACY = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-[0-9a-f]{8}|\.latest\.tmp|\.manifest\.json\.tmp")
LEGACY_TEMP_AGE_S = 3600.0  # a pid-less temporary this old is no write in progress (a write takes seconds)


def temp_path(path: pathlib.Path, kind: str = "tmp") -> pathlib.Path:
    """``<parent>/.<name>.<kind>-<pid>-<uuid8>``: the writer's pid tells a later run whether the write that
    left it was killed (pid gone: remove it) or is still going on in another process (keep it)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:  # never a writer; os.kill(0, ...) would address our process group
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except (OSError, OverflowError):  # a pid beyond the platform's range
        return False
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[pathlib.Path]:
    """Remove the temporaries of killed writes in ``folder`` (``.<name>.tmp-*`` / ``.<name>.old-*``, files or
    folders): those whose writer pid is not alive, and pid-less ones (earlier versions) once they are
    ``LEGACY_TEMP_AGE_S`` old. Live writers' temporaries are kept, so two runs writing into one folder do not
    delete each other's work. Returns the removed paths; a folder that cannot be listed is left alone."""
    removed: list[pathlib.Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        with_pid = _TEMP_PID.fullmatch(entry.name)
        if with_pid is None and _TEMP_LEGACY.fullmatch(entry.name) is None:
            continue
        try:
            if with_pid is not None:
                if _pid_alive(int(with_pid["pid"] or with_pid["pid_only"])):
                    continue
            elif now - entry.stat(follow_symlinks=False).st_mtime < LEGACY_TEMP_AGE_S:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(pathlib.Path(entry.path))
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    return removed


def replace_folder(tmp: pathlib.Path, path: pathlib.Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing any folder there: the old one is
    renamed aside first and deleted only after ``tmp`` is in place."""
    old = None
    if path.exists():
        old = temp_path(path, "old")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save(path: str | os.PathLike, agent, *, steps: int, extra: Mapping[str, Any] | None = None,
         trainer_state: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write ``agent`` to the checkpoint folder ``path`` atomically; returns the path. Temporaries that
    killed writes left in ``path``'s parent are removed first."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = temp_path(path)
    tmp.mkdir()
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
    clean_stale_temps(path)
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# A checkpoint folder name as Trainer.save writes it (step-000001000) or any plain name: no separator, no "..",
# not absolute, not hidden. #28: "latest" holding "/etc" or "../../x" was followed outside the run folder.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def _read_pointer(latest: pathlib.Path) -> str:
    """The folder name in a ``checkpoints/latest`` pointer file; CheckpointError unless it is a plain name."""
    try:
        if not latest.is_file():
            raise CheckpointError(f"{latest} is not a regular file")
        with open(latest, "rb") as f:
            raw = f.read(MAX_POINTER_BYTES + 1)
        name = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {latest} ({_one_line(exc)})") from None
    if len(raw) > MAX_POINTER_BYTES or not _PLAIN_NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 60 else repr(name[:57]) + "..."
        raise CheckpointError(f"{latest} names {shown}; it must hold the plain name of a checkpoint folder inside "
                              f"{latest.parent} (e.g. step-000001000)")
    return name


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint folder, or a run's logdir (then its latest checkpoint, which must lie inside
    ``<run>/checkpoints/``)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if (path / MANIFEST).exists():
        return path
    folder = path / "checkpoints"
    latest = folder / "latest"
    if latest.exists() or latest.is_symlink():
        target = folder / _read_pointer(latest)
        try:
            inside = target.resolve().parent == folder.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:  # a symlinked checkpoint folder that leads elsewhere
            raise CheckpointError(f"{latest} names {target.name!r}, which leads outside {folder}")
        if (target / MANIFEST).exists():
            return target
        raise CheckpointError(f"{latest} names {target.name!r}, which holds no {MANIFEST}")
    raise CheckpointError(f"{path} is not a checkpoint (no {MANIFEST}) nor a run folder with checkpoints")


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see the old
    file or the new one, never a partial write. On any failure the temporary is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_json(folder: pathlib.Path, name: str, limit: int) -> Any:
    """Parsed JSON of ``folder/name`` read with at most ``limit`` bytes; CheckpointError on anything else."""
    path = folder / name
    try:
        if not path.is_file():  # a folder, a FIFO (open would block), a device
            raise CheckpointError(f"corrupt checkpoint {folder}: {name} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise CheckpointError(f"corrupt checkpoint {folder}: cannot read {name} ({_one_line(exc)})") from None
    if len(raw) > limit:
        raise CheckpointError(f"corrupt checkpoint {folder}: {name} is larger than {limit} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise CheckpointError(f"corrupt checkpoint {folder}: cannot read {name} ({_one_line(exc)})") from None


def read_manifest(path: pathlib.Path) -> dict[str, Any]:
    """The checkpoint's manifest, validated (``schema.ManifestModel``); CheckpointError naming the field."""
    path = pathlib.Path(path)
    manifest = _read_json(path, MANIFEST, MAX_MANIFEST_BYTES)
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(manifest, dict) and (type(version) is not int or version != FORMAT_VERSION):
        shown = repr(version) if len(repr(version)) <= 60 else repr(version)[:57] + "..."
        raise CheckpointError(f"checkpoint {path} has format version {shown}; "
                              f"this xdreamer reads version {FORMAT_VERSION}")
    try:
        return validate_manifest(manifest, f"corrupt checkpoint {path}: {MANIFEST}")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def check_env(trained: EnvSpec, env: EnvSpec) -> None:
    """Raise CheckpointError naming the first field where ``env`` does not fit ``trained``."""
    for key in ("obs_shape", "discrete", "num_actions"):
        a, b = (tuple(x) if isinstance(x, list) else x for x in (getattr(trained, key), getattr(env, key)))
        if a != b:
            raise CheckpointError(f"checkpoint/env mismatch in {key}: checkpoint trained on {trained.id} has "
                                  f"{key}={a}, env {env.id} has {key}={b}")


def expected_tensors(cfg: Config, spec: EnvSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor an agent of ``cfg`` for ``spec`` holds, from a model built on the
    meta device (shapes without memory): what a weights file must hold, known before anything is allocated."""
    from .agent import Agent

    with torch.device("meta"):
        shell = Agent(cfg, spec, device=torch.device("meta"))
    return {key: (tuple(t.shape), t.dtype) for key, t in shell.state_dict().items()}


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


# safetensors dtype codes -> torch dtype names (for messages and the comparison with the model's dtypes)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _read_weights(path: pathlib.Path, file: pathlib.Path, manifest: Mapping[str, Any],
                  expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """The tensors of the weights file ``file``, after checking (in this order, each before anything is
    allocated for it) its size against the architecture, its sha256 against the manifest, and each tensor's
    name, shape and dtype against ``expected``; then that no float tensor holds NaN or infinity."""
    from safetensors import safe_open

    size = file.stat().st_size
    need = sum(_nbytes(*v) for v in expected.values())
    slack = SAFETENSORS_HEADER_SLACK + SAFETENSORS_HEADER_PER_TENSOR * len(expected)
    if size > need + slack:
        raise CheckpointError(f"architecture mismatch: {file} is {size} bytes, more than the {need} bytes of "
                              f"tensors (+{slack} of header) of the architecture in {CONFIG}")
    try:
        digest = sha256(file)
    except OSError as exc:  # unreadable (permissions, I/O error)
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read {WEIGHTS} ({_one_line(exc)})") from None
    if digest != manifest.get("weights_sha256"):
        raise CheckpointError(f"corrupt checkpoint {path}: sha256 of {WEIGHTS} does not match the manifest")
    weights = {}
    try:
        with safe_open(str(file), framework="pt") as f:
            header = {}
            for key in f.keys():
                part = f.get_slice(key)
                header[key] = (tuple(part.get_shape()), part.get_dtype())
            for key in sorted(set(expected) | set(header)):
                if key not in header:
                    raise CheckpointError(f"architecture mismatch: checkpoint lacks tensor {key}")
                if key not in expected:
                    raise CheckpointError(f"architecture mismatch: checkpoint has unexpected tensor {key}")
                (shape, code), (want_shape, want_dtype) = header[key], expected[key]
                if shape != want_shape:
                    raise CheckpointError(f"architecture mismatch in {key}: checkpoint {shape}, model {want_shape}")
                have, want = _ST_DTYPES.get(code, code), str(want_dtype).removeprefix("torch.")
                if have != want:
                    raise CheckpointError(f"corrupt checkpoint {path}: tensor {key} has dtype {have}, expected {want}")
            for key in sorted(expected):
                tensor = f.get_tensor(key)
                if tensor.is_floating_point():
                    bad = int((~torch.isfinite(tensor)).sum())
                    if bad:
                        raise CheckpointError(f"corrupt checkpoint {path}: tensor {key} has {bad} non-finite values")
                weights[key] = tensor
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' parser on a hostile file: SafetensorError, OSError, ValueError ...
        raise CheckpointError(f"corrupt checkpoint {path}: {WEIGHTS}: {_one_line(exc)}") from None
    return weights


def read_trainer_state(path: pathlib.Path, weights_bytes: int) -> dict[str, Any] | None:
    """``trainer.pt`` of the checkpoint ``path`` (None when it has none), read with ``weights_only=True``
    (tensors and plain containers only, never code) and checked against ``schema.TrainerStateModel``. Its size
    is bounded by the optimizer state of ``weights_bytes`` of weights (AdamW: two moments per parameter)."""
    file = path / TRAINER
    if not (file.exists() or file.is_symlink()):
        return None
    if not file.is_file():
        raise CheckpointError(f"refusing {file}: not a regular file")
    size, limit = file.stat().st_size, 3 * weights_bytes + TRAINER_STATE_SLACK
    if size > limit:
        raise CheckpointError(f"refusing {file}: {size} bytes, more than the {limit} an optimizer state of this "
                              "architecture takes")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (a refused global), RuntimeError/EOFError (no torch file), OSError
        raise CheckpointError(f"refusing {file}: not a plain trainer state ({_one_line(exc)})") from None
    try:
        return validate_trainer_state(state, f"refusing {file}: not a plain trainer state")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _regular_file(path: pathlib.Path, name: str) -> pathlib.Path:
    file = path / name
    if not file.exists():
        raise CheckpointError(f"corrupt checkpoint {path}: missing {name}")
    if not file.is_file():
        raise CheckpointError(f"corrupt checkpoint {path}: {name} is not a regular file")
    return file


def load(path: str | os.PathLike, device: str | torch.device | None = None,
         overrides: Mapping[str, Any] | None = None, trainer: bool = False):
    """Load an agent from a checkpoint folder or run folder, verifying integrity and fit.

    ``overrides`` may change run-time fields (device, precision); a change that alters the
    architecture fails with the name of the first mismatching tensor. Returns the ``Agent``
    (in eval mode) with ``.manifest`` and ``.path`` set, and, when ``trainer`` is true, the
    trainer state (optimiser, RNG, counters) as a second value. A World Models checkpoint (``algo:
    worldmodels``) is verified by ``xdreamer.worldmodels.load`` and returned as its analysis view
    (``xdreamer.worldmodels.analysis.WorldModelsView``: the Dreamer agent's interface over V, M and C).

    Everything is checked before the model is built (#28): the manifest and config.json against
    ``xdreamer.schema`` (so ``deter: 10^7`` never allocates), the device, the weights file's size against
    the architecture (from a model on the meta device), its sha256, each tensor's name, shape, dtype and
    finiteness. Every problem is a one-line CheckpointError (an unavailable device: ConfigError).
    """
    from .agent import Agent

    path = resolve(path)
    manifest = read_manifest(path)
    if manifest.get("algo") == "worldmodels":  # issue #30: its own agent class and loader, seen through a view
        if trainer:
            raise CheckpointError(f"{path} is a World Models checkpoint: resume its training with xdreamer train "
                                  "--resume --logdir <run folder> (its stages keep their own state)")
        from .worldmodels.analysis import view
        from .worldmodels.checkpoint import load as load_worldmodels

        return view(load_worldmodels(path, device=device, overrides=overrides))
    weights_file = _regular_file(path, WEIGHTS)
    _regular_file(path, CONFIG)
    try:
        cfg = read_config_file(path / CONFIG)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None
    if overrides:
        cfg = cfg.replace(**overrides)  # the caller's values: a ConfigError names the field
    if not isinstance(device, torch.device):
        check_device(device or cfg.device)
    try:
        spec = EnvSpec.from_dict(manifest["env"])
        expected = expected_tensors(cfg, spec)
    except Exception as exc:  # an architecture that cannot be built for this env (shapes only, on the meta device)
        raise CheckpointError(f"checkpoint {path}: cannot build the architecture of {CONFIG} for its env "
                              f"({type(exc).__name__}: {_one_line(exc)})") from None
    weights = _read_weights(path, weights_file, manifest, expected)
    agent = Agent(cfg, spec, device=device)
    agent.load_state_dict(weights)
    agent.updates = int(manifest.get("updates", 0))
    agent.eval()
    agent.manifest, agent.path = manifest, path
    if not trainer:
        return agent
    return agent, read_trainer_state(path, sum(_nbytes(*v) for v in expected.values()))
