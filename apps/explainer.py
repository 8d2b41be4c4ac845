"""xdreamer explainer: a Streamlit app over ``xdreamer.explain``.

    xdreamer app [CHECKPOINT_OR_TRACE] [--port N] [--host HOST] [--import MODULE]
    streamlit run apps/explainer.py -- CHECKPOINT_OR_TRACE

Panels: Run (sidebar: source, manifest, recording), Timeline (always shown, with the step slider and
HIGHLIGHTS bookmarks), then Frame, Latent, What-if and Failures. All analysis goes through
``xdreamer.explain`` (recording, saliency, latent attribution, what-if dreams, grounded branches,
HIGHLIGHTS); drawing helpers and error text live in ``xdreamer.app``. Models load once per checkpoint
(``st.cache_resource``); traces and every per-step result are cached (``st.cache_data``) under hash-free
keys (paths + modification times, seeds, steps), so scrubbing back to a step is instant.
"""

from __future__ import annotations

import hashlib
import inspect
import pathlib
import tempfile
import time

from xdreamer.threads import share_cpu

share_cpu()  # before torch loads (#31): also for `streamlit run apps/explainer.py`, which skips `xdreamer app`

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402

from xdreamer import app as ui  # noqa: E402
from xdreamer import checkpoint, explain  # noqa: E402

st.set_page_config(page_title="xdreamer explainer", layout="wide")
E = ui.escape_md  # every string from a file or an exception goes through it before Markdown (#28)


@st.cache_resource(show_spinner="Importing the --import modules ...")
def import_user_modules(names: tuple[str, ...]) -> None:
    """The modules `xdreamer app --import` named, once per server; the app imports no module a file names."""
    from xdreamer.envs import import_modules

    import_modules(list(names))


def allowed_roots() -> list:
    """Where paths read from files may lead (#28): the command line's paths, the bundled checkpoints/ and
    reports/, and the paths typed in this session (the source and the report folder)."""
    return ui.allowed_roots(typed=[st.session_state.get("source", ""), st.session_state.get("report_dir", "")])


# Full-width images: ``width="stretch"`` where this Streamlit has it, ``use_container_width`` before (1.40-1.4x).
_FULL_WIDTH = ({"width": "stretch"} if "Width" in str(inspect.signature(st.image).parameters["width"].annotation)
               else {"use_container_width": True})


# ---- cached computations (all analysis through xdreamer.explain) ---------------------------------
@st.cache_resource(show_spinner="Loading the agent ...", max_entries=4)
def load_agent(ckpt_key: tuple):
    from xdreamer.training import configure_cpu

    configure_cpu()  # kept freed memory, as `xdreamer train` and the CLI's analysis commands (xdreamer.cli.main)
    return checkpoint.load(ckpt_key[0], device="cpu")


@st.cache_data(show_spinner="Loading the trace ...", max_entries=8)
def load_trace_file(key: tuple):
    return explain.load_trace(key[0])


