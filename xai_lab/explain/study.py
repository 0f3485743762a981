"""Studies: train, evaluate and explain one config after another, then plot accuracy and each
explanation metric against the knob that was varied.

The library side of the noise study (``label_noise`` on synthfaces) and of the Grad-CAM
resolution study (``model.input_size`` x ``model.stem``): :func:`study_row` runs one config
with plain :func:`~xai_lab.train.fit` and returns a flat row; :func:`plot_against` draws a
table of rows (or a sweep's leaderboard with the same columns) against one column. The
scripts ``benchmarks/noise_study.py`` and ``benchmarks/cam_resolution.py`` drive them.

Row columns: the ``vary`` values, ``accuracy``, ``macro_f1``, ``cam_grid``, ``run_dir``, and
``<method>.<metric>`` and ``random.<metric>`` for every metric of ``xai/metrics.json``.
On synthfaces with label noise, the test split is scored against the clean labels (the
faces' drawn classes): the question is what the model learned, not how well it copies noise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from xai_lab.config import ExperimentConfig, ExplainConfig
from xai_lab.data.dataset import Dataset, load_dataset
from xai_lab.explain.scoring import METRIC_KEYS

log = logging.getLogger(__name__)


def with_clean_labels(dataset: Dataset, data_cfg) -> Dataset:
    """A copy of a synthfaces ``dataset`` whose val and test labels are the clean (drawn) classes.

    Training labels keep their noise. Other datasets are returned as they are.
    """
    from xai_lab.data.prepare import processed_dir

    meta_path = processed_dir(data_cfg) / "metadata.csv"
    meta = pd.read_csv(meta_path, dtype={"path": str})
    if "clean_label" not in meta.columns:
        return dataset
    index = {name: i for i, name in enumerate(dataset.class_names)}
    clean = dict(zip(meta["path"], meta["clean_label"].map(index), strict=True))
    splits = dict(dataset.splits)
    for name in ("val", "test"):
        s = splits[name]
        splits[name] = dataclasses.replace(s, labels=np.array([clean[p] for p in s.paths], dtype=np.int64))
    return dataclasses.replace(dataset, splits=splits)


def study_row(cfg: ExperimentConfig, explain: ExplainConfig, vary: dict, clean_labels: bool = True,
              report_root: str | Path | None = None, run_dir: str | Path | None = None) -> dict:
    """Train ``cfg`` with :func:`~xai_lab.train.fit`, evaluate it and explain it
    (:func:`~xai_lab.report.report_model`, without plots); one flat row.

    Args:
        cfg: the resolved experiment config.
        explain: the explain section used (methods, metrics).
        vary: the varied values, copied into the row (e.g. ``{"label_noise": 0.2}``).
        clean_labels: score a synthfaces test split against its clean labels.
        report_root: reports go to ``<report_root>/<run name>``; the run's report folder when None.
        run_dir: a finished run of the same config to evaluate and explain instead of training one.
    """
    from xai_lab.evaluate import load_run
    from xai_lab.report import report_model
    from xai_lab.runs import report_dir_for
    from xai_lab.train import fit

    t0 = time.perf_counter()
    dataset = load_dataset(cfg.data, progress=False)
    if run_dir is None:
        summary = fit(cfg, dataset=dataset)
    else:
        train_summary = json.loads((Path(run_dir) / "train_summary.json").read_text())
        summary = {"run_dir": str(run_dir), "best_val_macro_f1": train_summary["best_val_macro_f1"]}
    scored = with_clean_labels(dataset, cfg.data) if clean_labels else dataset
    run = load_run(summary["run_dir"], cfg.run.device)
    report = Path(report_root) / cfg.run.name if report_root is not None else report_dir_for(run.run_dir)
    result = report_model(run, report, dataset=scored, plots=False, explain=explain)
    ev = result.summary
    row = {**vary, "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"],
           "best_val_macro_f1": summary["best_val_macro_f1"], "run_dir": summary["run_dir"],
           "report_dir": str(result.report_dir), "seconds": round(time.perf_counter() - t0, 1)}
    for method, entry in result.explanations.metrics.items():
        row["cam_grid"] = "x".join(map(str, entry["cam_grid"]))
        for key in METRIC_KEYS:
            if key in entry:
                row[f"{method}.{key}"] = entry[key]
                row[f"random.{key}"] = entry["random_baseline"][key]
    log.info("study row: %s", {k: v for k, v in row.items() if not k.endswith("_dir")})
    return row


def plot_against(table: pd.DataFrame, x: str, path: str | Path, title: str = "") -> None:
    """Accuracy and each explanation metric against column ``x``: one panel per metric, one line per
    method, the random-map baseline dashed. Columns as :func:`study_row` writes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xai_lab.plots import save_figure

    table = table.sort_values(x)
    metrics = [k for k in METRIC_KEYS if any(c.endswith(f".{k}") for c in table.columns)]
    methods = sorted({c.split(".")[0] for c in table.columns if "." in c} - {"random"})
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(3.3 * (1 + len(metrics)), 3.2), squeeze=False)
    axes = axes[0]
    axes[0].plot(table[x], table["accuracy"], marker="o", color="black", label="test accuracy")
    if "macro_f1" in table:
        axes[0].plot(table[x], table["macro_f1"], marker="s", color="gray", label="macro-F1")
    axes[0].set(title="accuracy", xlabel=x)
    axes[0].legend(fontsize=7, frameon=False)
    for ax, key in zip(axes[1:], metrics, strict=True):
        for method in methods:
            col = f"{method}.{key}"
            if col in table:
                ax.plot(table[x], table[col], marker="o", ms=3, label=method)
        if f"random.{key}" in table:
            ax.plot(table[x], table[f"random.{key}"], ls="--", color="gray", label="random maps")
        ax.set(title=key, xlabel=x)
    for ax in axes:
        ax.grid(alpha=0.3)
    if metrics:
        axes[-1].legend(fontsize=7, frameon=False, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(path))
