"""Rendering of a report: case clips, matplotlib figures (base64 PNG), the HTML page and the markdown summary.
Nothing is computed here beyond layout."""

from __future__ import annotations

import base64
import html
import io
import pathlib

import numpy as np
import pandas as pd

from . import detectors as D


def _heat(sqerr: np.ndarray, scale: int) -> np.ndarray:
    """Squared error [C, 64, 64] -> an RGB heat map of the absolute error (0 black, 1 bright) as a C=3 frame."""
    e = np.clip(np.sqrt(sqerr.astype(np.float32).mean(0)), 0, 1)
    rgb = np.stack([e, e ** 2, 0.2 * e], 0)
    return (rgb * 255).astype(np.uint8)


def _to3(frame: np.ndarray) -> np.ndarray:
    return np.repeat(frame, 3, 0) if frame.shape[0] == 1 else frame


def clip_frames(window: dict, scale: int = 3) -> np.ndarray:
    """uint8 [T, H, W, 3] clip of a case: real | reconstruction | error (or real branch | dream | error)."""
    from ..explain.render import _hstack, _pad16, panel

    out = []
    if "dream" in window:
        real, dream, valid = window["real_branch"], window["dream"], window["valid"]
        for i in range(len(dream)):
            err = (dream[i].astype(np.float32) / 255 - real[i].astype(np.float32) / 255) ** 2
            out.append(_hstack([panel(_to3(real[i]), f"real +{i}", "" if valid[i] else "ended", scale, dim=not valid[i]),
                                panel(_to3(dream[i]), f"dream +{i}", "", scale, (120, 220, 255)),
                                panel(_heat(err, scale), "error", f"mse {err.mean():.4f}", scale, (255, 160, 120))]))
        return _pad16(np.stack(out))
    c = int(window["center"])
    for i in range(len(window["frame"])):
        mark = (255, 220, 120) if i == c else (255, 255, 255)
        out.append(_hstack([
            panel(_to3(window["frame"][i]), f"t={int(window['t'][i])}" + (" *" if i == c else ""),
                  f"r {window['reward'][i]:+.2f} v {window['value'][i]:+.2f}", scale, mark),
            panel(_to3(window["recon"][i]), "recon", f"r^ {window['pred_reward'][i]:+.2f}", scale, mark),
            panel(_heat(window["sqerr"][i], scale), "error", f"KL {window['surprise'][i]:.2f}", scale, mark)]))
    return _pad16(np.stack(out))