@st.cache_data(show_spinner="Reading the upload ...", max_entries=4)
def load_trace_upload(digest: str, _data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "upload.npz"
        path.write_bytes(_data)
        return explain.load_trace(path)


RECORD_CACHE = 8  # recorded episodes kept per browser session
DEFAULT_MAX_STEPS = 1000  # the sidebar's default cut: a breakout policy that stalls runs to the 27,000-step limit


def record_episode(ckpt_key: tuple, seed: int, max_steps: int):
    """The episode of ``seed`` (cut after ``max_steps`` actions; 0: the whole episode), recorded once per session,
    with a live step count: an Atari episode runs for thousands of steps (issue #31). Kept in the session rather
    than ``st.cache_data``, whose cached functions must not draw elements."""
    from xdreamer.training import make_env

    cache = st.session_state.setdefault("_recorded", {})
    key = (ckpt_key, int(seed), int(max_steps))
    if key in cache:
        return cache[key]
    agent = load_agent(ckpt_key)
    limit = int(max_steps) or agent.spec.max_steps
    bar = st.sidebar.progress(0.0, text=f"Recording seed {seed}: 0 steps")

    def count(n: int) -> None:
        if n % 25 == 0:
            bar.progress(min(1.0, n / max(limit, 1)), text=f"Recording seed {seed}: {n:,} of at most {limit:,} steps")

    env = make_env(agent.cfg)
    try:
        trace = explain.record(agent, env, episodes=1, seed=int(seed), max_steps=int(max_steps) or None,
                               on_step=count)
    finally:
        env.close()
        bar.empty()
    while len(cache) >= RECORD_CACHE:
        cache.pop(next(iter(cache)))
    cache[key] = trace
    return trace


@st.cache_data(show_spinner="Finding HIGHLIGHTS moments ...", max_entries=16)
def highlight_moments(ctx: tuple, _agent, _trace, k: int):
    result = explain.highlights(_agent, _trace, k=k)
    return [(m.step, m.episode, m.t, m.importance) for m in result.moments]


@st.cache_data(show_spinner="Computing saliency ...", max_entries=256)
def pixel_saliency(ctx: tuple, _agent, _trace, step: int, method: str, target: str, dimension: int | None = None):
    """``dimension``: for a continuous-action agent, the action dimension whose pre-tanh mean is explained."""
    from xdreamer.explain.saliency import saliency, trace_inputs

    inputs = trace_inputs(_trace, step)
    action = (inputs["action"] if _agent.spec.discrete else dimension) if target == "action" else None
    return saliency(_agent, inputs["frame"], inputs["prev_state"], inputs["prev_action"], target=target,
                    method=method, action=action, is_first=inputs["is_first"])


@st.cache_data(show_spinner="Attributing the latent ...", max_entries=256)
def latent_attr(ctx: tuple, _agent, _trace, step: int, target: str):
    from xdreamer.explain.attribution import latent_attribution

    from xdreamer.explain.interventions import aggregate_posterior

    # #27 item 4: from the aggregate posterior (each variable's class frequencies over the trace) at the one-hot
    # classes the agent acted on: this ranking predicts on-manifold interventions (the prior baseline ranks surprise)
    a = _trace.arrays
    action = int(a["action"][step]) if target == "action" else None
    if "post_stoch" in a:  # Gaussian latents (DreamerV1): over dimensions, from the prior mean, at the acted values
        return latent_attribution(_agent, a["deter"][step], a["post_logits"][step], target=target, action=action,
                                  prior=a["prior_logits"][step], z=a["post_stoch"][step])
    classes = np.asarray(a["post_class"]).astype(np.int64)
    K = a["post_logits"].shape[-1]
    return latent_attribution(_agent, a["deter"][step], a["post_logits"][step], target=target, action=action,
                              baseline=aggregate_posterior(classes, K), z=np.eye(K, dtype=np.float32)[classes[step]])


@st.cache_data(show_spinner="Intervening on the latent variables ...", max_entries=256)
def latent_effects(ctx: tuple, _agent, _trace, step: int, action: int):
    from xdreamer.explain.interventions import aggregate_posterior, variable_effects

    a = _trace.arrays
    classes = np.asarray(a["post_class"]).astype(np.int64)
    return variable_effects(_agent, a["deter"][step], classes[step],
                            aggregate_posterior(classes, a["post_logits"].shape[-1]), action=action)


@st.cache_data(show_spinner="Attributing the decision over time ...", max_entries=128)
def temporal_attr(ctx: tuple, _agent, _trace, step: int, k: int):
    from xdreamer.explain.temporal import temporal_attribution

    return temporal_attribution(_agent, _trace, step, k=k)


@st.cache_data(show_spinner="Attributing the decision to the memory ...", max_entries=128)
def memory_attr(ctx: tuple, _agent, _trace, step: int, target: str, dimension: int | None):
    from xdreamer.explain.memory import memory_attribution

    a = _trace.arrays
    action = dimension if dimension is not None else (int(a["action"][step]) if target == "action" else None)
    return memory_attribution(_agent, a["deter"][step], a["post_logits"][step], target=target, action=action)


@st.cache_data(show_spinner="Moving and removing the objects in the simulator ...", max_entries=64)
def object_attr(ctx: tuple, _agent, _trace, step: int, k: int):
    """#27 item 2 at one step: each ground-truth object moved / removed in the simulator, re-observed, the decision
    re-filtered (``explain.objects.object_attribution``)."""
    from xdreamer.explain.objects import object_attribution
    from xdreamer.training import make_env

    env = make_env(_agent.cfg)
    try:
        return object_attribution(_agent, env, _trace, steps=[step], k=k)
    finally:
        env.close()


@st.cache_data(show_spinner="Decoding class effects ...", max_entries=256)
def class_effects(ctx: tuple, _agent, _trace, step: int, variable: int):
    from xdreamer.explain.attribution import class_effects as effects

    a = _trace.arrays
    return effects(_agent, a["deter"][step], a["post_class"][step], variable)


@st.cache_data(max_entries=64)
def class_means(ctx: tuple, _trace, variable: int, classes: int):
    from xdreamer.explain.attribution import class_conditional_means

    onehot = np.eye(classes, dtype=np.float32)[_trace.arrays["post_class"][:, variable]][:, None]
    means, counts = class_conditional_means(_trace.arrays["frame"], onehot)
    return means[0], counts[0]


@st.cache_data(show_spinner="Dreaming the what-if branches ...", max_entries=32)
def run_whatif(ctx: tuple, _agent, _trace, step: int, actions: tuple | None, horizon: int, grounded: bool):
    from xdreamer.training import make_env

    dream = explain.whatif(_agent, _trace, step, horizon=horizon, actions=None if actions is None else list(actions))
    real, note = None, None
    if grounded:
        env = make_env(_agent.cfg)
        try:
            real = explain.ground(_agent, env, _trace, step, actions=None if actions is None else list(actions),
                                  horizon=horizon, dream=dream)
        except ValueError as exc:
            note = ui.error_text(exc)
        finally:
            env.close()
    from xdreamer.explain.render import whatif_frames
    from xdreamer.logger import write_video

    frames = whatif_frames(_trace, dream, real)  # the labelled grid the video is made of, scrubbed in the panel
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(pathlib.Path(tmp) / "whatif.mp4", frames, fps=4).read_bytes()
    return dream, real, note, video, frames


# ---- callbacks ---------------------------------------------------------------------------------
def jump_to(step: int) -> None:
    st.session_state["step"] = int(step)


def on_timeline_select() -> None:
    step = ui.step_from_selection(st.session_state.get("timeline"), st.session_state.get("_n_steps", 1))
    if step is not None:
        st.session_state["step"] = step


def on_heatmap_select(key: str) -> None:
    cell = ui.cell_from_selection(st.session_state.get(key))
    if cell is not None:
        st.session_state["latent_var"], st.session_state["latent_class"] = cell


def show_error(exc: BaseException, prefix: str = "", where=None) -> None:
    """One line, never a traceback; the message may quote file content, so it is escaped."""
    (where or st).error(prefix + E(ui.error_text(exc)))


# ---- Run (sidebar) -----------------------------------------------------------------------------
def run_panel():
    """Returns (agent or None, checkpoint key or None, trace or None, trace key)."""
    sb = st.sidebar
    sb.header("Run")
    if "source" not in st.session_state:
        st.session_state["source"] = ui.initial_source()
    source = sb.text_input("Checkpoint folder, run folder or trace file (.npz)", key="source")
    upload = sb.file_uploader("... or upload a trace (.npz)", type=["npz"], key="upload")
    agent = ckpt_key = trace = trace_key = None
    trace_from_file = None
    try:
        kind, path = ui.classify_source(source)
    except (ValueError, OSError) as exc:  # CheckpointError is a ValueError
        show_error(exc, where=sb)
        kind = path = None
    if kind == "checkpoint":
        try:
            ckpt_key = ui.checkpoint_key(path)
            agent = load_agent(ckpt_key)
        except Exception as exc:  # noqa: BLE001 - any load failure becomes a message
            show_error(exc, "Cannot load the checkpoint: ", sb)
            agent = ckpt_key = None
    elif kind == "trace":
        try:
            trace_from_file = (ui.file_key(path), load_trace_file(ui.file_key(path)))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Cannot load the trace: ", sb)
    if upload is not None:
        data = upload.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        try:
            trace_from_file = (("upload", digest), load_trace_upload(digest, data))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, f"Cannot read the uploaded file {E(upload.name)}: ", sb)
    if trace_from_file is not None:
        trace_key, trace = trace_from_file
        if agent is None:  # the checkpoint the trace was recorded with
            try:
                # A path read from the trace: followed only inside the folders opened (#28).
                ckpt_path = ui.data_checkpoint(trace.meta.get("checkpoint"), allowed_roots())
                ckpt_key = ui.checkpoint_key(ckpt_path)
                agent = load_agent(ckpt_key)
            except ui.OutsideRoots as exc:
                sb.warning(E(ui.error_text(exc)) + "; the panels show the recorded data only.")
                agent = ckpt_key = None
            except Exception as exc:  # noqa: BLE001
                sb.warning("The trace's checkpoint cannot be loaded (" + E(ui.error_text(exc)) + "); the panels "
                           "show the recorded data only: saliency, latent attribution and what-if need the "
                           "checkpoint. Open the checkpoint folder and upload the trace to use them.")
                agent = ckpt_key = None
        if agent is not None:
            try:
                explain.check_trace_matches(trace, agent)
            except Exception as exc:  # noqa: BLE001 - a garbled meta must give one line too
                show_error(exc, "The trace does not belong to this checkpoint: ", sb)
                agent = ckpt_key = None
    elif agent is not None:
        sb.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key="seed")
        st.session_state.setdefault("max_steps", DEFAULT_MAX_STEPS)
        sb.number_input("Max steps", min_value=0, max_value=10**6, step=100, key="max_steps",
                        help="cut the recorded episode after this many steps (0: the whole episode; an Atari "
                             "episode can run to 27,000)")
        if sb.button("Record new episode", key="record"):
            st.session_state["record_seed"] = int(st.session_state["seed"])
            st.session_state["record_max_steps"] = int(st.session_state["max_steps"])
        seed = int(st.session_state.get("record_seed", 0))
        max_steps = int(st.session_state.get("record_max_steps", DEFAULT_MAX_STEPS))
        try:
            trace = record_episode(ckpt_key, seed, max_steps)
            trace_key = ("record", seed, max_steps)
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Recording failed: ", sb)
    if agent is not None:
        sb.subheader("Checkpoint")
        sb.caption(E(agent.path))
        videos = ui.run_videos(agent.path)
        if videos:  # a run folder's open-loop predictions (training videos, #31)
            with sb.expander(f"Training videos ({len(videos)})"):
                pick = st.selectbox("open-loop prediction at step", videos, key="openloop_video",
                                    format_func=lambda p: f"{int(p.stem.split('-')[-1]):,}")
                st.video(str(pick))
                st.caption("5 observed context frames, then the model imagines under the recorded actions; rows: "
                           "truth, model, error (grey = no error). Six replay samples side by side.")
        try:
            for name, value in ui.manifest_rows(agent.manifest).items():
                sb.markdown(f"**{name}:** {E(value)}")  # manifest fields are file content (#28)
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Cannot show the manifest: ", sb)
    if trace is not None:
        sb.subheader("Episode")
        try:
            for name, value in ui.trace_rows(trace).items():
                sb.markdown(f"**{name}:** {E(value)}")  # trace meta is file content (#28)
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Cannot show the trace's summary: ", sb)
    return agent, ckpt_key, trace, trace_key


