"""``xdreamer audit``: sanity checks with negative controls for every explanation method (issue #27, item 1).

    xdreamer audit CHECKPOINT [--trace T] [--steps N ...] [--seeds S ...] [--states N] [--methods M ...]
                   [--control] [--out xdreamer-out/audit-<name>/ | audit.json | audit.html]

Writes the numbers (JSON) and a one-page HTML table; prints one verdict line per method, and says so plainly
where a method fails on the agent. ``add_commands(subparsers)`` registers the command; the checks live in
``explain.audit``.
"""

from __future__ import annotations

import argparse
import html
import json
import pathlib
from typing import Any

from ..checkpoint import atomic_write_text
from .audit import ALL_METHODS, DEFAULT_METHODS, FILLS, LATENT_METHODS

AUDIT_FILE = "audit.json"


def _fmt(ci: Any) -> str:
    if not ci or ci[0] is None:
        return "n/a"
    est, lo, hi = ci
    return f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]" if lo is not None else f"{est:+.3f}"


def verdict_lines(data: dict) -> list[str]:
    """One line per method: its verdict and each check's verdict with the decisive number."""
    lines = []
    for name, m in data["methods"].items():
        parts = []
        for check, c in m["checks"].items():
            if "verdict" not in c:
                continue
            if check == "randomisation":
                ci = next(s["spearman_abs"] for s in c["stages"] if s["block"] == c["decisive_stage"])
                signed = next(s["spearman_signed"] for s in c["stages"] if s["block"] == c["decisive_stage"])
                parts.append(f"randomisation {c['verdict']} (median |map| Spearman after '{c['decisive_stage']}' "
                             f"{_fmt(ci)}, needs <= {c['threshold']}; signed map {_fmt(signed)}: "
                             f"{c.get('signed_verdict', 'n/a')})")
            elif check == "interventions":
                rho = c["spearman"]
                nulls = ", ".join(f"{n} order {_fmt(v)}" for n, v in rho.items() if n != "method")
                parts.append(f"interventions {c['verdict']} (median Spearman(|attribution|, intervention effect) "
                             f"{_fmt(rho['method'])} over {c['states']} unsaturated states, needs > {c['threshold']}; "
                             f"{nulls})")
            elif check == "forgetting":
                drop = c["drop"]
                parts.append(f"forgetting {c['verdict']} (forgetting its own top memory units lowers log p(action) "
                             f"by {_fmt(c['difference'])} more than the randomised copy's top units, needs > "
                             f"{c['threshold']}; drops: own {_fmt(drop['method'])}, copy's "
                             f"{_fmt(drop['random_agent'])}, random units {_fmt(drop['random'])}; memory's share of "
                             f"the attribution {_fmt(m['checks']['memory_share']['share'])})")
            elif check == "dependence":
                parts.append(f"dependence {c['verdict']} (erasing the window's frames one at a time moves p(action) "
                             f"by {_fmt(c['difference'])} more TV than for the randomised copy, needs > "
                             f"{c['threshold']}; past share of the credit {_fmt(c['past_share'])})")
            elif c["verdict"] == "uninformative":
                at = ", ".join(f"{n} {c['hit_rate'][n][c['target']]:.0%}" for n in c["nulls_at_ceiling"])
                own = c["hit_rate"]["method"][c["target"]]
                parts.append(f"{check} uninformative (method hits {own:.0%}, null {at}: no map can beat that null "
                             f"by {c['margin']})")
            else:
                worst = min(c["method_minus_null"].items(), key=lambda kv: kv[1][0] if kv[1][0] is not None else 0)
                parts.append(f"{check.replace('_', '/')} {c['verdict']} (method - {worst[0]} {_fmt(worst[1])}, "
                             f"needs > {c['margin']})")
        rates = m["checks"].get("effect", {}).get("edit_landing_rate", {})
        landing = {k: v for k, v in rates.items() if v is not None}
        if landing:  # object attribution: the simulator edits that landed (Atari edits are verified on the screen)
            parts.append("edits landed " + ", ".join(f"{k} {v:.0%}" for k, v in landing.items()))
        flag = "FAILS its checks on this agent: " if m["verdict"] == "fail" else ""
        lines.append(f"{name}: {m['verdict'].upper()} -- {flag}" + "; ".join(parts))
    for name, why in data.get("skipped", {}).items():
        lines.append(f"{name}: not audited ({why})")
    return lines


