"""The ``sweep`` and ``report`` verbs of ``xai-lab`` (the parser lives in :mod:`xai_lab.cli`).

Ray is imported only here, when a sweep runs: ``xai_lab`` itself never imports it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal

from xai_lab.errors import Interrupted


class StopSignals:
    """SIGTERM stops a sweep the way Ctrl-C does, and the exit code says which one came (130 or 143).

    SIGTERM is handed to whichever SIGINT handler is installed at that moment: Ray Tune's while trials run
    (a graceful stop that saves the experiment), the fan-out's flag while reports run
    (``sweeps.fanout._ctrl_c_flag``), Python's (``KeyboardInterrupt``) in the report. Installed after Ray
    starts, so it replaces the handler Ray puts on SIGTERM.
    """

    def __init__(self):
        self.exit_code = 130
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.exit_code = 143
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not signal.default_int_handler:
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    def interrupted(self, resume: str) -> Interrupted:
        name = "SIGTERM" if self.exit_code == 143 else "interrupted (Ctrl-C)"
        return Interrupted(f"{name}: what finished is saved; carry on with: {resume}", self.exit_code)


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