def png(image: np.ndarray) -> str:
    import imageio.v2 as imageio

    buf = io.BytesIO()
    imageio.imwrite(buf, image, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def fig_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(results: list[dict], cases: pd.DataFrame, probes: pd.DataFrame, scores: pd.DataFrame,
            episodes: pd.DataFrame) -> dict[str, str]:
    """Base64 PNG figures (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figs = {}
    # Score context: our returns per checkpoint vs the baselines of each game.
    envs = list(scores["env"])
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.2), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        g = episodes[episodes["env"] == env_id].groupby("checkpoint", sort=False)["return"]
        names = list(g.mean().index)
        vals = list(g.mean().values)
        errs = list(g.std(ddof=0).fillna(0).values)
        sc = scores[scores["env"] == env_id].iloc[0]
        for key, label in (("random", "random"), ("human", "human"), ("dreamerv2_published", "DreamerV2 (pub.)"),
                           ("rainbow", "Rainbow (pub.)")):
            if sc[key] is not None and pd.notna(sc[key]):
                names.append(label)
                vals.append(float(sc[key]))
                errs.append(0.0)
        colors = ["#4c72b0"] * g.ngroups + ["#999999"] * (len(names) - g.ngroups)
        ax.bar(range(len(names)), vals, yerr=errs, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(env_id, fontsize=10)
        ax.set_ylabel("episode return")
    figs["scores"] = fig_png(fig)
    # Detector counts per checkpoint (all flagged events, before the top-k cut).
    counts = episodes.groupby("checkpoint", sort=False)[[f"n_{d}" for d in D.DETECTORS]].sum()
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(counts)))
    im = ax.imshow(counts.to_numpy(float), cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(D.DETECTORS)), D.DETECTORS, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(counts)), counts.index, fontsize=8)
    for (i, j), v in np.ndenumerate(counts.to_numpy()):
        ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title("flagged events per checkpoint (all episodes)", fontsize=10)
    figs["detectors"] = fig_png(fig)
    # Probe R^2.
    if len(probes):
        cks = list(dict.fromkeys(probes["checkpoint"]))
        fig, axes = plt.subplots(1, len(cks), figsize=(5 * len(cks), 3.2), squeeze=False)
        for ax, ck in zip(axes[0], cks):
            p = probes[probes["checkpoint"] == ck]
            variables = list(dict.fromkeys(p["variable"]))
            for k, feats in enumerate(("deter", "stoch", "feat", "pixels")):
                r2 = [float(p[(p["variable"] == v) & (p["features"] == feats)]["r2"].iloc[0]) for v in variables]
                ax.bar(np.arange(len(variables)) + 0.2 * (k - 1.5), np.nan_to_num(r2, nan=0.0), 0.2, label=feats)
            ax.set_xticks(range(len(variables)), variables, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(-0.1, 1.05)
            ax.set_ylabel("held-out R²")
            ax.set_title(f"linear probes: {ck}", fontsize=10)
            ax.legend(fontsize=7)
        figs["probes"] = fig_png(fig)
    # Timeline of the episode holding each checkpoint's worst case.
    by_ck = {}
    for r in results:
        by_ck.setdefault(r["checkpoint"], []).append(r)
    for ck, rs in by_ck.items():
        cs = cases[cases["checkpoint"] == ck]
        ep = int(cs.sort_values("score", ascending=False, kind="stable")["episode"].iloc[0]) if len(cs) else rs[0]["episode"]
        r = next(x for x in rs if x["episode"] == ep)
        s = r["series"]
        fig, axes = plt.subplots(4, 1, figsize=(9, 6.5), sharex=True)
        t = s["t"]
        axes[0].plot(t, s["reward_target"], label="reward (head target)")
        axes[0].plot(t, s["pred_reward"], label="predicted", alpha=0.8)
        axes[1].plot(t, s["value"], label="value")
        axes[1].plot(t, s["lambda_return"], label="realised λ-return", alpha=0.8)
        axes[2].plot(t, s["surprise"], label="KL(post‖prior)", color="#c44e52")
        for key in s:
            if key.startswith("ratio_"):
                axes[3].semilogy(t, s[key], label=f"{key[6:]} recon error / background")
        for ax in axes:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="upper right")
        for _, c in cs[cs["episode"] == ep].iterrows():
            for ax in axes:
                ax.axvline(c["step"], color="k", alpha=0.25, lw=0.8)
            axes[0].annotate(c["case"], (c["step"], axes[0].get_ylim()[1]), fontsize=6, rotation=90, va="top")
        axes[-1].set_xlabel("step in episode")
        axes[0].set_title(f"{ck}: episode {ep} (cases marked)", fontsize=10)
        figs[f"timeline:{ck}"] = fig_png(fig)
    return figs


def provenance(meta: dict) -> str:
    """One line: checkpoints (env, steps trained), commit and machine."""
    ckpts = ", ".join(f"{c['label']} ({c['env']}, {c['steps'] if c['steps'] is not None else '?'} steps)"
                      for c in meta["checkpoints"])
    m = meta["machine"]
    return (f"Checkpoints: {ckpts}. Commit {(meta.get('commit') or 'n/a')[:10]}; {m['platform']}, {m['cpus']} CPUs, "
            f"torch {m['torch']}.")


def _table_html(df: pd.DataFrame, table_id: str, float_format="{:.4g}") -> str:
    return df.to_html(index=False, escape=True, na_rep="n/a", table_id=table_id, border=0,
                      float_format=lambda x: float_format.format(x), classes="t")


def write_html(path: pathlib.Path, meta: dict, cases: pd.DataFrame, episodes: pd.DataFrame, verdicts: pd.DataFrame,
               scores: pd.DataFrame, probes: pd.DataFrame, objects: pd.DataFrame, figs: dict[str, str],
               thumbs: dict[str, str]) -> None:
    esc = html.escape
    css = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table.t{border-collapse:collapse;font-size:12px;"
           "margin:0.5em 0}table.t td,table.t th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
           "table.t th{background:#eee}.v{font-weight:bold}img.fig{max-width:100%}code{background:#f4f4f4}")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>xdreamer failure report</title>"
             f"<style>{css}</style></head><body>",
             "<h1>xdreamer failure report</h1>",
             f"<p>{esc(meta['created'])} &middot; {len(meta['checkpoints'])} checkpoint(s) &middot; "
             f"{meta['jobs']} episode(s) &middot; seed {meta['seed']} &middot; "
             f"{'Ray' if meta['ray'] else 'in-process'} &middot; {meta['wall_s']:.1f} s</p>",
             f"<p><code>{esc(meta['command'] or '')}</code></p>",
             f"<p>{esc(provenance(meta))}</p>",
             "<h2>Verdicts</h2>"]
    for _, v in verdicts.iterrows():
        parts.append(f"<p><b>{esc(_who(v))}</b>: <span class='v'>{esc(v['verdict'])}</span>{esc(_agreement(v))}. "
                     f"{esc(v['evidence'])}. {esc(v['score_context'])}; coverage {esc(v['coverage'])}.</p>")
    parts.append(_table_html(verdicts, "verdicts"))
    parts += ["<h2>Score context</h2>", _table_html(scores, "scores"),
              f"<img class='fig' alt='scores' src='data:image/png;base64,{figs['scores']}'>",
              "<h2>Failure cases</h2>",
              "<p>Worst cases per checkpoint and detector across the batch; score = statistic / threshold "
              "(&ge; 1 when flagged). Clips: real frame | reconstruction | squared error (dream cases: real "
              "branch | dream | error).</p>"]
    shown = cases.drop(columns=["checkpoint_path"], errors="ignore")  # for tools; `checkpoint` names it here
    parts.append(_table_html(shown, "summary"))
    parts.append("<table class='t' id='thumbnails'><tr><th>case</th><th>at the step</th><th>clip</th></tr>")
    for _, c in cases.iterrows():
        img = thumbs.get(c["case"])
        parts.append(f"<tr><td>{esc(c['case'])}<br>{esc(c['detector'])}<br>{esc(c['checkpoint'])} ep "
                     f"{c['episode']} t={c['step']}</td><td>"
                     + (f"<img alt='{esc(c['case'])}' src='data:image/png;base64,{img}'>" if img else "")
                     + f"<br>{esc(c['detail'])}</td><td><a href='{esc(c['clip'])}'>{esc(c['clip'])}</a></td></tr>")
    parts.append("</table>")
    parts += ["<h2>Detectors</h2>", f"<img class='fig' alt='detectors' src='data:image/png;base64,{figs['detectors']}'>"]
    for key, fig in figs.items():
        if key.startswith("timeline:"):
            parts.append(f"<img class='fig' alt='{esc(key)}' src='data:image/png;base64,{fig}'>")
    parts += ["<h2>Perception</h2><h3>Objects: reconstruction and visibility</h3>", _table_html(objects, "objects"),
              "<h3>Linear probes (held-out R²)</h3>", _table_html(probes, "probes") if len(probes) else "<p>none</p>"]
    if "probes" in figs:
        parts.append(f"<img class='fig' alt='probes' src='data:image/png;base64,{figs['probes']}'>")
    parts += ["<h2>Episodes</h2>", _table_html(episodes.drop(columns=["checkpoint_path"]), "episodes"),
              "</body></html>"]
    path.write_text("\n".join(parts), encoding="utf-8")


def _md_table(df: pd.DataFrame, fmt="{:.4g}") -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA:
            return "n/a"
        if isinstance(v, (float, np.floating)):
            return fmt.format(float(v))
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _who(verdict_row) -> str:
    """``env (checkpoint)``, or the env alone for tables without a checkpoint."""
    ck = verdict_row.get("checkpoint")
    return f"{verdict_row['env']} ({ck})" if isinstance(ck, str) and ck else str(verdict_row["env"])


def _agreement(verdict_row) -> str:
    """Where the report ran --seeds: whether each seed alone gives this verdict, or where they differ."""
    if "agreement" not in verdict_row or not isinstance(verdict_row.get("agreement"), str):
        return ""
    agree, n = (int(x) for x in verdict_row["agreement"].split("/"))
    if verdict_row["stable"] and agree == n:
        return f" (each of the {n} seeds alone gives the same verdict)"
    if verdict_row["stable"]:
        own = verdict_row["seed_verdicts"].split("; ")[0].split(": ", 1)[1]
        return (f" (pooled over the seeds' episodes; each of the {n} seeds alone says '{own}', consistently: "
                "a report of fewer episodes decides differently)")
    return f" (UNSTABLE over seeds: {verdict_row['seed_verdicts']})"


def write_markdown(path: pathlib.Path, meta: dict, cases, verdicts, scores, objects, probes) -> None:
    lines = ["# xdreamer failure report", "",
             f"{meta['created']} · {len(meta['checkpoints'])} checkpoint(s) · {meta['jobs']} episode(s) · "
             f"seed {meta['seed']} · {'Ray' if meta['ray'] else 'in-process'} · {meta['wall_s']:.1f} s", "",
             f"`{meta['command'] or ''}`", "", provenance(meta), "", "## Verdicts", ""]
    for _, v in verdicts.iterrows():
        lines.append(f"- **{_who(v)}**: {v['verdict']}{_agreement(v)}. {v['evidence']}. {v['score_context']}; "
                     f"coverage {v['coverage']}.")
    lines += ["", _md_table(verdicts.drop(columns=["numbers"])), "", "## Score context", "", _md_table(scores), "",
              "## Failure cases", "", _md_table(cases[["case", "checkpoint", "env", "episode", "step", "detector",
                                                       "score", "detail", "object_effects", "clip"]]) if len(cases) else "none", "",
              "## Objects", "", _md_table(objects) if len(objects) else "none", "",
              "## Linear probes (held-out R²)", "", _md_table(probes) if len(probes) else "none", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
