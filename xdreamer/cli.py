"""``xdreamer`` command line: train, eval, bench, the analysis commands (record, whatif,
highlights, saliency) and ``app`` (the Streamlit explainer).

Errors a user can cause (bad env id, preset or key, missing or corrupt checkpoint, checkpoint
that does not fit the env) print one line ``xdreamer: error: ...`` and exit with status 2; errors of the
machine (a full or read-only disk, a file that cannot be read) and anything unexpected print one line and exit
with status 1. ``--debug`` (anywhere on the command line) or ``XDREAMER_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Sequence

from .config import COMPILE_MODES, PRECISIONS, PRESETS


def _command_line() -> str:
    import shlex

    return "xdreamer " + " ".join(shlex.quote(a) for a in sys.argv[1:])


class _Terminated(KeyboardInterrupt):
    """SIGTERM during training (``kill``, ``timeout``, a batch scheduler): handled like Ctrl-C, so the run saves
    a checkpoint and stops. A subclass of KeyboardInterrupt because that is what the trainer catches."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _train(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_terminated) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        return _train_run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _trainer(algo: str):
    """The training function of a member of the family (``Config.algo``): World Models trains in stages
    (xdreamer/worldmodels/train.py), DreamerV2/V3 in xdreamer/training.py."""
    if algo == "worldmodels":
        from .worldmodels.train import train
    else:
        from .training import train
    return train