# ---- Timeline ----------------------------------------------------------------------------------
def timeline_panel(agent, ctx, trace) -> int:
    st.subheader("Timeline")
    n = len(trace)
    st.session_state["_n_steps"] = n
    if st.session_state.get("step", 0) >= n:
        st.session_state["step"] = 0
    st.session_state.setdefault("step", 0)
    if "_play_next" in st.session_state:  # playback's next step (``playback``)
        st.session_state["step"] = min(int(st.session_state.pop("_play_next")), n - 1)
    bookmarks = []
    if agent is not None and agent.spec.discrete:
        if st.checkbox("HIGHLIGHTS bookmarks (most important moments)", value=True, key="show_highlights"):
            try:
                moments = highlight_moments(ctx, agent, trace, k=5)
                bookmarks = [(s, f"HIGHLIGHT ep {e} t={t} (importance {imp:.3f})") for s, e, t, imp in moments]
            except Exception as exc:  # noqa: BLE001
                show_error(exc, "HIGHLIGHTS failed: ")
    failures = st.session_state.get("_failure_bookmarks", {}).get(ctx, [])
    bookmarks += failures
    step = int(st.session_state["step"])
    window = None
    if n > 1:
        # Zoom (#31): a range of steps; it follows the step when a bookmark, click or the slider leaves it.
        held = st.session_state.get("zoom")
        st.session_state["zoom"] = ui.timeline_window(n, step, tuple(held) if held else None)
        window = st.slider("Zoom: steps shown", 0, n - 1, key="zoom")
    st.plotly_chart(ui.timeline_figure(trace, step, bookmarks, window), key="timeline", on_select=on_timeline_select,
                    selection_mode="points", config={"displayModeBar": False})
    if bookmarks:
        cols = st.columns(min(len(bookmarks), 6))
        for i, (s, label) in enumerate(bookmarks):
            cols[i % len(cols)].button(f"★ step {s}", key=f"bookmark_{i}", help=label, on_click=jump_to, args=(s,))
    if n > 1:
        left, right = st.columns([5, 1], vertical_alignment="bottom")
        left.slider("Step", 0, n - 1, key="step")
        right.toggle("▶ Play", key="playing", help=f"step through the episode, one step every {PLAY_EVERY_S} s")
        if st.session_state.get("playing"):
            playback()
    step = int(st.session_state["step"])
    row = trace.table.iloc[step]
    st.caption(f"step {step}: episode {int(row['episode'])}, t={int(row['t'])}, action {E(row['action_name'])}, "
               f"reward {float(row['reward']):+.3f}, value {float(row['value']):+.3f}, "
               f"surprise {float(row['surprise']):.3f}")
    return step


PLAY_EVERY_S = 0.5  # playback: at most one step per this many seconds (a step reruns the page)


@st.fragment(run_every=PLAY_EVERY_S)
def playback() -> None:
    """Episode playback (#31): on each tick the next step, until the episode's last; the whole page follows."""
    if not st.session_state.get("playing"):
        return
    now = time.monotonic()
    if now - st.session_state.get("_played_at", 0.0) < PLAY_EVERY_S * 0.9:
        return  # the page's own rerun after a step, not a tick
    step, n = int(st.session_state.get("step", 0)), int(st.session_state.get("_n_steps", 1))
    if step >= n - 1:
        st.session_state["playing"] = False
        return
    st.session_state["_play_next"] = step + 1  # applied before the slider is drawn (``timeline_panel``)
    st.session_state["_played_at"] = now
    st.rerun()


