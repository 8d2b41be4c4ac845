"""xdreamer: train DreamerV2 agents and explain them.

``import xdreamer`` stays light; torch and the envs load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load", "__version__"]


def load(path, device=None):
    """Load a trained agent from a checkpoint folder (or a run folder's latest checkpoint).

    Returns an ``xdreamer.agent.Agent`` in eval mode with ``.wm`` (world model), ``.actor``,
    ``.critic``, ``.cfg`` (Config), ``.spec`` (EnvSpec) and ``.manifest``. Loading reads data
    only (safetensors + JSON); it never executes code from the checkpoint.
    """
    from .checkpoint import load as _load

    return _load(path, device=device)
