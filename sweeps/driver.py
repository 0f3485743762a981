"""The sweep driver: one Ray Tune experiment per dataset, searched by Optuna, then the fan-out.

Layout of ``<storage>/<sweep>/``::

    sweep.yaml                the resolved sweep (checked again on --resume)
    <dataset>/                Ray Tune's experiment folder: one folder per trial with its
                              TensorBoard events (scalars + HParams), result.json and checkpoint
    leaderboard.csv           every trial of every dataset
    reports/<dataset>/<trial> evaluate + plots + explain of the top-k trials (single-run layout)
    comparison.csv/.png       the best trial of each dataset side by side
    transfer.csv/.png         with two datasets or more: each best trial on every dataset's test split
    index.html                the report (xai-lab report)

Trials report through :func:`sweeps.trainable.train_trial`; nothing here trains.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray import tune

from sweeps.config import DefineByRun, SweepConfig, base_experiments, base_point, sweep_to_dict
from sweeps.leaderboard import build_leaderboard, write_leaderboard
from sweeps.resources import check_feasible, fanout_resources, trial_resources
from sweeps.tensorboard import DATASET, hparam_columns, write_experiment
from sweeps.trainable import train_trial
from xai_lab.atomic import atomic_write_text, atomic_write_with, disk_full
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
        if saved.exists() or (paths.results.exists() and any(p.name != LOCK_FILE for p in paths.results.iterdir())):
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


LOCK_FILE = ".lock"  # held (flock) by the driver running the sweep in this folder


def check_writable(folder: Path) -> None:
    """Create ``folder`` (and its parents) and check a file can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write the sweep folder {folder}: {e.strerror or e} (set storage=DIR)") from None