# ---- Frame -------------------------------------------------------------------------------------
def frame_panel(agent, ctx, trace, step: int) -> None:
    from xdreamer.explain.saliency import METHODS, TARGETS
    from xdreamer.explain.saliency_commands import overlay

    a = trace.arrays
    cols = st.columns(4)
    real = ui.to_rgb(a["frame"][step])
    show_boxes = st.session_state.get("show_boxes", True)
    if show_boxes and trace.object_names:
        real = ui.draw_boxes(real, ui.boxes_at(trace, step))
    cols[0].image(real, caption=f"real frame (step {step})")
    cols[0].checkbox("ground-truth object boxes", value=True, key="show_boxes",
                     disabled=not trace.object_names)
    cols[1].image(ui.to_rgb(a["recon"][step]), caption="world-model reconstruction")
    sqerr = a["recon_sqerr"][step].astype(np.float32).sum(0)
    cols[2].image(ui.heat_rgb(sqerr),
                  caption=f"reconstruction squared error (mean {float(trace.table['recon_error'].iloc[step]):.4f})")
    cols[2].image(ui.legend_strip("jet"),
                  caption=ui.legend_text("jet", float(sqerr.max()), "squared error, 0-1 intensity, channels summed"))
    with cols[3]:
        # #27: the default is IntegratedGradients drawn signed (its signed map passes the audit's randomisation and
        # deletion checks on catch-lanes where every |map| fails randomisation; docs/audit.md)
        method = st.selectbox("saliency method", METHODS, key="saliency_method",
                              index=METHODS.index("integrated_gradients"),
                              help="what attributes the decision to the pixels of this frame (h_t held fixed); the "
                                   "audit verdict beside the map says whether it passes its sanity checks here")
        targets = TARGETS
        if agent is not None and not getattr(agent, "has_critic", True):  # World Models + CMA-ES: no value
            targets = tuple(t for t in targets if t != "value")
        target = st.selectbox("explained output", targets, key="saliency_target")
        dimension = None
        if target == "action" and not trace.discrete:  # continuous: one action dimension's pre-tanh mean
            dimension = st.selectbox("action dimension", range(trace.num_actions), key="saliency_dimension",
                                     format_func=lambda d: trace.action_names[d],
                                     help="the explained score is this dimension's mean before the tanh squashing")
        signed = method in ui.SIGNED_METHODS and st.toggle(
            "signed map", value=True, key="saliency_signed",
            help="red: the region raises the explained score; blue: it lowers it. Off: the magnitude in jet.")
        if agent is None:
            st.info("Saliency needs the checkpoint the trace was recorded with.")
        else:
            try:
                result = pixel_saliency(ctx, agent, trace, step, method, target, dimension)
                if target == "action" and dimension is not None:
                    explained = f"the mean of action dimension {trace.action_names[dimension]}"
                else:
                    explained = (f"the {result.score} of {trace.action_names[result.action]}"
                                 if target == "action" and result.action is not None else f"the {target}")
                caption = (f"{method} of the {target}"
                           + (f" ({E(result.score)} of {E(trace.action_names[result.action])})"
                              if target == "action" and result.action is not None else ""))
                if signed:
                    image, peak = ui.signed_overlay(a["frame"][step], result.map)
                    st.image(image, caption=caption + ", signed")
                else:
                    st.image(overlay(a["frame"][step], result.map), caption=caption)
                    peak = float(np.nanmax(np.abs(result.map)))
                notice = (ui.audit_notice(ui.find_audit(agent), method, signed=signed)
                          if target == "action" else None)  # #27
                if notice is not None:
                    getattr(st, notice[0])(E(notice[1]))
                if not np.any(np.nan_to_num(result.map)):
                    st.info(E(ui.zero_map_text(method, explained)))
                elif signed:
                    st.image(ui.legend_strip("diverging"),
                             caption=E(ui.legend_text("diverging", peak, f"attribution to {explained}; red raises "
                                                                         "it, blue lowers it")))
                else:
                    st.image(ui.legend_strip("jet"),
                             caption=E(ui.legend_text("jet", peak, f"|attribution| to {explained}; weaker "
                                                                   "is more transparent")))
            except Exception as exc:  # noqa: BLE001
                show_error(exc, "Saliency failed: ")
    if agent is not None and target == "action" and agent.spec.discrete:
        over_time_strip(agent, ctx, trace, step)
        if trace.object_names and trace.has_sim_states:
            objects_strip(agent, ctx, trace, step)
    elif agent is None and ui.object_effects_figure(trace, step) is not None:  # recorded data, no model needed
        st.markdown("**Objects**: what the decision did when the game itself moved or removed each object")
        stored_effects_chart(trace, step)
    st.markdown("**Action probabilities**")
    if "action_probs" in a:
        taken = int(a["action"][step])
        st.plotly_chart(ui.action_figure(a["action_probs"][step], trace.action_names, taken), key="actions",
                        config={"displayModeBar": False})
        st.caption(f"taken action: {E(trace.action_names[taken])}; entropy {float(a['entropy'][step]):.3f}")
    else:
        st.text(f"continuous action taken: {np.round(a['action'][step], 3).tolist()}")


def over_time_strip(agent, ctx, trace, step: int) -> None:
    """#27 item 3: the decision at t credited to the frames t-k..t through the recurrent state (signed IG over the
    window, re-filtered through the RSSM), with what erasing each frame alone does to the action distribution."""
    st.markdown("**Over time**: what the decision owes to the last frames (the ball seen earlier is carried in "
                "h_t; current-frame saliency holds h_t fixed and cannot show it)")
    k = st.slider("frames before t", 1, 8, 4, key="over_time_k",
                  help="IntegratedGradients over frames t-k..t from all of them erased to background, re-filtered "
                       "through the world model from the recorded state before t-k")
    try:
        result = temporal_attr(ctx, agent, trace, step, int(k))
    except Exception as exc:  # noqa: BLE001
        show_error(exc, "Attribution over time failed: ")
        return
    top = float(np.abs(result.maps).max()) if result.maps is not None else 0.0
    total = float(np.abs(result.per_frame).sum())
    cols = st.columns(len(result.steps))
    for col, j, credit, tv, frame_map in zip(cols, result.steps, result.per_frame, result.deletion_tv, result.maps):
        image, _ = ui.signed_overlay(trace.arrays["frame"][j], frame_map, top=top)
        share = abs(float(credit)) / total if total > 0 else 0.0
        col.image(image, caption=f"{'t' if j == step else f't-{step - j}'} (step {j}): {share:.0%} of the credit "
                                 f"({float(credit):+.2f}); erased alone: TV {float(tv):.2f}")
    notice = ui.audit_notice(ui.find_audit(agent), "over_time", signed=True)  # `xdreamer audit --methods over_time`
    if notice is not None:
        getattr(st, notice[0])(E(notice[1]))
    st.caption(E(f"{result.past_share:.0%} of the |credit| for {trace.action_names[result.action]} lies on the frames "
                 f"before t; one colour scale for all frames (max |attribution| {top:.3g}, red raises log p, blue "
                 f"lowers it). IG completeness delta {result.delta:+.2e}; the relaxed posterior scores p(action) "
                 f"{result.relaxed_gap:.3f} away from the agent's own."))


def stored_effects_chart(trace, step: int) -> bool:
    """The per-step object effects a trace recorded with ``--objects`` stores, over the episode; False if none."""
    figure = ui.object_effects_figure(trace, step)
    if figure is None:
        return False
    settings = trace.meta.get("object_effects") or {}
    st.plotly_chart(figure, key="object_effects", config={"displayModeBar": False})
    k, every = int(settings.get("k", 0)), int(settings.get("every", 1))
    st.caption(E("Over the episode, stored in the trace by `xdreamer record --objects` ("
                 + (f"edits of frames t-{k}..t" if k else "edits of the current frame only")
                 + (f"; stored every {every} steps of the trace: 0, {every}, {2 * every}, ..." if every > 1 else "")
                 + "): per object the largest p(action) change over its edits; gaps where no edit applied."))
    return True


