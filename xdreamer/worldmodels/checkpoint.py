"""World Models checkpoints in the package's safe format (``xdreamer/checkpoint.py``, docs/security.md).

The folder is the shared one: ``weights.safetensors`` (V, M, C and, for PPO, the critic), ``config.json`` and
``manifest.json`` (with ``algo: worldmodels``), written atomically by ``xdreamer.checkpoint.save``. ``load`` checks
it exactly as the shared loader does, before anything is allocated: manifest and config against the schema, the
weights file's size against the architecture (built on the meta device), its sha256, each tensor's name, shape,
dtype and finiteness; nothing is unpickled and no module is imported by name.

Stage outputs inside a run folder (``stages/*.safetensors``) are read with the same bounds: a file larger than the
module's tensors (plus header slack) is refused before it is read, and its tensors must match the module.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import torch

from .. import checkpoint as shared
from ..checkpoint import CheckpointError
from ..config import ConfigError, check_device, read_config_file
from ..envs import EnvSpec
from ..schema import SAFETENSORS_HEADER_PER_TENSOR, SAFETENSORS_HEADER_SLACK
from .agent import WorldModelsAgent

ALGO = "worldmodels"


def save(path: str | os.PathLike, agent: WorldModelsAgent, *, steps: int,
         extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write ``agent`` to the checkpoint folder ``path`` atomically (``xdreamer.checkpoint.save``)."""
    return shared.save(path, agent, steps=steps, extra={"algo": ALGO, **(extra or {})})


def expected_tensors(cfg, spec: EnvSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor of a World Models agent of ``cfg`` for ``spec`` (meta device)."""
    with torch.device("meta"):
        shell = WorldModelsAgent(cfg, spec, device=torch.device("meta"))
    return {key: (tuple(t.shape), t.dtype) for key, t in shell.state_dict().items()}


def load(path: str | os.PathLike, device: str | torch.device | None = None,
         overrides: Mapping[str, Any] | None = None) -> WorldModelsAgent:
    """The World Models agent in a checkpoint folder (or a run folder's latest), verified as
    ``xdreamer.checkpoint.load`` verifies a Dreamer agent; ``.manifest`` and ``.path`` are set. ``overrides`` may
    change run-time fields (``device``). Every problem is a one-line ``CheckpointError``."""
    path = shared.resolve(path)
    manifest = shared.read_manifest(path)
    if manifest.get("algo") != ALGO:
        raise CheckpointError(f"{path} is not a World Models checkpoint (manifest algo {manifest.get('algo')!r}); "
                              "load it with xdreamer.checkpoint.load")
    weights_file = shared._regular_file(path, shared.WEIGHTS)
    shared._regular_file(path, shared.CONFIG)
    try:
        cfg = read_config_file(path / shared.CONFIG)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None
    if cfg.algo != ALGO:
        raise CheckpointError(f"checkpoint {path}: config.json has algo={cfg.algo!r}, the manifest {ALGO!r}")
    if overrides:
        cfg = cfg.replace(**overrides)
    if not isinstance(device, torch.device):
        check_device(device or cfg.device)
    try:
        spec = EnvSpec.from_dict(manifest["env"])
        expected = expected_tensors(cfg, spec)
    except Exception as exc:  # an architecture that cannot be built (shapes only, on the meta device)
        raise CheckpointError(f"checkpoint {path}: cannot build the World Models architecture of "
                              f"{shared.CONFIG} for its env ({type(exc).__name__}: {shared._one_line(exc)})") from None
    weights = shared._read_weights(path, weights_file, manifest, expected)
    agent = WorldModelsAgent(cfg, spec, device=device)
    agent.load_state_dict(weights)
    agent.updates = int(manifest.get("updates", 0))
    agent.eval()
    agent.manifest, agent.path = manifest, path
    return agent


def save_module(path: pathlib.Path, module: torch.nn.Module) -> pathlib.Path:
    """Write a module's tensors to ``path`` (safetensors) through a temporary file and ``os.replace``."""
    from safetensors.torch import save_file

    tmp = shared.temp_path(path)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_module(path: pathlib.Path, module: torch.nn.Module) -> None:
    """Fill ``module`` from ``save_module``'s file, bounded by the module's own tensors (size, names, shapes,
    dtypes, finiteness); a one-line CheckpointError otherwise."""
    from safetensors.torch import load_file

    state = module.state_dict()
    need = sum(t.numel() * t.element_size() for t in state.values())
    slack = SAFETENSORS_HEADER_SLACK + SAFETENSORS_HEADER_PER_TENSOR * len(state)
    try:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing or not a regular file")
        if path.stat().st_size > need + slack:
            raise CheckpointError(f"refusing {path}: {path.stat().st_size} bytes, more than the module's tensors")
        tensors = load_file(str(path))
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors' parser on a damaged file, an unreadable file
        raise CheckpointError(f"refusing {path}: {shared._one_line(exc)}") from None
    if set(tensors) != set(state):
        raise CheckpointError(f"refusing {path}: its tensors {sorted(set(tensors) ^ set(state))[:3]} do not match")
    for key, tensor in tensors.items():
        if tensor.shape != state[key].shape or tensor.dtype != state[key].dtype:
            raise CheckpointError(f"refusing {path}: tensor {key} is {tensor.dtype} {tuple(tensor.shape)}, expected "
                                  f"{state[key].dtype} {tuple(state[key].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing {path}: tensor {key} has non-finite values")
    module.load_state_dict(tensors)
