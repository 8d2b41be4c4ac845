"""Batch failure reports: detectors on planted failures, probes, Ray vs in-process, outputs, CLI errors."""

import copy
import html.parser
import importlib.util
import json
import pathlib
import socket
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from xdreamer import checkpoint
from xdreamer.agent import Agent
from xdreamer.cli import main
from xdreamer.config import build_config
from xdreamer.envs import make
from xdreamer.explain import record, save
from xdreamer.report import detectors as D
from xdreamer.report import render
from xdreamer.report.build import run_report
from xdreamer.report.tables import objects_table, verdicts_table
from xdreamer.report.jobs import analyse, make_env_for
from xdreamer.report.probes import (concat_samples, control_targets, heldout_split, probe, probe_table,
                                    samples_from_trace)

CHECKPOINTS = pathlib.Path(__file__).resolve().parents[1] / "checkpoints"
MAX_STEPS = 30  # steps per recorded episode in the end-to-end runs (keeps the file fast on 2 shared cores)


def _agent(seed=0):
    env = make("toy:catch")
    torch.manual_seed(seed)
    agent = Agent(build_config(["debug"], {"env": "toy:catch", "device": "cpu"}), env.spec)
    env.close()
    return agent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = checkpoint.save(root / "catch-debug", _agent(0), steps=0)
    other = checkpoint.save(root / "other", _agent(1), steps=0)
    return root, path, other


@pytest.fixture(scope="module")
def trace(ckpt):
    agent = checkpoint.load(ckpt[1])
    env = make("toy:catch")
    tr = record(agent, env, episodes=3, seed=5)  # whole episodes: 5 reward events each
    env.close()
    return tr


def clean(trace):
    """A consistent synthetic version of ``trace``: perfect reconstruction and reward head, constant
    surprise, values equal to the realised returns (the fixed point of the lambda-return)."""
    t = copy.deepcopy(trace)
    a = t.arrays
    a["recon"] = a["frame"].copy()
    a["recon_sqerr"] = np.zeros(a["frame"].shape, np.float16)
    a["recon_error"] = np.zeros(len(t), np.float32)
    a["pred_reward"] = D.reward_target(t).astype(np.float32)
    a["surprise"] = np.full(len(t), 1.0, np.float32)
    r, term = D.reward_target(t), t.table["is_terminal"].to_numpy(bool)
    g = np.zeros(len(t))
    for i in reversed(range(len(t))):  # v_t = r_t + gamma (1 - terminal_t) v_{t+1} within an episode
        last = i + 1 < len(t) and a["episode"][i + 1] == a["episode"][i]
        g[i] = r[i] + (t.meta["discount"] * (1 - term[i]) * g[i + 1] if last else 0.0)
    a["value"] = g.astype(np.float32)
    return t


def test_clean_trace_flags_nothing(trace):
    t = clean(trace)
    assert t.table["is_terminal"].sum() == 3 and (np.abs(t.arrays["reward"]) > 0).sum() == 15
    assert np.allclose(D.lambda_returns(t), t.arrays["value"], atol=1e-5)
    assert len(D.detect(t)) == 0
    vis = D.object_visibility(t).set_index("object")
    assert vis.loc["ball", "survive_frac"] == 1.0 and vis.loc["ball", "area_px"] == 16
    out = analyse(t)
    assert out["events"] == [] and all(o["blind_steps"] == 0 for o in out["objects"])
    assert D.coverage(t)["visited"] >= 1 and D.coverage(t)["total"] == 64


def _blank_ball(t):
    a = t.arrays
    for i in range(len(t)):
        s = D.box_slices(a["objects/ball"][i])
        a["recon"][i][:, s[0], s[1]] = 0
    a["recon_sqerr"] = ((a["recon"].astype(np.float32) - a["frame"]) / 255.0) ** 2
    return t