def audit_html(data: dict) -> str:
    """A self-contained page: the verdict table, then per method every check's numbers."""
    e = html.escape
    rows = _verdict_rows(data)
    sections = []
    for name, m in data["methods"].items():
        body = []
        for check, c in m["checks"].items():
            if check in ("randomisation",):
                stages = "".join(f"<tr><td>{e(s['block'])}</td><td>{_fmt(s['spearman_abs'])}</td>"
                                 f"<td>{_fmt(s['spearman_signed'])}</td><td>{_fmt(s['ssim'])}</td></tr>"
                                 for s in c["stages"])
                body.append(f"<h4>cascading randomisation: {e(c['verdict'])} (decisive stage "
                            f"'{e(c['decisive_stage'])}', median |map| Spearman needs &le; {c['threshold']})</h4>"
                            "<table><tr><th>randomised up to</th><th>Spearman |map|</th><th>Spearman signed</th>"
                            f"<th>SSIM</th></tr>{stages}</table>")
            elif "method_minus_null" in c:
                nulls = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(v)}</td></tr>"
                                for k, v in c["method_minus_null"].items())
                extra = c.get("auc") or c.get("hit_rate")
                body.append(f"<h4>{e(check)}: {e(c.get('verdict', c.get('indicative', '')))} (margin {c['margin']})"
                            f"</h4><table><tr><th>method minus null</th><th>mean [95% CI]</th></tr>{nulls}</table>"
                            f"<pre>{e(json.dumps(extra, indent=1))}</pre>")
            else:
                body.append(f"<h4>{e(check)}</h4><pre>{e(json.dumps(c, indent=1))}</pre>")
        sections.append(f"<h3>{e(name)}: {e(m['verdict'])}</h3>" + "".join(body))
    states = ", ".join(f"seed {s['seed']} step {s['step']}" if s["seed"] is not None else f"step {s['step']}"
                       for s in data["states"])
    return ("<!doctype html><meta charset='utf-8'><title>xdreamer audit</title><style>body{font-family:sans-serif;"
            "max-width:70em;margin:2em auto}td,th{border:1px solid #ccc;padding:2px 6px}table{border-collapse:"
            f"collapse}}</style><h2>Audit of {e(str(data['checkpoint']))} on {e(data['env'])}</h2>"
            f"<p>{len(data['states'])} states: {e(states)}. Thresholds: {e(json.dumps(data['thresholds']))}. "
            "A check passes when its whole bootstrap interval is on the passing side, fails when it is wholly on "
            "the failing side (docs/audit.md).</p>"
            f"<table><tr><th>method</th><th>verdict</th><th>checks</th></tr>{rows}</table>"
            + "".join(sections)
            + "".join(f"<p>{e(k)}: not audited ({e(v)})</p>" for k, v in data.get("skipped", {}).items())
            + (f"<h2>Negative control: {e(data['control'].get('what', ''))}</h2><table><tr><th>method</th>"
               f"<th>verdict</th><th>checks</th></tr>{_verdict_rows(data['control'])}</table>"
               if isinstance(data.get("control"), dict) else ""))


def _verdict_rows(data: dict) -> str:
    e = html.escape
    colour = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}

    def summary(m: dict) -> str:
        return "; ".join(f"{k}: {c['verdict']}" + (f" (signed map: {c['signed_verdict']})" if "signed_verdict" in c
                                                   else "") for k, c in m["checks"].items() if "verdict" in c)

    return "".join(f"<tr><td>{e(n)}</td><td style='color:{colour.get(m['verdict'], '#000')}'><b>{e(m['verdict'])}"
                   f"</b></td><td>{e(summary(m))}</td></tr>" for n, m in data["methods"].items())


def default_out(agent) -> str:
    from .commands import default_output

    return default_output(f"audit-{pathlib.Path(str(getattr(agent, 'path', '') or 'agent')).name}")