def objects_strip(agent, ctx, trace, step: int) -> None:
    """#27 item 2: the reference the pixel maps are scored against. Each ground-truth object is moved or removed in
    the simulator (toy games through their state, Atari through verified RAM writes), the frame re-observed and the
    decision re-filtered; shown: how far p(action) moves (total variation) and the value change, per edit."""
    import pandas as pd

    st.markdown("**Objects**: what the decision does when the game itself moves or removes each object (on-manifold; "
                "the reference the pixel maps are checked against)")
    from xdreamer.explain.objects import stored_object_attribution

    stored = stored_object_attribution(trace)
    if not stored_effects_chart(trace, step):
        st.caption("Record the trace with `xdreamer record --objects` to see these effects over the whole episode.")
    k = st.slider("edit the last frames too", 0, 4, stored.k if stored is not None and stored.k <= 4 else 0,
                  key="objects_k",
                  help="0: only the current frame is edited; k: frames t-k..t, so that what h_t carries changes too")
    result = stored.at_steps([step]) if stored is not None and int(k) == stored.k else None
    if result is None:  # not stored at this k or step (`--objects-every`): computed here
        try:
            result = object_attr(ctx, agent, trace, step, int(k))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Object attribution failed: ")
            return
    rows = []
    for o, name in enumerate(result.objects):
        for v, variant in enumerate(result.variants):
            if not result.attempted[0, o, v]:
                continue
            landed = bool(result.landed[0, o, v])
            rows.append({"object": name, "edit": variant,
                         "p(action) TV": float(result.tv[0, o, v]) if landed else float("nan"),
                         "value change": float(result.dvalue[0, o, v]) if landed else float("nan"),
                         "action flips": bool(result.flip[0, o, v]) if landed else None,
                         "edit landed": landed})
    if not rows:
        st.info("No object was there to edit at this step.")
        return
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, use_container_width=True)
    effect = result.effect()[0]
    ranked = [result.objects[i] for i in np.argsort(-np.nan_to_num(effect, nan=-1.0)) if np.isfinite(effect[i])]
    note = "p(action) is saturated here (> 0.95 on one action): every edit can move it only a little. " \
        if bool(result.saturated[0]) else ""
    missed = int((~table["edit landed"]).sum())
    st.caption(E(note + (f"largest effect first: {', '.join(ranked)}. " if ranked else "")
                 + (f"{missed} edit(s) did not land on the screen and are left out. " if missed else "")
                 + "Whether these effects are the agent's own: `xdreamer audit --methods objects` compares them "
                   "with a randomised copy of this agent."))


# ---- Latent ------------------------------------------------------------------------------------
AUTO = "auto"  # the class selectbox's default: the most different class of the variable (#31)


def pick_class(agent, ctx, trace, step: int, variable: int, probs: np.ndarray) -> tuple[int, str]:
    """The class the decoded difference shows by default, and why: the one whose decoded difference is
    largest (the current class decodes to exactly zero, which showed a blank image, #31); without the
    checkpoint, the second most probable class of the variable."""
    current = int(trace.arrays["post_class"][step][variable])
    if agent is not None:
        try:
            effects = class_effects(ctx, agent, trace, step, variable)
            size = np.abs(effects.sum(1)).reshape(len(effects), -1).max(1)  # max |Δ| as the image shows it
            size[current] = -1.0
            if size.max() > 0:
                return int(size.argmax()), "the class whose decoded difference is largest"
        except Exception:  # noqa: BLE001 - the decoded-difference column shows the error
            pass
    order = [int(c) for c in np.argsort(-probs[variable], kind="stable") if int(c) != current]
    return order[0], "the second most probable class of this variable"


def gaussian_latent_panel(agent, ctx, trace, step: int) -> None:
    """Gaussian latents (DreamerV1 #29, World Models #30): per dimension the posterior mean +- std beside the
    prior's, World Models' mixture weights, and the attribution of the decision to each dimension (IG from the prior
    mean); no classes to switch."""
    import pandas as pd

    a = trace.arrays
    post, prior = np.asarray(a["post_logits"][step]), np.asarray(a["prior_logits"][step])
    world_models = "prior_mixture" in a
    if world_models:
        st.info("World Models: z is V's Gaussian posterior q(z | frame), one Gaussian per dimension and no classes to "
                "switch; M predicts each dimension as a mixture of Gaussians from its memory h. Shown per dimension: "
                "the posterior mean and std beside the mixture's (its moment-matched mean and std), M's mixture "
                "weights, and what the decision owes to each dimension.")
    else:
        st.info("Gaussian latents (DreamerV1): each of the stochastic state's dimensions is a Gaussian, not a class. "
                "Shown per dimension: the posterior and prior means and standard deviations, and what the decision "
                "owes to each dimension.")
    left, right = st.columns(2)
    left.markdown(f"**Posterior and prior at step {step}** ({post.shape[0]} dimensions)")
    left.bar_chart(pd.DataFrame({"posterior mean": post[:, 0], "prior mean": prior[:, 0],
                                 "posterior std": post[:, 1], "prior std": prior[:, 1]}), height=220, stack=False)
    left.caption(E(f"the value the agent acted on: {np.round(a['post_stoch'][step], 2).tolist()}"))
    if world_models:
        mix = np.asarray(a["prior_mixture"][step], np.float64)
        left.markdown(f"**M's mixture weights at step {step}** (rows: z dimensions, columns: components)")
        left.dataframe(pd.DataFrame(mix, columns=[f"k{k}" for k in range(mix.shape[1])]).style.format("{:.2f}")
                       .background_gradient(axis=None, vmin=0.0, vmax=1.0), height=220)
    with right:
        if agent is None:
            st.info("Latent attribution needs the checkpoint the trace was recorded with.")
            return
        critic = getattr(agent, "has_critic", True)
        targets = tuple(t for t in ("action", "value") if (t != "action" or agent.spec.discrete)
                        and (t != "value" or critic))
        if not critic:
            st.caption("This agent has no value function (World Models' C trained by CMA-ES): the value is not "
                       "attributed.")
        if not targets:
            st.info("Latent attribution explains a discrete action or a value; this agent has neither.")
            return
        target = st.selectbox("attributed output", targets, key="latent_target")
        try:
            attribution = latent_attr(ctx, agent, trace, step, target)
            st.markdown(f"**IntegratedGradients attribution of the {target} per dimension**")
            st.bar_chart(pd.DataFrame({"attribution": attribution.map[:, 0]}), height=220)
            st.caption(E(f"baseline: the prior mean at this step; completeness delta {attribution.delta:+.2e}; "
                         f"top dimensions {attribution.top_variables()}"))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Latent attribution failed: ")