def _train_run(args: argparse.Namespace) -> int:
    from .config import build_config, parse_set_args, read_config_file
    from .envs import import_modules

    import_modules(args.imports)
    overrides = parse_set_args(args.set)
    if args.controller:
        overrides["wm_controller"] = args.controller
    ray = args.ray_address or ("local" if args.ray else None)
    extra = {"ray": ray} if ray else {}
    if args.world_model:
        if args.resume or args.preset or args.env:
            raise ValueError("--world-model takes V, M, the env and the config from its checkpoint; drop "
                             + ", ".join(f for f, on in (("--resume", args.resume), ("--preset", args.preset),
                                                         ("--env", args.env)) if on)
                             + " and set C's fields with --controller / --set")
        from .worldmodels.train import train as train_wm

        logdir = args.logdir or f"runs/world-model-{time.strftime('%Y%m%d-%H%M%S')}"
        result = train_wm(None, logdir, progress=not args.no_progress, overrides=overrides,
                          command=_command_line(), world_model=args.world_model, **extra)
    elif args.resume:
        if not args.logdir:
            raise ValueError("--resume needs --logdir of the run to continue")
        algo = read_config_file(pathlib.Path(args.logdir) / "config.json").algo
        if ray and algo != "worldmodels":
            raise ValueError(f"--ray evaluates World Models' CMA-ES candidates; this run is {algo}")
        result = _trainer(algo)(None, args.logdir, resume=True, progress=not args.no_progress, overrides=overrides,
                                command=_command_line(), **extra)
    else:
        env = args.env or overrides.get("env") or "toy:catch"
        overrides["env"] = env
        cfg = build_config(args.preset, overrides)
        if args.controller and cfg.algo != "worldmodels":
            raise ValueError(f"--controller trains World Models' C; algo is {cfg.algo} (add --preset worldmodels)")
        if ray and cfg.algo != "worldmodels":
            raise ValueError(f"--ray evaluates World Models' CMA-ES candidates; algo is {cfg.algo} (add --preset "
                             "worldmodels)")
        train = _trainer(cfg.algo)
        from .envs import make

        make(cfg.env).close()  # fail fast, with the env's own message, before any folder is made
        logdir = args.logdir or f"runs/{env.replace(':', '-').replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
        result = train(cfg, logdir, progress=not args.no_progress, command=_command_line(), **extra)
    print(f"trained {result.steps} agent steps, {result.updates} updates"
          + (f", eval return {result.eval_mean:.3f}" if result.eval_mean is not None else ""))
    print(f"checkpoint: {result.checkpoint}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from . import checkpoint
    from .envs import import_modules, make
    from .evaluation import evaluate, lockstep_envs
    from .explain.commands import default_output
    from .training import env_kwargs

    import_modules(args.imports)
    agent = checkpoint.load(args.checkpoint, device=args.device)
    cfg = agent.cfg
    env_id = args.env or cfg.env
    env = make(env_id, **env_kwargs(cfg.replace(env=env_id)))
    checkpoint.check_env(agent.spec, env.spec)
    out = args.out or default_output(f"eval-{agent.path.name}-{args.policy}-seed{args.seed}.json")
    if not args.out:  # the default path is known only now; check it before the episodes as _check_outputs does
        _probe_writable(pathlib.Path(out).parent, f"output {out}")
    lockstep = args.lockstep if args.policy == "mode" else min(args.lockstep, 1)  # no extra envs otherwise
    with lockstep_envs(lambda: make(env_id, **env_kwargs(cfg.replace(env=env_id))), args.episodes, lockstep) as more:
        result = evaluate(agent, env, args.episodes, seed=args.seed, policy=args.policy,
                          progress=not args.no_progress, more_envs=more)
    data = {"checkpoint": str(agent.path), "steps": agent.manifest.get("steps"), **result.to_dict()}
    checkpoint.atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    print(f"{env_id} {args.policy} policy over {args.episodes} episodes (seed {args.seed}): "
          f"return {result.mean:.3f} ± {result.std:.3f}")
    print(f"wrote {out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import check_device, run_benchmark, summary
    from .config import PRESETS, ConfigError

    for preset in args.presets:  # fail here, not in the benchmark's subprocess minutes later
        unknown = [name for name in preset.split("+") if name not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown preset {unknown[0]!r} in --presets {preset!r}; known presets: "
                              f"{', '.join(PRESETS)} (join several with +, e.g. small+toy)")
    try:
        check_device(args.device)
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith("--device") else f"--device: {e}") from None
    results = run_benchmark(args.presets, args.out, repeats=args.repeats, precisions=tuple(args.precision),
                            compiles=tuple(args.compile), profile=args.profile, device=args.device)
    print(summary(results))
    print(f"wrote {args.out} (every number, the machine and the profile if asked for)")
    return 0


def _app(args: argparse.Namespace) -> int:
    from .app import run_app

    return run_app(args.path, port=args.port, headless=args.headless, host=args.host, imports=args.imports)


def _bundle(args: argparse.Namespace) -> int:
    from . import checkpoint
    from .bundle import bundle, markdown_row, update_readme

    record = bundle(args.source, args.out, episodes=args.episodes, seed=args.seed, command=args.train_command,
                    progress=not args.no_progress)
    m, r = record["eval_mode"], record["eval_random"]
    print(f"bundled {record['source']} -> {args.out}")
    print(f"eval over {args.episodes} episodes (seed {args.seed}): agent {m['mean']:.3f} ± {m['std']:.3f}, "
          f"random {r['mean']:.3f} ± {r['std']:.3f}")
    print(markdown_row(pathlib.Path(args.out).name, checkpoint.read_manifest(pathlib.Path(args.out))))
    readme = update_readme(pathlib.Path(args.out).parent)
    if readme is not None:
        print(f"updated the table in {readme}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .explain.commands import default_output

    parser = argparse.ArgumentParser(
        prog="xdreamer", description="Train DreamerV2 agents and explain them.",
        epilog="Errors print one line; add --debug anywhere (or set XDREAMER_DEBUG=1) for the traceback.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an agent", description=(
        "Train DreamerV2. Presets compose left to right over the paper's Atari defaults "
        "(e.g. --preset atari small); --set key=value overrides any config field. Other members: --preset "
        "dreamerv3, and World Models (--preset worldmodels, worldmodels-cpu or worldmodels-debug; "
        "--controller cmaes|ppo; docs/worldmodels.md)."))
    p.add_argument("--env", help="env id: toy:catch, toy:catch-pixel, toy:catch-lanes, toy:catch-pixel-lanes, atari:<Game>, mujoco:<Name>, gym:<id>")
    p.add_argument("--preset", nargs="+", default=[], metavar="NAME",
                   help="presets to apply in order: " + ", ".join(PRESETS))
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="override config fields, e.g. --set steps=20000 seed=1")
    p.add_argument("--ray", action="store_true",
                   help="World Models with CMA-ES: evaluate the candidates on a local Ray (wm_workers actors) instead "
                        "of local processes")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="World Models with CMA-ES: evaluate the candidates on the Ray cluster at ADDR (implies --ray)")
    p.add_argument("--controller", choices=("cmaes", "ppo"),
                   help="World Models only: train C by CMA-ES (the paper's) or PPO (= --set wm_controller=...)")
    p.add_argument("--world-model", metavar="CHECKPOINT",
                   help="World Models only: keep the V and M of this checkpoint (or run folder) and train a new C "
                        "on them, e.g. --world-model checkpoints/worldmodels/carracing --controller ppo; the config "
                        "is the checkpoint's, --set changes C's fields only")
    p.add_argument("--logdir", help="run folder (default runs/<env>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --logdir")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (registers custom gym envs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint", description=(
        "Run whole episodes with the actor's mode (or --policy sample/random) and report the mean "
        "and standard deviation of the return; writes JSON."))
    p.add_argument("checkpoint", help="checkpoint folder or run folder")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="evaluation seed: the same seed runs the same episodes for every checkpoint (default 0)")
    p.add_argument("--policy", choices=("mode", "sample", "random"), default="mode",
                   help="mode: the actor's most likely action (default); sample: draw from the actor; "
                        "random: uniform random actions (the baseline)")
    p.add_argument("--lockstep", type=int, default=10, metavar="N",
                   help="run up to N mode-policy episodes in lockstep with one batched network call per step "
                        "(default 10; 1 = one at a time; random and sample always run one at a time)")
    p.add_argument("--env", help="evaluate on this env id instead of the checkpoint's own")
    p.add_argument("--out", help="JSON output path (default "
                                 f"{default_output('eval-<CHECKPOINT>-<POLICY>-seed<SEED>.json')})")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (registers custom gym envs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="measure update and env speed; writes JSON")
    p.add_argument("--presets", nargs="+", default=["atari", "small", "debug"],
                   help="presets to measure, each one name or several joined by + in the order applied "
                        "(small+toy: the toy-game learning preset; worldmodels, worldmodels-cpu: World Models' V, M "
                        "and C updates and CarRacing steps/s)")
    p.add_argument("--repeats", type=int, default=3, help="timed updates per preset")
    p.add_argument("--precision", nargs="+", default=["float32"], choices=PRECISIONS,
                   help="precisions to measure (bfloat16 = CPU/CUDA autocast)")
    p.add_argument("--compile", nargs="+", default=["off"], choices=COMPILE_MODES,
                   help="torch.compile modes to measure (off = eager); e.g. --compile off default")
    p.add_argument("--profile", action="store_true",
                   help="also profile one update per preset (torch.profiler): time per operator category "
                        "(convolution, matmul, activation, memory, other) and the top operators")
    p.add_argument("--device", default="cpu",
                   help="where the agent runs: cpu (default), cuda or cuda:N (times wait for the GPU; env, replay "
                        "and record timings stay on the CPU)")
    p.add_argument("--out", default=default_output("bench.json"),
                   help=f"JSON output path (default {default_output('bench.json')})")
    p.set_defaults(func=_bench)

    p = sub.add_parser("bundle", help="ship a checkpoint: copy it without optimiser state, evaluate it and "
                       "a random policy on fixed seeds, record both in its manifest")
    p.add_argument("source", help="checkpoint folder or run folder")
    p.add_argument("--out", required=True, help="destination folder, e.g. checkpoints/catch")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes, agent and random (default 10)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    # dest: not ``command``, which names the subcommand (#30: ``--command`` clobbered it, and an existing --out
    # folder was then refused as "a folder")
    p.add_argument("--command", dest="train_command",
                   help="training command to record (default: the run's commands.txt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_bundle)

    from .explain.commands import add_commands as add_explain_commands
    from .explain.audit_commands import add_commands as add_audit_commands
    from .explain.saliency_commands import add_commands as add_saliency_commands

    add_explain_commands(sub)
    add_saliency_commands(sub)
    add_audit_commands(sub)
    from .report.commands import add_commands as add_report_commands

    add_report_commands(sub)

    from .app import DEFAULT_HOST, DEFAULT_PORT

    p = sub.add_parser("app", help="open the Streamlit explainer", description=(
        "Start the explainer app (apps/explainer.py, Streamlit) on a checkpoint folder, run folder or trace "
        "file and print its local URL. Without PATH it opens the bundled default checkpoint checkpoints/catch-lanes. "
        "The app has no login: it listens on 127.0.0.1 unless --host says otherwise."))
    p.add_argument("path", nargs="?", help="checkpoint folder, run folder or trace .npz (default: checkpoints/catch-lanes)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"local port (default {DEFAULT_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}, this machine only); another address lets "
                        "anyone who reaches it use the app and read the agent's files")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE in the app first (registers custom gym envs); must be importable "
                        "without the current folder (installed or on PYTHONPATH)")
    p.add_argument("--headless", action="store_true", help="do not open a browser tab")
    p.set_defaults(func=_app)
    return parser


