"""The ``sweep`` and ``report`` verbs of ``xai-lab`` (the parser lives in :mod:`xai_lab.cli`).

Ray is imported only here, when a sweep runs: ``xai_lab`` itself never imports it.
"""

from __future__ import annotations

import argparse
import os
import shlex

from xai_lab.errors import Interrupted
from xai_lab.signals import StopSignals


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
    if not address:
        # Ray turns token authentication on for a new local cluster, and warns that it did; saying so before
        # Ray is imported keeps it on (the dashboard and the cluster's API refuse requests without the token,
        # generated in ~/.ray/auth_token the first time) and the warning off.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from sweeps.driver import (
        check_results_folder,
        check_writable,
        dashboard_sign_in,
        run_sweep,
        start_ray,
        sweep_paths,
    )

    paths = sweep_paths(cfg)
    check_results_folder(cfg, paths, args.resume)  # before starting Ray: bad input costs nothing
    check_writable(paths.results)
    url = start_ray(address, args.dashboard, quiet=args.quiet, sweep=cfg.name)
    stop = StopSignals()
    if url:
        print(f"Ray dashboard: {url}", flush=True)
        print(f"  {dashboard_sign_in()}", flush=True)
    print(f"sweep {cfg.name}: results in {paths.results}", flush=True)
    resume = shlex.join(["xai-lab", "sweep", "--config", args.config, *args.overrides, "--resume",
                         *(["--smoke"] if args.smoke else [])])
    try:
        outcome = run_sweep(cfg, resume=args.resume, top=args.top, verbose=0 if args.quiet else 1,
                            progress=not args.quiet, autoscaling=bool(address))
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise stop.interrupted(resume) from None
    print(f"leaderboard: {outcome.leaderboard}")
    if outcome.recorded:
        r = outcome.recorded
        print(f"run store: {r['trials']} trials, {r['reports']} with reports, in {r['uri']} "
              f"(list them: xai-lab runs --experiment {shlex.quote('sweep/' + cfg.name)})")
    if outcome.interrupted:
        raise stop.interrupted(resume)
    print(f"report: {outcome.index_html}")
    print(f"TensorBoard: tensorboard --logdir {outcome.paths.results}")


def cmd_report(args: argparse.Namespace) -> None:
    """``xai-lab report --sweep DIR [--top K] [--out DIR]``."""
    from sweeps.report import build_report

    index = build_report(args.sweep, top=args.top, out=args.out)
    print(f"report: {index.resolve()}")
