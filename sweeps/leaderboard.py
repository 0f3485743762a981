"""``leaderboard.csv``: one row per trial of every dataset, best first within each dataset.

Columns: ``dataset``, ``rank`` (by ``score``, the best value of the sweep's metric), ``score``,
``trial_id``, ``status`` (see :func:`trial_status`: completed, early_stopped, pruned, error, or
Tune's status for an unfinished trial), ``base`` (the base config), one
column per space key (``model.depth``, ...; empty where a conditional key was not
sampled), best and final validation metrics, ``epochs_run``, ``wall_seconds``,
``images_per_second``, ``failures``, ``error``, ``trial_dir``, and ``report`` (ok, failed:
why, or empty when the trial was not among the top k) after the fan-out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweeps.config import SchedulerConfig, SweepConfig
from xai_lab.atomic import atomic_write_with
from xai_lab.scores import report_scores


def _error_line(trial) -> str:
    path = trial.error_file
    if not path or not Path(path).is_file():
        return ""
    lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def checkpoint_uri(checkpoint) -> str:
    """A checkpoint as one string: a local path, or ``s3://...`` / ``gcs://...`` for remote storage."""
    if checkpoint is None:
        return ""
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _creation_order(trial) -> int:
    """Tune numbers trials in the order the searcher made them (the experiment tag starts ``N_``)."""
    head = str(trial.experiment_tag).split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def trial_status(tune_status: str, epochs_run: int, last_result: dict | None, scheduler: SchedulerConfig) -> str:
    """A trial's ``status`` in the leaderboard.

    * ``completed``: finished after ``scheduler.max_epochs`` epochs;
    * ``early_stopped``: finished before, because ``fit`` stopped itself on
      ``train.early_stopping_patience`` (its last result says ``early_stopped``; with FIFO, which
      never stops a trial, any early end is fit's own);
    * ``pruned``: finished before, stopped by ASHA;
    * ``error``: failed more than ``max_failures`` times;
    * anything else: Tune's status, lower-cased (``pending``, ``running``, ``paused``: unfinished).

    Args:
        tune_status: Tune's status of the trial (``TERMINATED``, ``ERROR``, ``RUNNING``, ...).
        epochs_run: the last epoch it reported (0: none).
        last_result: its last reported result (the trainable adds ``early_stopped`` to each).
        scheduler: the sweep's scheduler (``type``, ``max_epochs``).
    """
    if tune_status == "ERROR":
        return "error"
    if tune_status != "TERMINATED":
        return tune_status.lower()
    if epochs_run >= scheduler.max_epochs:
        return "completed"
    if bool((last_result or {}).get("early_stopped")) or scheduler.type != "asha":
        return "early_stopped"
    return "pruned"


def build_leaderboard(experiment_path: str, dataset: str, cfg: SweepConfig) -> tuple[pd.DataFrame, bool]:
    """Read a Tune experiment back into leaderboard rows.

    Returns:
        ``(rows, unfinished)``: the rows (best first), and whether any trial is not finished
        (the sweep was interrupted).
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(experiment_path)
    frames = analysis.trial_dataframes
    metric, mode = cfg.search.metric, cfg.search.mode
    rows, unfinished = [], False
    for trial in sorted(analysis.trials, key=_creation_order):
        df = frames.get(trial.trial_id)
        has = df is not None and not df.empty and metric in df
        last = trial.last_result or {}
        epochs = int(df["epoch"].max()) if has and "epoch" in df else 0
        status = trial_status(trial.status, epochs, last, cfg.scheduler)
        unfinished |= trial.status not in ("TERMINATED", "ERROR")
        best = df.loc[df[metric].idxmax() if mode == "max" else df[metric].idxmin()] if has else None
        row = {
            "dataset": dataset,
            "trial_id": trial.trial_id,
            "status": status,
            "base": False,
            **{key: trial.config.get(key) for key in cfg.space},
            "score": float(best[metric]) if best is not None else float("nan"),
            "best_val_macro_f1": float(df["val_macro_f1"].max()) if has else float("nan"),
            "best_epoch": int(best["epoch"]) if best is not None else 0,
            "final_val_macro_f1": last.get("val_macro_f1", float("nan")),
            "final_val_accuracy": last.get("val_accuracy", float("nan")),
            "final_val_loss": last.get("val_loss", float("nan")),
            "epochs_run": epochs,
            "wall_seconds": float(last.get("time_total_s", float("nan"))),
            "images_per_second": float(df["images_per_second"].mean()) if has else float("nan"),
            "failures": trial.num_failures,
            "error": _error_line(trial) if status == "error" else "",
            "trial_dir": trial.path or "",
            "checkpoint": checkpoint_uri(trial.checkpoint),
            "report": "",
        }
        rows.append(row)
    if rows and cfg.search.evaluate_base_first and cfg.space:
        rows[0]["base"] = True  # points_to_evaluate: the base config is the first trial
    board = pd.DataFrame(rows)
    if not board.empty:
        board = board.sort_values(
            "score", ascending=(mode == "min"), na_position="last", kind="stable"
        ).reset_index(drop=True)
        board.insert(1, "rank", range(1, len(board) + 1))
    return board, unfinished


def write_leaderboard(frames: list[pd.DataFrame], path: Path) -> Path:
    """Concatenate the datasets' rows and write ``leaderboard.csv`` atomically."""
    board = pd.concat([f for f in frames if not f.empty], ignore_index=True) if frames else pd.DataFrame()
    atomic_write_with(path, lambda p: board.to_csv(p, index=False))
    return path


def read_leaderboard(path: Path) -> pd.DataFrame:
    """``leaderboard.csv`` as a DataFrame (``report`` and ``error`` as text)."""
    text = {"report": str, "error": str, "trial_id": str, "checkpoint": str, "trial_dir": str}
    board = pd.read_csv(path, dtype=text)
    return board.fillna({k: "" for k in text if k in board})


def record_reports(board, outcome: dict[tuple[str, str], str], results: Path) -> None:
    """The leaderboard's ``report`` column and each reported trial's scores (:func:`report_scores`)."""
    keys = list(zip(board["dataset"], board["trial_id"], strict=True))
    scores = [report_scores(results / "reports" / d / t) if outcome.get((d, t)) == "ok" else {} for d, t in keys]
    board = board.copy()
    board["report"] = [outcome.get(k, "") for k in keys]
    columns = list(dict.fromkeys(k for row in scores for k in row))  # all at once: a frame of many columns
    added = pd.DataFrame({c: [row.get(c) for row in scores] for c in columns}, index=board.index)
    board = pd.concat([board.drop(columns=[c for c in columns if c in board.columns]), added], axis=1)
    write_leaderboard([board], results / "leaderboard.csv")