def write(data: dict, out: str) -> list[pathlib.Path]:
    """``out`` ending in .json or .html writes that file; anything else is a folder that gets both."""
    path = pathlib.Path(out)
    suffix = path.suffix.lower()
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    if suffix == ".json":
        return [atomic_write_text(path, text)]
    if suffix in (".html", ".htm"):
        return [atomic_write_text(path, audit_html(data))]
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file without .json/.html; give a .json, .html or a folder")
    path.mkdir(parents=True, exist_ok=True)
    return [atomic_write_text(path / AUDIT_FILE, text), atomic_write_text(path / "audit.html", audit_html(data))]


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import randomised_copy, run_audit
    from .commands import _load
    from .trace import load_trace

    agent, env = _load(args)
    try:
        trace = load_trace(args.trace) if args.trace else None
        if trace is not None and trace.meta.get("env") != env.spec.id:
            raise ValueError(f"trace was recorded on {trace.meta.get('env')}, the checkpoint's env is {env.spec.id}")
        if args.steps and args.states_given:
            raise ValueError("give --steps or --states, not both")
        options = dict(methods=args.methods, seeds=args.seeds, steps=args.steps, states=args.states, trace=trace,
                       fill=args.fill, curve_steps=args.curve_steps, margin=args.margin, max_steps=args.max_steps,
                       seed=args.seed, progress=not args.no_progress, latent_baseline=args.latent_baseline)
        data = run_audit(agent, env, **options).to_dict()
        if args.control:
            if trace is not None:
                raise ValueError("--control records the randomised copy's own episodes; use --seeds, not --trace")
            control = run_audit(randomised_copy(agent, args.seed), env, **options).to_dict()
            data["control"] = {"what": "the same architecture freshly initialised (seed "
                                       f"{args.seed}), audited on its own episodes", **control}
    finally:
        env.close()
    for line in verdict_lines(data):
        print(line)
    if args.control:
        print("negative control (randomised copy):")
        for line in verdict_lines(data["control"]):
            print("  " + line)
    written = write(data, args.out or default_out(agent))
    print("wrote " + " and ".join(str(p) for p in written))
    return 0


class _StatesAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.states_given = True


def add_commands(subparsers) -> None:
    """Register ``audit`` on an ``argparse`` subparsers object (``args.func(args)`` runs it)."""
    from .commands import _common, default_output

    p = subparsers.add_parser("audit", help="sanity checks with negative controls for every explanation method",
                              description=(
        "Put each explanation method through cascading model randomisation (Adebayo et al. 2018), "
        "deletion/insertion of the chosen action's probability against null maps (Petsiuk et al. 2018) and the "
        "pointing game on ground-truth object boxes against null maps, over several states and seeds, with "
        "bootstrap intervals; writes per-method verdicts (pass / fail / inconclusive). docs/audit.md explains "
        "the checks and thresholds."))
    _common(p)
    p.add_argument("--trace", help="trace .npz recorded from this checkpoint (default: record one episode per "
                                   "--seeds seed)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], metavar="SEED",
                   help="evaluation seeds, one recorded episode each (default 0 1; ignored with --trace)")
    p.add_argument("--steps", type=int, nargs="+", default=None, metavar="STEP",
                   help="audit these steps (of each seed's episode, or of --trace) instead of --states picks")
    p.add_argument("--states", type=int, default=3, action=_StatesAction,
                   help="steps per episode, spread evenly over the steps that show every object (default 3)")
    p.add_argument("--max-steps", type=int, default=60,
                   help="cut each recorded episode after this many steps (default 60)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(ALL_METHODS),
                   metavar="METHOD",
                   help=f"methods to audit, from {', '.join(ALL_METHODS)} (default {' '.join(DEFAULT_METHODS)}; "
                        "occlusion and greydanus take about 10x longer a map)")
    p.add_argument("--fill", choices=FILLS, default="background",
                   help="what deleted pixels become: background (the frame's most common value per channel, "
                        "default) or blur (Gaussian, sigma 5)")
    p.add_argument("--curve-steps", type=int, default=16,
                   help=f"points of the pixel deletion/insertion curves (default 16; the latent methods "
                        f"({', '.join(LATENT_METHODS)}) delete one variable at a time)")
    p.add_argument("--latent-baseline", choices=("aggregate", "prior"), default="aggregate",
                   help="baseline of the latent attributions: aggregate (each variable's class frequencies over the "
                        "episode: what the policy depends on, default) or prior (p(z_t | h_t): what the world "
                        "model expected; it ranks surprise, issue #27)")
    p.add_argument("--margin", type=int, default=2, help="pixels around each object box in the pointing game "
                                                          "(default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the re-initialisations and null maps (default 0)")
    p.add_argument("--control", action="store_true",
                   help="also audit a randomised copy of the agent (the negative control) and report it beside")
    p.add_argument("--out", help="output folder (gets audit.json and audit.html), or a .json / .html file "
                                 f"(default {default_output('audit-<CHECKPOINT>/')})")
    p.set_defaults(func=cmd_audit, states_given=False)
