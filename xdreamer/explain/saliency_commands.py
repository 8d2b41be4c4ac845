"""``xdreamer saliency``: a pixel saliency map for one step of a trace (or of a fresh episode).

    xdreamer saliency CHECKPOINT --trace T --step N --method occlusion --target action \\
        --out map.png --json out.json [--faithfulness] [--sanity] [--latent]
    xdreamer saliency CHECKPOINT --seed 0 --step N ...     (no trace: run the agent's eval policy)

``--out`` ending in ``.png`` writes a 4x upscaled jet overlay of |map| on the frame; ``.npz`` writes
the arrays (map, per-channel map, frame and the JSON record). ``add_commands(subparsers)`` registers
the command; the main CLI wires it in.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_text
from .saliency import METHODS, TARGETS, _ALIASES
from .commands import add_precision, default_output, precision_override, resolve_actions


# ---- images ------------------------------------------------------------------------------------
def jet(x: np.ndarray) -> np.ndarray:
    """Matplotlib-like jet colormap of values in [0, 1]: ``[...] -> [..., 3]`` float in [0, 1]."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], np.float32)  # r, g, b
    return np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)


def overlay(frame: np.ndarray, saliency_map: np.ndarray, scale: int = 4, alpha: float = 0.6) -> np.ndarray:
    """uint8 ``[H*scale, W*scale, 3]``: the frame (``[C, H, W]`` uint8) with |map| in jet, blended by
    normalised magnitude (weak attribution leaves the frame visible)."""
    img = np.asarray(frame)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    img = img.transpose(1, 2, 0)
    rgb = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3]
    rgb = rgb.astype(np.float32) / 255.0
    mag = np.abs(np.asarray(saliency_map, np.float32))
    peak = float(mag.max())
    norm = mag / peak if peak > 0 else mag
    weight = alpha * norm[..., None]
    out = (1 - weight) * rgb + weight * jet(norm)
    out = np.kron(out, np.ones((scale, scale, 1), np.float32)) if scale > 1 else out
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


# ---- inputs ------------------------------------------------------------------------------------
def episode_inputs(agent, step: int, seed: int = 0) -> dict[str, Any]:
    """Run the agent's eval policy (as ``xdreamer eval --seed``, episode 0) up to ``step`` and return
    the inputs of :func:`saliency` at that step (same keys as ``trace_inputs``)."""
    from ..envs import make
    from ..evaluation import EVAL_SEED_OFFSET, episode_seed
    from ..training import env_kwargs

    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    env = make(agent.cfg.env, **env_kwargs(agent.cfg))
    try:
        obs = env.reset(seed=EVAL_SEED_OFFSET + episode_seed(seed, 0))
        state = None
        for t in range(step):
            action, state = agent.act(obs, state, mode="eval")
            if obs["is_last"]:
                raise ValueError(f"step {step} is out of range: the episode (seed {seed}) ended after step {t}")
            obs = env.step(action)
        action, _ = agent.act(obs, state, mode="eval")
    finally:
        env.close()
    return {"frame": obs["image"], "prev_state": None if state is None else state.latent,
            "prev_action": None if state is None else state.action,
            "is_first": bool(obs["is_first"]) or state is None,
            "action": int(action) if agent.spec.discrete else None}


def _write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ---- command -----------------------------------------------------------------------------------
def _dimension(value: str, spec) -> int:
    """A continuous action's dimension by number or by name (``spec.action_names``), or a one-line ValueError."""
    names = [str(n).upper() for n in (spec.action_names or [])]
    text = str(value).strip()
    if text.upper() in names:
        return names.index(text.upper())
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number < spec.num_actions:
        raise ValueError(f"--action: {text!r} is not an action dimension of {spec.id} (0-{spec.num_actions - 1}"
                         + (f" or {', '.join(names)})" if names else ")"))
    return number


