"""The ``sweep`` and ``report`` verbs of ``xai-lab`` (the parser lives in :mod:`xai_lab.cli`).

Ray is imported only here, when a sweep runs: ``xai_lab`` itself never imports it.
"""

from __future__ import annotations

import argparse
import os
import sys


def cmd_sweep(args: argparse.Namespace) -> None:
    """``xai-lab sweep --config SWEEP [--resume] [--address auto] [--dashboard] [--top K] [--smoke]``."""
    from sweeps.config import load_sweep

    cfg = load_sweep(args.config, args.overrides, smoke=args.smoke)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address or address.split(":")[0] in ("127.0.0.1", "localhost"):
        # A local Ray, or a cluster on loopback: stay on 127.0.0.1 (Ray reads this when it is imported;
        # otherwise it swaps 127.0.0.1 for the machine's interface address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from sweeps.driver import check_results_folder, run_sweep, start_ray, sweep_paths

    check_results_folder(cfg, sweep_paths(cfg), args.resume)  # before starting Ray: bad input costs nothing
    url = start_ray(address, args.dashboard, quiet=args.quiet)
    if url:
        print(f"Ray dashboard: {url}", flush=True)
    print(f"sweep {cfg.name}: results in {sweep_paths(cfg).results}", flush=True)
    outcome = run_sweep(
        cfg, resume=args.resume, top=args.top, verbose=0 if args.quiet else 1, progress=not args.quiet
    )
    print(f"leaderboard: {outcome.leaderboard}")
    if outcome.interrupted:
        print(
            f"interrupted: state saved; carry on with xai-lab sweep --config {args.config} --resume",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    print(f"report: {outcome.index_html}")
    print(f"TensorBoard: tensorboard --logdir {outcome.paths.results}")


def cmd_report(args: argparse.Namespace) -> None:
    """``xai-lab report --sweep DIR [--top K] [--out DIR]``."""
    from sweeps.report import build_report

    index = build_report(args.sweep, top=args.top, out=args.out)
    print(f"report: {index.resolve()}")