def memory_strip(agent, ctx, trace, step: int) -> None:
    """#30: what the decision owes to the recurrent memory h_t (Dreamer's GRU, World Models' LSTM) against the
    latent z_t: one IG over both from the initial memory, per memory unit, with the forgetting check's verdict."""
    import pandas as pd

    st.markdown("**Memory**: how much of the decision rests on what the agent remembers (h_t) rather than on "
                "what it sees now (z_t)")
    if agent is None:
        st.info("Memory attribution needs the checkpoint the trace was recorded with.")
        return
    critic = getattr(agent, "has_critic", True)
    targets = tuple(t for t in ("action", "value") if t != "value" or critic)
    c1, c2 = st.columns(2)
    target = c1.selectbox("attributed output", targets, key="memory_target")
    dimension = None
    if target == "action" and not agent.spec.discrete:
        dimension = int(c2.selectbox("action dimension", list(range(agent.spec.num_actions)), key="memory_dim",
                                     help="its mean before the tanh is explained"))
    try:
        result = memory_attr(ctx, agent, trace, step, target, dimension)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, "Memory attribution failed: ")
        return
    left, right = st.columns([1, 3])
    left.metric("memory's share of |attribution|", f"{result.memory_share:.0%}")
    top = result.top_units(20)
    # ranked labels: the chart sorts its x axis as text, so the rank keeps the bars in order of |IG|
    right.bar_chart(pd.DataFrame({"attribution": result.per_unit[top]},
                                 index=[f"#{rank:02d} h{u}" for rank, u in enumerate(top, 1)]), height=200)
    notice = ui.audit_notice(ui.find_audit(agent), "memory", signed=True)  # `xdreamer audit --methods memory`
    if notice is not None:
        getattr(st, notice[0])(E(notice[1]))
    st.caption(E(f"the 20 memory units with the largest |IG| (of {len(result.per_unit)}); baseline: the initial "
                 f"memory with z at its prior; completeness delta {result.delta:+.2e}; a unit's IG against "
                 f"forgetting it alone: Spearman {result.agreement:+.2f}"))


def latent_panel(agent, ctx, trace, step: int) -> None:
    a = trace.arrays
    memory_strip(agent, ctx, trace, step)
    if "post_stoch" in a:
        gaussian_latent_panel(agent, ctx, trace, step)
        return
    logits = np.asarray(a["post_logits"][step], np.float64)
    stoch, classes = logits.shape
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    st.session_state.setdefault("latent_var", 0)
    st.session_state.setdefault("latent_class", AUTO)
    chosen = st.session_state["latent_class"]
    if st.session_state["latent_var"] >= stoch or (chosen != AUTO and chosen >= classes):
        st.session_state["latent_var"], st.session_state["latent_class"] = 0, AUTO
    variable = int(st.session_state["latent_var"])
    auto_class, why = pick_class(agent, ctx, trace, step, variable, probs)
    auto = st.session_state["latent_class"] == AUTO
    cls = auto_class if auto else int(st.session_state["latent_class"])
    mark = (variable, cls)
    left, right = st.columns(2)
    left.plotly_chart(ui.heatmap_figure(probs, f"posterior at step {step} ({stoch} variables × {classes} classes)",
                                        mark=mark, colorbar="probability"),
                      key="posterior_map", on_select=lambda: on_heatmap_select("posterior_map"),
                      selection_mode="points", config={"displayModeBar": False})
    attribution = None
    with right:
        if agent is None:
            st.info("Latent attribution needs the checkpoint the trace was recorded with.")
        else:
            targets = ("action", "value") if agent.spec.discrete else ("value",)
            target = st.selectbox("attributed output", targets, key="latent_target")
            unit = ("log-probability of the action" if target == "action"
                    else f"value ({ui.reward_scale(agent.cfg)})")
            try:
                attribution = latent_attr(ctx, agent, trace, step, target)
                st.plotly_chart(ui.heatmap_figure(attribution.map, f"IntegratedGradients attribution of the {target}",
                                                  diverging=True, mark=mark, colorbar=f"attribution to the {unit}"),
                                key="attribution_map", on_select=lambda: on_heatmap_select("attribution_map"),
                                selection_mode="points", config={"displayModeBar": False})
                st.caption(f"baseline: the aggregate posterior (each variable's class frequencies over this "
                           f"trace); completeness delta {attribution.delta:+.2e}; top variables "
                           f"{attribution.top_variables(by='ablation')} (FeatureAblation)")
                if target == "action":
                    latent_check(agent, ctx, trace, step, attribution)
            except Exception as exc:  # noqa: BLE001
                show_error(exc, "Latent attribution failed: ")
    st.markdown("**What does a latent class mean?** Click a cell of a heat map or pick it here.")
    c1, c2 = st.columns(2)
    c1.selectbox("latent variable", list(range(stoch)), key="latent_var")
    c2.selectbox("class", [AUTO, *range(classes)], key="latent_class",
                 format_func=lambda c: "most different" if c == AUTO else str(c))
    current = int(a["post_class"][step][variable])
    how = f" ({why}, chosen automatically)" if auto else ""
    cols = st.columns(3)
    cols[0].image(ui.to_rgb(a["recon"][step]),
                  caption=f"reconstruction at step {step} (variable {variable} has class {current})")
    if agent is None:
        cols[1].info("The decoded difference needs the checkpoint.")
    else:
        try:
            effect = class_effects(ctx, agent, trace, step, variable)[cls]
            image, top = ui.diverging_rgb(effect)
            cols[1].image(image, caption=f"decoded difference: variable {variable} → class {cls}{how} "
                                         f"(red brighter, blue darker; max |Δ| {top:.3f})")
            cols[1].image(ui.legend_strip("diverging"),
                          caption=ui.legend_text("diverging", top, "decoded intensity change, 0-1 scale, "
                                                                   "channels summed"))
        except Exception as exc:  # noqa: BLE001
            with cols[1]:
                show_error(exc, "Decoding failed: ")
    means, counts = class_means(ctx, trace, variable, classes)
    if counts[cls] > 0:
        cols[2].image(ui.to_rgb(np.clip(means[cls], 0, 255).round().astype(np.uint8)),
                      caption=f"mean real frame when variable {variable} = class {cls} ({int(counts[cls])} steps)")
    else:
        cols[2].info(f"Variable {variable} never had class {cls} in this trace.")


def latent_check(agent, ctx, trace, step: int, attribution) -> None:
    """#27 item 4: the attribution beside the intervention it claims to predict, per variable."""
    import pandas as pd

    from xdreamer.explain.faithfulness import spearman

    effects = latent_effects(ctx, agent, trace, step, int(attribution.action))
    ablation = np.abs(attribution.per_variable_ablation)
    st.bar_chart(pd.DataFrame({"|FeatureAblation| (scaled to the largest effect)":
                               ablation / max(ablation.max(), 1e-12) * effects.tv.max(),
                               "intervention effect (TV)": effects.tv}), height=180, stack=False)
    rho = spearman(ablation, effects.tv)
    saturated = effects.probs.max() > 0.95
    st.caption(E(f"Checked by intervention: setting each variable to classes it takes elsewhere in the trace moves "
                 f"p(action) by the TV drawn in the second series; Spearman with |FeatureAblation| at this step "
                 f"{rho:+.2f}" + (" (the actor is saturated here, p > 0.95: every intervention is small and the "
                                  "ranking is noise)" if saturated else "") + "."))
    notice = ui.audit_notice(ui.find_audit(agent), "latent_ablation")
    if notice is not None:
        getattr(st, notice[0])(E(notice[1]))


