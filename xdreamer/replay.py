"""Episode replay: complete episodes on disk as compressed uint8 ``.npz``, a bounded copy in RAM.

Layout of one stored episode of length T (time alignment, see ``rssm.py``)::

    index t:     0        1        2      ...   T-1
    image:       o_0      o_1      o_2          o_{T-1}
    action:      0        a_0      a_1          a_{T-2}     (the action that led to o_t)
    reward:      0        r_1      r_2          r_{T-1}     (the reward received on arriving at o_t)
    is_first:    1        0        0            0
    is_last:     0        0        0            1
    is_terminal: 0        0        0            1 if the episode ended (not truncated)

Episodes are written atomically (temporary file, then ``os.replace``) when they end, so
after ``kill -9`` every completed episode is on disk and no half-written file is read. With
``replay_chunk`` N > 0 a running episode is also stored every N steps as a chunk (the next chunk
starts with ``is_first`` 0); sampling treats chunks like episodes and marks ``is_first`` where a
sequence continues into another chunk, so the RSSM never carries state across that seam.
Sampling follows dreamerv2 ``common/replay.py``: uniform over episodes, an offset with
``prioritize_ends``; a sequence that runs past an episode's end continues in another
episode, whose first step has ``is_first`` set, so every sample has fixed length.
"""

from __future__ import annotations

import io
import os
import pathlib
import time
import uuid
from collections import OrderedDict
from typing import Mapping

import numpy as np

KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal")


class Replay:
    def __init__(self, directory: str | os.PathLike | None, capacity: int, seed: int = 0,
                 prioritize_ends: bool = True) -> None:
        self.directory = pathlib.Path(directory) if directory is not None else None
        self.capacity = int(capacity)
        self.prioritize_ends = prioritize_ends
        self.rng = np.random.default_rng(seed)
        self.episodes: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self.num_steps = 0  # steps currently held in memory
        self.total_steps = 0  # steps ever added (incl. evicted)
        self.total_episodes = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    # ---- adding -------------------------------------------------------------------------
    def add_episode(self, episode: Mapping[str, np.ndarray]) -> str:
        """Store a finished episode (dict of arrays ``[T, ...]``); returns its name."""
        episode = {k: np.asarray(episode[k]) for k in KEYS}
        length = len(episode["image"])
        assert all(len(v) == length for v in episode.values()), {k: len(v) for k, v in episode.items()}
        assert episode["image"].dtype == np.uint8, episode["image"].dtype
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{self.total_episodes:07d}-{uuid.uuid4().hex[:6]}-{length}"
        if self.directory is not None:
            save_episode(self.directory / f"{name}.npz", episode)
        self._insert(name, episode)
        self.total_steps += length
        return name

    def _insert(self, name: str, episode: dict[str, np.ndarray]) -> None:
        self.episodes[name] = episode
        self.num_steps += len(episode["image"])
        self.total_episodes += 1
        while self.num_steps > self.capacity and len(self.episodes) > 1:
            _, old = self.episodes.popitem(last=False)  # evict the oldest (FIFO, as dreamerv2)
            self.num_steps -= len(old["image"])

    def load(self) -> int:
        """Reload the newest episodes from disk up to capacity (for ``--resume``)."""
        if self.directory is None:
            return 0
        for stale in self.directory.glob(".*.npz.tmp"):  # a write killed before its rename (save_episode)
            stale.unlink(missing_ok=True)
        files = sorted(self.directory.glob("*.npz"))
        chosen, steps = [], 0
        for path in reversed(files):
            length = int(path.stem.rsplit("-", 1)[-1])
            if steps + length > self.capacity and chosen:
                break
            chosen.append(path)
            steps += length
        for path in reversed(chosen):
            try:
                episode = load_episode(path)
            except Exception as exc:  # a truncated file from a crash mid-write cannot exist (atomic),
                raise ValueError(f"corrupt replay episode {path}: {exc}") from None  # but say so if it does
            self._insert(path.stem, episode)
        self.total_steps = sum(int(p.stem.rsplit("-", 1)[-1]) for p in files)
        self.total_episodes = len(files)
        return len(chosen)

    # ---- sampling -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_steps

    def sample(self, batch: int, length: int) -> dict[str, np.ndarray]:
        """A batch of sequences, dict of arrays ``[batch, length, ...]``."""
        if not self.episodes:
            raise ValueError("replay is empty; collect episodes before sampling")
        names = list(self.episodes)
        seqs = [self._sample_sequence(names, length) for _ in range(batch)]
        return {k: np.stack([s[k] for s in seqs]) for k in KEYS}

    def _sample_sequence(self, names: list[str], length: int) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
        need, first = length, True
        while need > 0:
            episode = self.episodes[names[self.rng.integers(len(names))]]
            total = len(episode["image"])
            if first:
                available = max(total - need, 0)
                upper = available + (need if self.prioritize_ends else 0)
                start = min(int(self.rng.integers(0, upper + 1)), available)
            else:
                start = 0  # continuation: another episode (or chunk) from its beginning
            take = min(need, total - start)
            for k in KEYS:
                parts[k].append(episode[k][start:start + take])
            if not first and not episode["is_first"][0]:
                # a chunk that continues a longer episode: mark the seam so that the RSSM resets there
                parts["is_first"][-1] = parts["is_first"][-1].copy()
                parts["is_first"][-1][0] = True
            need -= take
            first = False
        return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in parts.items()}

    def stored_bytes(self) -> int:
        if self.directory is None:
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("*.npz"))


