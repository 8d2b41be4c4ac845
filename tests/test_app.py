"""The Streamlit explainer (apps/explainer.py): every panel through Streamlit's AppTest on a tiny checkpoint
built here, the non-UI helpers, the ``xdreamer app`` command, and one end-to-end run in headless Chromium."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from xdreamer import app as ui
from xdreamer import checkpoint, explain
from xdreamer.agent import Agent
from xdreamer.config import build_config
from xdreamer.envs import make
from xdreamer.evaluation import evaluate

APP = pathlib.Path(__file__).resolve().parent.parent / "apps" / "explainer.py"
STEPS_TRAINED = 123
TIMEOUT = 180


def check_gaussian_member(ckpt, info_start: str, caption_part: str) -> None:
    """A member with Gaussian latents (DreamerV1, World Models) in the explainer: every panel renders clean, and the
    Latent panel explains what its latents are (``info_start``) and attributes per dimension (``caption_part``)."""
    at = open_app(ckpt, step=5)
    assert_clean(at)
    at = set_panel(at, "Latent")
    assert_clean(at)
    assert any(i.value.startswith(info_start) for i in at.info)
    assert any(caption_part in c.value for c in at.caption)
    assert any(m.label.startswith("memory's share") for m in at.metric)  # #30: the memory strip, LSTM or GRU
    for panel in ("What-if", "Compare", "Failures"):
        assert_clean(set_panel(open_app(ckpt, step=5), panel))

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny debug-preset checkpoint of toy:catch (untrained weights, real evaluation in its manifest),
    a trace file recorded with it and its own seed-0 episode as the app records it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-step inference: one thread is fastest on 2 shared cores
    root = tmp_path_factory.mktemp("app")
    env = make("toy:catch")
    torch.manual_seed(0)
    agent = Agent(build_config(["debug"], {"env": "toy:catch", "device": "cpu"}), env.spec)
    agent.eval()
    result = evaluate(agent, env, episodes=1, seed=0)
    path = checkpoint.save(root / "ckpt", agent, steps=STEPS_TRAINED, extra={"eval": result.to_dict()})
    agent = checkpoint.load(path)
    episode = explain.record(agent, env, episodes=1, seed=0)  # what the app records on opening
    trace_file = explain.save(explain.record(agent, env, episodes=1, seed=1, max_steps=30), root / "trace.npz")
    env.close()
    yield {"root": root, "path": path, "agent": agent, "episode": episode, "trace_file": trace_file,
           "eval": result}
    torch.set_num_threads(threads)


def open_app(source, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.session_state["source"] = str(source)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def assert_clean(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def sidebar_text(at) -> str:
    return "\n".join(m.value for m in at.sidebar.markdown)


def chart(at, key):
    for element in at.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        if element.proto.id and key in element.proto.id:
            return spec
    raise AssertionError(f"no plotly chart with key {key}")


def table_of(at):
    """The page's one table (st.table / st.dataframe elements carry no key in AppTest), index as a column."""
    tables = list(at.table) + list(at.dataframe)
    assert len(tables) == 1, len(tables)
    value = tables[0].value
    return value.reset_index() if value.index.name else value


