"""World Models (Ha & Schmidhuber 2018, arXiv:1803.10122) as a member of the family (issue #30).

V (``vae.py``) compresses a 64x64 frame to z; M (``mdnrnn.py``) predicts the next z as a mixture of Gaussians per
dimension, the reward and the episode's end from (z, a, h); C (``controller.py``) is linear on [z, h] and is trained
by CMA-ES (``cmaes.py``) or PPO (``ppo.py``), in the real env or in M's dream at temperature τ (``dream.py``).
``train.py`` runs the stages (random rollouts -> V -> M -> C) in a run folder; ``checkpoint.py`` saves and loads the
agent in the package's safe checkpoint format. Importing this package is light: the modules load torch themselves.

    from xdreamer.worldmodels import load, dream
"""

from __future__ import annotations

from typing import Any

__all__ = ["load", "dream"]


def __getattr__(name: str) -> Any:  # lazy: ``xdreamer.config`` imports this package's settings without torch
    if name == "load":
        from .checkpoint import load

        return load
    if name == "dream":
        from .dream import dream

        return dream
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