@contextlib.contextmanager
def sweep_lock(folder: Path):
    """Hold ``<folder>/.lock`` for the sweep's lifetime: a second driver on the same sweep folder is refused.

    The lock is an OS lock (``flock``) on a file: it goes away with the process that held it, ``kill -9``
    included, so a resumed sweep never finds a stale lock.
    """
    import fcntl

    check_writable(folder)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise UserError(
                f"{folder} is in use by a running sweep (pid {holder}); wait for it to end, or give this one "
                "another name (name=NEW)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def start_ray(address: str | None, dashboard: bool, quiet: bool = False, sweep: str = "") -> str | None:
    """Connect to ``address`` (``auto``, ``host:port``; or ``RAY_ADDRESS``) or start a local Ray.

    A local Ray binds to 127.0.0.1 and keeps Ray's token authentication (:func:`dashboard_sign_in`);
    ``dashboard`` starts its dashboard there too. The driver's job carries the sweep's name as metadata
    (the dashboard's Jobs page shows it).

    Returns:
        The dashboard URL when one was started, else None.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # num_to_keep=1 snapshots the experiment at every checkpoint: by design here, so no warning about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return None
    from ray.job_config import JobConfig

    common = {"logging_level": logging.WARNING, "log_to_driver": not quiet,
              "job_config": JobConfig(metadata={"xai-lab sweep": sweep} if sweep else {})}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_ray_address(address)
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
    # "local": a Ray of its own, never the cluster a `ray start` recorded last in Ray's temp folder (which may
    # have died without `ray stop` and left its address behind, where ray.init() would wait for it for minutes)
    ctx = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", **common)
    if dashboard and ctx.dashboard_url:
        url = ctx.dashboard_url
        return url if url.startswith("http") else f"http://{url}"
    return None


GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # a call every Ray GCS answers (or refuses unauthenticated)


def check_ray_address(address: str, timeout: float = 20.0) -> str:
    """The GCS address behind ``address`` (``auto``: the cluster ``ray start`` recorded last), once something
    there answered as Ray's GCS within ``timeout`` seconds; ``ray.init`` itself retries for minutes.

    Raises:
        UserError: no cluster recorded for ``auto``, nothing answers at the address, or what answers is not Ray.
    """
    import grpc
    from ray._private.services import canonicalize_bootstrap_address

    if address.startswith("ray://"):
        return address  # Ray Client: its own connection and timeouts
    try:
        target = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as e:
        raise UserError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    if target is None:
        raise UserError(f"--address {address}: no Ray cluster to connect to (leave --address out for a local one)")
    via = f" (address {address}: the cluster `ray start` recorded last)" if address == "auto" else ""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(GCS_PROBE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"", timeout=timeout)
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise UserError(f"no Ray cluster answers at {target}{via} within {timeout:g} s: nothing listens "
                                "there, or what listens does not speak Ray's protocol (is the cluster up? `ray status "
                                f"--address {target}`)") from None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise UserError(f"{target}{via} answers, but not as a Ray cluster (pass the head node's GCS port, "
                                "6379 by default)") from None
            # anything else (unauthenticated, ...) came from Ray's GCS itself: ray.init says the rest
    return target


def dashboard_sign_in() -> str:
    """How to sign in to the local cluster's dashboard, in one line."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return "no sign-in (RAY_AUTH_MODE is not token)"
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"
    return f"sign in with the token in {token_file} (print it: ray get-auth-token)"


def optuna_storage_url(cfg: SweepConfig, paths: SweepPaths) -> str:
    """The study's database: ``search.storage``, or SQLite in the sweep's results folder (``optuna.db``)."""
    return cfg.search.storage or f"sqlite:///{(paths.results / 'optuna.db').resolve()}"


def study_name(cfg: SweepConfig, dataset_name: str) -> str:
    """One Optuna study per dataset of a sweep: ``<sweep>/<dataset>``."""
    return f"{cfg.name}/{dataset_name}"


def _search_alg(cfg: SweepConfig, base, storage_url: str, name: str):
    """Optuna TPE over the space, its study kept in ``storage_url`` (resumed, queried, or dashboarded)."""
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
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=name,
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
    hparam_keys: tuple[str, ...] = (),
):
    """Run (or resume) the Tune experiment of one dataset; returns its ResultGrid.

    ``dataset`` is the prepared dataset or, better, its object-store reference (the driver puts
    each dataset once and the trials and the fan-out share it). ``hparam_keys``: the dotted keys of the
    HParams row each trial writes (:func:`sweeps.tensorboard.hparam_columns`).
    """
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    from sweeps.config import asha_rung_epochs, trial_config

    base_dict = to_dict(base)

    def resources(config: dict):
        """Per trial, from its own depth and input size (gpu: auto)."""
        res = trial_resources(cfg, trial_config(base_dict, config).model)
        return resource_dict_to_pg_factory(res)

    fn = tune.with_resources(
        tune.with_parameters(
            trainable,
            base=base_dict,
            dataset=dataset if isinstance(dataset, ray.ObjectRef) else ray.put(dataset),
            checkpoint_epochs=tuple(asha_rung_epochs(cfg.scheduler)),
            checkpoint_every=cfg.checkpoint_every,
            hparams={DATASET: dataset_name, "keys": hparam_keys},
            experiment_dir=None if "://" in paths.storage else paths.experiment(dataset_name),
        ),
        resources,
    )
    exp_path = paths.experiment(dataset_name)
    if resume and "://" not in exp_path and Path(exp_path).is_dir():
        repair_experiment_state(Path(exp_path))
    # read by fit(), restored or not: Tune adds none of its default loggers (tune_loggers lists the ones kept)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if resume and tune.Tuner.can_restore(exp_path):
        log.info("resuming %s from %s", dataset_name, exp_path)
        tuner = tune.Tuner.restore(exp_path, trainable=fn, resume_errored=True)
    else:
        tuner = _new_tuner(cfg, paths, dataset_name, base, fn, verbose)
    # Tune installs its own Ctrl-C handler (a graceful stop) and leaves it installed after fit returns:
    # put back the one from before, so a Ctrl-C in the fan-out or the report stops the sweep there.
    handler = signal.getsignal(signal.SIGINT)
    try:
        return tuner.fit()
    finally:
        signal.signal(signal.SIGINT, handler)


def _new_tuner(cfg: SweepConfig, paths: SweepPaths, dataset_name: str, base, fn, verbose: int):
    """The Tune experiment of one dataset: Optuna's search, the scheduler, one actor reused per slot, trials named
    by their id, Tune's JSON/CSV loggers, checkpoints kept one per trial."""
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(
            search_alg=_search_alg(cfg, base, optuna_storage_url(cfg, paths), study_name(cfg, dataset_name)),
            scheduler=_scheduler(cfg),
            num_samples=cfg.search.num_samples,
            max_concurrent_trials=cfg.search.max_concurrent,
            # One actor (a process with torch imported) runs trial after trial: starting one per
            # trial cost ~7 s each on a 2-core CPU (benchmarks/sweep_overhead.py).
            reuse_actors=True,
            # <dataset>/<trial id>: the same id in the terminal table, the leaderboard, the report and
            # TensorBoard's run names (the sampled values are HParams columns, not part of the path)
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=dataset_name,
            storage_path=paths.storage,
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=verbose,
            callbacks=tune_loggers(),
            # with storage a URI, the trials' TensorBoard files live in their working folders: upload them
            sync_config=tune.SyncConfig(sync_artifacts="://" in paths.storage),
        ),
    )