def arr(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly>=6's typed array {"dtype", "bdata"[, "shape"]}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            out = out.reshape([int(x) for x in str(shape).split(",")])
        return out
    return np.asarray(value)


def set_panel(at, name):
    at.segmented_control(key="panel").set_value(name).run()
    assert_clean(at)
    return at


# ---- Run + Timeline ----------------------------------------------------------------------------------
def test_app_opens_the_bundled_default_checkpoint():
    """`xdreamer app` with no argument: the bundled checkpoints/catch-lanes, its manifest in the Run panel."""
    from streamlit.testing.v1 import AppTest

    manifest = checkpoint.read_manifest(ui.DEFAULT_SOURCE)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert_clean(at)
    text = sidebar_text(at)
    assert "**env:** toy:catch-lanes" in text and f"**steps trained:** {manifest['steps']:,}" in text


def test_sidebar_shows_the_bundles_evaluation():
    """#31: a bundled checkpoint shows the bundle's evaluation (agent and random policy, episodes, seed), saying
    so; a checkpoint without a bundle shows training's evaluation, saying so (test_run_panel_manifest...)."""
    from streamlit.testing.v1 import AppTest

    manifest = checkpoint.read_manifest(ui.DEFAULT_SOURCE)  # checkpoints/catch-lanes has a bundle
    mode, rand = manifest["bundle"]["eval_mode"], manifest["bundle"]["eval_random"]
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert_clean(at)
    text = sidebar_text(at)
    where = f"bundled evaluation, {mode['episodes']} episodes, seed {mode['seed']}"
    agent_text = f"{mode['mean']:.3f} ± {mode['std']:.3f} over {mode['episodes']} episodes (mode policy; {where})"
    random_text = f"{rand['mean']:.3f} ± {rand['std']:.3f} over {rand['episodes']} episodes (random policy; {where})"
    assert f"**evaluation return:** {ui.escape_md(agent_text)}" in text, text
    assert f"**random-policy return:** {ui.escape_md(random_text)}" in text, text
    assert "training-time" not in text
    # videopinball: the bundle's 16,227 ± 5,594 (checkpoints/README.md), not training's 0 ± 0 over 5 episodes.
    rows = ui.manifest_rows(checkpoint.read_manifest(ui.REPO_ROOT / "checkpoints" / "videopinball"))
    assert rows["evaluation return"].startswith("16,227 ± 5,594 over 10 episodes (mode policy; bundled evaluation")
    assert rows["random-policy return"].startswith("32,672 ± 36,388 over 10 episodes")


def test_run_panel_manifest_and_timeline(ckpt):
    at = open_app(ckpt["path"])
    assert_clean(at)
    text = sidebar_text(at)
    assert "**env:** toy:catch" in text
    assert f"**steps trained:** {STEPS_TRAINED}" in text
    assert f"{ckpt['eval'].mean:.3f}" in text and "1 episodes" in text
    assert f"(mode policy; training-time evaluation at step {STEPS_TRAINED})" in text, text
    n = len(ckpt["episode"])
    assert f"**steps:** {n}" in text and "**seed:** 0" in text
    # Timeline: five series, one point per step, with the recorded values.
    spec = chart(at, "timeline")
    lines = [d for d in spec["data"] if d.get("mode") == "lines+markers"]
    assert [d["name"] for d in lines] == [label for _, label in ui.TIMELINE_SERIES]
    assert all(len(arr(d["x"])) == n and len(arr(d["y"])) == n for d in lines)
    assert np.allclose(arr(lines[1]["y"]).astype(float), ckpt["episode"].table["value"], atol=1e-6)
    slider = at.slider(key="step")
    assert (slider.min, slider.max, slider.value) == (0, n - 1, 0)
    # HIGHLIGHTS bookmarks are explain.highlights' moments; clicking one jumps there.
    moments = explain.highlights(ckpt["agent"], ckpt["episode"], k=5).moments
    labels = [b.label for b in at.button if b.key and b.key.startswith("bookmark_")]
    assert labels == [f"★ step {m.step}" for m in moments]
    target = moments[1].step
    at.button(key="bookmark_1").click().run()
    assert_clean(at)
    assert at.slider(key="step").value == target
    assert any(c.value.startswith(f"step {target}: episode 0, t={target}") for c in at.caption)
    # Scrubbing with the slider.
    at.slider(key="step").set_value(7).run()
    assert_clean(at)
    assert any(c.value.startswith("step 7: episode 0, t=7") for c in at.caption)


def test_timeline_zoom_follows_the_step():
    """#31: long episodes open on a 300-step window around the step; a window that no longer holds the step moves."""
    assert ui.timeline_window(93, 50, None) == (0, 92)  # short: everything
    assert ui.timeline_window(3000, 0, None) == (0, 300)
    assert ui.timeline_window(3000, 1000, None) == (850, 1150)
    assert ui.timeline_window(3000, 1000, (900, 1100)) == (900, 1100)  # held while it holds the step
    assert ui.timeline_window(3000, 2990, (900, 1100)) == (2799, 2999)  # moved, same width, clipped to the end
    assert ui.timeline_window(50, 10, (0, 2999)) == (0, 49)  # a shorter trace opened after a long one


def test_timeline_figure_window(ckpt):
    trace = ckpt["episode"]
    fig = ui.timeline_figure(trace, 12, [(5, "a"), (40, "b")], window=(10, 20))
    lines = [d for d in fig.data if d.mode == "lines+markers"]
    assert all(list(d.x) == list(range(10, 21)) for d in lines)
    assert list(fig.layout.xaxis.range) == [9, 21]
    assert [s.x0 for s in fig.layout.shapes] == [12]  # bookmarks outside the window are not drawn


def test_playback_steps_through_the_episode(ckpt):
    at = open_app(ckpt["path"], step=3)
    at.toggle(key="playing").set_value(True).run()
    assert_clean(at)
    assert at.slider(key="step").value == 4  # the first step at once, then one per tick
    time.sleep(0.6)
    at.run()
    assert at.slider(key="step").value == 5
    at.toggle(key="playing").set_value(False).run()
    time.sleep(0.6)
    at.run()
    assert at.slider(key="step").value == 5


def test_record_new_episode_with_seed(ckpt):
    at = open_app(ckpt["path"])
    at.number_input(key="seed").set_value(2).run()
    at.button(key="record").click().run()
    assert_clean(at)
    text = sidebar_text(at)
    assert "**seed:** 2" in text
    env = make("toy:catch")
    expected = explain.record(ckpt["agent"], env, episodes=1, seed=2)
    env.close()
    assert f"**steps:** {len(expected)}" in text
    assert at.slider(key="step").max == len(expected) - 1
    # "Max steps" cuts the recording (#31: Atari episodes run for thousands of steps); 0 records it whole.
    assert at.number_input(key="max_steps").value == 1000
    at.number_input(key="max_steps").set_value(9).run()
    at.button(key="record").click().run()
    assert_clean(at)
    assert "**steps:** 10" in sidebar_text(at) and at.slider(key="step").max == 9


def test_training_videos_of_a_run_folder(ckpt, tmp_path):
    """A checkpoint inside a run folder offers the run's open-loop videos in the sidebar (#31); a bundled one none."""
    import shutil

    from xdreamer.logger import write_video

    assert ui.run_videos(ckpt["path"]) == []
    step = tmp_path / "run" / "checkpoints" / "step-000000010"
    shutil.copytree(ckpt["path"], step)
    (tmp_path / "run" / "videos").mkdir()
    for n in (5, 10):
        write_video(tmp_path / "run" / "videos" / f"openloop-{n:09d}.mp4", np.zeros((2, 64, 64, 3), np.uint8))
    assert [p.name for p in ui.run_videos(step)] == ["openloop-000000010.mp4", "openloop-000000005.mp4"]
    at = open_app(step)
    assert_clean(at)
    assert any(e.label.startswith("Training videos (2)") for e in at.sidebar.expander)


def test_compare_panel_second_agent_on_the_same_seed(ckpt, tmp_path):
    """Compare (#31): a second checkpoint recorded on the same seed beside this one, with its saliency, action
    probabilities and dreams; an empty field says what to enter, a missing folder is one error line."""
    env = make("toy:catch")
    torch.manual_seed(7)
    other = checkpoint.save(tmp_path / "other", Agent(build_config(["debug"], {"env": "toy:catch", "device": "cpu"}),
                                                      env.spec), steps=1)
    at = set_panel(open_app(ckpt["path"], step=4), "Compare")
    assert any("Enter a second checkpoint" in i.value for i in at.info)
    at.text_input(key="compare_source").set_value(str(other)).run()
    assert_clean(at)
    assert any(c.value.startswith("episode seed 0; both at step 4") for c in at.caption)
    assert len(at.table) == 2  # one dream table per agent
    expected = explain.record(checkpoint.load(other), env, episodes=1, seed=0, max_steps=1000)
    dream = explain.whatif(checkpoint.load(other), expected, 4, horizon=15)
    scale = ui.reward_scale(ckpt["agent"].cfg)
    second = at.table[1].value.reset_index()
    assert np.allclose(second[f"imagined Q (λ-return, {scale})"], dream.q, atol=1e-3)  # shown to 3 decimals
    env.close()
    at.text_input(key="compare_source").set_value(str(tmp_path / "missing")).run()
    assert any("not found" in e.value for e in at.error)


# ---- Frame ---------------------------------------------------------------------------------------------
def test_frame_panel(ckpt):
    from xdreamer.explain.saliency import METHODS

    at = open_app(ckpt["path"], step=5)
    assert_clean(at)
    captions = [c for image in at.image for c in image.captions]
    assert "real frame (step 5)" in captions and "world-model reconstruction" in captions
    assert any(c.startswith("reconstruction squared error") for c in captions)
    assert any(c.startswith("integrated_gradients of the action") and c.endswith(", signed") for c in captions)
    assert any(c.startswith("t-1 (step 4):") for c in captions)  # the over-time strip (#27 item 3)
    objects = next(d.value for d in at.dataframe if "edit landed" in d.value)  # the objects table (#27 item 2)
    assert set(objects["object"]) <= {"ball", "paddle"} and objects["edit landed"].all()
    assert (objects["p(action) TV"].between(0, 1)).all()
    trace = ckpt["episode"]
    taken = int(trace.arrays["action"][5])
    bars = chart(at, "actions")["data"][0]
    assert np.allclose(arr(bars["y"]), trace.arrays["action_probs"][5], atol=1e-6)
    assert [i for i, x in enumerate(bars["x"]) if x.endswith("(taken)")] == [taken]
    for method in METHODS:
        at.selectbox(key="saliency_method").set_value(method).run()
        assert_clean(at)
        assert any(c.startswith(f"{method} of the action") for image in at.image for c in image.captions)
    at.selectbox(key="saliency_target").set_value("value").run()
    assert_clean(at)


def test_zero_saliency_map_says_so(capsys, tmp_path):
    """#31: checkpoints/catch's gradient saliency at step 0 is zero everywhere; the app says what that means
    instead of drawing a plain frame, and the CLI names no peak at row 0, col 0."""
    from xdreamer.cli import main

    catch = ui.REPO_ROOT / "checkpoints" / "catch"
    at = open_app(catch, step=0)
    at.selectbox(key="saliency_method").set_value("saliency").run()
    assert_clean(at)
    assert any(i.value.startswith("The saliency map is zero everywhere") for i in at.info), \
        [i.value for i in at.info]
    rc = main(["saliency", str(catch), "--seed", "0", "--step", "0", "--method", "saliency",
               "--out", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert rc == 0 and "the map is zero everywhere" in out and "peak at row" not in out, out


# ---- Latent --------------------------------------------------------------------------------------------
def test_latent_panel(ckpt):
    at = set_panel(open_app(ckpt["path"], step=9), "Latent")
    trace = ckpt["episode"]
    stoch, classes = trace.arrays["post_logits"].shape[1:]
    posterior = chart(at, "posterior_map")["data"][0]
    z = arr(posterior["z"]).astype(float)
    assert z.shape == (stoch, classes) and np.allclose(z.sum(1), 1, atol=1e-5)
    attribution = chart(at, "attribution_map")["data"][0]
    assert arr(attribution["z"]).shape == (stoch, classes)
    # #27 item 4: the attribution is drawn beside the intervention effects it claims to predict
    from xdreamer.explain.interventions import aggregate_posterior, variable_effects

    classes_ = trace.arrays["post_class"].astype(np.int64)
    effects = variable_effects(ckpt["agent"], trace.arrays["deter"][9], classes_[9],
                               aggregate_posterior(classes_, classes), action=int(trace.arrays["action"][9]))
    assert any(c.value.startswith("Checked by intervention") for c in at.caption)
    assert len(at.get("arrow_vega_lite_chart")) + len(at.get("vega_lite_chart")) >= 1 and effects.tv.shape == (stoch,)
    assert any("baseline: the aggregate posterior" in c.value for c in at.caption)
    # #30: the memory strip shows memory's share of the attribution as memory_attribution computes it
    from xdreamer.explain.memory import memory_attribution

    memory = memory_attribution(ckpt["agent"], trace.arrays["deter"][9], trace.arrays["post_logits"][9],
                                action=int(trace.arrays["action"][9]))
    assert [m.value for m in at.metric if m.label.startswith("memory's share")] == [f"{memory.memory_share:.0%}"]
    at.selectbox(key="latent_var").set_value(3).run()
    at.selectbox(key="latent_class").set_value(2).run()
    assert_clean(at)
    captions = [c for image in at.image for c in image.captions]
    assert any(c.startswith("decoded difference: variable 3 → class 2") for c in captions)
    count = int((trace.arrays["post_class"][:, 3] == 2).sum())
    if count:
        assert f"mean real frame when variable 3 = class 2 ({count} steps)" in captions
    else:
        assert any("never had class 2" in i.value for i in at.info)
    at.selectbox(key="latent_target").set_value("value").run()
    assert_clean(at)


def test_latent_defaults_to_the_most_different_class(ckpt):
    """#31: the decoded difference no longer defaults to the variable's current class (a blank image, max |Δ|
    0.000) but to the class whose decoded difference is largest, and says so; heat maps carry colour bars."""
    from xdreamer.explain.attribution import class_effects

    step = 9
    at = set_panel(open_app(ckpt["path"], step=step), "Latent")
    trace = ckpt["episode"]
    current = int(trace.arrays["post_class"][step][0])
    effects = class_effects(ckpt["agent"], trace.arrays["deter"][step], trace.arrays["post_class"][step], 0)
    size = np.abs(effects.sum(1)).reshape(len(effects), -1).max(1)
    size[current] = -1
    expected = int(size.argmax())
    assert expected != current
    captions = [c for image in at.image for c in image.captions]
    default = [c for c in captions if c.startswith("decoded difference: variable 0 → class")]
    assert default == [f"decoded difference: variable 0 → class {expected} (the class whose decoded difference is "
                       f"largest, chosen automatically) (red brighter, blue darker; max |Δ| {size.max():.3f})"], default
    assert size.max() > 0
    assert any(c.startswith(f"colour bar: full blue = -{size.max():.3g}") for c in captions), captions
    for key, title in (("posterior_map", "probability"), ("attribution_map", "attribution to the log-probability")):
        heat = chart(at, key)["data"][0]
        assert heat["showscale"] is True and heat["colorbar"]["title"]["text"].startswith(title), heat["colorbar"]


# ---- What-if -------------------------------------------------------------------------------------------
def test_whatif_panel(ckpt):
    at = set_panel(open_app(ckpt["path"], step=10), "What-if")
    at.button(key="whatif_run").click().run()
    assert_clean(at)
    table = table_of(at)
    trace = ckpt["episode"]
    assert list(table["action"]) == trace.action_names  # one row per action
    assert list(table["taken"]) == [i == int(trace.arrays["action"][10]) for i in range(trace.num_actions)]
    dream = explain.whatif(ckpt["agent"], trace, 10, horizon=15)
    # #31: imagined numbers name their reward scale (toy:catch learns tanh-clipped rewards, as Atari)
    scale = ui.reward_scale(ckpt["agent"].cfg)
    assert scale == "tanh-clipped reward"
    assert np.allclose(table[f"imagined Q (λ-return, {scale})"], dream.q, atol=1e-4)
    assert np.allclose(table[f"imagined return (discounted, {scale})"], dream.dream_return, atol=1e-4)
    assert {"real return (game score)", f"real return (discounted, {scale})", "pixel MSE (mean)"} <= set(table.columns)
    # #27 item 5: Q_H beside the agent's λ-target over the same branch in the game (docs/fidelity.md)
    real = explain.ground(ckpt["agent"], make("toy:catch"), trace, 10, horizon=15, dream=dream)
    assert np.allclose(table[f"real Q (λ-target on the real branch, {scale})"], real.real_q, atol=1e-4)
    assert any("tanh-clipped reward scale" in c.value for c in at.caption)
    assert at.download_button(key="whatif_download").label.startswith("Download the what-if video")
    assert at.get("video")
    # The labelled grid, scrubbed one imagined step at a time (#31).
    assert at.slider(key="whatif_frame").max == 15
    at.slider(key="whatif_frame").set_value(6).run()
    assert_clean(at)
    assert any(c.startswith("step t+6: the real future") for image in at.image for c in image.captions)
    # Fewer actions and another horizon; the last step has no real future (a warning, not an error).
    at.multiselect(key="whatif_actions").set_value(["LEFT"])
    at.slider(key="whatif_horizon").set_value(4)
    at.button(key="whatif_run").click().run()
    assert_clean(at)
    assert list(table_of(at)["action"]) == ["LEFT"]
    at.slider(key="step").set_value(len(trace) - 1).run()
    at.button(key="whatif_run").click().run()
    assert_clean(at)
    assert any("last step of its episode" in w.value for w in at.warning)


# ---- Failures ------------------------------------------------------------------------------------------
def test_failures_panel(ckpt, tmp_path):
    at = set_panel(open_app(ckpt["path"]), "Failures")
    assert any("summary.csv" in i.value for i in at.info)  # no folder: how to make one
    at.text_input(key="report_dir").set_value(str(tmp_path)).run()
    assert_clean(at)
    assert any("has no summary.csv" in i.value for i in at.info)
    report = tmp_path / "report"
    (report / "clips").mkdir(parents=True)
    (report / "summary.csv").write_text(
        "case,checkpoint,episode,step,detector,score\n"
        f"case-a,{ckpt['path']},0,4,value_drop,0.9\n"
        f"case-b,/elsewhere/ckpt,3,7,surprise,0.5\n")
    (report / "clips" / "case-a.mp4").write_bytes(b"not really a video")
    at.text_input(key="report_dir").set_value(str(report)).run()
    assert_clean(at)
    assert list(table_of(at)["case"]) == ["case-a", "case-b"]
    assert at.get("video")  # case-a's clip
    at.button(key="report_jump").click().run()
    assert_clean(at)
    assert at.slider(key="step").value == 4
    assert any(b.label == "★ step 4" for b in at.button)  # the case is a timeline bookmark
    at.selectbox(key="report_case").set_value("case-b").run()
    assert_clean(at)
    assert not any(b.key == "report_jump" for b in at.button)
    (report / "summary.csv").write_text("case,score\nx,1\n")
    at.text_input(key="report_dir").set_value(str(report) + " ").run()
    assert not at.exception
    assert any("lacks the column(s) checkpoint, detector, episode, step" in e.value for e in at.error)


def test_open_a_case_of_a_report(ckpt, tmp_path):
    """#31: "Open this case" records the case's episode with the report's record seed and lands on its step,
    although the report numbers that episode 1 and the app's recording numbers it 0."""
    import pandas as pd

    from xdreamer.evaluation import episode_seed
    from xdreamer.report.build import run_report

    report = tmp_path / "report"
    # surprise_k 0.01: every step above its episode's median surprise is a case, so both episodes have some
    run_report([str(ckpt["path"])], report, episodes=2, seed=4, max_steps=20, dream_steps=0, clips=False,
               max_cases=100, progress=False, thresholds={"surprise_k": 0.01})
    summary = pd.read_csv(report / "summary.csv")
    row = summary[summary["episode"] == 1].sort_values("step").iloc[-1]  # episode 1: not the app's episode 0
    seed = episode_seed(4, 1)
    assert int(row["record_seed"]) == seed and int(row["step"]) > 0
    at = set_panel(open_app(ckpt["path"]), "Failures")
    at.text_input(key="report_dir").set_value(str(report)).run()
    assert_clean(at)
    assert not any(ui.OLD_REPORT_NOTE in c.value for c in at.caption)
    # The report's verdicts and latent probes beside its cases (#31), as the report wrote them.
    verdicts, probes = (d.value for d in at.dataframe[:2])
    assert list(verdicts["verdict"]) == list(pd.read_csv(report / "verdicts.csv")["verdict"])
    assert set(probes.columns) == {"checkpoint", "variable", "features", "r2"} and len(probes) > 0
    at.selectbox(key="report_case").set_value(row["case"]).run()
    assert_clean(at)
    assert not any(b.key == "report_jump" for b in at.button)  # not in the seed-0 episode shown
    at.button(key="report_open").click().run()
    assert_clean(at)
    assert "**seed:** " + str(seed) in sidebar_text(at)
    env = make("toy:catch")
    expected = explain.record(ckpt["agent"], env, episodes=1, seed=seed)
    env.close()
    assert at.slider(key="step").max == len(expected) - 1  # that episode, recorded whole
    assert at.slider(key="step").value == int(row["step"])  # episode 0, t = the case's step
    assert any(c.value.startswith(f"step {int(row['step'])}: episode 0, t={int(row['step'])}") for c in at.caption)
    assert at.button(key="report_jump").label == f"Show step {int(row['step'])} in the timeline"
    # A row naming a checkpoint outside every folder opened: refused, no button (#28).
    outside = tmp_path / "elsewhere"
    shutil.copytree(ckpt["path"], outside)
    evil = report.parent / "evil"
    evil.mkdir()
    summary.assign(checkpoint_path=str(outside)).to_csv(evil / "summary.csv", index=False)
    at.text_input(key="report_dir").set_value(str(evil)).run()
    assert not at.exception
    assert any("outside the folders opened" in w.value for w in at.warning)
    assert not any(b.key == "report_open" for b in at.button)


def test_old_style_report_still_reads(ckpt):
    """The shipped reports predate checkpoint_path: browsable as before, with a note to re-run the report;
    scores with 3 significant digits."""
    import pandas as pd

    folder = ui.REPO_ROOT / "reports" / "catch-contrast"
    summary = pd.read_csv(folder / "summary.csv")
    assert "checkpoint_path" not in summary.columns
    at = set_panel(open_app(ckpt["path"]), "Failures")
    at.text_input(key="report_dir").set_value(str(folder)).run()
    assert_clean(at)
    verdicts, probes, cases = (d.value for d in at.dataframe)  # its verdicts and probes, then its cases (#31)
    assert list(verdicts["verdict"]) == list(pd.read_csv(folder / "verdicts.csv")["verdict"]) and len(probes)
    assert list(cases["case"]) == list(summary["case"])
    assert any(c.value == ui.OLD_REPORT_NOTE for c in at.caption)
    first = summary.iloc[0]
    assert any(f"score {float(first['score']):.3g}, episode" in m.value for m in at.markdown)
    assert not any(b.key in ("report_open", "report_jump") for b in at.button)


# ---- sources: trace files and invalid input -------------------------------------------------------------
def test_trace_file_source(ckpt):
    at = open_app(ckpt["trace_file"])
    assert_clean(at)
    text = sidebar_text(at)
    assert "**seed:** 1" in text and "**steps:** 31" in text
    assert "**env:** toy:catch" in text  # its checkpoint was found through the trace's meta
    assert all(len(arr(d["x"])) == 31 for d in chart(at, "timeline")["data"] if d.get("mode") == "lines+markers")
    set_panel(at, "What-if")
    at.button(key="whatif_run").click().run()
    assert_clean(at)
    assert len(table_of(at)) == 3


def test_stored_object_effects_over_the_episode(ckpt, tmp_path):
    """A trace recorded with ``--objects`` shows its per-step object effects as a chart over the episode in the
    Frame panel (#27 item 2); one without says how to get it."""
    from xdreamer.explain.objects import record_object_effects

    agent = ckpt["agent"]
    env = make("toy:catch")
    trace = record_object_effects(agent, env, explain.record(agent, env, episodes=1, seed=1, max_steps=20))
    env.close()
    at = open_app(explain.save(trace, ckpt["root"] / "objects.npz"), step=5)
    assert_clean(at)
    lines = {d["name"]: arr(d["y"]) for d in chart(at, "object_effects")["data"]}
    assert set(lines) == {"ball", "paddle"}
    np.testing.assert_allclose(np.asarray(lines["ball"], float), trace.table["effect_ball"], atol=1e-6,
                               equal_nan=True)
    # The step's table is read from the trace: the same numbers as the stored result, nothing re-run.
    table = next(d.value for d in at.dataframe if "edit landed" in d.value)
    ball = table[table["object"] == "ball"].set_index("edit")["p(action) TV"]
    stored = trace.arrays["object_tv"][5, 0]
    for v, variant in enumerate(trace.meta["object_effects"]["variants"]):
        if variant in ball.index:
            assert abs(ball[variant] - stored[v]) < 1e-6 or (np.isnan(ball[variant]) and np.isnan(stored[v]))
    assert any("record --objects" in c.value for c in at.caption)
    at = open_app(ckpt["trace_file"], step=5)
    assert any("Record the trace with `xdreamer record --objects`" in c.value for c in at.caption)
    # Away from its checkpoint (the app then opens no model), the stored effects are still shown: recorded data.
    at = open_app(explain.save(trace, tmp_path / "alone.npz"), step=5)
    assert_clean(at)
    assert {d["name"] for d in chart(at, "object_effects")["data"]} == {"ball", "paddle"}


def test_object_effects_stored_every_nth_step(ckpt):
    """``record --objects-every 3``: the chart has the stored steps and gaps between them, the caption says which
    steps; at a step the trace does not store, the table is computed, and equals a direct attribution."""
    from xdreamer.explain.objects import object_attribution, record_object_effects

    agent = ckpt["agent"]
    env = make("toy:catch")
    trace = record_object_effects(agent, env, explain.record(agent, env, episodes=1, seed=1, max_steps=20), every=3)
    direct = object_attribution(agent, env, trace, steps=[5])
    env.close()
    at = open_app(explain.save(trace, ckpt["root"] / "every.npz"), step=5)
    assert_clean(at)
    ball = np.asarray(next(d for d in chart(at, "object_effects")["data"] if d["name"] == "ball")["y"], float)
    stored = np.arange(len(trace)) % 3 == 0
    assert np.isnan(ball[~stored]).all()
    np.testing.assert_allclose(ball[stored], trace.table["effect_ball"][stored], atol=1e-6, equal_nan=True)
    assert any("stored every 3 steps of the trace: 0, 3, 6" in c.value for c in at.caption)
    table = next(d.value for d in at.dataframe if "edit landed" in d.value)
    got = table[table["object"] == "ball"].set_index("edit")["p(action) TV"]
    for v, variant in enumerate(direct.variants):
        if variant in got.index:
            want = direct.tv[0, 0, v]
            assert abs(got[variant] - want) < 1e-6 or (np.isnan(got[variant]) and np.isnan(want))


def test_uploaded_traces(ckpt, tmp_path):
    at = open_app(ckpt["path"])
    at.file_uploader(key="upload").set_value(("t.npz", ckpt["trace_file"].read_bytes(), "application/zip")).run()
    assert_clean(at)
    assert "**seed:** 1" in sidebar_text(at) and at.slider(key="step").max == 30
    at.file_uploader(key="upload").set_value(("bad.npz", b"not a trace", "application/zip")).run()
    assert not at.exception
    assert any("Cannot read the uploaded file bad.npz" in e.value for e in at.sidebar.error)
    # A trace of another agent next to this checkpoint: a readable refusal, the recorded data still shown.
    torch.manual_seed(7)
    other = checkpoint.save(tmp_path / "other", Agent(build_config(["debug"], {"env": "toy:catch"}),
                                                      ckpt["agent"].spec), steps=0)
    env = make("toy:catch")
    data = explain.save(explain.record(checkpoint.load(other), env, episodes=1, seed=0, max_steps=6),
                        tmp_path / "o.npz").read_bytes()
    env.close()
    at.file_uploader(key="upload").set_value(("o.npz", data, "application/zip")).run()
    assert not at.exception
    assert any("does not belong to this checkpoint" in e.value for e in at.sidebar.error)
    assert at.slider(key="step").max == 6


def test_trace_without_its_checkpoint_shows_recorded_data(ckpt, tmp_path):
    copy = shutil.copytree(ckpt["path"], tmp_path / "gone")
    agent = checkpoint.load(copy)
    env = make("toy:catch")
    trace_path = explain.save(explain.record(agent, env, episodes=1, seed=4, max_steps=12), tmp_path / "t.npz")
    env.close()
    shutil.rmtree(copy)
    at = open_app(trace_path)
    assert not at.exception and not at.error
    assert any("cannot be loaded" in w.value for w in at.sidebar.warning)
    assert any("real frame (step 0)" in c for image in at.image for c in image.captions)
    assert any("Saliency needs the checkpoint" in i.value for i in at.info)
    for panel in ("Latent", "What-if", "Failures"):
        set_panel(at, panel)


def test_invalid_sources_show_messages(ckpt, tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"this is no npz")
    (tmp_path / "notes.txt").write_text("hello")
    bad = shutil.copytree(ckpt["path"], tmp_path / "bad-ckpt")
    (bad / "weights.safetensors").write_bytes(b"\0" * 64)
    cases = {
        tmp_path / "missing": "not found",
        tmp_path / "garbage.npz": "Cannot load the trace: corrupt trace file",
        tmp_path / "notes.txt": "neither a checkpoint folder nor a trace file",
        tmp_path: "is not a checkpoint",
        bad: "sha256",
        "": "no checkpoint or trace given",
    }
    if not ui.DEFAULT_SOURCE.exists():
        cases[ui.DEFAULT_SOURCE] = "xdreamer train --env toy:catch --preset debug"
    for source, message in cases.items():
        at = open_app(source)
        assert not at.exception, (source, [e.value for e in at.exception])
        assert any(message in e.value for e in at.error), (source, [e.value for e in at.error])
        assert not any("Traceback" in e.value for e in at.error)
        assert any("Open a checkpoint folder or a trace file" in i.value for i in at.info)
    # A trace whose checkpoint folder was since overwritten by other weights: refused for the model
    # panels (a readable error), its recorded data still shown.
    spec = ckpt["agent"].spec
    first = checkpoint.save(tmp_path / "reused", Agent(build_config(["debug"], {"env": "toy:catch"}), spec), steps=0)
    env = make("toy:catch")
    stale = explain.save(explain.record(checkpoint.load(first), env, episodes=1, seed=0, max_steps=5),
                         tmp_path / "stale.npz")
    env.close()
    torch.manual_seed(99)
    checkpoint.save(first, Agent(build_config(["debug"], {"env": "toy:catch"}), spec), steps=1)
    at = open_app(stale)
    assert not at.exception
    assert any("does not belong to this checkpoint" in e.value for e in at.sidebar.error)
    assert any("Saliency needs the checkpoint" in i.value for i in at.info)


# ---- helpers and the command ---------------------------------------------------------------------------
def test_helpers():
    state = {"selection": {"points": [{"x": 41.2, "y": 0.3}], "point_indices": [41]}}
    assert ui.step_from_selection(state, 100) == 41
    assert ui.step_from_selection(state, 10) == 9
    assert ui.step_from_selection({"selection": {"points": []}}, 10) is None
    assert ui.step_from_selection(None, 10) is None
    assert ui.cell_from_selection({"selection": {"points": [{"x": 5, "y": 3}]}}) == (3, 5)
    assert ui.initial_source(["/x/apps/explainer.py", "runs/a"], {}) == "runs/a"
    assert ui.initial_source(["pytest", "tests/test_app.py"], {}) == str(ui.DEFAULT_SOURCE)
    assert ui.initial_source(["pytest"], {ui.SOURCE_ENV: "t.npz"}) == "t.npz"
    assert ui.app_script() == APP
    cmd = ui.streamlit_command("ck", 8999)
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # no current folder on sys.path (#28)
    assert cmd[:5 + len(safe_path)] == [sys.executable, *safe_path, "-m", "streamlit", "run", str(APP)]
    assert cmd[cmd.index("--server.port") + 1] == "8999" and cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[-2:] == ["--", "ck"]
    assert ui.error_text(ValueError("bad thing")) == "bad thing"
    assert ui.error_text(RuntimeError("boom")) == "RuntimeError: boom"
    with pytest.raises(ui.NoReport):
        ui.read_report("")
    rgb, top = ui.diverging_rgb(np.array([[[-1.0, 0.0], [0.5, 1.0]]]), scale=1)
    assert top == 1.0 and tuple(rgb[0, 0]) == (0, 0, 255) and tuple(rgb[0, 1]) == (255, 255, 255)
    assert tuple(rgb[1, 1]) == (255, 0, 0)


def test_app_command_parsing(monkeypatch):
    from xdreamer import cli

    args = cli.build_parser().parse_args(["app", "runs/x", "--port", "9001", "--headless"])
    assert (args.path, args.port, args.headless, args.func) == ("runs/x", 9001, True, cli._app)
    args = cli.build_parser().parse_args(["app"])
    assert args.path is None and args.port == ui.DEFAULT_PORT and not args.headless
    assert cli.main(["app", "--port", "0"]) == 2  # one-line error, no server
    monkeypatch.setattr(ui, "app_script", lambda: (_ for _ in ()).throw(FileNotFoundError("no apps/ folder")))
    assert cli.main(["app", "--headless"]) == 2


# ---- end to end in a real browser ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_browser_end_to_end(ckpt, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Chromium not found: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[test]'")
    port = free_port()
    url = f"http://localhost:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "xdreamer", "app", str(ckpt["path"]), "--port", str(port),
                               "--headless"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not answer within 120 s"
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1800})
                page.goto(url)
                page.get_by_text("step 0: episode 0").wait_for(timeout=120_000)
                page.get_by_text("toy:catch").first.wait_for()
                step_box = page.locator('[data-testid="stSlider"]', has=page.get_by_text("Step", exact=True))
                slider = step_box.get_by_role("slider").first  # the step slider, not the timeline's zoom
                slider.focus()
                for _ in range(3):
                    page.keyboard.press("ArrowRight")
                page.get_by_text("step 3: episode 0, t=3").wait_for(timeout=60_000)
                # Streamlit re-renders element by element: wait for the frame's caption too, then check it is unique.
                page.get_by_text("real frame (step 3)").wait_for(timeout=60_000)
                assert page.get_by_text("real frame (step 3)").count() == 1
                page.get_by_text("What-if", exact=True).click()
                page.get_by_role("button", name="Run what-if at step 3").click()
                page.get_by_text("What-if at step 3").wait_for(timeout=120_000)
                page.get_by_text("Download the what-if video (mp4)").wait_for(timeout=60_000)
                page.wait_for_timeout(1000)
                page.screenshot(path=str(tmp_path / "explainer.png"), full_page=True)
                body = page.inner_text("body")
                # The what-if table (a canvas grid: one row per action), the video, and the timeline's
                # plot with one marker per step in each of its five series (+ the bookmark stars).
                table = page.locator('[data-testid="stTable"] table')
                assert table.locator("tbody tr").count() == 3
                header = table.locator("thead").inner_text()
                for column in ("imagined Q", "imagined return", "real return", "pixel MSE"):
                    assert column in header, header
                assert page.locator("video").count() == 1
                points = page.locator(".js-plotly-plot").first.locator("path.point").count()
                assert points >= 5 * len(ckpt["episode"]), points
            finally:
                browser.close()
        for expected in ("xdreamer explainer", "Timeline", "steps trained", "toy:catch", "HIGHLIGHTS",
                         "What-if at step 3", "Dream fidelity", "Download the what-if video (mp4)"):
            assert expected in body, expected
        for action in ("NOOP", "LEFT", "RIGHT"):
            assert action in body
        assert "Traceback" not in body and "Error" not in body, body
        assert (tmp_path / "explainer.png").stat().st_size > 10_000
    finally:
        server.terminate()  # the launcher stops its Streamlit child on SIGTERM
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            pass
        else:  # a child outlived the launcher
            os.killpg(server.pid, signal.SIGKILL)
