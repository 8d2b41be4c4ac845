"""``xdreamer audit`` on the bundled toy agents (issue #27, item 1): the numbers quoted in docs/audit.md.

Runs the real command (``xdreamer.cli.main``) for each configuration below, writes each audit's folder under
OUT (default ``xdreamer-out/audit-bundled``), then prints one table row per agent x method x check: the verdict and
the decisive number with its 95 % bootstrap interval over the audited states.

    python docs/experiments/audit_bundled.py [OUT] [--quick]

``--quick`` runs the command's defaults (2 seeds x 3 states, the fast methods) on catch-lanes only.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

RUNS = [  # (label, checkpoint, extra arguments)
    ("catch-lanes", "checkpoints/catch-lanes",
     ["--seeds", "0", "1", "2", "--states", "6", "--methods", "saliency", "integrated_gradients", "occlusion",
      "smoothgrad", "greydanus", "latent_ig", "latent_ablation", "objects", "--control"]),
    ("catch-embednorm", "checkpoints/catch-embednorm", ["--seeds", "0", "1", "2", "--states", "6"]),
    ("catch-pixel-lanes", "checkpoints/catch-pixel-lanes", ["--seeds", "0", "1", "2", "--states", "6"]),
]


def decisive(check: dict) -> str:
    def fmt(ci):
        return "n/a" if not ci or ci[0] is None else f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]"

    if "spearman" in check:  # interventions (#27 item 4)
        return f"Spearman(|attr|, intervention): {fmt(check['spearman']['method'])}"
    if "stages" in check:
        stage = next(s for s in check["stages"] if s["block"] == check["decisive_stage"])
        return f"Spearman after {check['decisive_stage']}: {fmt(stage['spearman_abs'])}"
    null, ci = min(check["method_minus_null"].items(), key=lambda kv: kv[1][0] if kv[1][0] is not None else 0)
    return f"method - {null}: {fmt(ci)}"


def rows(label: str, data: dict) -> list[str]:
    out = []
    for method, m in data["methods"].items():
        for name, check in m["checks"].items():
            if "verdict" in check:
                out.append(f"| {label} | {method} | {name} | {check['verdict']} | {decisive(check)} |")
        out.append(f"| {label} | {method} | **method** | **{m['verdict']}** | |")
    return out


def main(argv: list[str]) -> None:
    from xdreamer.cli import main as cli

    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    out = pathlib.Path(argv[0] if argv else "xdreamer-out/audit-bundled")
    runs = [("catch-lanes", "checkpoints/catch-lanes", [])] if quick else RUNS
    table = ["| agent | method | check | verdict | decisive number (95 % CI) |", "|---|---|---|---|---|"]
    for label, ckpt, extra in runs:
        folder = out / label
        start = time.perf_counter()
        if cli(["audit", ckpt, "--no-progress", "--out", str(folder), *extra]) != 0:
            raise SystemExit(f"audit of {ckpt} failed")
        print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
        data = json.loads((folder / "audit.json").read_text())
        table += rows(label, data)
        if "control" in data:
            table += rows(f"random copy of {label}", data["control"])
    print("\n".join(table))


if __name__ == "__main__":
    main(sys.argv[1:])
