"""CLI subcommand ``xdreamer report`` (registered by ``xdreamer.cli.build_parser``)."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from ..cli import _command_line
    from ..envs import import_modules
    from .build import run_report

    import_modules(args.imports)
    seeds = args.seeds
    out = args.out or (f"reports/report-seeds{'-'.join(map(str, seeds))}" if seeds else f"reports/report-seed{args.seed}")
    meta = run_report(args.checkpoints, out, episodes=args.episodes, seed=args.seed, traces=args.traces or [],
                      seeds=seeds,
                      ray=args.ray or bool(args.ray_address), ray_address=args.ray_address,
                      progress=not args.no_progress, max_steps=args.max_steps, dream_steps=args.dream_steps,
                      horizon=args.horizon, max_cases=args.max_cases, device=args.device, clips=not args.no_clips,
                      command=_command_line(), imports=args.imports)
    print(f"report over {meta['jobs']} episode(s) of {len(meta['checkpoints'])} checkpoint(s): "
          f"{meta['cases']} failure case(s), {meta['wall_s']:.1f} s")
    print(f"wrote {out}/index.html")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="batch failure report over checkpoints x episodes (HTML, CSV, parquet, clips)",
                       description=(
                           "Run each checkpoint for --episodes seeded episodes (and/or analyse saved --traces), "
                           "detect failures (perception blind spots, reward misses, surprise spikes, value errors, "
                           "dream infidelity, exploration coverage), rank them across the batch and write "
                           "OUT/index.html, summary.csv/.parquet/.md, episodes.csv, verdicts.csv and clips/*.mp4."))
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint folders or run folders")
    p.add_argument("--traces", nargs="+", default=[], metavar="TRACE",
                   help="saved traces (.npz, from xdreamer record) of these checkpoints to analyse as well")
    p.add_argument("--episodes", type=int, default=10, help="recorded episodes per checkpoint (default 10)")
    p.add_argument("--seed", type=int, default=0, help="episode i is recorded with seed seed*100003+i")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="instead of --seed: --episodes episodes for each seed; the verdicts are pooled and each "
                        "seed's own verdict and their agreement are reported (verdicts that hold across seeds)")
    p.add_argument("--out", help="report folder (default reports/report-seed<SEED>)")
    p.add_argument("--ray", action="store_true", help="run the checkpoint x episode jobs as Ray tasks (local Ray)")
    p.add_argument("--ray-address", metavar="ADDR", help="connect to an existing Ray cluster (implies --ray)")
    p.add_argument("--max-steps", type=int, help="cut each recorded episode after this many steps")
    p.add_argument("--dream-steps", type=int, default=2,
                   help="top-surprise steps per episode to dream and ground (0: no dream infidelity)")
    p.add_argument("--horizon", type=int, default=15, help="dream horizon (default 15)")
    p.add_argument("--max-cases", type=int, default=5, help="cases kept per checkpoint and detector (default 5)")
    p.add_argument("--no-clips", action="store_true", help="do not write mp4 clips")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (registers custom gym envs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)