# Tune's experiment snapshot: written atomically into the driver's staging folder under Ray's temp dir, then
# copied into the experiment folder, where a driver killed mid-copy leaves the file cut off.
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def _readable(path: Path) -> bool:
    """Whether a snapshot file loads: ``experiment_state`` is JSON, the search states are pickles (even the
    ``.json`` one)."""
    try:
        if path.name.startswith("experiment_state"):
            json.loads(path.read_text())
        else:
            with open(path, "rb") as f:
                ray.cloudpickle.load(f)
        return True
    except Exception:  # noqa: BLE001 - any file that does not load is as good as cut off
        return False


def repair_experiment_state(exp_dir: Path) -> list[str]:
    """Put back an intact copy of each newest snapshot file of ``exp_dir`` that a kill cut off.

    Tune restores from the newest ``experiment_state``, ``search_gen_state`` and ``searcher-state`` file; one
    cut off makes it log "Failed to restore the run state" and carry on with a broken state (a sweep of one
    trial). The intact copy is in the killed driver's staging folder under Ray's temp dir (same file name).

    Returns:
        The names of the files put back.

    Raises:
        UserError: a file is cut off and no intact copy is left (Ray's temp dir was cleared).
    """
    temp = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    repaired = []
    for pattern in STATE_FILES:
        files = sorted(exp_dir.glob(pattern))
        if not files or _readable(files[-1]):
            continue
        newest = files[-1]
        copies = sorted(temp.glob(f"session_*/artifacts/*/{exp_dir.name}/driver_artifacts/{newest.name}"),
                        key=lambda c: c.stat().st_mtime, reverse=True)
        good = next((c for c in copies if _readable(c)), None)
        if good is None:
            raise UserError(f"--resume: {newest} was cut off when the driver stopped and no intact copy is left "
                            f"under {temp}; move {exp_dir} aside to run that dataset's trials again")
        atomic_write_with(newest, lambda tmp, src=good: shutil.copyfile(src, tmp))
        repaired.append(newest.name)
        log.warning("--resume: %s was cut off by the driver's stop; put back from %s", newest.name, good)
    return repaired


def trial_name(trial) -> str:
    """A trial's name and folder: its id (``a1b2c3d4_00003``), as the leaderboard and the report show it."""
    return str(trial.trial_id)


