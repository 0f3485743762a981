"""The fan-out: evaluate, plots and explain on the top-k trials of each dataset, as Ray tasks.

Each task fetches what it needs of a trial's checkpoint (``best.pt``, ``config.yaml``,
``train_log.jsonl``; not ``last.pt``), runs xai_lab's evaluation, ``plot_run`` and
``explain_run`` (every method asked for, through the explainer registry) plus each class's
mean map, and returns the report files as bytes: the driver writes them
under ``reports/<dataset>/<trial>/`` in the single-run layout, so the tasks may run on any
node. The tasks run concurrently; one that fails is recorded (``error.txt`` in its report
folder and the leaderboard's ``report`` column) and the others carry on. A progress bar
follows them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import ray

from sweeps.config import FanoutConfig, SweepConfig
from sweeps.leaderboard import read_leaderboard, write_leaderboard
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
    The model is loaded once for the evaluation and the class maps, and runs on the task's GPU
    share when it has one (``fanout.gpu``); every model call is batched.
    """
    import torch

    from sweeps.class_maps import class_mean_maps, save_class_maps
    from xai_lab.checkpoint import model_from_checkpoint
    from xai_lab.device import release_device_memory, resolve_device
    from xai_lab.evaluate import evaluate_model
    from xai_lab.explain.run import explain_run
    from xai_lab.plots import plot_run

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    with tempfile.TemporaryDirectory(prefix="xai-fanout-") as tmp:
        # plots title the curves with the run folder's parent: the trial id
        run_dir = fetch_report_files(job.checkpoint, Path(tmp) / job.trial_id / "run")
        report = Path(tmp) / "report"
        model, cfg, class_names, state = model_from_checkpoint(run_dir / "best.pt", "cpu")
        device = resolve_device(cfg.run.device)
        try:
            model.to(device)
            evaluate_model(model, cfg, class_names, report, dataset=dataset, split=job.split,
                           max_images=job.eval_max_images or None, checkpoint=run_dir / "best.pt",
                           epoch=int(state["epoch"]))
            plot_run(run_dir, report)
            explain_run(
                run_dir, report, split=job.split, num_each=job.num_each, methods=job.methods, dataset=dataset
            )
            data = dataset.splits[job.split]
            for method in job.methods:
                maps = class_mean_maps(
                    model,
                    data.images,
                    data.labels,
                    class_names,
                    method,
                    job.maps_per_class,
                    cfg.explain.batch_size,
                )
                save_class_maps(report / "xai" / method / "class_means.npz", maps)
        finally:
            model = None
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


def run_fanout(
    cfg: SweepConfig,
    results: Path,
    bases: dict,
    datasets: dict[str, Dataset | ray.ObjectRef],
    top_k: int,
    progress: bool = True,
) -> dict[tuple[str, str], str]:
    """Run the report tasks of the top-k trials of each dataset and record how each went.

    Returns:
        ``{(dataset, trial_id): "ok" or "failed: why"}``; the leaderboard's ``report`` column says the same.
    """
    from tqdm.auto import tqdm

    board_path = results / "leaderboard.csv"
    board = read_leaderboard(board_path)
    if board.empty or top_k == 0:
        return {}
    chosen = select_top(board, top_k)
    methods = _methods(cfg.fanout)
    from sweeps.driver import fanout_gpu

    # the driver's object-store copies when it passes references (one per dataset for the whole sweep)
    refs = {
        name: ds if isinstance(ds, ray.ObjectRef) else ray.put(ds)
        for name, ds in datasets.items()
        if name in set(chosen["dataset"])
    }
    task = ray.remote(report_trial).options(
        num_cpus=cfg.fanout.cpu, num_gpus=fanout_gpu(cfg), max_retries=0, name="xai-lab-report"
    )
    pending = {}
    for row in chosen.itertuples():
        job = ReportJob(
            dataset=row.dataset,
            trial_id=row.trial_id,
            checkpoint=row.checkpoint,
            methods=methods,
            split=cfg.fanout.split,
            num_each=cfg.fanout.num_each,
            maps_per_class=cfg.fanout.maps_per_class,
            eval_max_images=cfg.fanout.eval_max_images,
        )
        pending[task.remote(job, refs[row.dataset])] = job
    outcome: dict[tuple[str, str], str] = {}
    bar = tqdm(total=len(pending), desc="reports", unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            out_dir = results / "reports" / job.dataset / job.trial_id
            try:
                files = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - any failure of one task is recorded, the rest carry on
                why = _first_line(e)
                outcome[(job.dataset, job.trial_id)] = f"failed: {why}"
                _write(out_dir / "error.txt", f"{type(e).__name__}: {why}\n")
                log.warning("report of %s/%s failed: %s", job.dataset, job.trial_id, why)
            else:
                (out_dir / "error.txt").unlink(missing_ok=True)
                for rel, data in files.items():
                    _write(out_dir / rel, data)
                _write(out_dir / "job.json", json.dumps(asdict(job), indent=2) + "\n")
                outcome[(job.dataset, job.trial_id)] = "ok"
            bar.update(1)
            bar.set_postfix(failed=sum(v != "ok" for v in outcome.values()))
    finally:
        bar.close()
    board["report"] = [
        outcome.get((d, t), "") for d, t in zip(board["dataset"], board["trial_id"], strict=True)
    ]
    scores = [report_scores(results / "reports" / d / t) if outcome.get((d, t)) == "ok" else {}
              for d, t in zip(board["dataset"], board["trial_id"], strict=True)]
    for column in dict.fromkeys(k for row in scores for k in row):
        board[column] = [row.get(column) for row in scores]
    write_leaderboard([board], board_path)
    return outcome


# The explanation metrics a leaderboard row shows per method (xai/metrics.json), beside test accuracy.
LEADERBOARD_METRICS = ("deletion_auc", "insertion_auc", "randomization_spearman", "pointing_game", "mask_iou")


def report_scores(report_dir: Path) -> dict[str, float]:
    """Test accuracy and macro-F1 (``test_summary.json``) and, per method, the explanation metrics
    (``xai/metrics.json``) of one trial's report, as leaderboard columns (``gradcam:deletion_auc``, ...),
    each beside its baselines (``gradcam:deletion_auc:random_maps``, ``...:randomized_model``)."""
    out: dict[str, float] = {}
    summary = report_dir / "test_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        out.update(test_accuracy=s.get("accuracy"), test_macro_f1=s.get("macro_f1"))
    metrics = report_dir / "xai" / "metrics.json"
    if metrics.is_file():
        for method, entry in json.loads(metrics.read_text()).items():
            if not isinstance(entry, dict):
                continue
            baselines = {"random_maps": entry.get("random_baseline") or {},
                         "randomized_model": entry.get("randomized_model_baseline") or {}}
            for key in LEADERBOARD_METRICS:
                if isinstance(entry.get(key), (int, float)):
                    out[f"{method}:{key}"] = entry[key]
                    for name, values in baselines.items():
                        if isinstance(values.get(key), (int, float)):
                            out[f"{method}:{key}:{name}"] = values[key]
    return out


def _first_line(e: BaseException) -> str:
    """The root cause of a task failure, on one line (Ray wraps it in RayTaskError)."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    name = type(cause).__name__
    return f"{name}: {text[-1] if text else ''}"[:300]