# ---- What-if -----------------------------------------------------------------------------------
def whatif_panel(agent, ctx, trace, step: int) -> None:
    if agent is None:
        st.info("What-if dreams need the checkpoint the trace was recorded with.")
        return
    names = trace.action_names
    with st.form("whatif_form", border=False):
        cols = st.columns([3, 2, 2])
        if agent.spec.discrete:
            chosen = cols[0].multiselect("first actions", names, default=names, key="whatif_actions")
        else:
            chosen = None
            cols[0].caption("continuous actions: the recorded action is dreamed")
        horizon = cols[1].slider("horizon", 1, 50, 15, key="whatif_horizon")
        can_ground = trace.has_sim_states
        grounded = cols[2].checkbox("also run in the real simulator", value=can_ground, disabled=not can_ground,
                                    key="whatif_grounded")
        if st.form_submit_button(f"Run what-if at step {step}", type="primary", key="whatif_run"):
            actions = None if chosen is None else tuple(names.index(c) for c in chosen)
            st.session_state["whatif_request"] = (ctx, step, actions, int(horizon), bool(grounded and can_ground))
    request = st.session_state.get("whatif_request")
    if not request or request[0] != ctx:
        st.caption("Choose the first actions and the horizon, then run the what-if.")
        return
    _, req_step, actions, horizon, grounded = request
    if actions is not None and not actions:
        st.error("Choose at least one first action.")
        return
    try:
        dream, real, note, video, frames = run_whatif(ctx, agent, trace, req_step, actions, horizon, grounded)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, "What-if failed: ")
        return
    st.markdown(f"**What-if at step {req_step}**, horizon {horizon}: every chosen first action, then the actor "
                "(taken action: " + (E(names[int(dream.taken_action)]) if trace.discrete else "recorded") + ")")
    if note:
        st.warning("Real branches not run: " + E(note))
    scale = ui.reward_scale(agent.cfg)
    st.table(ui.whatif_table(dream, real, scale).round(4).set_index("action"))
    if scale != "reward":
        st.caption(f"Imagined values and returns are on the {scale} scale the world model learns "
                   f"({E(f'clip_rewards={agent.cfg.clip_rewards}')}); the real return (game score) is the "
                   "game's own reward, not comparable with them.")
    # The labelled grid at full width, one imagined step at a time (#31: the video alone was a thin strip).
    k = st.slider("imagined step (0 = step t itself)", 0, len(frames) - 1, 0, key="whatif_frame")
    st.image(frames[k], **_FULL_WIDTH,
             caption=f"step t+{k}: the real future of the trace, the dream of the taken action, then dreams of "
                     "alternatives" + (", each followed by its real branch" if real is not None else ""))
    left, right = st.columns([3, 2])
    with left:
        st.video(video, format="video/mp4")
        st.download_button("Download the what-if video (mp4)", video, file_name=f"whatif-step{req_step}.mp4",
                           mime="video/mp4", key="whatif_download")
    with right:
        if real is not None:
            st.markdown("**Dream fidelity** (pixel MSE per imagined step)")
            st.plotly_chart(ui.fidelity_figure(real), key="fidelity", config={"displayModeBar": False})


# ---- Compare -----------------------------------------------------------------------------------
def compare_panel(agent, ctx, trace, trace_key, step: int) -> None:
    """A second agent beside this one on the same episode seed, step for step (#31): e.g. ``catch-lanes`` against
    its pixel-ball twin ``catch-pixel-lanes``: what each sees, where its saliency lies and what it dreams."""
    other_source = st.text_input("Second checkpoint (recorded on the same seed and step cut)", key="compare_source",
                                 placeholder="e.g. checkpoints/catch-pixel-lanes")
    if not str(other_source).strip():
        st.info("Enter a second checkpoint folder to compare it with this agent on the same episode seed.")
        return
    kind, path = ui.classify_source(other_source)
    if kind != "checkpoint":
        raise ValueError(f"{path.name} is a trace; compare needs a checkpoint folder")
    other_key = ui.checkpoint_key(path)
    other = load_agent(other_key)
    if trace_key and trace_key[0] == "record":
        seed, max_steps = int(trace_key[1]), int(trace_key[2])
    else:
        seed, max_steps = int(trace.meta.get("seed") or 0), int(trace.meta.get("max_steps") or 0)
    other_trace = record_episode(other_key, seed, max_steps)
    other_ctx = (other_key, ("record", seed, max_steps))
    method = st.selectbox("saliency method", ("occlusion", "saliency", "integrated_gradients"), key="compare_method")
    k = min(step, len(other_trace) - 1)
    note = "" if k == step else f" (its episode ended at step {k})"
    st.caption(f"episode seed {seed}; both at step {k}{note}: the real frame with the saliency of the action "
               "taken, the action probabilities, and the dream of each first action (imagined Q, horizon 15).")
    for col, (name, ag, c, tr) in zip(st.columns(2), (("this agent", agent, ctx, trace),
                                                     (str(path.name), other, other_ctx, other_trace))):
        with col:
            st.markdown(f"**{E(name)}** ({E(tr.meta.get('env'))})")
            a = tr.arrays
            if ag is None:
                st.image(ui.to_rgb(a["frame"][k]), caption=f"real frame (step {k})")
                st.info("Saliency and dreams need the checkpoint the trace was recorded with.")
                continue
            from xdreamer.explain.saliency_commands import overlay

            result = pixel_saliency(c, ag, tr, k, method, "action")
            st.image(overlay(a["frame"][k], result.map), caption=f"{method} of the action taken (step {k})")
            notice = ui.audit_notice(ui.find_audit(ag), method)  # this agent's audit verdict, if one was written
            if notice is not None:
                getattr(st, notice[0])(E(notice[1]))
            if "action_probs" in a:
                taken = int(a["action"][k])
                st.plotly_chart(ui.action_figure(a["action_probs"][k], tr.action_names, taken),
                                key=f"compare_actions_{name}", config={"displayModeBar": False})
            dream = run_whatif(c, ag, tr, k, None, 15, False)[0]
            st.table(ui.whatif_table(dream, None, ui.reward_scale(ag.cfg)).round(3).set_index("action"))


# ---- Failures ----------------------------------------------------------------------------------
SEED_MAX = 2**31 - 1  # the sidebar's seed field


def open_case(path: str, seed: int, t: int) -> None:
    """"Open this case": the case's checkpoint as the source, its episode recorded with the report's seed
    (``record_episode``), and the step with ``t`` selected once that recording is shown (``main``)."""
    st.session_state["source"] = path
    st.session_state["record_seed"] = int(seed)
    # The case's step must be in the recording: the whole episode (the report's own cut is its max_steps).
    st.session_state["record_max_steps"] = 0
    if 0 <= seed <= SEED_MAX:
        st.session_state["seed"] = int(seed)
    st.session_state["_open_case"] = (path, int(seed), int(t))


