"""Report jobs: one checkpoint x one episode, analysed where it runs (in-process or as a Ray task).

``run_job(job)`` is a pure function of its ``Job`` (a small picklable record): it loads the checkpoint,
records the episode (``explain.record(agent, env, episodes=1, seed=job.record_seed)``, mode policy) or takes
it from a saved trace, runs the detectors, dreams and grounds a few top-surprise steps, and returns plain
numpy / python data (events, the frames around each event for clips, probe samples, per-step series,
per-episode stats). Torch runs with a fixed thread count (``job.threads``) so an episode's numbers are
bit-identical in the driver process and in a Ray worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import detectors as D
from .probes import samples_from_trace

_AGENTS: dict[tuple[str, str], Any] = {}  # per-process cache: a Ray worker reuses its loaded agents


@dataclasses.dataclass(frozen=True)
class Job:
    index: tuple[int, int]  # (checkpoint index, report episode index): the order of the tables
    checkpoint: str  # resolved checkpoint folder (absolute)
    label: str  # checkpoint name in the tables
    episode: int  # report episode index within the checkpoint
    record_seed: int | None  # explain.record seed (recorded episodes)
    trace_path: str | None = None  # or an episode of a saved trace
    trace_episode: int | None = None
    max_steps: int | None = None
    dream_steps: int = 2
    horizon: int = 15
    max_events: int = 5
    probe_samples: int = 400
    window: int = 8
    threads: int = 1
    device: str = "cpu"
    thresholds: tuple = ()  # (name, value) pairs over detectors.THRESHOLDS
    imports: tuple = ()  # the user's --import modules, imported in the worker too (env ids never import, #28)
    report_seed: int | None = None  # the report seed this recorded episode belongs to (--seeds; None: a trace)
    object_steps: int = 8  # steps per episode (evenly spaced) where each object is moved / removed in the simulator


def load_agent(path: str, device: str = "cpu"):
    from .. import checkpoint
    from ..training import configure_cpu

    key = (str(path), str(device))
    if key not in _AGENTS:
        configure_cpu()  # also in Ray workers, which are processes of their own (see xdreamer.cli.main)
        _AGENTS[key] = checkpoint.load(path, device=device)
    return _AGENTS[key]


def make_env_for(agent):
    from ..checkpoint import check_env
    from ..envs import make
    from ..training import env_kwargs

    env = make(agent.cfg.env, **env_kwargs(agent.cfg))
    check_env(agent.spec, env.spec)
    return env


def episode_trace(trace, episode: int):
    """The steps of one episode of ``trace`` as a Trace of its own (episode renumbered 0)."""
    from ..explain.trace import Trace

    steps = np.flatnonzero(trace.arrays["episode"] == episode)
    if not len(steps):
        raise ValueError(f"trace has no episode {episode}")
    objects = {k for k in trace.arrays if k.startswith("object_")}  # ``record --objects``: at object_steps only
    arrays = {k: v[steps] for k, v in trace.arrays.items() if not k.startswith("sim/") and k not in objects}
    arrays["episode"] = np.zeros(len(steps), np.int64)
    if objects:
        at = trace.object_steps
        keep = np.isin(at, steps)
        arrays.update({k: trace.arrays[k][keep] for k in objects - {"object_steps"}})
        arrays["object_steps"] = np.searchsorted(steps, at[keep]).astype(np.int64)
    for key in sorted({k.split("/")[1] for k in trace.arrays if k.startswith("sim/")}):
        data, offsets = trace.arrays[f"sim/{key}/data"], trace.arrays[f"sim/{key}/offsets"]
        parts = [data[offsets[i]:offsets[i + 1]] for i in steps]
        sizes = np.array([len(p) for p in parts], np.int64)
        arrays[f"sim/{key}/data"] = np.concatenate(parts) if parts else data[:0]
        arrays[f"sim/{key}/offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays[f"sim/{key}/shape"] = trace.arrays[f"sim/{key}/shape"][steps]
    table = trace.table.iloc[steps].reset_index(drop=True)
    table["episode"] = 0
    return Trace(arrays, table, dict(trace.meta, episodes=1))


def read_ram(env, trace) -> np.ndarray | None:
    """RAM [N, 128] of an Atari trace, read by restoring each recorded simulator state; None otherwise."""
    ale = getattr(env, "_ale", None)
    if ale is None or not trace.has_sim_states:
        return None
    try:
        out = []
        for i in range(len(trace)):
            env.set_state(trace.sim_state(i))
            out.append(np.asarray(ale.getRAM(), np.uint8).copy())
        return np.stack(out)
    except Exception:  # noqa: BLE001 -- coverage then reports n/a
        return None


def dream_infidelity(agent, env, trace, steps, horizon: int = 15, tol: float = 0.02, object_px: float = 8.0):
    """Dream ``horizon`` steps from each of ``steps`` on the episode's own recorded actions (so every difference
    is model error, not policy divergence; the actor continues where the episode's record ends), execute the
    same branch in the real simulator (``explain.ground``) and compare them over the imagined steps: ``value``
    = mean pixel MSE of dream vs real frames; score by ``detectors.dream_score``: the worst object's mean
    centroid error (``explain.fidelity`` detector, a missing object at its ``MISSING_PX``) / ``object_px`` over
    the objects the detector finds reliably on the episode's real frames (``fidelity.reliable_objects``), else
    pixel MSE / ``tol``. Returns (events DataFrame of the flagged steps, {step:
    (real frames, dream frames, valid)}, measurements [(step, pixel MSE, worst in-box MSE, worst object px)])."""
    import pandas as pd

    from ..explain.fidelity import check_detector, object_detector, position_error, reliable_objects
    from ..explain.grounded import ground

    try:
        detector = object_detector(trace)
        judged = reliable_objects(check_detector(detector, trace))
    except ValueError:  # no object boxes in this env: the whole-frame error is all there is
        detector, judged = None, []
    rows, frames, measured = [], {}, []
    episode = trace.arrays["episode"]
    for step in steps:
        taken = trace.arrays["action"][step]
        later = [j for j in range(int(step) + 1, min(int(step) + horizon, len(trace))) if episode[j] == episode[step]]
        follow = [trace.arrays["action"][j] for j in later]
        if agent.spec.discrete:
            follow = [int(x) for x in follow]
        g = ground(agent, env, trace, int(step), actions=[int(taken)] if agent.spec.discrete else None,
                   horizon=horizon, follow=follow if agent.spec.discrete else "actor")
        valid = g.valid[0, 1:]
        if not valid.any():
            continue
        mse = float(np.nanmean(g.pixel_mse[0, 1:][valid]))
        rerr = float(np.nanmean(np.abs(g.reward_error[0, 1:][valid])))
        objs = {k: float(np.nanmean(v[0, 1:][valid])) for k, v in g.object_mse.items()
                if np.isfinite(v[0, 1:][valid]).any()}
        px = {}
        if detector is not None:
            real_at = detector.locate(g.real_frames[0, 1:][valid])
            dream_at = detector.locate(g.dream.frames[0, 1:][valid])
            for name in judged:
                err = position_error(dream_at[name], real_at[name])
                if np.isfinite(err).any():
                    px[name] = float(np.nanmean(err))
        worst = max(objs.values()) if objs else float("nan")
        measured.append((int(step), mse, worst, max(px.values()) if px else float("nan")))
        score, basis = D.dream_score(mse, px, tol, object_px)
        if score >= 1:
            text = ", ".join(f"{k} {v:.1f} px" for k, v in px.items())
            rows.append({"detector": "dream_infidelity", "step": int(step), "episode": int(trace.arrays["episode"][step]),
                         "t": int(trace.arrays["t"][step]), "score": score, "value": mse,
                         "detail": (f"dream vs real branch on the recorded actions over {int(valid.sum())} steps, "
                                    f"judged on {basis}: pixel MSE {mse:.4f}"
                                    + (f", object centroid error {text}" if text else "")
                                    + f", reward error {rerr:.2f}")})
            frames[int(step)] = (g.real_frames[0], g.dream.frames[0], g.valid[0])
    events = pd.DataFrame(rows, columns=list(D.EVENT_COLUMNS)) if rows else D._empty()
    return events, frames, measured


def _window(trace, step: int, half: int) -> dict[str, np.ndarray]:
    a = trace.arrays
    lo, hi = max(0, step - half), min(len(trace), step + half + 1)
    return {"t": a["t"][lo:hi].copy(), "frame": a["frame"][lo:hi].copy(), "recon": a["recon"][lo:hi].copy(),
            "sqerr": a["recon_sqerr"][lo:hi].astype(np.float16).copy(), "reward": a["reward"][lo:hi].copy(),
            "pred_reward": a["pred_reward"][lo:hi].copy(), "value": a["value"][lo:hi].copy(),
            "surprise": a["surprise"][lo:hi].copy(), "center": np.array(step - lo)}


def object_effects_of(agent, env, trace, count: int, at_steps=()) -> tuple[list[dict], str | None, dict[int, str]]:
    """Issue #27 item 2 in the report: at ``count`` evenly spaced steps of the episode (not its first), every
    ground-truth object is moved and removed in the simulator (``explain.objects.object_attribution``: toy games
    through their state, Atari through verified RAM writes) and the decision re-filtered. Per object: the largest
    p(action) change (TV) over its variants at each eligible step (on screen, p(action) not saturated), how often it
    is the object with the largest effect, and the share of edits that landed. ``([], reason, {})`` where it cannot
    run (no simulator states or objects, continuous actions, an env without an object editor).

    ``at_steps`` (the failure cases' steps) are attributed in the same pass, and returned per step as text
    (``"ball 0.42, paddle 0.03"``: each object's largest TV, ``n/a`` where no edit applied, ``saturated`` marked);
    they do not enter the per-object statistics, which stay on the evenly spaced steps. A trace recorded with
    ``record --objects`` (k = 0) is read instead of re-running the simulator: the evenly spaced steps are then
    taken among the steps it stores (all, or every N-th with ``--objects-every N``), and only cases at steps it does
    not store are attributed here."""
    if agent is None or env is None or count <= 0:
        return [], None, {}
    if not (trace.has_sim_states and trace.object_names) or env.spec.id != trace.meta.get("env"):
        return [], "no simulator states or no ground-truth objects in this trace", {}
    from ..explain.objects import object_attribution, stored_object_attribution

    a = trace.arrays
    stored = stored_object_attribution(trace)  # a trace recorded with `record --objects`: read, not re-run
    if stored is not None and stored.k != 0:
        stored = None
    have = set(int(s) for s in stored.steps) if stored is not None else set()
    usable = sorted(have) if stored is not None else range(len(trace))
    candidates = [i for i in usable if not a["is_first"][i]]
    if not candidates and stored is not None:  # stored every N-th step hit only first steps: attribute afresh
        stored, have, candidates = None, set(), [i for i in range(len(trace)) if not a["is_first"][i]]
    if not candidates:
        return [], "the episode has no step after its first", {}
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(count, len(candidates))).round().astype(int))
    picked = [candidates[i] for i in pick]
    cases = sorted({int(s) for s in at_steps if 0 <= int(s) < len(trace) and not a["is_first"][int(s)]})
    fresh = [s for s in cases if s not in have]  # cases the trace does not store (or all, without a stored result)
    try:
        if stored is not None:
            results = [stored.at_steps(sorted(set(picked) | (set(cases) & have)))]
            if fresh:
                results.append(object_attribution(agent, env, trace, steps=fresh))
        else:
            results = [object_attribution(agent, env, trace, steps=sorted(set(picked) | set(cases)))]
    except (ValueError, NotImplementedError) as exc:  # no object editor (toy/Atari without verified RAM writes,
        return [], str(exc), {}  # e.g. Venture), continuous actions: said in the report, not a crash
    result = results[0]
    effect, top = result.effect(), result.top()
    index = {int(s): i for i, s in enumerate(result.steps)}
    sub = np.array([index[s] for s in picked])
    rows = []
    for o, name in enumerate(result.objects):
        eligible = result.eligible(name)[sub]
        values = effect[sub, o][eligible]
        rows.append({"object": name, "steps": int(len(sub)), "eligible_steps": int(eligible.sum()),
                     "tv": [float(v) for v in values[np.isfinite(values)]],
                     "top_steps": int(((top[sub] == o) & eligible).sum()),
                     "attempted": int(result.attempted[sub, o].sum()), "landed": int(result.landed[sub, o].sum())})
    at, wanted = {}, set(cases)
    for part in results:
        part_effect = part.effect()
        for i, s in enumerate(int(s) for s in part.steps):
            if s not in wanted:
                continue
            text = [f"{name} {part_effect[i, o]:.2f}" if np.isfinite(part_effect[i, o]) else f"{name} n/a"
                    for o, name in enumerate(part.objects)]
            at[s] = ", ".join(text) + (" (saturated)" if part.saturated[i] else "")
    return rows, None, at


def analyse(trace, agent=None, env=None, job: Job | None = None, ram: np.ndarray | None = None) -> dict:
    """Everything the report needs from one single-episode trace (``agent``/``env`` for the dreams)."""
    job = job or Job(index=(0, 0), checkpoint="", label="", episode=0, record_seed=None)
    th = dict(D.THRESHOLDS, **dict(job.thresholds))
    errors = D.object_errors(trace)
    returns = D.lambda_returns(trace)
    events = D._concat([
        D.blind_spots(trace, ratio=th["blind_ratio"], min_error=th["blind_min_error"], errors=errors),
        D.reward_misses(trace, tol=th["reward_tol"]),
        D.surprise_spikes(trace, k=th["surprise_k"], min_spread=th["surprise_min_spread"]),
        D.value_errors(trace, tol=th["value_tol"], returns=returns),
    ])
    dream_frames, measured = {}, []
    a = trace.arrays
    if agent is not None and env is not None and job.dream_steps > 0 and trace.has_sim_states \
            and env.spec.id == trace.meta.get("env"):
        order = np.argsort(-a["surprise"].astype(np.float64), kind="stable")
        steps = [int(i) for i in order if not a["is_last"][i] and not a["is_first"][i]][:job.dream_steps]
        dream_events, dream_frames, measured = dream_infidelity(agent, env, trace, sorted(steps), job.horizon,
                                                                th["dream_tol"], th["dream_object_px"])
        events = D._concat([events, dream_events])
    counts = events.groupby("detector").size().to_dict() if len(events) else {}
    # Keep the worst ``max_events`` events per detector (ties: earlier step first).
    events = (events.sort_values(["detector", "score", "step"], ascending=[True, False, True], kind="stable")
              .groupby("detector", sort=True).head(job.max_events).reset_index(drop=True))
    windows = []
    for row in events.itertuples():
        w = _window(trace, int(row.step), job.window)
        if row.detector == "dream_infidelity" and int(row.step) in dream_frames:
            real, dream, valid = dream_frames[int(row.step)]
            w.update(real_branch=real, dream=dream, valid=valid)
        windows.append(w)
    object_effects, object_note, at_case = object_effects_of(agent, env, trace, job.object_steps,
                                                            at_steps=events["step"].tolist() if len(events) else ())
    if len(events):  # each case's own step: what moving / removing each object there does to p(action)
        events["object_effects"] = [at_case.get(int(s), "n/a (the episode's first step)" if a["is_first"][int(s)]
                                                else "") for s in events["step"]]
    if ram is None and env is not None and str(trace.meta.get("env", "")) == "atari:Venture":
        ram = read_ram(env, trace)
    cov = D.coverage(trace, ram=ram)
    target = D.reward_target(trace)
    per_object = []
    for name in trace.object_names:
        g = errors[errors["object"] == name]
        blind = (g["ratio"] >= th["blind_ratio"]) & (g["object_error"] >= th["blind_min_error"])
        per_object.append({"object": name, "present_steps": int(len(g)), "blind_steps": int(blind.sum()),
                           "ratio_median": float(g["ratio"].median()) if len(g) else float("nan"),
                           "object_error_median": float(g["object_error"].median()) if len(g) else float("nan"),
                           "background_error_median": float(g["background_error"].median()) if len(g) else float("nan")})
    vis = D.object_visibility(trace, threshold=th["visible_threshold"])
    finite = np.isfinite(returns)
    stats = {
        "steps": int(len(trace)), "return": float(a["reward"].sum()),
        # False when --max-steps (or a trace's own cut) ended the episode before the game did
        "complete": bool(len(trace) and a["is_last"][-1]),
        "positive_rewards": int((a["reward"] > 0).sum()), "negative_rewards": int((a["reward"] < 0).sum()),
        "recon_error": float(a["recon_error"].mean()), "surprise_mean": float(a["surprise"].mean()),
        "surprise_max": float(a["surprise"].max()),
        "reward_mae": float(np.abs(a["pred_reward"] - target).mean()),
        "value_mae": float(np.abs(a["value"][finite] - returns[finite]).mean()) if finite.any() else float("nan"),
        "dream_pixel_mse": float(np.mean([m[1] for m in measured])) if measured else float("nan"),
        "dream_object_mse": float(np.nanmean([m[2] for m in measured])) if measured and np.isfinite(
            [m[2] for m in measured]).any() else float("nan"),
        "dream_object_px": float(np.nanmean([m[3] for m in measured])) if measured and np.isfinite(
            [m[3] for m in measured]).any() else float("nan"),
        "coverage": cov["visited"], "coverage_total": cov["total"], "coverage_metric": cov["metric"],
        **{f"n_{d}": int(counts.get(d, 0)) for d in D.DETECTORS},
    }
    series = {"t": a["t"].copy(), "reward": a["reward"].copy(), "pred_reward": a["pred_reward"].copy(),
              "reward_target": target.astype(np.float32), "value": a["value"].copy(),
              "lambda_return": returns.astype(np.float32), "surprise": a["surprise"].copy(),
              "recon_error": a["recon_error"].copy()}
    for name in trace.object_names:
        g = errors[errors["object"] == name]
        r = np.full(len(trace), np.nan, np.float32)
        r[g["step"].to_numpy()] = g["ratio"].to_numpy()
        series[f"ratio_{name}"] = r
    return {"stats": stats, "events": events.to_dict("records"), "windows": windows, "coverage": cov,
            "objects": per_object, "object_effects": object_effects, "object_note": object_note, "visibility": vis.to_dict("records"), "series": series,
            "probe": samples_from_trace(trace, job.probe_samples),
            "classes": int(a["post_logits"].shape[-1]), "env": str(trace.meta.get("env")),
            "spec": trace.meta.get("spec")}


def run_job(job: Job) -> dict:
    """Record (or load) the job's episode and analyse it; see the module docstring."""
    import torch

    from ..envs import import_modules
    from ..explain.trace import check_trace_matches, load_trace, record

    import_modules(list(job.imports))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(job.threads)))
    try:
        agent = load_agent(job.checkpoint, job.device)
        env = make_env_for(agent)
        try:
            if job.trace_path is None:
                trace = record(agent, env, episodes=1, seed=int(job.record_seed), max_steps=job.max_steps)
                source = f"record seed {job.record_seed}"
            else:
                full = load_trace(job.trace_path)
                check_trace_matches(full, agent)
                trace = episode_trace(full, int(job.trace_episode))
                source = f"trace {job.trace_path}#{job.trace_episode}"
            out = analyse(trace, agent, env, job)
        finally:
            env.close()
    finally:
        torch.set_num_threads(threads)
    out.update(index=tuple(job.index), checkpoint=job.label, checkpoint_path=job.checkpoint, episode=job.episode,
               record_seed=job.record_seed, source=source)
    return out