def test_blind_spot_detector_finds_blanked_ball(trace):
    t = _blank_ball(clean(trace))
    events = D.blind_spots(t)
    assert len(events) >= 3 and set(events["detector"]) == {"blind_spot"}
    assert all(d.startswith("ball:") for d in events["detail"]) and (events["score"] >= 1).all()
    errors = D.object_errors(t)
    assert (errors[errors.object == "ball"]["ratio"] > 100).all()
    assert np.allclose(errors[errors.object == "paddle"]["ratio"], 1.0)
    assert set(D.detect(t)["detector"]) == {"blind_spot"}
    # The verdict calls it perception ("cannot see it") with the numbers behind it.
    out = analyse(t)
    assert out["stats"]["complete"]  # the fixture's episodes are whole
    result = {**out, "checkpoint": "c", "episode": 0}
    objects = objects_table([result])
    episodes = pd.DataFrame([{"env": "toy:catch", **out["stats"]}])
    scores = pd.DataFrame([{"env": "toy:catch", "return_mean": 0.0, "random": -2.0, "dreamerv2_published": None}])
    v = verdicts_table(episodes, objects, pd.DataFrame(columns=["env"]), scores).iloc[0]
    assert v["verdict"] == "cannot see it (perception)" and "ball is a reconstruction blind spot" in v["evidence"]
    assert json.loads(v["numbers"])["ball_blind_frac"] == 1.0

    def probes(latent):  # probe rows for the ball: pixels find both coordinates; the latent as given
        return pd.DataFrame([{"env": "toy:catch", "variable": f"ball_{c}", "features": f, "r2": r}
                             for c in "xy" for f, r in (("pixels", 0.98), ("feat", latent), ("deter", latent - 0.1))])
    # The same blind spot with probes that find the ball in the latent: encoded but drawn poorly, not perception.
    v = verdicts_table(episodes, objects, probes(0.9), scores).iloc[0]
    assert v["verdict"] == "no perception or exploration failure detected", v["evidence"]
    assert "every coordinate of its position is decodable from the latent (R2 ball_x 0.90, ball_y 0.90)" \
        in v["evidence"]
    # ... and with probes that do not: perception, for both reasons.
    v = verdicts_table(episodes, objects, probes(0.2), scores).iloc[0]
    assert v["verdict"] == "cannot see it (perception)"
    assert "ball is a reconstruction blind spot" in v["evidence"] and "ball_x is linearly decodable" in v["evidence"]
    # One decodable coordinate is not "encoded" (issue #27: Pong's ball y, R2 0.87, passed alone), whether or not
    # the pixel probe finds the other one.
    for pixels_x in (0.98, 0.3):
        one = pd.DataFrame([{"env": "toy:catch", "variable": f"ball_{c}", "features": f, "r2": r}
                            for c, px, lat in (("x", pixels_x, 0.1), ("y", 0.98, 0.87))
                            for f, r in (("pixels", px), ("feat", lat))])
        v = verdicts_table(episodes, objects, one, scores).iloc[0]
        assert v["verdict"] == "cannot see it (perception)", v["evidence"]
        assert "not every coordinate is decodable from the latent (R2 ball_x 0.10, ball_y 0.87" in v["evidence"]
    # Probes held out by episode say how many episodes they were fitted on when that is few.
    few = probes(0.9).assign(split="episode", train_episodes=1, test_episodes=1)
    assert "fitted on only 1 episode(s)" in verdicts_table(episodes, objects, few, scores).iloc[0]["evidence"]
    assert "fitted on only" not in verdicts_table(episodes, objects, few.assign(train_episodes=8),
                                                  scores).iloc[0]["evidence"]
    # A game where no positive reward was ever found is exploration.
    episodes["positive_rewards"] = 0
    v = verdicts_table(episodes, objects_table([{**analyse(clean(trace)), "checkpoint": "c", "episode": 0}]),
                       pd.DataFrame(columns=["env"]), scores).iloc[0]
    assert v["verdict"] == "never found reward (exploration)" and "no positive reward" in v["evidence"]


def test_reward_detectors_find_missed_and_phantom_rewards(trace):
    t = clean(trace)
    events_at = np.flatnonzero(np.abs(t.arrays["reward"]) > 0)
    t.arrays["pred_reward"][events_at] = 0.0  # a reward head that misses every event
    quiet = int(np.flatnonzero(t.arrays["reward"] == 0)[10])
    t.arrays["pred_reward"][quiet] = 0.9  # and predicts one that never comes
    ev = D.reward_misses(t)
    miss = ev[ev.detector == "reward_miss"]
    assert sorted(miss["step"]) == sorted(events_at.tolist())
    assert list(ev[ev.detector == "phantom_reward"]["step"]) == [quiet]
    assert set(D.detect(t)["detector"]) == {"reward_miss", "phantom_reward"}


def test_surprise_and_value_detectors(trace):
    t = clean(trace)
    t.arrays["surprise"] += np.random.default_rng(0).normal(0, 0.01, len(t)).astype(np.float32)
    t.arrays["surprise"][20] = 5.0
    t.arrays["value"][40] += 3.0
    ev = D.detect(t)
    assert list(ev[ev.detector == "surprise_spike"]["step"]) == [20]
    # value[40] is wrong, and so is the lambda-return of step 39, which bootstraps from it (1 - lambda = 0.05).
    assert 40 in list(ev[ev.detector == "value_error"]["step"])
    assert set(ev["detector"]) == {"surprise_spike", "value_error"}