def failures_panel(agent, ctx, trace, recorded_seed: int | None = None) -> None:
    folder = st.text_input("Failure report folder (made by `xdreamer report`)", key="report_dir")
    try:
        table, clips = ui.read_report(folder)
    except ui.NoReport as exc:
        st.info(("" if not str(folder).strip() else f"{E(exc)}. ") + ui.REPORT_HOWTO)
        return
    except ValueError as exc:
        show_error(exc)
        return
    extras = ui.read_report_extras(folder)
    if "verdicts" in extras:  # the report's verdict per env, beside its cases (#31)
        st.markdown("**Verdicts** (per env: can the agent see the objects, does it explore)")
        st.dataframe(extras["verdicts"], hide_index=True, key="report_verdicts")
    if "probes" in extras:
        with st.expander("Latent probes: how well a ridge regression reads each object's position (R²)"):
            st.dataframe(extras["probes"], hide_index=True, key="report_probes")
    score = st.column_config.NumberColumn("score", format="%.3g", help="statistic / threshold (≥ 1 when flagged)")
    st.dataframe(table, hide_index=True, key="report_table", column_config={"score": score})
    if table.empty:
        st.info("The report has no cases.")
        return
    one_click = ui.has_case_columns(table)
    if not one_click:
        st.caption(ui.OLD_REPORT_NOTE)
    case = st.selectbox("case", table["case"].tolist(), key="report_case")
    row = table[table["case"] == case].iloc[0]
    # Every cell is file content: escaped, and no code spans (a backtick in a cell would close them, #28).
    st.markdown(f"**{E(case)}**: detector {E(row['detector'])}, score {E(ui.score_text(row['score']))}, episode "
                f"{E(row['episode'])}, step {E(row['step'])}, checkpoint {E(row['checkpoint'])}")
    roots = allowed_roots()
    steps = {}
    if trace is not None and agent is not None:
        for _, r in table.iterrows():
            s = ui.case_step(trace, r, agent.path, folder, roots=roots, recorded_seed=recorded_seed)
            if s is not None:
                steps[r["case"]] = s
    # Bookmark labels become button tooltips, which render Markdown.
    if ctx is not None:
        st.session_state.setdefault("_failure_bookmarks", {})[ctx] = [(s, f"failure {E(c)}") for c, s in steps.items()]
    target, refused = None, False
    if one_click:
        try:
            target = ui.report_case(row, folder, roots)
        except (ValueError, OSError) as exc:  # OutsideRoots, or no checkpoint there
            st.warning(f"Cannot open this case: {E(ui.error_text(exc))}")
            refused = True
    if case in steps:
        st.button(f"Show step {steps[case]} in the timeline", key="report_jump", on_click=jump_to, args=(steps[case],))
    elif target is not None:
        path, seed, t = target
        st.button("Open this case", key="report_open", on_click=open_case, args=(str(path), seed, t), type="primary",
                  help=f"record the episode of {E(path.name)} with seed {seed} and go to its step t={t}")
    elif refused:
        pass
    elif one_click:
        st.caption("This case has no record seed or checkpoint path (e.g. its episode came from a saved trace): "
                   "open that trace in the sidebar to inspect it.")
    else:
        st.caption("This case is not in the episode shown (other checkpoint or episode): record its episode to "
                   "inspect it here.")
    if case in clips:
        try:
            st.video(clips[case].read_bytes(), format="video/mp4")
        except OSError as exc:
            show_error(exc, "Cannot read the clip: ")


def opened_case_step(trace, trace_key, ckpt_key) -> int | None:
    """After "Open this case": the step of the pending case in the recording now shown, else None (with a
    warning when the recording shown is not the case's, e.g. an uploaded trace takes precedence)."""
    pending = st.session_state.pop("_open_case", None)
    if pending is None or trace is None:
        return None
    path, seed, t = pending
    if ckpt_key is None or ckpt_key[0] != path or tuple(trace_key or ())[:2] != ("record", seed):
        st.warning("The case's episode is not the one shown (an uploaded trace takes precedence: remove it "
                   "to open report cases).")
        return None
    hits = np.flatnonzero((trace.arrays["episode"] == 0) & (trace.arrays["t"] == t))
    if not len(hits):
        st.warning(f"The recorded episode has no step t={t} (it ended after t={int(trace.arrays['t'][-1])}).")
        return None
    return int(hits[0])


# ---- page --------------------------------------------------------------------------------------
def main() -> None:
    st.title("xdreamer explainer")
    names = ui.app_imports()
    if names:
        try:
            import_user_modules(tuple(names))
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "--import: ", st.sidebar)
            st.sidebar.caption("The app does not search the folder it was started from (#28): install the module "
                               "or put its folder on PYTHONPATH.")
    try:
        agent, ckpt_key, trace, trace_key = run_panel()
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (#28)
        show_error(exc, "Run panel failed: ")
        agent = ckpt_key = trace = trace_key = None
    if trace is None:
        st.session_state.pop("_open_case", None)  # the case's checkpoint did not open: the error says why
        st.info("Open a checkpoint folder or a trace file in the sidebar (**Run**). "
                f"No checkpoint yet? Train one with `{ui.TRAIN_HINT}` and open `runs/catch-debug`.")
        st.subheader("Failures")
        try:
            failures_panel(None, None, None)
        except Exception as exc:  # noqa: BLE001
            show_error(exc, "Failures failed: ")
        return
    ctx = (ckpt_key, trace_key)
    if st.session_state.get("_ctx") != ctx:
        if "_ctx" in st.session_state:  # another run was opened: start at its first step
            st.session_state["step"] = 0
            st.session_state.pop("whatif_request", None)
            st.session_state.pop("zoom", None)
        st.session_state["_ctx"] = ctx
    opened = opened_case_step(trace, trace_key, ckpt_key)
    if opened is not None:
        st.session_state["step"] = opened
    try:
        step = timeline_panel(agent, ctx, trace)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, "Timeline failed: ")
        return
    panel = st.segmented_control("Panel", ui.PANELS, default=ui.PANELS[0], required=True, key="panel")
    try:
        if panel == "Frame":
            frame_panel(agent, ctx, trace, step)
        elif panel == "Latent":
            latent_panel(agent, ctx, trace, step)
        elif panel == "What-if":
            whatif_panel(agent, ctx, trace, step)
        elif panel == "Compare":
            compare_panel(agent, ctx, trace, trace_key, step)
        else:
            recorded = trace_key[1] if trace_key and trace_key[0] == "record" else None
            failures_panel(agent, ctx, trace, recorded)
    except Exception as exc:  # noqa: BLE001
        show_error(exc, f"{panel} failed: ")


main()