# Options whose value is a file the command writes; folders the command writes into.
_OUTPUT_FILES = ("out", "json", "video", "image")
_OUTPUT_FOLDER_COMMANDS = ("report", "bundle", "audit")


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before the work, not after it: an output that is a folder, or a folder we cannot write into
    (read-only disk, no permission), is a one-line error before minutes of recording or evaluation (#28)."""
    for name in _OUTPUT_FILES:
        value = getattr(args, name, None)
        if not isinstance(value, str) or not value:
            continue
        path = pathlib.Path(value).expanduser()
        folder = path if args.command in _OUTPUT_FOLDER_COMMANDS and name == "out" else path.parent
        if folder is not path and path.is_dir():
            raise ValueError(f"--{name} {value} is a folder; give a file path")
        _probe_writable(folder, f"--{name} {value}")


def _probe_writable(folder: pathlib.Path, what: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what}: {existing} is not a folder")
    probe = existing / f".xdreamer-write-check-{os.getpid()}"
    try:
        probe.touch()
    except OSError as exc:
        raise OSError(f"{what}: cannot write into {existing} ({exc.strerror or exc})") from None
    finally:
        probe.unlink(missing_ok=True)


def _one_line(exc: BaseException, limit: int = 1000) -> str:
    """The error as one line: its lines joined (our messages are one line already), cut at ``limit``."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``--debug`` anywhere before a ``--``, or ``XDREAMER_DEBUG=1``; returns argv without the flag."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head or os.environ.get("XDREAMER_DEBUG", "") not in ("", "0")
    if "--debug" in head:
        argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < len(head))]
    return debug, argv


def main(argv: Sequence[str] | None = None) -> int:
    from .threads import share_cpu

    # Before anything imports torch (build_parser does): OpenMP reads its wait policy once, when torch loads it;
    # with OpenMP's default spinning a busy machine slowed inference tens of times (#31, xdreamer/threads.py). Children
    # (the app's server, bench's subprocesses, a local Ray cluster) inherit it.
    share_cpu()
    debug, argv = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .config import ConfigError

    try:
        _check_outputs(args)
        if isinstance(getattr(args, "device", None), str) and args.command != "bench":  # bench checks its own
            # --device banana / cuda on a CPU build: one line before any work
            from .config import check_device

            check_device(args.device)
        if args.func is not _app:  # `xdreamer app` only starts the Streamlit server, which configures itself
            from .training import configure_cpu

            # What `xdreamer train` does, for the analysis commands too: without kept freed memory a paper-size
            # what-if page-faults its decoder's large temporaries on every call (34-35k faults, 0.55 against
            # 0.45 s on a 2-core AVX2 EPYC; docs/experiments/whatif_malloc.py).
            configure_cpu()
        return args.func(args)
    except FloatingPointError as exc:  # training diverged (Agent.train_step); the run is saved (Trainer.run)
        return _fail(exc, 1, debug)
    except _Terminated:
        print("xdreamer: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("xdreamer: interrupted", file=sys.stderr)
        return 130
    except (ValueError, ConfigError, CheckpointError, FileNotFoundError, NotImplementedError) as exc:
        return _fail(exc, 2, debug)
    except OSError as exc:  # a full or read-only disk, a file that cannot be read
        return _fail(exc, 1, debug)
    except MemoryError:
        return _fail(MemoryError("out of memory"), 1, debug)
    except Exception as exc:  # noqa: BLE001 - anything else: one line, the traceback only on --debug (#28)
        if "basic_ios" in str(exc) or "iostream" in str(exc):  # a C++ stream failed: a full or read-only disk
            return _fail(OSError(f"a file could not be written or read ({_one_line(exc)}): is the disk full or "
                                 "read-only?"), 1, debug)
        return _fail(RuntimeError(f"{type(exc).__name__}: {_one_line(exc)} (an unexpected error; rerun with "
                                  "--debug for the traceback and report it)"), 1, debug)


def _fail(exc: BaseException, status: int, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"xdreamer: error: {_one_line(exc)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
