"""The fan-out: evaluate, plots and explain on the top-k trials of each dataset, as Ray tasks.

Each task fetches what it needs of a trial's checkpoint (``best.pt``, ``config.yaml``,
``train_log.jsonl``; not ``last.pt``), loads the model once and runs
:func:`xai_lab.report.report_model` on it (evaluation, plots, and every explanation method asked
for with its galleries, metrics and class means), and returns the report files as bytes: the driver writes them
under ``reports/<dataset>/<trial>/`` in the single-run layout, so the tasks may run on any
node. The tasks run concurrently; one that fails is recorded (``error.txt`` in its report
folder and the leaderboard's ``report`` column) and the others carry on. A progress bar
follows them.

With two or more datasets, :func:`run_transfer` then tests each dataset's best reported trial on every
dataset's test split (the transfer matrix, :mod:`xai_lab.transfer`): one Ray task per (model, dataset)
pair, each a single forward pass over the split, written as ``transfer.csv`` and ``transfer.png``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray

from sweeps.config import FanoutConfig, SweepConfig
from sweeps.leaderboard import read_leaderboard, record_reports
from xai_lab.atomic import atomic_write_with
from xai_lab.data.dataset import Dataset

log = logging.getLogger(__name__)


@dataclass
class ReportJob:
    """What one fan-out task needs besides the dataset."""

    dataset: str
    trial_id: str
    checkpoint: str  # a path or URI of the trial's checkpoint (the run folder)
    methods: list[str]
    split: str
    num_each: int
    maps_per_class: int
    eval_max_images: int


# What a report needs from a trial's checkpoint: not last.pt (the optimizer state, 2/3 of its size).
REPORT_FILES = ("config.yaml", "best.pt", "train_log.jsonl")


def fetch_report_files(checkpoint: str, dest: Path) -> Path:
    """Copy the files a report needs from a checkpoint (a local path or a URI) into ``dest``."""
    from ray.tune import Checkpoint

    ckpt = Checkpoint(checkpoint)
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        src = f"{ckpt.path.rstrip('/')}/{name}"
        if ckpt.filesystem.get_file_info(src).type.name != "File":
            continue
        with ckpt.filesystem.open_input_stream(src) as f_in, open(dest / name, "wb") as f_out:
            shutil.copyfileobj(f_in, f_out, 1 << 22)
    return dest


def report_trial(job: ReportJob, dataset: Dataset) -> dict[str, bytes]:
    """Evaluate, plot and explain one trial; returns ``{relative path: file bytes}`` of its report.

    Runs in a Ray task, or in a plain process (it uses no Ray API besides reading the checkpoint).
    The model is loaded once, for :func:`xai_lab.report.report_model`, and runs on the task's GPU
    share when it has one (``fanout.gpu``); every model call is batched. The explain step uses the
    trial's ``explain`` section with the job's split, methods, ``num_each`` and ``maps_per_class``
    (images averaged into each class's mean map, ``xai/<method>/class_means.{npz,png}``).
    """
    import dataclasses

    import torch

    from xai_lab.device import release_device_memory
    from xai_lab.evaluate import load_run
    from xai_lab.explain.run import explain_settings
    from xai_lab.report import report_model

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    with tempfile.TemporaryDirectory(prefix="xai-fanout-") as tmp:
        # plots title the curves with the run folder's parent: the trial id
        run_dir = fetch_report_files(job.checkpoint, Path(tmp) / job.trial_id / "run")
        report = Path(tmp) / "report"
        run = load_run(run_dir)
        device = run.device
        try:
            explain = explain_settings(run.cfg.explain, split=job.split, num_each=job.num_each, methods=job.methods)
            report_model(run, report, dataset=dataset, split=job.split, max_images=job.eval_max_images or None,
                         explain=dataclasses.replace(explain, class_means=job.maps_per_class))
        finally:
            run = None
            release_device_memory(device)
        return {
            p.relative_to(report).as_posix(): p.read_bytes() for p in sorted(report.rglob("*")) if p.is_file()
        }


def _write(path: Path, data: bytes | str) -> None:
    atomic_write_with(path, lambda p: p.write_bytes(data if isinstance(data, bytes) else data.encode()))


# Leaderboard statuses of a trial that ended by itself or was stopped (sweeps.leaderboard.trial_status): its
# checkpoint's best.pt is final, so it may be reported. Not error, nor an unfinished trial of an interrupted sweep.
FINISHED = ("completed", "early_stopped", "pruned")


def select_top(board, top_k: int):
    """The top-k finished trials (completed, early_stopped or pruned, with a checkpoint) of each dataset, by rank."""
    ok = board[board["status"].isin(FINISHED) & (board["checkpoint"] != "")]
    return ok.sort_values(["dataset", "rank"]).groupby("dataset", sort=False).head(top_k)


def _methods(fanout: FanoutConfig) -> list[str]:
    from xai_lab.explain.explainers import list_explainers
    from xai_lab.explain.run import check_methods

    return check_methods(list(fanout.methods) or list_explainers())


# A report task is retried when its worker process dies (the OOM killer, a lost node): the task is a pure
# function of its job, so running it again costs only time. An exception it raises (a corrupt checkpoint, a
# bad method) is deterministic and recorded at once (Ray's retry_exceptions stays False).
REPORT_RETRIES = 2


def report_jobs(cfg: SweepConfig, chosen) -> list[ReportJob]:
    """One :class:`ReportJob` per chosen leaderboard row."""
    methods = _methods(cfg.fanout)
    return [
        ReportJob(dataset=row.dataset, trial_id=row.trial_id, checkpoint=row.checkpoint, methods=methods,
                  split=cfg.fanout.split, num_each=cfg.fanout.num_each, maps_per_class=cfg.fanout.maps_per_class,
                  eval_max_images=cfg.fanout.eval_max_images)
        for row in chosen.itertuples()
    ]


def report_is_done(out_dir: Path, job: ReportJob) -> bool:
    """A report finished for this very job: its ``job.json`` (written last) matches, and no ``error.txt``."""
    saved = out_dir / "job.json"
    if not saved.is_file() or (out_dir / "error.txt").exists():
        return False
    try:
        return json.loads(saved.read_text()) == json.loads(json.dumps(asdict(job)))
    except ValueError:
        return False


def save_report(out_dir: Path, job: ReportJob, ref: ray.ObjectRef) -> str:
    """Write one finished task's files (``job.json`` last) or its ``error.txt``; returns ``ok`` or ``failed: why``."""
    try:
        files = ray.get(ref)
    except Exception as e:  # noqa: BLE001 - any failure of one task is recorded, the rest carry on
        why = _first_line(e)
        _write(out_dir / "error.txt", f"{type(e).__name__}: {why}\n")
        log.warning("report of %s/%s failed: %s", job.dataset, job.trial_id, why)
        return f"failed: {why}"
    (out_dir / "error.txt").unlink(missing_ok=True)
    (out_dir / "job.json").unlink(missing_ok=True)
    for rel, data in files.items():
        _write(out_dir / rel, data)
    _write(out_dir / "job.json", json.dumps(asdict(job), indent=2) + "\n")
    return "ok"


def run_fanout(
    cfg: SweepConfig,
    results: Path,
    bases: dict,
    datasets: dict[str, Dataset | ray.ObjectRef],
    top_k: int,
    progress: bool = True,
    task: Callable = report_trial,
) -> dict[tuple[str, str], str]:
    """Run the report tasks of the top-k trials of each dataset and record how each went.

    A report already finished for the same job (an earlier run of a resumed sweep) is kept, not redone.
    On Ctrl-C or SIGTERM the tasks still running are cancelled, the leaderboard records the reports done so
    far, and the interruption goes on to the caller.

    Args:
        task: the report function run as a Ray task (tests wrap :func:`report_trial` to inject faults).

    Returns:
        ``{(dataset, trial_id): "ok" or "failed: why"}``; the leaderboard's ``report`` column says the same.
    """
    from tqdm.auto import tqdm

    from sweeps.resources import fanout_resources

    board = read_leaderboard(results / "leaderboard.csv")
    if board.empty or top_k == 0:
        return {}
    jobs = report_jobs(cfg, select_top(board, top_k))
    folder = {(j.dataset, j.trial_id): results / "reports" / j.dataset / j.trial_id for j in jobs}
    outcome = {(j.dataset, j.trial_id): "ok" for j in jobs if report_is_done(folder[(j.dataset, j.trial_id)], j)}
    todo = [j for j in jobs if (j.dataset, j.trial_id) not in outcome]
    # the driver's object-store copies when it passes references (one per dataset for the whole sweep)
    refs = {name: ds if isinstance(ds, ray.ObjectRef) else ray.put(ds)
            for name, ds in datasets.items() if name in {j.dataset for j in todo}}
    res = fanout_resources(cfg)
    remote = ray.remote(task)
    options = {"num_cpus": res["cpu"], "num_gpus": res["gpu"], "max_retries": REPORT_RETRIES}
    # each task named after its trial, as the Ray dashboard's task list shows it
    pending = {remote.options(**options, name=f"report {job.dataset}/{job.trial_id}").remote(job, refs[job.dataset]):
               job for job in todo}
    bar = tqdm(total=len(jobs), initial=len(outcome), desc="reports", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def saved(ref: ray.ObjectRef, job: ReportJob) -> None:
        outcome[(job.dataset, job.trial_id)] = save_report(folder[(job.dataset, job.trial_id)], job, ref)
        bar.update(1)
        bar.set_postfix(failed=sum(v != "ok" for v in outcome.values()))

    try:
        wait_for(pending, saved)
    finally:
        bar.close()
        record_reports(board, outcome, results)
    return outcome


@dataclass
class TransferJob:
    """One cell of the transfer matrix: a trial's model on a dataset's test split, per class set."""

    trained_on: str
    tested_on: str
    checkpoint: str  # the trial's checkpoint (a path or URI), as in ReportJob
    class_sets: list[list[str] | None]  # xai_lab.transfer.plan_transfer's sets (None: every shared emotion)
    max_images: int  # 0: the whole split


def transfer_trial(job: TransferJob, dataset: Dataset) -> list[dict]:
    """Score one trial's model on ``dataset``'s test split (:func:`xai_lab.transfer.transfer_scores`).

    Runs in a Ray task, or in a plain process (no Ray API besides reading the checkpoint).
    """
    import torch

    from xai_lab.device import release_device_memory
    from xai_lab.evaluate import load_run
    from xai_lab.transfer import transfer_scores

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    with tempfile.TemporaryDirectory(prefix="xai-transfer-") as tmp:
        run = load_run(fetch_report_files(job.checkpoint, Path(tmp) / "run"))
        device = run.device
        try:
            sets = [None if c is None else tuple(c) for c in job.class_sets]
            return transfer_scores(run, dataset, sets, max_images=job.max_images or None)
        finally:
            run = None
            release_device_memory(device)


def run_transfer(cfg: SweepConfig, results: Path, datasets: dict[str, Dataset | ray.ObjectRef],
                 progress: bool = True) -> Path | None:
    """The transfer matrix of the best reported trial of each dataset, as Ray tasks; writes ``transfer.csv``,
    ``transfer.png`` and ``transfer.json`` in ``results`` (:func:`xai_lab.transfer.write_transfer`).

    A task that fails leaves its cell empty with the reason in the ``note`` column; the others carry on.
    Ctrl-C and SIGTERM stop it as they stop the reports (:func:`wait_for`).

    Returns:
        The path of ``transfer.csv``, or None with fewer than two datasets reported.
    """
    from tqdm.auto import tqdm

    from sweeps.compare import best_reports
    from sweeps.resources import fanout_resources
    from xai_lab.transfer import plan_transfer, transfer_table, write_transfer

    best = best_reports(results)
    if len(best) < 2:
        return None
    board = read_leaderboard(results / "leaderboard.csv")
    checkpoint = {(r.dataset, r.trial_id): r.checkpoint for r in board.itertuples()}
    classes = {d: json.loads((folder / "test_summary.json").read_text())["class_names"]
               for d, (_, folder) in best.items()}
    plan = plan_transfer(classes)
    jobs = [TransferJob(m, d, checkpoint[(m, best[m][0])], [None if c is None else list(c) for c in sets],
                        cfg.fanout.eval_max_images) for (m, d), sets in plan.items() if sets]
    scores: dict[tuple[str, str], list[dict]] = {pair: [] for pair, sets in plan.items() if not sets}
    failed: dict[tuple[str, str], str] = {}
    refs = {name: ds if isinstance(ds, ray.ObjectRef) else ray.put(ds) for name, ds in datasets.items()}
    res = fanout_resources(cfg)
    remote = ray.remote(transfer_trial)
    options = {"num_cpus": res["cpu"], "num_gpus": res["gpu"], "max_retries": REPORT_RETRIES}
    pending = {remote.options(**options, name=f"transfer {j.trained_on} -> {j.tested_on}").remote(j, refs[j.tested_on]):
               j for j in jobs}
    bar = tqdm(total=len(jobs), desc="transfer", unit="pair", disable=not progress, dynamic_ncols=True)

    def scored(ref: ray.ObjectRef, job: TransferJob) -> None:
        pair = (job.trained_on, job.tested_on)
        try:
            scores[pair] = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - one failed cell is recorded, the others carry on
            failed[pair] = f"failed: {_first_line(e)}"
            log.warning("transfer %s -> %s failed: %s", *pair, failed[pair])
        bar.update(1)

    try:
        wait_for(pending, scored)
    finally:
        bar.close()
    csv, _ = write_transfer(transfer_table(list(best), scores, failed), results)
    return csv


def wait_for(pending: dict, on_done: Callable[[ray.ObjectRef, Any], None]) -> None:
    """Wait for the tasks of ``pending`` (``{ref: job}``), calling ``on_done(ref, job)`` as each ends.

    Ctrl-C and SIGTERM set a flag the loop checks at least once a second (:func:`_ctrl_c_flag`); then the tasks
    still running are cancelled and ``KeyboardInterrupt`` goes on to the caller.
    """
    try:
        with _ctrl_c_flag() as stopped:
            while pending and not stopped.is_set():
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    on_done(ref, pending.pop(ref))
            if stopped.is_set():
                raise KeyboardInterrupt
    finally:
        for ref in pending:  # interrupted: stop the tasks still running
            ray.cancel(ref, force=True)


@contextmanager
def _ctrl_c_flag():
    """An event set by Ctrl-C (and by SIGTERM, which ``xai_lab.signals.StopSignals`` hands to the SIGINT handler) while
    the fan-out waits. A flag, not an exception: a ``KeyboardInterrupt`` raised inside a Ray call can be lost there,
    and the sweep then carried on to the end; the loop checks the flag at least once a second."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield stopped
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_line(e: BaseException) -> str:
    """The root cause of a task failure, on one line (Ray wraps it in RayTaskError)."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    name = type(cause).__name__
    return f"{name}: {text[-1] if text else ''}"[:300]
