"""``cv``: k-fold cross-validation, the way CK+ results are published (subject-independent folds).

``prepare`` writes every fold of ``data.folds = k`` (grouped by subject when
``data.group_by_subject``); for fold ``i`` the test set is fold ``i``, val is fold ``i+1`` and
the model trains on the rest. With ``data.fold_val: false`` fold ``i+1`` trains too, val is
empty and ``best.pt`` is the last epoch. :func:`cross_validate` runs :func:`xai_lab.train.fit` and
evaluates the fold's ``best.pt`` with :func:`xai_lab.report.report_model` once per fold (plain
function calls, one after another) and reports the mean and standard deviation over the folds.

Layout::

    <output_root>/runs/<exp>/cv-<id>/fold<i>/       each fold's run (config.yaml, best.pt, ...)
    <output_root>/reports/<exp>/cv-<id>/fold<i>/    each fold's test_summary.json
    <output_root>/reports/<exp>/cv-<id>/cv_summary.json, cv_folds.csv
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xai_lab.atomic import atomic_write_json, atomic_write_with
from xai_lab.config import ExperimentConfig, save_config
from xai_lab.errors import RunStopped, UserError
from xai_lab.runs import new_run_id, report_dir_for

log = logging.getLogger(__name__)


def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


PLAN = "cv_plan.json"  # in the cv folder: the folds asked for, so that --resume runs the same ones


def cross_validate(cfg: ExperimentConfig, folds: list[int] | None = None, resume: str | Path | None = None
                   ) -> dict[str, Any]:
    """Train and test one model per fold of ``cfg.data.folds``; return and write the summary.

    Args:
        cfg: the resolved experiment config (``data.folds`` >= 3; ``data.fold`` is ignored).
        folds: which folds to run (default: all; with ``resume``, the ones the stopped run was asked for).
        resume: a stopped cross-validation's folder (``runs/<exp>/cv-<id>``) to carry on in. A fold with its
            ``train_summary.json`` and test report is kept as it is, byte for byte; a fold with a ``last.pt``
            resumes from it (:func:`xai_lab.train.fit`); any other fold trains from the start.

    Returns:
        ``cv_summary.json``'s content: per-fold test accuracy and macro-F1, their mean and
        sample standard deviation (ddof=1), the pooled accuracy over every test image,
        ``cv_dir`` and ``report_dir``.

    Raises:
        RunStopped: Ctrl-C or SIGTERM; its ``run_dir`` is the cv folder (``cv --resume`` carries on).
    """
    k = cfg.data.folds
    if k < 3:
        raise UserError("cross-validation needs data.folds >= 3 (e.g. data.folds=10)")
    if resume is not None:
        cv_dir = Path(resume)
        plan = json.loads((cv_dir / PLAN).read_text()) if (cv_dir / PLAN).is_file() else {}
        folds = folds if folds is not None else plan.get("folds", list(range(k)))
    else:
        cv_dir = Path(cfg.run.output_root) / "runs" / cfg.run.name / f"cv-{new_run_id()}"
        cv_dir.mkdir(parents=True)
    folds = list(range(k)) if folds is None else folds
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise UserError(f"fold {bad[0]} does not exist: data.folds={k} has folds 0..{k - 1}")
    report_dir = report_dir_for(cv_dir)
    if resume is None:
        save_config(cfg, cv_dir / "config.yaml")
        atomic_write_json(cv_dir / PLAN, {"folds": folds})
    t0 = time.perf_counter()
    rows = []
    try:
        for f in folds:
            rows.append(_run_fold(cfg, f, cv_dir, report_dir))
    except KeyboardInterrupt:
        raise RunStopped(cv_dir, 0) from None
    table = pd.DataFrame(rows)
    correct = float((table["test_accuracy"] * table["test"]).sum())
    result = {
        "experiment": cfg.run.name,
        "dataset": cfg.data.name,
        "folds": k,
        "folds_run": folds,
        "grouped_by_subject": cfg.data.group_by_subject,
        "test_accuracy": _mean_std(table["test_accuracy"].tolist()),
        "test_macro_f1": _mean_std(table["test_macro_f1"].tolist()),
        "pooled_test_accuracy": correct / float(table["test"].sum()),
        "test_images": int(table["test"].sum()),
        "per_fold": rows,
        "wall_seconds": time.perf_counter() - t0,
        "cv_dir": str(cv_dir),
        "report_dir": str(report_dir),
    }
    atomic_write_with(report_dir / "cv_folds.csv", lambda p: table.to_csv(p, index=False))
    atomic_write_json(report_dir / "cv_summary.json", result)
    return result


def _run_fold(cfg: ExperimentConfig, f: int, cv_dir: Path, report_dir: Path) -> dict[str, Any]:
    """Train (or resume, or keep) fold ``f`` and test its ``best.pt``; its row of ``cv_folds.csv``."""
    from xai_lab.data.dataset import load_dataset
    from xai_lab.evaluate import load_run
    from xai_lab.report import report_model
    from xai_lab.train import fit

    fold_cfg = copy.deepcopy(cfg)
    fold_cfg.data.fold = f
    dataset = load_dataset(fold_cfg.data, progress=cfg.run.progress)
    run_dir, report = cv_dir / f"fold{f}", report_dir / f"fold{f}"
    sizes = [len(dataset.splits[s]) for s in ("train", "val", "test")]
    summary_path, test_path = run_dir / "train_summary.json", report / "test_summary.json"
    if summary_path.is_file() and test_path.is_file():  # finished before the stop: kept as it is
        log.info("fold %d/%d: finished before, kept", f, cfg.data.folds)
        summary, test = json.loads(summary_path.read_text()), json.loads(test_path.read_text())
    else:
        log.info("fold %d/%d: train %d, val %d, test %d", f, cfg.data.folds, *sizes)
        if not summary_path.is_file():
            last = run_dir / "last.pt"  # a fold stopped after a checkpoint resumes from it
            summary = fit(fold_cfg, dataset=dataset, run_dir=run_dir, resume_from=last if last.is_file() else None)
        else:  # trained, stopped while it was tested
            summary = json.loads(summary_path.read_text())
        fold = load_run(run_dir, cfg.run.device)
        test = report_model(fold, report, dataset=dataset, split="test", plots=False, explain=False).summary
    log.info("fold %d: test accuracy %.4f macro-F1 %.4f", f, test["accuracy"], test["macro_f1"])
    return {
        "fold": f,
        "train": sizes[0],
        "val": sizes[1],
        "test": test["n"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "best_epoch": summary["best_epoch"],
        "best_val_macro_f1": summary["best_val_macro_f1"],
        "train_seconds": summary["train_seconds"],
    }
