"""The failure report's verdicts on the bundled agents, pinned (issue #27, item 6: "Run the verdicts on all ten bundled
agents in a test and pin them").

The toy agents are re-run here: the four ball-blind agents at 4 episodes (stable over 3 report seeds, docs/reports.md)
and the agents that see their ball, whose per-seed verdict flips at 4 episodes (their ball probe sits near its R^2
threshold when fitted on 3 short episodes), at the 10-12 episodes that pool to the stable verdict. Each seeing agent
is the negative control of a blind one: the same detectors must reach the opposite perception verdict.

The four Atari agents cost 39 minutes of evaluation (``reports/atari``); the test re-derives their verdicts from the
shipped report's evidence tables with the current verdict logic and pins those, with the seed agreement the report
measured (3 of 4 stable over seeds 0-2; Pong's exploration follows the sample, 1 point in 9 games).
"""

from __future__ import annotations

import pathlib

import pandas as pd
import pytest

from xdreamer.report import run_report
from xdreamer.report.tables import verdicts_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEES = "no perception or exploration failure detected"
BLIND = "cannot see it (perception)"

ATARI = {
    "atari:Venture": ("never found reward (exploration)", True),
    "atari:VideoPinball": (BLIND, True),
    "atari:Pong": (SEES, False),
    "atari:Breakout": ("cannot see it and never found reward (perception + exploration)", True),
}


def test_shipped_atari_verdicts_follow_from_their_evidence():
    folder = ROOT / "reports" / "atari"
    tables = {n: pd.read_csv(folder / f"{n}.csv") for n in ("episodes", "objects", "probes", "scores", "verdicts")}
    derived = verdicts_table(tables["episodes"], tables["objects"], tables["probes"], tables["scores"])
    assert dict(zip(derived["env"], derived["verdict"])) == {env: v for env, (v, _) in ATARI.items()}
    shipped = tables["verdicts"].set_index("env")
    for env, (verdict, stable) in ATARI.items():
        assert shipped.loc[env, "verdict"] == verdict and bool(shipped.loc[env, "stable"]) == stable, env
    # VideoPinball's ball: decodable from the pixels, not from the latent (the one-pixel object)
    assert "not from the latent" in derived.set_index("env").loc["atari:VideoPinball", "evidence"]


def _verdicts(tmp_path, names, episodes):
    out = tmp_path / f"report-{episodes}"
    run_report([str(ROOT / "checkpoints" / n) for n in names], out, episodes=episodes, max_steps=200, clips=False,
               progress=False, dream_steps=0)
    table = pd.read_csv(out / "verdicts.csv")
    return dict(zip(table["checkpoint"], table["verdict"])), dict(zip(table["checkpoint"], table["evidence"]))


@pytest.mark.slow
def test_bundled_toy_verdicts(tmp_path):
    blind = ["catch", "catch-pixel", "catch-pixel-lanes", "catch-pixel-embednorm", "catch-dreamerv1"]
    verdicts, evidence = _verdicts(tmp_path, blind, episodes=4)
    assert verdicts == dict.fromkeys(blind, BLIND), evidence
    seeing = ["catch-lanes", "catch-embednorm", "catch-dreamerv3"]
    verdicts, evidence = _verdicts(tmp_path, seeing, episodes=12)
    assert verdicts == dict.fromkeys(seeing, SEES), evidence
    for name in seeing:  # they see the ball and draw it poorly: the override needs every coordinate decodable
        assert "every coordinate of its position is decodable from the latent" in evidence[name], evidence[name]
