"""The sweep driver: one Ray Tune experiment per dataset, searched by Optuna, then the fan-out.

Layout of ``<storage>/<sweep>/``::

    sweep.yaml                the resolved sweep (checked again on --resume)
    <dataset>/                Ray Tune's experiment folder: one folder per trial with its
                              TensorBoard events (scalars + HParams), result.json and checkpoint
    leaderboard.csv           every trial of every dataset
    reports/<dataset>/<trial> evaluate + plots + explain of the top-k trials (single-run layout)
    comparison.csv/.png       the best trial of each dataset side by side
    index.html                the report (xai-lab report)

Trials report through :func:`sweeps.trainable.train_trial`; nothing here trains.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray import tune

from sweeps.config import DefineByRun, SweepConfig, base_experiments, base_point, sweep_to_dict
from sweeps.leaderboard import build_leaderboard, write_leaderboard
from sweeps.trainable import train_trial
from xai_lab.atomic import atomic_write_text
from xai_lab.config import read_yaml, to_dict
from xai_lab.data.dataset import load_dataset
from xai_lab.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class SweepPaths:
    """Where a sweep's files go: Tune's storage (a folder or a URI) and the local results folder."""

    storage: str  # Tune's storage_path; the experiments are <storage>/<dataset>
    results: Path  # leaderboard, reports, comparison, index.html

    def experiment(self, dataset: str) -> str:
        return f"{self.storage.rstrip('/')}/{dataset}"


def sweep_paths(cfg: SweepConfig) -> SweepPaths:
    """Local storage: everything under ``<storage>/<name>``. A URI (``s3://``): Tune writes there,
    the driver keeps the leaderboard and reports in ``ray_results/<name>``."""
    if "://" in cfg.storage:
        return SweepPaths(
            storage=f"{cfg.storage.rstrip('/')}/{cfg.name}", results=Path("ray_results") / cfg.name
        )
    root = Path(cfg.storage).expanduser().resolve() / cfg.name
    return SweepPaths(storage=str(root), results=root)


def check_results_folder(cfg: SweepConfig, paths: SweepPaths, resume: bool) -> None:
    """A new sweep never writes into an earlier one; ``--resume`` needs the same sweep."""
    saved = paths.results / "sweep.yaml"
    if not resume:
        if saved.exists() or (paths.results.exists() and any(paths.results.iterdir())):
            raise UserError(
                f"{paths.results} already holds a sweep; pass --resume to carry on with it, "
                f"or give this one another name (name=NEW)"
            )
        return
    if not saved.is_file():
        raise UserError(
            f"nothing to resume: {saved} does not exist (run without --resume to start the sweep)"
        )
    before, now = read_yaml(saved), sweep_to_dict(cfg)
    for key in ("experiments", "space", "search", "scheduler", "max_failures", "storage"):
        if before.get(key) != now.get(key):
            raise UserError(
                f"--resume: sweep key '{key}' differs from the saved {saved}; a resumed sweep must "
                "search the same space (only fanout and resources may change)"
            )


def start_ray(address: str | None, dashboard: bool, quiet: bool = False) -> str | None:
    """Connect to ``address`` (``auto``, ``host:port``; or ``RAY_ADDRESS``) or start a local Ray.

    A local Ray binds to 127.0.0.1; ``dashboard`` starts its dashboard there too.

    Returns:
        The dashboard URL when one was started, else None.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # num_to_keep=1 snapshots the experiment at every checkpoint: by design here, so no warning about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return None
    common = {"logging_level": logging.WARNING, "log_to_driver": not quiet}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ValueError) as e:
            raise UserError(
                f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}"
            ) from None
        alive = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        print(
            f"connected to the Ray cluster at {address}: {len(alive)} nodes, {total.get('CPU', 0):g} CPUs, "
            f"{total.get('GPU', 0):g} GPUs",
            flush=True,
        )
        return None
    ctx = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1", **common)
    if dashboard and ctx.dashboard_url:
        url = ctx.dashboard_url
        return url if url.startswith("http") else f"http://{url}"
    return None


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """CPUs and GPUs per trial; ``auto`` spreads ``max_concurrent`` trials over what Ray sees.

    GPU ``auto``: one GPU each when there are enough, else an equal fraction (1/2, 1/3, ...) so the
    concurrent trials pack onto the GPUs; 0 without GPUs. CPU ``auto``: the CPUs shared equally.
    """
    total = ray.cluster_resources()
    n_gpu, n_cpu = total.get("GPU", 0.0), total.get("CPU", 1.0)
    conc = cfg.search.max_concurrent
    gpu = cfg.resources.gpu
    if gpu == "auto":
        gpu = 0.0 if n_gpu < 1 else (1.0 if conc <= n_gpu else 1.0 / math.ceil(conc / n_gpu))
    cpu = cfg.resources.cpu
    if cpu == "auto":
        cpu = max(1.0, math.floor(n_cpu / conc))
    return {"cpu": float(cpu), "gpu": float(gpu)}