def _saliency(args: argparse.Namespace) -> int:
    import imageio.v2 as imageio

    from .. import checkpoint
    from .faithfulness import completeness, deletion_insertion, randomization_check
    from .saliency import saliency, trace_inputs

    agent = checkpoint.load(args.checkpoint, device=args.device, overrides=precision_override(args))
    if agent.spec.discrete:
        chosen = None if args.action is None else resolve_actions([args.action], agent.spec, "--action")[0]
    else:  # continuous actions: --action names the dimension whose pre-tanh mean is explained
        chosen = _dimension(args.action, agent.spec) if args.action is not None else None
        if chosen is None and args.target == "action":
            raise ValueError(f"{agent.spec.id} has continuous actions: choose the dimension to explain with --action "
                             f"0-{agent.spec.num_actions - 1} (its mean before the tanh), or use --target value")
    if args.video and not args.trace:
        raise ValueError("--video needs --trace (record one with `xdreamer record`)")
    if args.trace:
        from .trace import check_trace_matches, load_trace

        trace = load_trace(args.trace)
        check_trace_matches(trace, agent)
        if args.video:
            from .render import write_saliency_video

            path = write_saliency_video(args.video, agent, trace, method=_ALIASES.get(args.method, args.method),
                                        target=args.target, progress=True)
            print(f"wrote {path}")
        inputs = trace_inputs(trace, args.step)
        source = {"trace": str(args.trace), "step": args.step}
    else:
        inputs = episode_inputs(agent, args.step, args.seed)
        source = {"seed": args.seed, "step": args.step, "policy": "mode"}
    action = chosen if chosen is not None else (inputs["action"] if args.target == "action" else None)
    if action is not None and not 0 <= action < agent.spec.num_actions:
        raise ValueError(f"action {action} out of range: the agent has {agent.spec.num_actions} actions")
    options: dict[str, Any] = {}
    method = _ALIASES.get(args.method, args.method)
    if method == "integrated_gradients":
        options["n_steps"] = args.n_steps
    elif method == "occlusion":
        options.update(window=args.window, stride=args.stride)
    elif method == "smoothgrad":
        options.update(stdevs=args.stdevs, nt_samples=args.nt_samples)
    call = dict(prev_state=inputs["prev_state"], prev_action=inputs["prev_action"], is_first=inputs["is_first"])
    result = saliency(agent, inputs["frame"], target=args.target, method=method, action=action, **call, **options)
    record: dict[str, Any] = {"checkpoint": str(agent.path), **source, **result.to_dict()}
    if args.target == "action" and agent.spec.discrete and result.action is not None:
        names = list(agent.spec.action_names)
        record["action_name"] = names[result.action] if result.action < len(names) else str(result.action)
    if result.delta is not None:
        record["completeness"] = completeness(result)
    if args.faithfulness:
        curves = deletion_insertion(agent, inputs["frame"], result, **call)
        record["faithfulness"] = curves.to_dict()
    if args.sanity:
        check = randomization_check(agent, inputs["frame"], target=args.target, method=method, action=result.action,
                                    **call, **options)
        record["randomization"] = check.to_dict()
    if args.latent:
        record["latent"] = _latent_record(agent, inputs, args.target, result.action)
    if args.memory:
        record["memory"] = _memory_record(agent, inputs, args.target, result.action)
    out = args.out or default_output(f"saliency-step{args.step}-{method}-{args.target}.png")
    suffix = pathlib.Path(out).suffix.lower()
    if suffix in (".png", ".npz"):
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)  # xdreamer-out/ on first use
    if suffix == ".png":
        imageio.imwrite(out, overlay(inputs["frame"], result.map, scale=args.scale))
    elif suffix == ".npz":
        np.savez_compressed(out, map=result.map, channels=result.channels, frame=np.asarray(inputs["frame"]),
                            record=np.array(json.dumps(record, default=_json_default)))
    else:
        raise ValueError(f"--out must end in .png or .npz, got {out}")
    if args.json:
        _write_json(args.json, record)
    peak = record["peak"]
    what = f"action {record.get('action_name', result.action)}" if args.target == "action" else "value"
    # An all-zero map has no peak: argmax would name row 0, col 0 (#31). Zero means no pixel of this frame
    # changes the explained score under this method at this step.
    where = (f"the map is zero everywhere: the {result.score if args.target == 'action' else 'value'} does not "
             f"change with this frame's pixels under {method} at this step (no peak)"
             if not np.any(np.nan_to_num(np.asarray(result.map))) else f"peak at row {peak[0]}, col {peak[1]}")
    print(f"{method} saliency of the {what} at step {args.step}: {where}"
          + (f", IG completeness delta {result.delta:.3g}" if result.delta is not None else ""))
    if args.memory:
        mem = record["memory"]
        print(f"memory: {mem['memory_share']:.0%} of the attribution is on the recurrent state h_t, the rest on the "
              f"latent z_t (top units {mem['top_units']}"
              + ("; check it with `xdreamer audit --methods memory`)" if agent.spec.discrete else ")"))
    print(f"wrote {out}" + (f" and {args.json}" if args.json else ""))
    return 0