def test_probes_recover_a_linearly_encoded_position(trace):
    # Latents built to encode the ball position linearly (plus noise): the probe must find it on held-out steps,
    # and not in random classes. (Trained agents: test_probes_on_trained_agents.)
    t = copy.deepcopy(trace)
    rng = np.random.default_rng(0)
    ball = t.arrays["objects/ball"]
    pos = np.stack([ball[:, 0] + 2, ball[:, 1] + 2], 1)
    mix = rng.normal(size=(2, t.arrays["deter"].shape[1]))
    t.arrays["deter"] = (pos / 32 - 1) @ mix + 0.05 * rng.normal(size=t.arrays["deter"].shape)
    t.arrays["post_class"] = rng.integers(0, 8, t.arrays["post_class"].shape)
    samples = samples_from_trace(t, None)
    table = probe_table(samples, classes=8).set_index(["variable", "features"])
    assert table.loc[("ball_x", "deter"), "r2"] > 0.95 and table.loc[("ball_y", "deter"), "r2"] > 0.95
    assert table.loc[("ball_x", "stoch"), "r2"] < 0.5
    assert np.isnan(table.loc[("paddle_y", "deter"), "r2"])  # constant: no R^2
    # A direct check of the closed-form ridge on a noiseless linear target.
    X = rng.normal(size=(200, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 4.0
    assert probe(X, y, np.arange(200) % 4 == 3)["r2"] > 0.999


def test_probe_never_crashes_and_records_its_solver(monkeypatch):
    """Issue #27: LAPACK's SVD raised "SVD did not converge" on a finite 400 x 4096 pixel matrix and killed a
    report. The normal-equations fallback gives the same ridge, GCV lambda and R^2; a fit that cannot be made is
    NaN with the reason, not an exception."""
    from xdreamer.report import probes as P

    rng = np.random.default_rng(0)
    for n, d in ((120, 300), (300, 20)):  # dual (n <= d) and primal Gram matrices
        X = rng.normal(size=(n, d))
        y = X[:, :3] @ np.array([1.0, -0.5, 2.0]) + rng.normal(0, 0.3, n)
        test = np.arange(n) % 4 == 3
        ref = probe(X, y, test)
        assert ref["solver"] == "svd"

        def broken(*args, **kwargs):
            raise np.linalg.LinAlgError("SVD did not converge")

        with monkeypatch.context() as m:
            m.setattr(P.np.linalg, "svd", broken)
            fb = probe(X, y, test)
            assert fb["solver"].startswith("normal-equations (svd: SVD did not converge")
            for key in ("r2", "train_r2", "control_r2", "lambda"):
                assert fb[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-8), key
            m.setattr(P.np.linalg, "solve", broken)
            dead = probe(X, y, test)
            assert np.isnan(dead["r2"]) and dead["solver"] == "failed: SVD did not converge"


def test_probes_hold_out_episodes_and_run_control_tasks():
    rng = np.random.default_rng(1)
    n = 240
    episode = np.repeat(np.arange(3), n // 3)
    pos = rng.integers(0, 60, n).astype(float) + 0.5  # 60 types
    samples = {"deter": np.stack([pos / 60, rng.normal(size=n)], 1).astype(np.float32),
               "stoch": rng.integers(0, 4, (n, 2)).astype(np.int16), "pixels": rng.integers(0, 255, (n, 8), np.uint8),
               "episode": episode, "ball_x": pos}
    test, split = heldout_split(samples)
    assert split == "episode" and np.array_equal(test, episode == 2)  # fewer than 4 episodes: the last is held out
    one = dict(samples, episode=np.zeros(n, np.int64))
    test1, split1 = heldout_split(one)
    assert split1 == "block" and 0.2 < test1.mean() < 0.3
    table = probe_table(samples, classes=4).set_index("features")
    assert set(table["split"]) == {"episode"} and table.loc["deter", "n_test"] == n // 3
    # A linear code of the position: R2 ~1 and the randomly re-assigned control fails, selectivity high.
    assert table.loc["deter", "r2"] > 0.99 and table.loc["deter", "selectivity"] > 0.8
    # A lookup table of the position's types (one-hot per value) fits the control task as well as the task:
    # its R2 says nothing about structure (selectivity ~0; Hewitt & Liang 2019).
    ctrl = control_targets(pos)
    assert sorted(np.unique(ctrl)) == sorted(np.unique(pos)) and not np.array_equal(ctrl, pos)
    assert all(len(np.unique(ctrl[pos == v])) == 1 for v in np.unique(pos))  # one control value per type
    lookup = (pos[:, None] == np.unique(pos)[None]).astype(float)
    res = probe(lookup, pos, episode == 2)
    assert res["r2"] > 0.9 and abs(res["selectivity"]) < 0.1, res
    # Episodes of several jobs stay apart when samples are concatenated.
    both = concat_samples([one, one])
    assert np.array_equal(np.unique(both["episode"]), [0, 1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["catch-lanes", "catch"])
def test_probes_on_trained_agents(name):
    """Probes on the latents of real trained agents (the bundled checkpoints, 4 recorded episodes, 368 steps).
    `catch-lanes` sees its ball (its return, 1.96 over 50 episodes, is beyond any ball-blind policy's -1.67):
    measured R^2 ball_x 0.82 / ball_y 0.95 from `feat` held out by blocks of steps; held out by episode (the
    4th), as reports now do, the best latent probe (`deter`) finds ball_x 0.77 / ball_y 0.91 and `feat` 0.45 /
    0.75. `catch` is ball-blind (docs/faithfulness.md "Known limitations"): ball_x -1.07 from `feat` by blocks
    while the same probe on the frames' pixels finds it (0.65 with 368 samples, 0.98 with the report's 940); by
    episode its best latent ball_x R^2 is -0.01 but ball_y is 0.54 from `deter` (the GRU counts the steps since
    the ball spawned): one coordinate alone does not show the ball is seen (issue #27; ``verdicts_table``).
    Measured with torch 2.13.0+cpu on the project's 2-core VM."""
    from xdreamer.report.probes import heldout_mask

    agent = checkpoint.load(CHECKPOINTS / name)
    env = make_env_for(agent)
    trace = record(agent, env, episodes=4, seed=0)
    env.close()
    samples = samples_from_trace(trace, None)
    classes = trace.arrays["post_logits"].shape[-1]
    blocks = probe_table(samples, classes, test=heldout_mask(len(trace))).set_index(["variable", "features"])["r2"]
    table = probe_table(samples, classes)
    assert set(table["split"]) == {"episode"}
    r2 = table.set_index(["variable", "features"])["r2"]

    def latent(var):
        return max(r2[(var, f)] for f in ("deter", "stoch", "feat"))

    if name == "catch-lanes":
        assert blocks[("ball_x", "feat")] > 0.6 and blocks[("ball_y", "feat")] > 0.8, blocks
        assert latent("ball_x") > 0.6 and latent("ball_y") > 0.8, r2
    else:
        assert blocks[("ball_x", "feat")] < 0.2 < blocks[("ball_x", "pixels")], blocks
        assert latent("ball_x") < 0.2 < r2[("ball_x", "pixels")] and latent("ball_y") >= 0.5, r2
    assert r2[("paddle_x", "feat")] > 0.95, r2  # both see their paddle


def _read(folder, resolve=False):
    """The report's tables; with ``resolve``, the checkpoint_path of summary.csv and episodes.csv resolved (it is
    relative to the report folder, so two reports of one checkpoint in different folders name it differently)."""
    tables = {name: pd.read_csv(folder / name) for name in
              ("summary.csv", "episodes.csv", "verdicts.csv", "scores.csv", "probes.csv", "objects.csv")}
    if resolve:
        for name in ("summary.csv", "episodes.csv"):
            table = tables[name]
            table["checkpoint_path"] = [str((folder / p).resolve()) for p in table["checkpoint_path"]]
    return tables


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.headers, self._table = [], [], {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
            self.tables.append(self._table)
            self.headers[self._table] = []
        elif tag == "img":
            self.imgs.append(attrs.get("src", ""))
        elif tag == "th" and self._table:
            self._th = True

    def handle_data(self, data):
        if getattr(self, "_th", False) and self._table:
            self.headers[self._table].append(data.strip())
            self._th = False


def test_report_outputs(ckpt, tmp_path, capsys, monkeypatch):
    root, path, _ = ckpt
    agent = checkpoint.load(path)
    env = make("toy:catch")
    tr = save(record(agent, env, episodes=1, seed=11, max_steps=20), tmp_path / "t.npz")
    env.close()
    out = tmp_path / "reports" / "run"
    rc = main(["report", str(path), "--traces", str(tr), "--episodes", "2", "--seed", "3", "--out", str(out),
               "--max-steps", str(MAX_STEPS), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["run"]  # no temp folder left
    tables = _read(out)
    summary = tables["summary.csv"]
    assert {"case", "checkpoint", "env", "episode", "step", "detector", "score", "detail"} <= set(summary.columns)
    assert len(summary) > 0 and (summary["score"] >= 1).all() and set(summary["detector"]) <= set(D.DETECTORS)
    assert all((out / "clips" / f"{c}.mp4").stat().st_size > 1000 for c in summary["case"])
    parquet = pd.read_parquet(out / "summary.parquet")
    pd.testing.assert_frame_equal(parquet, summary, check_dtype=False)
    episodes = tables["episodes.csv"]
    assert len(episodes) == 3 and list(episodes["episode"]) == [0, 1, 2]
    assert list(episodes["record_seed"][:2]) == [300009, 300010] and episodes["source"][2].startswith("trace ")
    assert (episodes["steps"][:2] == MAX_STEPS + 1).all() and episodes["steps"][2] == 21
    # all three were cut before the game ended: their returns are not presented as scores
    assert not episodes["complete"].any() and tables["scores.csv"]["complete_episodes"][0] == 0
    assert "cut short (3 of 3; --max-steps); full-game references, not comparable" in tables["verdicts.csv"]["score_context"][0]
    verdicts = tables["verdicts.csv"]
    assert list(verdicts["env"]) == ["toy:catch"] and verdicts["verdict"][0] and verdicts["numbers"][0].startswith("{")
    assert set(tables["probes.csv"]["features"]) == {"deter", "stoch", "feat", "pixels"}
    assert {"control_r2", "selectivity", "split", "solver"} <= set(tables["probes.csv"].columns)
    assert "random" in tables["scores.csv"] and np.isfinite(tables["scores.csv"]["random"][0])
    text = (out / "index.html").read_text()
    parser = _Parser()
    parser.feed(text)
    assert {"summary", "verdicts", "scores", "episodes", "probes", "objects"} <= set(parser.tables)
    assert parser.headers["summary"][:8] == ["case", "checkpoint", "env", "episode", "step", "detector", "score",
                                             "detail"]
    pngs = [s for s in parser.imgs if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(parser.imgs) >= 4 + len(summary)
    assert "http://" not in text and "https://" not in text
    assert all(c in text for c in summary["case"])
    md = (out / "summary.md").read_text()
    assert "## Verdicts" in md and "| case |" in md
    meta = json.loads((out / "report.json").read_text())
    assert meta["jobs"] == 3 and meta["ray"] is False
    # Rerunning replaces the report atomically; a failure half-way leaves the old one untouched.
    before = (out / "summary.csv").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "write_markdown", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_report([str(path)], out, episodes=1, seed=3, max_steps=5, dream_steps=0, progress=False)
    assert (out / "summary.csv").read_text() == before
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["run"]
    monkeypatch.undo()
    run_report([str(path)], out, episodes=1, seed=3, max_steps=5, dream_steps=0, progress=False)
    assert len(pd.read_csv(out / "episodes.csv")) == 1
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["run"]


def test_bad_inputs_give_one_line_errors(ckpt, tmp_path, capsys, monkeypatch):
    root, path, other = ckpt
    out = str(tmp_path / "r")

    def err(argv):
        rc = main(["report", *argv, "--out", out, "--no-progress"])
        text = capsys.readouterr().err.strip()
        assert rc == 2 and text.startswith("xdreamer: error: ") and "\n" not in text, text
        return text

    assert "checkpoint not found" in err([str(tmp_path / "nope"), "--episodes", "1"])
    assert "--episodes is 0" in err([str(path), "--episodes", "0"])
    assert "non-negative" in err([str(path), "--episodes", "-1"])
    other_agent = checkpoint.load(other)
    env = make("toy:catch")
    foreign = save(record(other_agent, env, episodes=1, seed=0, max_steps=5), tmp_path / "foreign.npz")
    env.close()
    assert "does not belong" in err([str(path), "--traces", str(foreign), "--episodes", "1"])
    assert "trace file not found" in err([str(path), "--traces", str(tmp_path / "x.npz"), "--episodes", "1"])
    (tmp_path / "notreport").mkdir()
    (tmp_path / "notreport" / "keep.txt").write_text("x")
    rc = main(["report", str(path), "--episodes", "1", "--out", str(tmp_path / "notreport"), "--no-progress"])
    assert rc == 2 and "is not an xdreamer report" in capsys.readouterr().err
    if importlib.util.find_spec("ray") is not None:  # unreachable or malformed cluster addresses fail in seconds
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]  # nothing listens here once the socket is closed
        short = [str(path), "--episodes", "1", "--max-steps", "3", "--dream-steps", "0"]
        assert "cannot reach the Ray cluster" in err([*short, "--ray-address", f"127.0.0.1:{free}"])
        assert "must be HOST:PORT" in err([*short, "--ray-address", "nonsense"])
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    text = err([str(path), "--episodes", "1", "--max-steps", "3", "--dream-steps", "0", "--ray"])
    assert "--ray needs Ray" in text
    assert not (tmp_path / "r").exists()


def test_report_rows_name_checkpoint_path_and_record_seed(tmp_path):
    """#31: each case names its checkpoint folder (relative to the report, or absolute) and the seed that
    records its episode again, so the app can open it; the episodes' record_seed is the same seed."""
    from xdreamer.evaluation import episode_seed
    from xdreamer.report.build import report_relative

    lanes = CHECKPOINTS / "catch-lanes"
    out = tmp_path / "report"
    # --no-clips; surprise_k 0.01 flags every step above the episode's median surprise, so the 20 steps have cases
    run_report([str(lanes)], out, episodes=1, seed=3, max_steps=20, dream_steps=0, clips=False, progress=False,
               thresholds={"surprise_k": 0.01})
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) > 0 and not (out / "clips" / "c001.mp4").exists()
    assert {"checkpoint_path", "record_seed", "checkpoint", "episode", "step"} <= set(summary.columns)
    assert all((out / p).resolve() == lanes.resolve() for p in summary["checkpoint_path"])
    assert (summary["record_seed"] == episode_seed(3, 0)).all()
    episodes = pd.read_csv(out / "episodes.csv")
    assert (episodes["record_seed"] == episode_seed(3, 0)).all()
    assert all((out / p).resolve() == lanes.resolve() for p in episodes["checkpoint_path"])  # relative too
    assert list(summary["checkpoint"].unique()) == ["catch-lanes"]  # the existing columns stay
    # Relative where report and checkpoint share a folder (a repository's reports/ and checkpoints/).
    root = CHECKPOINTS.parent
    assert report_relative(lanes, root / "reports" / "x") == str(pathlib.Path("..", "..", "checkpoints", "catch-lanes"))
    assert report_relative("/nowhere-a/ckpt", "/nowhere-b/report") == str(pathlib.Path("/nowhere-a/ckpt").resolve())


RAY_KW = dict(episodes=2, seed=1, max_steps=MAX_STEPS)  # the Ray tests' report, run in-process once for both


@pytest.fixture(scope="module")
def local_report(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("local-report")
    return out, run_report([str(ckpt[1])], out, progress=False, **RAY_KW)


@pytest.mark.slow
def test_ray_and_in_process_reports_are_identical(ckpt, local_report, tmp_path):
    pytest.importorskip("ray")
    root, path, _ = ckpt
    local, a = local_report
    b = run_report([str(path)], tmp_path / "ray", ray=True, progress=False, **RAY_KW)
    assert a["ray"] is False and b["ray"] is True
    ta, tb = _read(local, resolve=True), _read(tmp_path / "ray", resolve=True)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    # (summary.csv's bytes differ in checkpoint_path only, which is relative to each report folder; _read
    # resolves it, and check_exact compares every float bit for bit)
    assert len(ta["summary.csv"]) > 0


@pytest.mark.slow
def test_ray_address_connects_to_an_existing_cluster(ckpt, local_report, tmp_path):
    """`--ray-address` runs the jobs on a cluster started outside xdreamer (`ray start --head`), and the
    tables equal the in-process run's."""
    pytest.importorskip("ray")
    import os
    import shutil
    import socket
    import subprocess

    ray_cli = shutil.which("ray")
    assert ray_cli, "Ray is installed but its `ray` command is not on PATH"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A fresh HOME for cluster and driver: a local ray.init (the test above) leaves ~/.ray/auth_token, which
    # a driver then presents to a token-less `ray start` cluster and is refused (Ray 2.60).
    # Nor any RAY_* variable: a local ray.init in this process may have set RAY_AUTH_MODE=token here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")
    started = subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        root, path, _ = ckpt
        args = [str(path), "--episodes", str(RAY_KW["episodes"]), "--seed", str(RAY_KW["seed"]),
                "--max-steps", str(RAY_KW["max_steps"]), "--no-progress"]
        # the CLI in a fresh process: Ray caches the driver's auth token per process
        run = subprocess.run([sys.executable, "-m", "xdreamer", "report", *args, "--out", str(tmp_path / "cluster"),
                              "--ray-address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
    meta = json.loads((tmp_path / "cluster" / "report.json").read_text())
    # the jobs ran on that cluster, not on a fresh local one
    assert meta["ray"] is True and meta["ray_address"] == f"127.0.0.1:{port}", meta
    assert meta["ray_cluster"].endswith(f":{port}"), meta  # GCS address as the cluster names it (node IP)
    assert json.loads((local_report[0] / "report.json").read_text())["ray_cluster"] is None
    ta, tb = _read(local_report[0], resolve=True), _read(tmp_path / "cluster", resolve=True)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)


# ---- #27 item 6: exploration from the training replay, verdicts over seeds with intervals -------------------------
def _run_folder(tmp_path, rewards_per_episode):
    """A run folder as ``xdreamer train`` writes it: <run>/checkpoints/step-0 and <run>/replay/*.npz."""
    from xdreamer.replay import save_episode

    run = tmp_path / "run"
    ckpt = checkpoint.save(run / "checkpoints" / "step-0", _agent(0), steps=0)
    (run / "replay").mkdir()
    for i, rewards in enumerate(rewards_per_episode):
        n = len(rewards)
        save_episode(run / "replay" / f"ep{i:04d}-{n}.npz", {
            "image": np.zeros((n, 1, 64, 64), np.uint8), "action": np.zeros((n, 3), np.float32),
            "reward": np.asarray(rewards, np.float32), "is_first": np.eye(1, n, dtype=bool)[0],
            "is_last": np.eye(1, n, n - 1, dtype=bool)[0], "is_terminal": np.zeros(n, bool)})
    return run, ckpt


def test_training_rewards_reads_the_runs_replay_and_skips_foreign_files(tmp_path):
    from xdreamer.report.tables import training_rewards

    run, ckpt = _run_folder(tmp_path, [[0, 0, 1.0], [0, -1.0, 0], [0, 2.0, 3.0]])
    (run / "replay" / "junk-5.npz").write_bytes(b"not a zip")
    info = training_rewards(str(ckpt))
    assert info["episodes"] == 3 and info["episodes_with_positive_reward"] == 2 and info["skipped"] == 1
    assert info["positive_rewards_per_episode"] == pytest.approx(1.0)
    assert training_rewards(str(CHECKPOINTS / "catch-lanes")) is None  # a bundled checkpoint has no run folder


def _verdict_inputs(positive_rewards):
    episodes = pd.DataFrame({"env": "toy:catch", "positive_rewards": positive_rewards})
    scores = pd.DataFrame([{"env": "toy:catch", "return_mean": 0.0, "random": None, "dreamerv2_published": None,
                            "episodes": len(positive_rewards), "complete_episodes": len(positive_rewards)}])
    return episodes, pd.DataFrame(columns=["env", "object"]), pd.DataFrame(), scores


def test_exploration_is_judged_from_training_where_a_run_folder_is_given():
    """No reward in the evaluation episodes: flagged, "judged from evaluation only", without a training replay; not
    flagged (and said) where the replay holds rewards; flagged from the replay where it holds none."""
    inputs = _verdict_inputs([0, 0, 0])
    alone = verdicts_table(*inputs).iloc[0]
    assert alone["exploration"] and "judged from evaluation only" in alone["evidence"]
    found = {"toy:catch": {"run": "r", "episodes": 40, "episodes_with_positive_reward": 31,
                           "positive_rewards_per_episode": 2.0, "skipped": 0}}
    row = verdicts_table(*inputs, training=found).iloc[0]
    assert not row["exploration"] and "training replay has them in 31 of 40" in row["evidence"]
    never = {"toy:catch": {**found["toy:catch"], "episodes_with_positive_reward": 0}}
    row = verdicts_table(*_verdict_inputs([0, 1, 0]), training=never).iloc[0]
    assert row["exploration"] and "any of the 40 training episodes" in row["evidence"]


def test_ratio_ci_covers_the_pooled_ratio_and_narrows_with_episodes():
    from xdreamer.report.tables import ratio_ci

    rng = np.random.default_rng(0)
    present = rng.integers(20, 40, 30)
    blind = rng.binomial(present, 0.4)
    low, high = ratio_ci(blind, present)
    assert low < blind.sum() / present.sum() < high and high - low < 0.15
    low4, high4 = ratio_ci(blind[:4], present[:4])
    assert high4 - low4 > high - low
    assert np.isnan(ratio_ci([1], [2])[0])


def test_report_over_seeds_gives_each_seeds_verdict_and_their_agreement(ckpt, tmp_path, capsys):
    """--seeds: episodes per seed, the pooled verdict with the blind spot's interval, each seed's own verdict and
    whether they agree, in verdicts.csv and the markdown summary."""
    _, path, _ = ckpt
    out = tmp_path / "seeds"
    assert main(["report", str(path), "--episodes", "2", "--seeds", "0", "1", "--max-steps", str(MAX_STEPS),
                 "--no-clips", "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    episodes = pd.read_csv(out / "episodes.csv")
    assert sorted(episodes["report_seed"]) == [0, 0, 1, 1] and episodes["record_seed"].nunique() == 4
    verdicts = pd.read_csv(out / "verdicts.csv")
    row = verdicts.iloc[0]
    assert row["agreement"] in ("0/2", "1/2", "2/2") and row["seed_verdicts"].startswith("seed 0: ")
    assert bool(row["stable"]) == (row["seed_verdicts"].split("; ")[0].split(": ", 1)[1]
                                   == row["seed_verdicts"].split("; ")[1].split(": ", 1)[1])
    assert "judged from evaluation only" in row["evidence"] or not row["exploration"]
    assert "seeds" in (out / "summary.md").read_text()
    assert json.loads((out / "report.json").read_text())["seeds"] == [0, 1]
    assert main(["report", str(path), "--seeds", "1", "1", "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_report_says_the_blind_twin_ignores_the_ball(tmp_path):
    """#27 item 2 in the report, with its negative control: moving or removing the ball in the simulator changes the
    seeing agent's decision (catch-lanes) and not its ball-blind twin's (catch-pixel-lanes), whose paddle still
    matters; the verdict's evidence says so with the numbers (object_effects.csv)."""
    out = tmp_path / "twins"
    run_report([str(CHECKPOINTS / "catch-lanes"), str(CHECKPOINTS / "catch-pixel-lanes")], out, episodes=2,
               max_steps=100, clips=False, progress=False, dream_steps=0)
    effects = pd.read_csv(out / "object_effects.csv").set_index(["checkpoint", "object"])["median_tv"]
    assert effects["catch-lanes", "ball"] > 0.2
    assert effects["catch-pixel-lanes", "ball"] < 0.05 < 0.2 < effects["catch-pixel-lanes", "paddle"]
    evidence = pd.read_csv(out / "verdicts.csv").set_index("env")["evidence"]
    assert "changes p(action) by a median TV of ball 0.0" in evidence["toy:catch-pixel-lanes"]
    # Per case: the same edits at the case's own step (summary.csv's object_effects, "ball 0.42, paddle 0.03").
    cases = pd.read_csv(out / "summary.csv")
    per_case = {}
    for ck, text in zip(cases["checkpoint"], cases["object_effects"].fillna("")):
        values = dict(part.split(" ")[:2] for part in text.replace(" (saturated)", "").split(", ") if part)
        if values.get("ball", "n/a") != "n/a":
            per_case.setdefault(ck, []).append(float(values["ball"]))
    assert len(per_case.get("catch-pixel-lanes", [])) >= 3 and max(per_case["catch-pixel-lanes"]) < 0.05, per_case
    assert np.median(per_case.get("catch-lanes", [0])) > 0.1, per_case


def test_object_effects_on_a_game_without_verified_edits_is_said_not_a_crash():
    """Venture has RAM read-outs but no verified RAM write: the report says so for its episodes instead of dying
    (``NotImplementedError`` from the object editor, found by re-writing reports/atari)."""
    from xdreamer.report.jobs import make_env_for, object_effects_of

    agent = checkpoint.load(CHECKPOINTS / "venture")
    env = make_env_for(agent)
    try:
        trace = record(agent, env, episodes=1, seed=0, max_steps=3)
        rows, note, at = object_effects_of(agent, env, trace, 2, at_steps=[1, 2])
    finally:
        env.close()
    assert rows == [] and at == {} and "no verified RAM edit" in note


def test_report_reads_object_effects_stored_in_the_trace(monkeypatch):
    """A trace recorded with ``record --objects`` gives the report its object effects without re-running the
    simulator: the per-case text is the stored result's."""
    from xdreamer.explain import objects
    from xdreamer.report.jobs import make_env_for, object_effects_of

    agent = checkpoint.load(CHECKPOINTS / "catch-lanes")
    env = make_env_for(agent)
    try:
        trace = objects.record_object_effects(agent, env, record(agent, env, episodes=1, seed=0, max_steps=40))

        def rerun(*args, **kwargs):
            raise AssertionError("the simulator was re-run")

        monkeypatch.setattr(objects, "object_attribution", rerun)
        rows, note, at = object_effects_of(agent, env, trace, 8, at_steps=[5, 12])
    finally:
        env.close()
    stored = objects.stored_object_attribution(trace).effect()
    assert note is None and [r["object"] for r in rows] == ["ball", "paddle"]
    for step in (5, 12):
        assert at[step].startswith(f"ball {stored[step, 0]:.2f}, paddle {stored[step, 1]:.2f}"), at[step]


def test_report_with_effects_stored_every_nth_step(monkeypatch):
    """``record --objects-every 5``: the report takes its evenly spaced steps among the stored ones and re-runs the
    simulator only for the cases at steps the trace does not store; their text is a direct attribution's."""
    from xdreamer.explain import objects
    from xdreamer.report.jobs import make_env_for, object_effects_of

    agent = checkpoint.load(CHECKPOINTS / "catch-lanes")
    env = make_env_for(agent)
    direct = objects.object_attribution
    asked = []

    def counted(agent, env, trace, steps=None, **kwargs):
        asked.append(sorted(int(s) for s in steps))
        return direct(agent, env, trace, steps=steps, **kwargs)

    try:
        trace = objects.record_object_effects(agent, env, record(agent, env, episodes=1, seed=0, max_steps=40),
                                              every=5)
        monkeypatch.setattr(objects, "object_attribution", counted)
        rows, note, at = object_effects_of(agent, env, trace, 4, at_steps=[10, 12])
        fresh = direct(agent, env, trace, steps=[12]).effect()[0]
    finally:
        env.close()
    assert asked == [[12]], asked  # step 10 is stored; 12 is not
    stored = objects.stored_object_attribution(trace)
    assert note is None and all(r["steps"] == 4 for r in rows)
    assert at[10].startswith(f"ball {stored.at_steps([10]).effect()[0, 0]:.2f}"), at[10]
    assert at[12].startswith(f"ball {fresh[0]:.2f}, paddle {fresh[1]:.2f}"), at[12]