def tune_loggers() -> list:
    """Tune's result.json and progress.csv loggers, without its TensorBoard logger: the trials write their own
    scalars and HParams (:mod:`sweeps.tensorboard`), and Tune's would add its bookkeeping (``done``,
    ``iterations_since_restore``, ...) beside them and an empty events file to every trial it restores."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


@dataclass
class SweepOutcome:
    """What a sweep produced (paths) and whether it ran to the end."""

    paths: SweepPaths
    interrupted: bool
    leaderboard: Path
    index_html: Path | None = None
    recorded: dict | None = None  # trials and reports recorded in the run store, and its URI; None: not recorded


def run_sweep(
    cfg: SweepConfig,
    *,
    resume: bool = False,
    top: int | None = None,
    trainable: Callable = train_trial,
    verbose: int = 1,
    progress: bool = True,
    autoscaling: bool = False,
) -> SweepOutcome:
    """Run the whole sweep on the connected Ray: tune each dataset, then leaderboard, fan-out (reports, and
    the transfer matrix with two datasets or more), comparison and report.

    Args:
        cfg: the checked sweep.
        resume: carry on with the sweep in the results folder (finished trials are kept).
        top: overrides ``fanout.top_k``.
        trainable: the Tune function (tests wrap :func:`train_trial` to inject faults).
        verbose: Tune's console verbosity (0-3).
        progress: show the fan-out's progress bar.
        autoscaling: connected to a cluster whose autoscaler may add nodes: a request no node holds yet
            is left to it (logged) instead of refused.

    Returns:
        A :class:`SweepOutcome`; ``interrupted`` is True after Ctrl-C (the state is saved for --resume).
    """
    paths = sweep_paths(cfg)
    check_results_folder(cfg, paths, resume)
    with sweep_lock(paths.results):
        check_results_folder(cfg, paths, resume)  # again, now that no other driver can write here
        try:
            return _run_locked(cfg, paths, resume=resume, top=top, trainable=trainable, verbose=verbose,
                               progress=progress, autoscaling=autoscaling)
        except Exception as e:  # noqa: BLE001 - Tune fails in many ways when its disk fills: say that, once
            if isinstance(e, UserError) or not disk_full(e, paths.results):
                raise
            for name in ("ray", "ray.tune", "ray.train"):  # its threads' same complaint, again, at shutdown
                logging.getLogger(name).setLevel(logging.CRITICAL)
            raise UserError(f"no space left on the device of {paths.results}: the sweep stopped there (what "
                            "finished is kept); free some space and carry on with --resume") from None


def check_requests(cfg: SweepConfig, bases: dict, top_k: int, autoscaling: bool) -> None:
    """Every trial's and report task's resources fit on some node (:func:`sweeps.resources.check_feasible`)."""
    for name, base in bases.items():
        res = trial_resources(cfg, base.model)
        check_feasible(res, f"resources (cpu={cfg.resources.cpu}, gpu={cfg.resources.gpu}) of {name}'s trials",
                       autoscaling=autoscaling)
    if top_k:
        check_feasible(fanout_resources(cfg), f"fanout (cpu={cfg.fanout.cpu}, gpu={cfg.fanout.gpu})",
                       autoscaling=autoscaling)


def _run_locked(cfg, paths, *, resume, top, trainable, verbose, progress, autoscaling) -> SweepOutcome:
    """:func:`run_sweep`'s steps, with the results folder locked: tune, leaderboard, fan-out, comparison, report."""
    from sweeps.compare import write_comparison
    from sweeps.fanout import run_fanout, run_transfer
    from sweeps.report import build_report

    bases = base_experiments(cfg)
    top_k = cfg.fanout.top_k if top is None else top
    check_requests(cfg, bases, top_k, autoscaling)
    # Each dataset goes into the object store once: its trials and its report tasks share that copy.
    datasets = {name: ray.put(load_dataset(base.data, progress=progress)) for name, base in bases.items()}
    atomic_write_text(paths.results / "sweep.yaml", yaml.safe_dump(sweep_to_dict(cfg), sort_keys=False))
    keys, columns = hparam_columns(cfg.space, {name: to_dict(base) for name, base in bases.items()})
    if not list(paths.results.glob("events.out.tfevents.*")):
        write_experiment(paths.results, columns, shown=1 + len(cfg.space))  # the dataset and the space keys

    frames, interrupted = [], False
    for name, base in bases.items():
        results = run_tuner(cfg, paths, name, base, datasets[name], resume=resume, trainable=trainable,
                            verbose=verbose, hparam_keys=tuple(keys))
        board, unfinished = build_leaderboard(results.experiment_path, name, cfg)
        frames.append(board)
        if unfinished:
            interrupted = True
            break
    leaderboard = write_leaderboard(frames, paths.results / "leaderboard.csv")
    outcome = SweepOutcome(paths=paths, interrupted=interrupted, leaderboard=leaderboard)
    if interrupted:
        outcome.recorded = record_in_store(cfg, paths.results, finished=False)
        return outcome
    run_fanout(cfg, paths.results, bases, datasets, top_k, progress=progress)
    if len(bases) > 1:
        run_transfer(cfg, paths.results, datasets, progress=progress)
    write_comparison(paths.results)
    outcome.index_html = build_report(paths.results, top=top_k)
    outcome.recorded = record_in_store(cfg, paths.results, finished=True)
    return outcome


def record_in_store(cfg: SweepConfig, results: Path, finished: bool) -> dict | None:
    """The sweep, its trials and their reports in the run store (:func:`xai_lab.store.record_sweep`), written here
    in the driver, one record after another, once the trials are done: trials that finish together never race
    for the store. A store that does not answer is one warning; ``xai-lab runs --sync`` records it later."""
    from xai_lab import store

    def write(s: store.Store) -> dict:
        counts = store.record_sweep(s, results, finished=finished)
        return {**counts, "uri": store.shown(s.uri)}

    return store.record(cfg.store, f"sweep {cfg.name}", write, results)