def _posterior(agent, inputs: dict):
    """The posterior (and prior) of the explained step, computed with the model's own encoder and obs_step from the
    recorded previous state (sample=False: the posterior mode)."""
    import torch

    from .saliency import as_action_input, as_state, to_unit_frame

    with torch.no_grad():
        x = to_unit_frame(inputs["frame"], agent.device)
        prev = as_state(agent, inputs["prev_state"])
        is_first = torch.tensor([float(inputs["is_first"])], device=agent.device)
        return agent.wm.rssm.obs_step(prev, as_action_input(agent, inputs["prev_action"]), agent.wm.encode(x - 0.5),
                                      is_first, sample=False)


def _latent_record(agent, inputs: dict, target: str, action: int | None) -> dict:
    """Latent-class attribution at the explained step (``attribution.latent_attribution``, the prior as baseline)."""
    from .attribution import latent_attribution

    post, prior = _posterior(agent, inputs)
    return latent_attribution(agent, post.deter[0], post.logits[0], target, action, prior=prior.logits[0]).to_dict()


def _memory_record(agent, inputs: dict, target: str, action: int | None) -> dict:
    """The joint attribution over h_t and z_t at the explained step (``memory.memory_attribution``)."""
    from .memory import memory_attribution

    post, _ = _posterior(agent, inputs)
    return memory_attribution(agent, post.deter[0], post.logits[0], target, action).to_dict()


def add_commands(subparsers) -> None:
    """Register ``saliency`` on an ``argparse`` subparsers object (``args.func(args)`` runs it)."""
    p = subparsers.add_parser("saliency", help="pixel saliency map of one decision", description=(
        "Pixel saliency of the chosen action's logit (or the value) w.r.t. the frame at one step, the "
        "recurrent state held fixed. Methods: saliency (|gradient|), integrated_gradients (blurred-frame "
        "baseline), occlusion, smoothgrad (NoiseTunnel), greydanus (Gaussian-blur perturbation, chosen "
        "action's log-probability)."))
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--trace", help="trace file from `xdreamer record` (default: run an episode with --seed)")
    p.add_argument("--seed", type=int, default=0, help="episode seed when no --trace is given")
    p.add_argument("--step", type=int, required=True, help="step of the trace / episode")
    methods = list(METHODS) + sorted(_ALIASES)
    p.add_argument("--method", choices=methods, default="occlusion", metavar="METHOD",
                   help=f"one of {', '.join(METHODS)} (aliases: {', '.join(sorted(_ALIASES))})")
    p.add_argument("--target", choices=TARGETS, default="action",
                   help="what to explain: action (the explained action's score, default) or value (the critic's value)")
    p.add_argument("--action", metavar="ACTION",
                   help="action to explain, by name as the outputs print it (e.g. FIRE; any case) or number "
                        "(default: the recorded / chosen one); for continuous actions the dimension whose mean "
                        "(before the tanh) is explained, required there with --target action")
    p.add_argument("--out", help="output .png (overlay) or .npz (arrays) (default "
                                 f"{default_output('saliency-step<STEP>-<METHOD>-<TARGET>.png')})")
    p.add_argument("--video", help="also write a saliency-overlay .mp4/.gif of the whole trace (needs --trace)")
    p.add_argument("--json", help="write the numbers as JSON here")
    p.add_argument("--window", type=int, default=4, help="occlusion window (pixels)")
    p.add_argument("--stride", type=int, default=2, help="occlusion stride (pixels)")
    p.add_argument("--n-steps", type=int, default=32, help="IntegratedGradients steps")
    p.add_argument("--stdevs", type=float, default=0.1, help="NoiseTunnel noise std on [0, 1] images")
    p.add_argument("--nt-samples", type=int, default=16, help="NoiseTunnel samples")
    p.add_argument("--scale", type=int, default=4, help="PNG upscaling factor")
    p.add_argument("--faithfulness", action="store_true", help="add deletion/insertion curves and AUCs")
    p.add_argument("--sanity", action="store_true", help="add the cascading model-randomisation check")
    p.add_argument("--latent", action="store_true", help="add the 32x32 latent-class attribution")
    p.add_argument("--memory", action="store_true",
                   help="add the attribution over the recurrent memory h_t (Dreamer's GRU, World Models' LSTM) and "
                        "z_t jointly, from the initial memory: how much of the decision rests on what the agent "
                        "remembers")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_precision(p)
    p.set_defaults(func=_saliency)
