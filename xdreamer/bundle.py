"""Bundle a trained checkpoint for shipping (``xdreamer bundle``): copy its weights, config and
manifest (not the optimiser state) to a folder, evaluate it and a random policy on the same fixed
seeds, and record both, with the training provenance, in the bundled manifest under ``bundle``.

The test suite re-runs a short seeded evaluation of every bundled checkpoint and compares it with
the ``bundle`` record, so a bundled number is always reproducible by a command.
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import uuid
from typing import Any

from . import checkpoint
from .evaluation import evaluate, lockstep_envs

BUNDLE_FILES = (checkpoint.WEIGHTS, checkpoint.CONFIG, checkpoint.MANIFEST)
MAX_BYTES = 20 * 2**20  # issue 6: each bundled checkpoint at most 20 MB


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run_commands(ckpt: pathlib.Path) -> list[str]:
    """Commands recorded by ``xdreamer train`` in the run folder that holds ``ckpt``."""
    for folder in (ckpt.parent.parent, ckpt.parent):
        path = folder / "commands.txt"
        if path.exists():
            return [line for line in path.read_text().splitlines() if line.strip()]
    return []


def bundle(source: str | os.PathLike, out: str | os.PathLike, episodes: int = 10, seed: int = 0,
           command: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Bundle ``source`` (checkpoint or run folder) into ``out``; returns the ``bundle`` record."""
    from .training import make_env

    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    src = checkpoint.resolve(source)
    agent = checkpoint.load(src)
    size = sum((src / name).stat().st_size for name in BUNDLE_FILES)
    if size > MAX_BYTES:
        raise ValueError(f"{src} is {size / 2**20:.1f} MB; bundled checkpoints must be at most "
                         f"{MAX_BYTES / 2**20:.0f} MB (train a smaller preset)")
    env = make_env(agent.cfg)
    with lockstep_envs(lambda: make_env(agent.cfg), episodes) as more:
        # the agent's episodes in lockstep (one batched network call per step), the random ones one by one
        mode = evaluate(agent, env, episodes, seed=seed, policy="mode", progress=progress, more_envs=more)
    rand = evaluate(agent, env, episodes, seed=seed, policy="random", progress=progress)
    commands = [command] if command else _run_commands(src)
    record = {
        "source": str(src),
        "episodes": episodes,
        "seed": seed,
        "eval_mode": mode.to_dict(),
        "eval_random": rand.to_dict(),
        "train_commands": commands,
        "train_wall_s": agent.manifest.get("train_wall_s"),
        "cpu": _cpu_name(),
    }
    out = pathlib.Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for name in BUNDLE_FILES:
            shutil.copy2(src / name, tmp / name)
        checkpoint.update_manifest(tmp, bundle=record)
        checkpoint.replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


TABLE_BEGIN = "<!-- bundled-table:begin (written by xdreamer bundle) -->"
TABLE_END = "<!-- bundled-table:end -->"
TABLE_HEAD = ("| folder | env | env steps | updates | train wall time | eval return (mode) | random policy | "
              "episodes | commit |\n|---|---|---|---|---|---|---|---|---|")


def update_readme(root: str | os.PathLike) -> pathlib.Path | None:
    """Rewrite the table between the markers in ``root/README.md`` from every bundled manifest
    under ``root``; returns the README path, or None when it has no markers."""
    root = pathlib.Path(root)
    readme = root / "README.md"
    if not readme.exists():
        return None
    text = readme.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return None
    manifests = {folder.name: checkpoint.read_manifest(folder) for folder in sorted(root.iterdir())
                 if (folder / checkpoint.MANIFEST).exists()}
    rows = [markdown_row(name, manifest) for name, manifest in manifests.items() if "bundle" in manifest]
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    body = "\n".join([TABLE_BEGIN, TABLE_HEAD, *rows, TABLE_END])
    checkpoint.atomic_write_text(readme, head + body + tail)
    return readme


def markdown_row(name: str, manifest: dict[str, Any]) -> str:
    """One row of checkpoints/README.md's table, from a bundled manifest."""
    b = manifest["bundle"]
    wall = b.get("train_wall_s")
    wall_text = f"{wall / 60:.0f} min" if wall else "n/a"
    m, r = b["eval_mode"], b["eval_random"]
    return (f"| `{name}` | `{manifest['env']['id']}` | {manifest['steps']:,} | {manifest['updates']:,} | "
            f"{wall_text} | {m['mean']:.2f} ± {m['std']:.2f} | {r['mean']:.2f} ± {r['std']:.2f} | "
            f"{b['episodes']} (seed {b['seed']}) | `{(manifest.get('commit') or 'n/a')[:10]}` |")
