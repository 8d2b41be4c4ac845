"""Sharing the CPU with other processes (#31): OpenMP's wait policy and torch's intra-op threads.

torch's CPU kernels (and MKL inside them) run their parallel regions on GNU OpenMP (``libgomp``, see
``torch.__config__.parallel_info()``). At the end of every region its threads spin for about 300,000 iterations
before they sleep. On a quiet machine that saves a wake-up; on a machine whose cores other processes hold, the
spinning thread burns the time slice that its sibling needs to finish the region, and a region cannot end before
the scheduler gives every one of its threads the core back. Recording 200 Pong steps beside CPU-bound neighbours
took 15-96 s with the default against 3.5-7.5 s with passive waiting, and 1.0 s at best alone, on a 2-core
EPYC (``docs/experiments/neighbour.py``; docs/benchmarks.md, "Sharing the machine").

The runtime reads ``OMP_WAIT_POLICY`` once, when it is loaded, that is at the first ``import torch``: so
``share_cpu`` must run before that (every ``xdreamer`` command calls it first, as do the app's script and the test
suite), and it also reaches every child process (the app's server, ``xdreamer bench``'s subprocesses, Ray workers
of a local cluster), which inherit the environment.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping

#: Variables by which a user (or a launcher) has already chosen how OpenMP threads wait: any of them set wins.
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY")
#: What ``share_cpu`` sets: idle OpenMP threads sleep at once (GNU, LLVM and Intel OpenMP all read it).
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


def wait_policy_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables ``share_cpu`` adds to ``environ`` (default ``os.environ``): ``PASSIVE``, or nothing when
    the environment already chooses a wait policy (``USER_CHOICES``)."""
    environ = os.environ if environ is None else environ
    return {} if any(environ.get(k) for k in USER_CHOICES) else dict(PASSIVE)


def share_cpu(environ: MutableMapping[str, str] | None = None) -> bool:
    """Make OpenMP threads wait passively in this process (if torch is not loaded yet) and in its children.

    Returns whether this process gets passive waiting from this call: False when the user chose a wait policy
    (their choice stands) or when torch was imported before (its OpenMP runtime has read the environment
    already; children still inherit the setting)."""
    environ = os.environ if environ is None else environ
    added = wait_policy_env(environ)
    environ.update(added)
    return bool(added) and "torch" not in sys.modules


def set_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads to ``threads`` when it is positive (the config's ``threads``: an explicit
    choice wins); 0 keeps torch's own choice (``OMP_NUM_THREADS`` if set, else one per core). Returns the count
    in use."""
    import torch

    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()