def save_episode(path: pathlib.Path, episode: Mapping[str, np.ndarray]) -> None:
    """Atomically write a compressed ``.npz`` (no pickled objects)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in episode.items()})
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


MAX_STEP_BYTES = 1 << 20  # one stored step of one key (a 64x64 RGB frame is 12 KB)


def load_episode(path: pathlib.Path) -> dict[str, np.ndarray]:
    """Read an episode written by ``save_episode``, bounded by the length its file name states (issue #28:
    a run folder may come from someone else; nothing is inflated past what that length implies)."""
    from .npzfile import NpzLimitError, load_bounded

    try:
        length = int(path.stem.rsplit("-", 1)[-1])
    except ValueError:
        raise NpzLimitError(f"{path.name} does not end in -<length>") from None

    def check(headers) -> None:
        if set(headers) != set(KEYS):
            raise NpzLimitError(f"members {sorted(headers)}, expected {sorted(KEYS)}")
        for key, member in headers.items():
            if not member.shape or member.shape[0] != length or member.nbytes > length * MAX_STEP_BYTES:
                raise NpzLimitError(f"{key} has shape {member.shape}, expected {length} steps of at most "
                                    f"{MAX_STEP_BYTES:,} bytes")

    return load_bounded(path, check)


class EpisodeBuilder:
    """Collects the steps of the running episode; ``add`` returns the finished episode on is_last."""

    def __init__(self, spec_discrete: bool, action_dim: int) -> None:
        self.discrete, self.action_dim = spec_discrete, action_dim
        self.steps: list[dict[str, np.ndarray]] = []

    def add(self, obs: Mapping[str, np.ndarray], prev_action) -> dict[str, np.ndarray] | None:
        if obs["is_first"]:
            self.steps = []
        if prev_action is None:
            prev_action = 0 if self.discrete else np.zeros(self.action_dim, np.float32)
        self.steps.append({
            "image": obs["image"],
            "action": np.asarray(prev_action, np.int32 if self.discrete else np.float32),
            "reward": np.float32(obs["reward"]), "is_first": bool(obs["is_first"]),
            "is_last": bool(obs["is_last"]), "is_terminal": bool(obs["is_terminal"]),
        })
        if obs["is_last"]:
            episode = self.stacked()
            self.steps = []
            return episode
        return None

    def take_chunk(self) -> dict[str, np.ndarray]:
        """The steps collected so far as a chunk of the still running episode, which then continues
        empty (its next step, not ``is_first``, opens the next chunk)."""
        chunk = self.stacked()
        self.steps = []
        return chunk

    def stacked(self) -> dict[str, np.ndarray]:
        """The steps collected so far as arrays ``[T, ...]`` (also for an unfinished episode)."""
        return {k: np.stack([s[k] for s in self.steps]) for k in KEYS}
