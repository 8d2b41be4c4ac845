"""Report tables from job results: cases, episodes, objects, probes, score context and verdicts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import detectors as D
from .jobs import make_env_for
from .probes import concat_samples, probe_table
from .scores import reference

# ours: catch-lanes' probes fitted on 1 episode (of 2) miss its ball column (R2 -0.10; docs/fidelity.md), fitted on
# 3 (of 4) they find it (0.77): fewer than this many fitting episodes is said beside the verdict
MIN_TRAIN_EPISODES = 3

# checkpoint_path and record_seed let a reader (the explainer app's "Open this case", #31) re-record the case's
# episode: ``explain.record(checkpoint, env, episodes=1, seed=record_seed)`` replays it (mode policy), so the
# case is that recording's step with ``t == step``. record_seed is empty for episodes taken from a saved trace.
SUMMARY_COLUMNS = ["case", "checkpoint", "env", "episode", "step", "detector", "score", "detail", "value", "rank",
                   "object_effects", "source", "record_seed", "clip", "checkpoint_path"]


def episodes_table(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        rows.append({"checkpoint": r["checkpoint"], "env": r["env"], "episode": r["episode"], "source": r["source"],
                     "record_seed": r["record_seed"], **r["stats"],
                     "coverage_detail": r["coverage"]["detail"], "checkpoint_path": r["checkpoint_path"]})
    df = pd.DataFrame(rows)
    for col in ("coverage", "coverage_total", "record_seed"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def cases_table(results: list[dict], max_cases: int = 5) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The worst ``max_cases`` events per checkpoint and detector across the batch, with case ids in table
    order (checkpoint, detector, score descending); returns the table and each case's clip window.
    ``checkpoint_path`` is the job's resolved folder; ``run_report`` rewrites it relative to the report."""
    rows, windows = [], []
    for r in results:
        for ev, w in zip(r["events"], r["windows"]):
            rows.append({"checkpoint": r["checkpoint"], "ckpt_index": r["index"][0], "env": r["env"],
                         "episode": r["episode"], "step": int(ev["t"]), "detector": ev["detector"],
                         "score": float(ev["score"]), "detail": ev["detail"], "value": float(ev["value"]),
                         "object_effects": ev.get("object_effects", ""),
                         "source": r["source"], "record_seed": r["record_seed"],
                         "checkpoint_path": r["checkpoint_path"], "w": len(windows)})
            windows.append(w)
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in SUMMARY_COLUMNS}), {}
    df = pd.DataFrame(rows)
    order = {d: i for i, d in enumerate(D.DETECTORS)}
    df["det_order"] = df["detector"].map(order)
    df = df.sort_values(["ckpt_index", "det_order", "score", "episode", "step"],
                        ascending=[True, True, False, True, True], kind="stable")
    df["rank"] = df.groupby(["ckpt_index", "detector"]).cumcount() + 1
    df = df[df["rank"] <= max_cases].reset_index(drop=True)
    df["case"] = [f"c{i + 1:03d}" for i in range(len(df))]
    df["clip"] = "clips/" + df["case"] + ".mp4"
    df["record_seed"] = df["record_seed"].astype("Int64")
    case_windows = {c: windows[w] for c, w in zip(df["case"], df["w"])}
    return df[SUMMARY_COLUMNS].reset_index(drop=True), case_windows


