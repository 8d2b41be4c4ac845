"""``run_report``: checkpoint x episode jobs (in-process or on Ray) -> tables, verdicts, clips, HTML.

Output folder (written to a temporary sibling, then renamed, so an interrupted run leaves nothing
half-written)::

    index.html        self-contained report (figures and case thumbnails embedded as base64 PNG)
    summary.csv       one row per failure case (case, checkpoint, env, episode, step, detector, score, detail,
                      object_effects: at the case's step, each object's largest p(action) TV when the simulator moves /
                      removes it, ...,
                      record_seed, checkpoint_path: the checkpoint folder relative to the report folder, or
                      absolute when the two share no folder but the root)
    summary.parquet   the same table (pyarrow)
    summary.md        markdown summary: verdicts, score context, top cases
    episodes.csv      per checkpoint x episode statistics
    verdicts.csv      per game and checkpoint: "cannot see it" (perception) vs "never found reward" (exploration)
    scores.csv        per game: returns vs random / human / DreamerV2 / Rainbow (where published)
    probes.csv        linear-probe R^2 per checkpoint, object variable and feature set
    objects.csv       per checkpoint and object: recon error in box vs background, visibility
    object_effects.csv  per checkpoint and object: p(action) change when the simulator moves / removes it (#27)
    report.json       command, inputs, options, commit, machine, timings
    clips/<case>.mp4  a short clip around each case
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import sys
import time
import uuid
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..checkpoint import replace_folder
from . import detectors as D
from . import render
from .jobs import Job, load_agent, run_job
from .tables import (cases_table, episodes_table, object_effects_table, object_episodes, objects_table,
                     probes_table, scores_table, training_rewards, verdicts_table)

REPORT_MARKER = "report.json"


# ---- inputs -----------------------------------------------------------------------------------
def _labels(paths: Sequence[str]) -> list[str]:
    out, seen = [], {}
    for p in paths:
        name = pathlib.Path(p).resolve().name or "checkpoint"
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def report_relative(path: str | os.PathLike, out: str | os.PathLike) -> str:
    """``path`` as the report folder ``out`` names it: relative to ``out`` (a repository's reports/ and
    checkpoints/ move together), absolute when they share no folder but the file-system root (or a drive)."""
    p, o = pathlib.Path(path).resolve(), pathlib.Path(out).resolve()
    try:
        common = pathlib.Path(os.path.commonpath([p, o]))
    except ValueError:  # different drives (Windows)
        return str(p)
    return str(p) if common == pathlib.Path(common.anchor) else os.path.relpath(p, o)


def _check_out(out: pathlib.Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / REPORT_MARKER).exists())):
        raise ValueError(f"{out} exists and is not an xdreamer report; choose another --out")


def plan_jobs(checkpoints: Sequence[str], traces: Sequence[str] = (), episodes: int = 10, seed: int = 0,
              device: str = "cpu", seeds: Sequence[int] | None = None, **options) -> tuple[list[Job], list]:
    """Validate the inputs (one-line ValueError / CheckpointError) and list the jobs in table order."""
    from .. import checkpoint as ckpt
    from ..evaluation import episode_seed
    from ..explain.trace import check_trace_matches, load_trace

    if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 0:
        raise ValueError(f"--episodes must be a non-negative integer, got {episodes!r}")
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    if episodes == 0 and not traces:
        raise ValueError("nothing to report: --episodes is 0 and no --traces were given (use --episodes 1 or more)")
    resolved = [str(ckpt.resolve(p).resolve()) for p in checkpoints]
    agents = [load_agent(p, device) for p in resolved]
    labels = _labels(checkpoints)
    per_ckpt: list[list[tuple[str, int]]] = [[] for _ in resolved]
    for path in traces:
        trace = load_trace(path)
        errors = []
        for i, agent in enumerate(agents):
            try:
                check_trace_matches(trace, agent)
            except ValueError as exc:
                errors.append(str(exc))
                continue
            if trace.meta.get("env") != agent.cfg.env:
                errors.append(f"trace was recorded on {trace.meta.get('env')}, checkpoint {labels[i]} is for "
                              f"{agent.cfg.env}")
                continue
            per_ckpt[i] += [(str(pathlib.Path(path).resolve()), int(e)) for e in np.unique(trace.arrays["episode"])]
            break
        else:
            raise ValueError(f"trace {path} does not belong to the given checkpoint(s): {errors[0]}"
                             if len(errors) == 1 else
                             f"trace {path} does not belong to any of the given checkpoints ({errors[0]})")
    th = tuple(sorted((options.pop("thresholds", None) or {}).items()))
    bad = sorted(k for k, _ in th if k not in D.THRESHOLDS)
    if bad:
        raise ValueError(f"unknown threshold(s) {bad}; known: {sorted(D.THRESHOLDS)}")
    seeds = [seed] if seeds is None else [int(s) for s in seeds]
    jobs = []
    for c, (path, label) in enumerate(zip(resolved, labels)):
        for i, s in enumerate(seeds):  # --seeds: each seed's episodes, numbered on after the previous seed's
            for e in range(episodes):
                jobs.append(Job(index=(c, i * episodes + e), checkpoint=path, label=label, episode=i * episodes + e,
                                record_seed=episode_seed(s, e), device=device, thresholds=th, report_seed=s,
                                **options))
        n = len(seeds) * episodes
        for k, (tpath, tep) in enumerate(per_ckpt[c]):
            jobs.append(Job(index=(c, n + k), checkpoint=path, label=label, episode=n + k,
                            record_seed=None, trace_path=tpath, trace_episode=tep, device=device,
                            thresholds=th, **options))
    return jobs, agents


# ---- running ----------------------------------------------------------------------------------
def run_jobs(jobs: list[Job], ray: bool = False, ray_address: str | None = None, progress: bool = True,
             info: dict | None = None) -> list[dict]:
    """Run the jobs in-process or as Ray tasks; results come back in job order either way.
    With Ray, ``info["ray_cluster"]`` receives the GCS address of the cluster that ran them."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="report jobs" + (" (ray)" if ray else ""), unit="episode",
               disable=not progress, file=sys.stderr)
    try:
        if not ray:
            results = []
            for job in jobs:
                results.append(run_job(job))
                bar.update(1)
            return results
        return _run_ray(jobs, ray_address, bar, info if info is not None else {})
    finally:
        bar.close()