def _search_alg(cfg: SweepConfig, base):
    if not cfg.space:
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(
        seed=cfg.search.seed,
        multivariate=cfg.search.multivariate,
        n_startup_trials=cfg.search.n_startup_trials,
    )
    points = [base_point(cfg.space, base)] if cfg.search.evaluate_base_first else None
    return OptunaSearch(
        space=DefineByRun(cfg.space),
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        points_to_evaluate=points,
        sampler=sampler,
    )


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=cfg.search.metric,
        mode=cfg.search.mode,
        max_t=s.max_epochs,
        grace_period=min(s.grace_period, s.max_epochs),
        reduction_factor=s.reduction_factor,
    )


def run_tuner(
    cfg: SweepConfig,
    paths: SweepPaths,
    dataset_name: str,
    base,
    dataset,
    *,
    resume: bool,
    trainable: Callable = train_trial,
    verbose: int = 1,
):
    """Run (or resume) the Tune experiment of one dataset; returns its ResultGrid."""
    resources = trial_resources(cfg)
    fn = tune.with_resources(tune.with_parameters(trainable, base=to_dict(base), dataset=dataset), resources)
    exp_path = paths.experiment(dataset_name)
    if resume and tune.Tuner.can_restore(exp_path):
        log.info("resuming %s from %s", dataset_name, exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=fn, resume_errored=True)
    else:
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=_search_alg(cfg, base),
                scheduler=_scheduler(cfg),
                num_samples=cfg.search.num_samples,
                max_concurrent_trials=cfg.search.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=dataset_name,
                storage_path=paths.storage,
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=verbose,
            ),
        )
    return tuner.fit()


@dataclass
class SweepOutcome:
    """What a sweep produced (paths) and whether it ran to the end."""

    paths: SweepPaths
    interrupted: bool
    leaderboard: Path
    index_html: Path | None = None


def run_sweep(
    cfg: SweepConfig,
    *,
    resume: bool = False,
    top: int | None = None,
    trainable: Callable = train_trial,
    verbose: int = 1,
    progress: bool = True,
) -> SweepOutcome:
    """Run the whole sweep on the connected Ray: tune each dataset, then leaderboard, fan-out,
    comparison and report.

    Args:
        cfg: the checked sweep.
        resume: carry on with the sweep in the results folder (finished trials are kept).
        top: overrides ``fanout.top_k``.
        trainable: the Tune function (tests wrap :func:`train_trial` to inject faults).
        verbose: Tune's console verbosity (0-3).
        progress: show the fan-out's progress bar.

    Returns:
        A :class:`SweepOutcome`; ``interrupted`` is True after Ctrl-C (the state is saved for --resume).
    """
    from sweeps.compare import write_comparison
    from sweeps.fanout import run_fanout
    from sweeps.report import build_report

    paths = sweep_paths(cfg)
    check_results_folder(cfg, paths, resume)
    bases = base_experiments(cfg)
    datasets = {name: load_dataset(base.data, progress=progress) for name, base in bases.items()}
    paths.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(paths.results / "sweep.yaml", yaml.safe_dump(sweep_to_dict(cfg), sort_keys=False))

    frames, interrupted = [], False
    for name, base in bases.items():
        results = run_tuner(
            cfg, paths, name, base, datasets[name], resume=resume, trainable=trainable, verbose=verbose
        )
        board, unfinished = build_leaderboard(results.experiment_path, name, cfg)
        frames.append(board)
        if unfinished:
            interrupted = True
            break
    leaderboard = write_leaderboard(frames, paths.results / "leaderboard.csv")
    outcome = SweepOutcome(paths=paths, interrupted=interrupted, leaderboard=leaderboard)
    if interrupted:
        return outcome
    top_k = cfg.fanout.top_k if top is None else top
    run_fanout(cfg, paths.results, bases, datasets, top_k, progress=progress)
    write_comparison(paths.results)
    outcome.index_html = build_report(paths.results, top=top_k)
    return outcome