def objects_table(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        vis = {v["object"]: v for v in r["visibility"]}
        for o in r["objects"]:
            v = vis.get(o["object"], {})
            rows.append({"checkpoint": r["checkpoint"], "env": r["env"], **o,
                         **{k: v.get(k, np.nan) for k in ("area_px", "contrast", "survive_frac")}})
    cols = ["checkpoint", "env", "object", "present_steps", "blind_steps", "blind_frac", "ratio_median",
            "object_error_median", "background_error_median", "area_px", "contrast", "survive_frac"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    w = df["present_steps"].clip(lower=0)

    def wmean(g, col):
        m = np.isfinite(g[col].to_numpy(float)) & (w[g.index] > 0)
        return float(np.average(g[col][m], weights=w[g.index][m])) if m.any() else float("nan")

    out = []
    for (ck, env, obj), g in df.groupby(["checkpoint", "env", "object"], sort=False):
        present = int(g["present_steps"].sum())
        out.append({"checkpoint": ck, "env": env, "object": obj, "present_steps": present,
                    "blind_steps": int(g["blind_steps"].sum()),
                    "blind_frac": float(g["blind_steps"].sum() / present) if present else float("nan"),
                    **{c: wmean(g, c) for c in ("ratio_median", "object_error_median", "background_error_median",
                                                "area_px", "contrast", "survive_frac")}})
    return pd.DataFrame(out, columns=cols)


def object_effects_table(results: list[dict]) -> pd.DataFrame:
    """Per checkpoint and object, pooled over its episodes (``jobs.object_effects_of``): the median and 90th
    percentile of the p(action) change (TV) when the simulator moves or removes the object, over the steps where it
    is on screen and p(action) is not saturated; how often it has the largest effect there; edits landed."""
    cols = ["checkpoint", "env", "object", "eligible_steps", "median_tv", "p90_tv", "top_frac", "edits_landed",
            "note"]
    pooled: dict[tuple, dict] = {}
    notes: dict[tuple, str] = {}
    for r in results:
        for row in r.get("object_effects", []):
            key = (r["checkpoint"], r["env"], row["object"])
            acc = pooled.setdefault(key, {"tv": [], "eligible": 0, "top": 0, "attempted": 0, "landed": 0})
            acc["tv"] += row["tv"]
            acc["eligible"] += row["eligible_steps"]
            acc["top"] += row["top_steps"]
            acc["attempted"] += row["attempted"]
            acc["landed"] += row["landed"]
        if r.get("object_note"):
            notes.setdefault((r["checkpoint"], r["env"]), r["object_note"])
    out = []
    for (ck, env, obj), acc in pooled.items():
        tv = np.asarray(acc["tv"], np.float64)
        out.append({"checkpoint": ck, "env": env, "object": obj, "eligible_steps": acc["eligible"],
                    "median_tv": float(np.median(tv)) if tv.size else float("nan"),
                    "p90_tv": float(np.quantile(tv, 0.9)) if tv.size else float("nan"),
                    "top_frac": acc["top"] / acc["eligible"] if acc["eligible"] else float("nan"),
                    "edits_landed": acc["landed"] / acc["attempted"] if acc["attempted"] else float("nan"),
                    "note": ""})
    for (ck, env), note in notes.items():
        if not any(o["checkpoint"] == ck for o in out):
            out.append({"checkpoint": ck, "env": env, "object": "", "eligible_steps": 0, "median_tv": float("nan"),
                        "p90_tv": float("nan"), "top_frac": float("nan"), "edits_landed": float("nan"),
                        "note": note})
    return pd.DataFrame(out, columns=cols)


def object_episodes(results: list[dict]) -> pd.DataFrame:
    """Per env, episode and object: steps present and blind (the per-episode numbers behind ``blind_frac``, for
    the verdicts' bootstrap intervals over episodes)."""
    rows = [{"env": r["env"], "checkpoint": r["checkpoint"], "run": i, "object": o["object"],
             "present_steps": int(o["present_steps"]), "blind_steps": int(o["blind_steps"])}
            for i, r in enumerate(results) for o in r["objects"]]
    return pd.DataFrame(rows, columns=["env", "checkpoint", "run", "object", "present_steps", "blind_steps"])


def ratio_ci(numerator, denominator, resamples: int = 2000, seed: int = 0,
             confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval over episodes of sum(numerator) / sum(denominator) (episodes resampled with
    replacement; those with a zero denominator count in the resampling): (nan, nan) for fewer than 2 episodes."""
    num, den = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if len(num) < 2 or den.sum() <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), (resamples, len(num)))
    d = den[idx].sum(1)
    stats = num[idx].sum(1)[d > 0] / d[d > 0]
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def training_rewards(checkpoint_path: str, max_files: int = 100_000) -> dict | None:
    """Rewards in the training replay of the run folder that holds ``checkpoint_path`` (``<run>/checkpoints/
    step-N``; its ``<run>/replay/*.npz``), or None where there is none (a bundled checkpoint). Reads only each
    file's ``reward`` member, bounded by the length its name states (``replay.load_episode``'s rule, #28)."""
    import pathlib

    from ..npzfile import NpzLimitError, read_arrays, read_headers

    ckpt = pathlib.Path(checkpoint_path)
    if ckpt.parent.name != "checkpoints":
        return None
    replay = ckpt.parent.parent / "replay"
    files = sorted(replay.glob("*.npz"))[:max_files] if replay.is_dir() else []
    if not files:
        return None
    episodes = found = positives = skipped = 0
    for path in files:
        try:
            length = int(path.stem.rsplit("-", 1)[-1])
            member = read_headers(path).get("reward")
            if member is None or member.shape != (length,) or member.dtype.kind != "f":
                raise NpzLimitError("no reward of the length its name states")
            reward = read_arrays(path, {"reward": member})["reward"]
        except (ValueError, NpzLimitError, OSError):  # a damaged or foreign file is skipped and counted
            skipped += 1
            continue
        episodes += 1
        count = int((reward > 0).sum())
        positives += count
        found += count > 0
    return {"run": str(ckpt.parent.parent), "episodes": episodes, "episodes_with_positive_reward": found,
            "positive_rewards_per_episode": positives / episodes if episodes else float("nan"), "skipped": skipped}


def probes_table(results: list[dict]) -> pd.DataFrame:
    parts: dict[str, list] = {}
    meta = {}
    for r in results:
        parts.setdefault(r["checkpoint"], []).append(r["probe"])
        meta[r["checkpoint"]] = (r["env"], r["classes"])
    frames = []
    for ck, samples in parts.items():
        table = probe_table(concat_samples(samples), meta[ck][1])
        table.insert(0, "env", meta[ck][0])
        table.insert(0, "checkpoint", ck)
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def random_baseline(env_id: str, agents_by_env: dict, episodes: int, seed: int) -> tuple[float | None, str]:
    """Random-policy mean return for toy games (cheap to run: same eval seeds), else from a bundled
    checkpoint's manifest; (None, reason) otherwise."""
    from ..evaluation import evaluate

    agent = agents_by_env[env_id]
    if env_id.startswith("toy:"):
        env = make_env_for(agent)
        try:
            res = evaluate(None, env, max(episodes, 10), seed=seed, policy="random")
        finally:
            env.close()
        return res.mean, f"random policy, {len(res.returns)} episodes (seed {seed})"
    bundle = (getattr(agent, "manifest", None) or {}).get("bundle") or {}
    if "eval_random" in bundle:
        return float(bundle["eval_random"]["mean"]), "checkpoint bundle (xdreamer bundle)"
    return None, "n/a"


def scores_table(episodes: pd.DataFrame, agents_by_env: dict, n_episodes: int, seed: int) -> pd.DataFrame:
    rows = []
    for env_id, g in episodes.groupby("env", sort=False):
        ref = reference(env_id) or {}
        rnd, rnd_src = (ref["random"], ref["source"]) if ref else random_baseline(env_id, agents_by_env,
                                                                                 n_episodes, seed)
        mean = float(g["return"].mean())
        human = ref.get("human")
        complete = int(g["complete"].sum()) if "complete" in g else len(g)
        # Returns of cut episodes are not scores: no human-normalised number for them.
        norm = (mean - rnd) / (human - rnd) if (human is not None and rnd is not None and human != rnd
                                                and complete == len(g)) else None
        rows.append({"env": env_id, "episodes": int(len(g)), "complete_episodes": complete, "return_mean": mean,
                     "return_std": float(g["return"].std(ddof=0)), "random": rnd, "human": human,
                     "dreamerv2_published": ref.get("dreamerv2"), "rainbow": ref.get("rainbow"),
                     "human_normalised": norm, "reference_source": ref.get("source", rnd_src)})
    return pd.DataFrame(rows)


def verdicts_table(episodes: pd.DataFrame, objects: pd.DataFrame, probes: pd.DataFrame,
                   scores: pd.DataFrame, th: dict | None = None, object_runs: pd.DataFrame | None = None,
                   training: dict | None = None, object_effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per game and agent: perception ("cannot see it") vs exploration ("never found reward"), with the numbers.

    Perception is flagged when an object is reconstructed as a blind spot on at least 25% of the steps it is
    present, survives the 64x64 frame on fewer than half its pixels, or a linear probe finds an object
    coordinate in the pixels (R^2 >= 0.5) but the best latent probe is at least 0.3 lower. A blind spot does
    not count as perception when the probes show the latent encodes the object's position: EVERY coordinate of
    the object whose position varies is decodable from the latent (R^2 >= 0.5, and at most 0.3 below the pixel
    probe's where that is finite). One coordinate is not enough (issue #27: Pong's ball y, R^2 0.87, which the
    opponent's paddle also reveals, passed alone). The agent then sees it and its decoder draws it poorly, which
    the evidence says. Probe R^2 are held out by episode where a game has two or more (else by blocks, and the
    evidence says so); each latent coordinate's control-task selectivity (Hewitt & Liang 2019) is in the numbers.
    Exploration is judged from the training replay where the checkpoint lies in a run folder (``training``:
    checkpoint label -> ``training_rewards``): flagged when no training episode received a positive reward, and a miss in the
    evaluation episodes alone is then said, not flagged. Without a run folder it is flagged when no evaluation
    episode received a positive reward, and the evidence says it was judged from evaluation only (issue #27: a cut
    evaluation is not training). ``object_runs`` (``object_episodes``): the blind fraction's 95 % bootstrap interval
    over episodes is given beside it (``<object>_blind_frac_ci``)."""
    rows = []
    # One verdict per agent: a report of several checkpoints of one game (the family comparison) judges each
    # (their probes, blind spots and rewards are their own); tables without a checkpoint column are one agent.
    keys = ["env", "checkpoint"] if "checkpoint" in episodes else ["env"]
    for key, g in episodes.groupby(keys, sort=False):
        env_id, ck = (key[0], key[1]) if len(keys) == 2 else (key[0] if isinstance(key, tuple) else key, None)

        def pick(table):
            if table is None or not len(table):
                return table
            mask = table["env"] == env_id
            if ck is not None and "checkpoint" in table:
                mask &= table["checkpoint"] == ck
            return table[mask]

        why_p, why_e, numbers, notes = [], [], {}, []
        pr = pick(probes)
        coords: dict[str, dict[str, bool]] = {}  # object -> coordinate -> decodable from the latent
        for var, vg in (pr.groupby("variable", sort=False) if len(pr) else []):
            r2 = vg.groupby("features")["r2"].mean()
            pixels = float(r2.get("pixels", np.nan))
            latents = r2.reindex(["deter", "stoch", "feat"])
            latent = float(np.nanmax(latents)) if np.isfinite(latents).any() else float("nan")
            numbers[f"{var}_r2_latent"] = latent
            numbers[f"{var}_r2_pixels"] = pixels
            if "selectivity" in vg and np.isfinite(latents).any():
                sel = vg.groupby("features")["selectivity"].mean()
                numbers[f"{var}_selectivity_latent"] = float(sel.get(latents.idxmax(), np.nan))
            if np.isfinite(pixels) or np.isfinite(latent):  # a coordinate whose value varies
                obj_name, coord = var.rsplit("_", 1)
                coords.setdefault(obj_name, {})[coord] = bool(
                    np.isfinite(latent) and latent >= 0.5 and (not np.isfinite(pixels) or latent >= pixels - 0.3))
            if np.isfinite(pixels) and pixels >= 0.5 and not (np.isfinite(latent) and latent >= max(0.5, pixels - 0.3)):
                why_p.append(f"{var} is linearly decodable from pixels (R2 {pixels:.2f}) but not from the "
                             f"latent (best R2 {latent:.2f})")
        if len(pr) and "split" in pr:
            splits = sorted(set(pr["split"].dropna().astype(str)))
            numbers["probe_split"] = "+".join(splits)
            if "block" in splits:
                notes.append("probes held out by blocks of steps within one episode (one episode per checkpoint: "
                             "held-out steps are not independent of the fit)")
            if "episode" in splits and "train_episodes" in pr and int(pr["train_episodes"].min()) < MIN_TRAIN_EPISODES:
                notes.append(f"probes held out by episode but fitted on only {int(pr['train_episodes'].min())} "
                             f"episode(s): a position's values may not all occur in the fit (report with "
                             f"--episodes {MIN_TRAIN_EPISODES + 1} or more)")
        obj = pick(objects)
        runs = pick(object_runs) if object_runs is not None and len(object_runs) else None
        for name, og in obj.groupby("object", sort=False):
            present = og["present_steps"].sum()
            blind = og["blind_steps"].sum() / present if present else float("nan")
            interval = ""
            if runs is not None:
                per = runs[runs["object"] == name]
                low, high = ratio_ci(per["blind_steps"], per["present_steps"])
                if np.isfinite(low):
                    numbers[f"{name}_blind_frac_ci"] = [round(low, 4), round(high, 4)]
                    interval = f" [95% CI {low:.0%}, {high:.0%} over {len(per)} episodes]"
            survive = float(og["survive_frac"].mean())
            ratio = float(og["ratio_median"].mean())
            numbers[f"{name}_blind_frac"] = blind
            numbers[f"{name}_recon_ratio"] = ratio
            numbers[f"{name}_survive_frac"] = survive
            if np.isfinite(blind) and blind >= 0.25:
                text = f"{name} is a reconstruction blind spot on {blind:.0%}{interval} of its steps (in-box error " \
                       f"{ratio:.1f}x background)"
                have = coords.get(name, {})
                r2_text = ", ".join(f"{name}_{c} {numbers[f'{name}_{c}_r2_latent']:.2f}" for c in sorted(have))
                if have and all(have.values()):
                    notes.append(text + f", but every coordinate of its position is decodable from the latent (R2 "
                                 f"{r2_text}): encoded, drawn poorly")
                else:
                    if any(have.values()):
                        text += (f"; not every coordinate is decodable from the latent (R2 {r2_text}; 'encoded' "
                                 "needs R2 >= 0.5 on each)")
                    why_p.append(text)
            if np.isfinite(survive) and survive < 0.5:
                why_p.append(f"only {survive:.0%} of {name}'s pixels survive the 64x64 frame "
                             f"(area {float(og['area_px'].mean()):.2f} px)")
        eff = pick(object_effects)
        eff = eff[eff["object"] != ""] if eff is not None and len(eff) else None
        if eff is not None and len(eff):
            parts = []
            for row in eff.itertuples():
                numbers[f"{row.object}_decision_tv_median"] = float(row.median_tv)
                if np.isfinite(row.median_tv):
                    parts.append(f"{row.object} {row.median_tv:.3f}")
            if parts:
                notes.append("moving or removing each object in the simulator changes p(action) by a median TV of "
                             + ", ".join(parts) + f" (over the steps where it is on screen and p(action) is not "
                             "saturated; object_effects.csv)")
        found = int((g["positive_rewards"] > 0).sum())
        numbers["episodes"] = int(len(g))
        numbers["episodes_with_positive_reward"] = found
        numbers["positive_rewards_per_episode"] = float(g["positive_rewards"].mean())
        cov = g["coverage"].dropna() if "coverage" in g else pd.Series(dtype=float)
        total = g["coverage_total"].dropna() if "coverage_total" in g else pd.Series(dtype=float)
        cov_text = "n/a"
        if len(cov):
            numbers["coverage_mean"] = float(cov.mean())
            cov_text = f"{float(cov.mean()):.1f}" + (f"/{int(total.iloc[0])}" if len(total) else "") + \
                f" {g['coverage_metric'].iloc[0]}"
        low, high = ratio_ci((g["positive_rewards"] > 0).astype(float), np.ones(len(g)))
        if np.isfinite(low):
            numbers["episodes_with_positive_reward_ci"] = [round(low, 4), round(high, 4)]
        trained = (training or {}).get(ck if ck is not None else env_id)
        if trained and trained["episodes"]:
            numbers.update({f"training_{k}": v for k, v in trained.items() if k not in ("run",)})
            if trained["episodes_with_positive_reward"] == 0:
                why_e.append(f"no positive reward in any of the {trained['episodes']} training episodes "
                             f"(the run's replay)")
            elif found == 0:
                notes.append(f"no positive reward in the {len(g)} evaluation episode(s), but the training replay "
                             f"has them in {trained['episodes_with_positive_reward']} of {trained['episodes']} "
                             "episodes: the agent found reward and does not collect it now (not exploration)")
        elif found == 0:
            why_e.append(f"no positive reward in any of {len(g)} evaluation episode(s) (judged from evaluation "
                         "only: no run folder with a training replay was given)")
        sc = scores[scores["env"] == env_id].iloc[0]
        perception, exploration = bool(why_p), bool(why_e)
        verdict = ("cannot see it and never found reward (perception + exploration)" if perception and exploration
                   else "cannot see it (perception)" if perception
                   else "never found reward (exploration)" if exploration
                   else "no perception or exploration failure detected")
        own = float(g["return"].mean()) if "return" in g else float(sc["return_mean"])
        score_text = f"return {own:.2f}"
        cut = "complete_episodes" in sc and sc["complete_episodes"] < sc["episodes"]
        if cut:
            score_text += (f" over episodes cut short ({sc['episodes'] - sc['complete_episodes']} of {sc['episodes']};"
                           " --max-steps); full-game references, not comparable:")
        if sc["random"] is not None and pd.notna(sc["random"]):
            score_text += f" random {sc['random']:.2f}" if cut else f" vs random {sc['random']:.2f}"
        if sc["dreamerv2_published"] is not None and pd.notna(sc["dreamerv2_published"]):
            score_text += (f", published DreamerV2 {sc['dreamerv2_published']:g}, Rainbow {sc['rainbow']:g}, "
                           f"human {sc['human']:g}")
        evidence = "; ".join(why_p + why_e + notes) or "no detector crossed its verdict threshold"
        rows.append({"env": env_id, "checkpoint": ck, "verdict": verdict, "perception": perception,
                     "exploration": exploration,
                     "evidence": evidence, "score_context": score_text,
                     "coverage": cov_text, "numbers": json.dumps(_clean(numbers), sort_keys=True)})
    return pd.DataFrame(rows, columns=["env", "checkpoint", "verdict", "perception", "exploration", "evidence",
                                       "score_context",
                                       "coverage", "numbers"])


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else round(v, 4) if isinstance(v, float) else v)
            for k, v in d.items()}