def _run_ray(jobs: list[Job], address: str | None, bar, info: dict) -> list[dict]:
    from ..rayutil import start

    ray, started = start(address)
    try:
        info["ray_cluster"] = ray.get_runtime_context().gcs_address
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        refs = {task.remote(job): i for i, job in enumerate(jobs)}
        results: list[dict | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                results[refs[ref]] = ray.get(ref)
                bar.update(1)
        return results  # type: ignore[return-value]
    finally:
        if started:
            ray.shutdown()


def _meta(jobs, agents, traces, episodes, seed, ray, ray_address, command, thresholds, commit=None,
          **options) -> dict[str, Any]:
    """Provenance of a report: inputs (checkpoint, env, steps trained), options, commit and machine."""
    import torch

    from ..checkpoint import git_commit

    paths = list(dict.fromkeys(j.checkpoint for j in jobs))
    ckpts = [{"path": p, "label": next(j.label for j in jobs if j.checkpoint == p), "env": a.cfg.env,
              "steps": (getattr(a, "manifest", None) or {}).get("steps")} for p, a in zip(paths, agents)]
    return {"format": "xdreamer-report", "version": 1, "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoints": ckpts,
            "traces": [str(t) for t in traces], "episodes": episodes, "seed": seed, "jobs": len(jobs),
            "ray": bool(ray), "ray_address": ray_address, **options,
            "thresholds": dict(D.THRESHOLDS, **(thresholds or {})), "commit": commit or git_commit(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "python": platform.python_version()}}


# ---- entry point ------------------------------------------------------------------------------
def run_report(checkpoints: Sequence[str], out: str | os.PathLike, episodes: int = 10, seed: int = 0,
               traces: Sequence[str] = (), ray: bool = False, ray_address: str | None = None, progress: bool = True,
               max_steps: int | None = None, dream_steps: int = 2, horizon: int = 15, max_cases: int = 5,
               device: str = "cpu", threads: int = 1, thresholds: dict | None = None, clips: bool = True,
               command: str | None = None, imports: Sequence[str] = (),
               seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Build a failure report in ``out``; returns ``report.json``'s content. See the module docstring.
    ``imports``: modules the user named (``--import``) that register their envs; workers import them too.
    ``seeds`` (instead of ``seed``): ``episodes`` episodes for each seed; the verdicts are pooled over all of them,
    and each seed's own verdict and the agreement between seeds are reported beside (issue #27: verdicts that hold
    across seeds)."""
    start = time.perf_counter()
    from ..checkpoint import git_commit

    commit = git_commit()  # the code that runs: taken now, not after a run during which the tree may move
    out = pathlib.Path(out)
    _check_out(out)
    if max_cases < 1:
        raise ValueError(f"max_cases must be at least 1, got {max_cases}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if horizon < 1 or dream_steps < 0:
        raise ValueError("horizon must be >= 1 and dream_steps >= 0")
    if seeds is not None:
        seeds = [int(x) for x in seeds]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds must list distinct seeds, got {seeds}")
        seed = seeds[0]
    jobs, agents = plan_jobs(list(checkpoints), list(traces), episodes, seed, device=device, thresholds=thresholds,
                             max_steps=max_steps, dream_steps=dream_steps, horizon=horizon, threads=threads,
                             imports=tuple(imports), seeds=seeds)
    t_jobs = time.perf_counter()
    run_info: dict[str, Any] = {}
    results = run_jobs(jobs, ray=ray, ray_address=ray_address, progress=progress, info=run_info)
    jobs_s = time.perf_counter() - t_jobs
    episodes_df = episodes_table(results)
    cases, windows = cases_table(results, max_cases)
    cases["checkpoint_path"] = [report_relative(p, out) for p in cases["checkpoint_path"]]
    # episodes.csv too: a committed or copied report names no folder of the machine that wrote it
    episodes_df["checkpoint_path"] = [report_relative(p, out) for p in episodes_df["checkpoint_path"]]
    objects = objects_table(results)
    probes = probes_table(results)
    agents_by_env = {}
    for a in agents:
        agents_by_env.setdefault(a.cfg.env, a)
    scores = scores_table(episodes_df, agents_by_env, episodes, seed)
    episodes_df["report_seed"] = pd.array([j.report_seed for j in jobs], dtype="Int64")
    training = {}  # checkpoint label -> its run's training replay rewards
    for path, label in dict.fromkeys((j.checkpoint, j.label) for j in jobs):
        info = training_rewards(path)
        if info is not None:
            training[label] = info
    effects = object_effects_table(results)
    verdicts = verdicts_table(episodes_df, objects, probes, scores, object_runs=object_episodes(results),
                              training=training, object_effects=effects)
    if seeds is not None and len(seeds) > 1:
        verdicts = seed_agreement(verdicts, {s: _seed_verdicts(results, jobs, s, scores, training) for s in seeds})
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "clips").mkdir(parents=True)
    try:
        from ..logger import write_video

        thumbs = {}
        for case in cases["case"]:
            w = windows[case]
            frames = render.clip_frames(w)
            thumbs[case] = render.png(frames[int(w["center"])] if "dream" not in w else frames[min(len(frames) - 1, 5)])
            if clips:
                write_video(tmp / "clips" / f"{case}.mp4", frames, fps=4)
        cases.to_csv(tmp / "summary.csv", index=False)
        cases.to_parquet(tmp / "summary.parquet", index=False, engine="pyarrow")
        episodes_df.to_csv(tmp / "episodes.csv", index=False)
        verdicts.to_csv(tmp / "verdicts.csv", index=False)
        scores.to_csv(tmp / "scores.csv", index=False)
        probes.to_csv(tmp / "probes.csv", index=False)
        objects.to_csv(tmp / "objects.csv", index=False)
        effects.to_csv(tmp / "object_effects.csv", index=False)
        meta = _meta(jobs, agents, traces, episodes, seed, ray, ray_address, command, thresholds, commit=commit,
                     max_steps=max_steps, dream_steps=dream_steps, horizon=horizon, max_cases=max_cases,
                     seeds=seeds, training_replay={k: v["run"] for k, v in training.items()})
        meta.update(ray_cluster=run_info.get("ray_cluster"), cases=int(len(cases)), jobs_s=round(jobs_s, 3),
                    wall_s=round(time.perf_counter() - start, 3))
        figs = render.figures(results, cases, probes, scores, episodes_df)
        render.write_html(tmp / "index.html", meta, cases, episodes_df, verdicts, scores, probes, objects, figs,
                          thumbs)
        render.write_markdown(tmp / "summary.md", meta, cases, verdicts, scores, objects, probes)
        meta["wall_s"] = round(time.perf_counter() - start, 3)
        (tmp / REPORT_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _seed_verdicts(results: list[dict], jobs: list[Job], seed: int, scores, training: dict) -> dict[tuple, str]:
    """(env, checkpoint) -> the verdict a report of ``seed``'s episodes alone gives."""
    picked = [r for r, j in zip(results, jobs) if j.report_seed == seed]
    table = verdicts_table(episodes_table(picked), objects_table(picked), probes_table(picked), scores,
                           training=training, object_effects=object_effects_table(picked))
    return dict(zip(zip(table["env"], table["checkpoint"]), table["verdict"]))


def seed_agreement(verdicts, per_seed: dict[int, dict[tuple, str]]):
    """Add each seed's own verdict, ``stable`` (every seed alone gives the same verdict: the target of issue #27)
    and ``agreement`` (``k/n`` seeds whose own verdict is the pooled one)."""
    verdicts = verdicts.copy()
    seed_text, agreement, stable = [], [], []
    for env, ck, pooled in zip(verdicts["env"], verdicts["checkpoint"], verdicts["verdict"]):
        own = {s: v.get((env, ck), "n/a") for s, v in per_seed.items()}
        seed_text.append("; ".join(f"seed {s}: {v}" for s, v in own.items()))
        agree = sum(v == pooled for v in own.values())
        agreement.append(f"{agree}/{len(own)}")
        stable.append(len(set(own.values())) == 1)
    verdicts["agreement"], verdicts["stable"], verdicts["seed_verdicts"] = agreement, stable, seed_text
    return verdicts


def bench_report(checkpoint: str | None = None, episodes: int = 10, preset: str = "small", env: str = "toy:catch",
                 seed: int = 0) -> dict[str, Any]:
    """Time ``run_report`` over one checkpoint x ``episodes`` (a fresh ``preset`` agent on ``env`` when no
    checkpoint is given), in-process, with clips; returns ``{"report_s", ...}``."""
    import tempfile

    import torch

    from .. import checkpoint as ckpt
    from ..agent import Agent
    from ..config import build_config
    from ..envs import make

    fresh = checkpoint is None
    with tempfile.TemporaryDirectory() as tmp:
        if fresh:
            e = make(env)
            torch.manual_seed(seed)
            agent = Agent(build_config([preset], {"env": env, "device": "cpu"}), e.spec)
            e.close()
            checkpoint = str(ckpt.save(pathlib.Path(tmp) / "ckpt", agent, steps=0))
        t0 = time.perf_counter()
        meta = run_report([checkpoint], pathlib.Path(tmp) / "report", episodes=episodes, seed=seed, progress=False)
        elapsed = time.perf_counter() - t0
    return {"report_s": round(elapsed, 3), "report_episodes": episodes, "report_preset": preset if fresh else None,
            "report_env": env if fresh else None, "report_cases": meta["cases"]}
