"""CLI subcommands of the analysis layer: ``record``, ``whatif``, ``highlights``.

``add_commands(subparsers)`` registers them on the ``xdreamer`` parser; each handler takes the parsed
``argparse.Namespace`` and returns an exit status. User errors raise ``ValueError`` /
``CheckpointError`` (the CLI prints them as one line).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from ..checkpoint import atomic_write_text
from ..config import PRECISIONS


# Where a command writes when no output path is given (#31): a folder of its own in the current folder, so that
# the README's commands never drop files into the repository root. The writers make it on demand.
OUTPUT_DIR = "xdreamer-out"


def default_output(name: str) -> str:
    """``xdreamer-out/<name>``, the default path of an output file called ``name``."""
    return f"{OUTPUT_DIR}/{name}"


def resolve_actions(values: Sequence[str] | None, spec, option: str) -> list[int] | None:
    """Action indices of ``spec`` for ``values``, each an action name (case-insensitive, as the outputs print
    them: ``FIRE``, ``left``) or a number (#31). ``None`` stays ``None`` (the command's default).
    An unknown name or an out-of-range number is a one-line ``ValueError`` that lists the valid names."""
    if values is None:
        return None
    if not spec.discrete:
        raise ValueError(f"{option} takes discrete actions; {spec.id} has continuous actions")
    count = int(spec.num_actions)
    names = [str(n) for n in spec.action_names][:count] + [str(i) for i in range(len(spec.action_names), count)]
    index = {name.upper(): i for i, name in enumerate(names)}
    valid = f"valid actions: {', '.join(names)} (or their numbers 0-{count - 1})"
    resolved = []
    for value in values:
        text = str(value).strip()
        if text.upper() in index:
            resolved.append(index[text.upper()])
            continue
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"{option}: unknown action {text!r}; {valid}") from None
        if not 0 <= number < count:
            raise ValueError(f"{option}: action {number} is out of range; {valid}")
        resolved.append(number)
    return resolved


def _write_json(path: str | os.PathLike, data: Any) -> pathlib.Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _load(args):
    from .. import checkpoint
    from ..envs import import_modules, make
    from ..training import env_kwargs

    import_modules(getattr(args, "imports", []) or [])
    agent = checkpoint.load(args.checkpoint, device=args.device, overrides=precision_override(args))
    env = make(agent.cfg.env, **env_kwargs(agent.cfg))
    checkpoint.check_env(agent.spec, env.spec)
    return agent, env


def _trace(args, agent, env, max_steps=None):
    from .trace import check_trace_matches, load_trace, record

    if getattr(args, "trace", None):
        trace = load_trace(args.trace)
        check_trace_matches(trace, agent)
        if trace.meta.get("env") != env.spec.id:
            raise ValueError(f"trace was recorded on {trace.meta.get('env')}, the checkpoint's env is {env.spec.id}")
        return trace
    return record(agent, env, episodes=1, seed=args.seed, max_steps=max_steps,
                  progress=not getattr(args, "no_progress", False))


def precision_override(args) -> dict[str, str] | None:
    precision = getattr(args, "precision", None)
    return {"precision": precision} if precision else None


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS,
                   help="arithmetic for the model (default: the checkpoint's); bfloat16 autocast makes the paper-size "
                        "what-if 25-40 %% faster on CPUs with AVX512-BF16 or AMX (docs/benchmarks.md)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_precision(p)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (registers custom gym envs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_record(args: argparse.Namespace) -> int:
    from .trace import record, save

    if args.objects_k is not None and not args.objects:
        raise ValueError("--objects-k sets how far back --objects edits reach; give --objects too")
    if args.objects_k is not None and args.objects_k < 0:
        raise ValueError(f"--objects-k must be >= 0, got {args.objects_k}")
    if args.objects_every is not None and not args.objects:
        raise ValueError("--objects-every sets which steps --objects attributes; give --objects too")
    if args.objects_every is not None and args.objects_every < 1:
        raise ValueError(f"--objects-every must be >= 1, got {args.objects_every}")
    agent, env = _load(args)
    try:
        if args.objects:  # before the episodes are run: an env without an object editor says so at once
            from .objects import object_editor

            object_editor(env)
            if not agent.spec.discrete:
                raise ValueError("--objects reports p(action) changes; it needs a discrete action space")
        trace = record(agent, env, episodes=args.episodes, seed=args.seed, policy=args.policy,
                       max_steps=args.max_steps, progress=not args.no_progress)
        if args.objects:
            from .objects import record_object_effects

            record_object_effects(agent, env, trace, k=args.objects_k or 0, every=args.objects_every or 1,
                                  progress=not args.no_progress)
    finally:
        env.close()
    out = save(trace, args.out)
    returns = trace.table.groupby("episode")["reward"].sum()
    print(f"recorded {len(trace)} steps over {args.episodes} episode(s) of {env.spec.id} "
          f"(returns {', '.join(f'{r:.2f}' for r in returns)})")
    if args.objects:
        from .objects import stored_object_attribution

        result = stored_object_attribution(trace)
        print("object effects (median largest p(action) TV over the steps where an edit applied): " + ", ".join(
            f"{name} {result.median_effect(name, eligible_only=False):.3f}" for name in result.objects))
    print(f"wrote {out}")
    return 0


def cmd_whatif(args: argparse.Namespace) -> int:
    import torch

    from .dreams import whatif
    from .grounded import ground
    from .render import write_whatif_video

    agent, env = _load(args)
    try:
        actions = resolve_actions(args.actions, agent.spec, "--actions")  # before the episode is recorded
        alternatives = resolve_actions(args.alternatives, agent.spec, "--alternatives")
        trace = _trace(args, agent, env, max_steps=args.step + args.horizon)
        trace.check_step(args.step)
        sample = args.sample or args.temperature is not None
        if args.temperature is not None:
            if not hasattr(agent.wm.rssm, "temperature"):
                raise ValueError(f"--temperature is World Models' dream temperature; this agent is {agent.cfg.algo} "
                                 "(use --sample to draw its latents)")
            if not args.temperature > 0:
                raise ValueError(f"--temperature must be > 0, got {args.temperature}")
            agent.wm.rssm.temperature = float(args.temperature)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)  # --sample: the same draws for the same seed
            result = whatif(agent, trace, args.step, args.horizon, actions, sample=sample)
        grounded = ground(agent, env, trace, args.step, actions, args.horizon, dream=result) \
            if args.grounded else None
    finally:
        env.close()
    taken = result.taken_action
    print(f"step {args.step}: agent took {trace.table['action_name'][args.step]}; imagined {args.horizon}-step "
          "returns per first action:")
    for row, label in enumerate(result.labels):
        line = f"  {label:>12}: Q {result.q[row]:+.3f}  dream return {result.dream_return[row]:+.3f}"
        if grounded is not None:
            line += (f"  real Q {grounded.real_q[row]:+.3f}  real return {grounded.real_return[row]:+.3f}"
                     f"  pixel mse {float(np.nanmean(grounded.pixel_mse[row])):.4f}")
        print(line + ("  (taken)" if np.ndim(taken) == 0 and result.first_actions[row] == taken else ""))
    if args.json:
        data = {"checkpoint": str(args.checkpoint), "trace": args.trace, "seed": None if args.trace else args.seed,
                "env": env.spec.id, "taken_action_name": str(trace.table["action_name"][args.step]),
                "dream": result.to_dict(), "grounded": grounded.to_dict() if grounded is not None else None}
        print(f"wrote {_write_json(args.json, data)}")
    if args.video:
        print(f"wrote {write_whatif_video(args.video, trace, result, grounded, alternatives, fps=args.fps)}")
    return 0


def cmd_highlights(args: argparse.Namespace) -> int:
    from .highlights import highlights
    from .render import highlights_image, write_image

    agent, env = _load(args)
    try:
        trace = _trace(args, agent, env)
    finally:
        env.close()
    result = highlights(agent, trace, k=args.k, context=args.context, min_gap=args.min_gap, horizon=args.horizon,
                        progress=not args.no_progress)
    for m in result.moments:
        print(f"  step {m.step} (episode {m.episode}, t={m.t}): importance {m.importance:.4f}")
    if args.json:
        data = {"checkpoint": str(args.checkpoint), "trace": args.trace, "env": env.spec.id,
                "horizon": args.horizon, **result.to_dict()}
        print(f"wrote {_write_json(args.json, data)}")
    if args.image:
        print(f"wrote {write_image(args.image, highlights_image(trace, result.moments))}")
    return 0


def add_commands(subparsers) -> None:
    """Register ``record``, ``whatif`` and ``highlights`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("record", help="record a decision trace of a checkpoint", description=(
        "Run the agent in its env (evaluation seeds) and record per step the frame, action, action "
        "probabilities, value, rewards, latents, reconstructions, surprise, objects and simulator states "
        "into one .npz trace."))
    _common(p)
    p.add_argument("--episodes", type=int, default=1, help="episodes to record (default 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="evaluation seed: the same episodes as `xdreamer eval --seed` (default 0)")
    p.add_argument("--policy", choices=("mode", "sample"), default="mode",
                   help="mode: the actor's most likely action (default); sample: draw from the actor")
    p.add_argument("--max-steps", type=int, default=None, help="cut each episode after this many steps")
    p.add_argument("--objects", action="store_true",
                   help="also move and remove every ground-truth object in the simulator at every step and store how "
                        "far p(action) moves (toy: and atari: Pong/Breakout games; columns effect_<object>)")
    p.add_argument("--objects-k", type=int, default=None, metavar="K",
                   help="with --objects: edit frames t-K..t, so what the recurrent state carries changes too "
                        "(default 0: only the current frame)")
    p.add_argument("--objects-every", type=int, default=None, metavar="N",
                   help="with --objects: attribute every N-th step of the trace only (0, N, 2N, ...; default 1: "
                        "all). Attributing a step costs about 2-3 times recording it; N divides that")
    p.add_argument("--out", default=default_output("trace.npz"),
                   help=f"output .npz (default {default_output('trace.npz')})")
    p.set_defaults(func=cmd_record)

    p = subparsers.add_parser("whatif", help="what-if dreams (and real branches) at one step", description=(
        "Imagine the next steps for every alternative first action at --step, following the actor; "
        "with --grounded also run the branches in the real simulator. Writes a video and/or JSON."))
    _common(p)
    p.add_argument("--trace", help="trace .npz recorded from this checkpoint (else one episode is recorded)")
    p.add_argument("--seed", type=int, default=0, help="episode seed when no --trace is given")
    p.add_argument("--step", type=int, required=True, help="trace step to branch from")
    p.add_argument("--actions", nargs="+", default=None, metavar="ACTION",
                   help="first actions to dream, by name as the outputs print them (e.g. NOOP LEFT; any case) "
                        "or number (default: all)")
    p.add_argument("--alternatives", nargs="+", default=None, metavar="ACTION",
                   help="actions shown as alternatives in the video, by name or number (default: up to 4 others)")
    p.add_argument("--horizon", type=int, default=15, help="imagined steps per branch (default 15)")
    p.add_argument("--grounded", action="store_true", help="also run each branch in the real simulator")
    p.add_argument("--sample", action="store_true",
                   help="draw the imagined latents (torch seeded from --seed) instead of taking the most likely "
                        "ones (default)")
    p.add_argument("--temperature", type=float, default=None, metavar="TAU",
                   help="World Models only: M's temperature for the dream (implies --sample; default the "
                        "checkpoint's wm_temperature; the paper's Doom agent trained best at 1.15)")
    p.add_argument("--video", help="output .mp4 (or .gif)")
    p.add_argument("--fps", type=int, default=4, help="frames per second of the video (default 4)")
    p.add_argument("--json", help="output JSON of the numbers")
    p.set_defaults(func=cmd_whatif)

    p = subparsers.add_parser("highlights", help="HIGHLIGHTS summary of a trace", description=(
        "Importance I(t) = max_a Q - min_a Q from the dreams at every step; the top-k diverse moments."))
    _common(p)
    p.add_argument("--trace", help="trace .npz recorded from this checkpoint (else one episode is recorded)")
    p.add_argument("--seed", type=int, default=0, help="episode seed when no --trace is given")
    p.add_argument("--k", type=int, default=5, help="number of moments to pick (default 5)")
    p.add_argument("--context", type=int, default=5, help="context frames either side")
    p.add_argument("--min-gap", type=int, default=10, help="minimum distance between moments (steps)")
    p.add_argument("--horizon", type=int, default=15, help="dream horizon of the Q estimates (default 15)")
    p.add_argument("--json", help="output JSON")
    p.add_argument("--image", help="output .png strip of the moments with context")
    p.set_defaults(func=cmd_highlights)
