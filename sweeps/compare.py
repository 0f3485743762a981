"""Comparison across datasets: the best reported trial of each, on the classes they share.

Two ways in, one way out. A sweep's driver calls :func:`write_comparison` after its fan-out (reports
and transfer matrix made as Ray tasks, ``sweeps.fanout``); ``xai-lab compare --runs A B ...``
(:func:`compare_runs`) takes runs already trained by ``train``, ``cv`` or a sweep, makes the same
reports and transfer matrix in this process, writes a ``leaderboard.csv`` of one row per run, and calls
the same :func:`write_comparison` and :func:`sweeps.report.build_report`. Either way the folder holds
``leaderboard.csv``, ``reports/<dataset>/<run>/``, ``transfer.csv``/``.png`` (two datasets or more),
the files below and ``index.html``.

Writes, beside the leaderboard:

- ``comparison.csv``: one row per dataset: trial, test accuracy and macro-F1 (over the
  dataset's own classes), macro-F1 over the shared classes, F1 of each shared class, and
  the config keys whose values differ between the best configs;
- ``comparison.png``: per-class test F1 on the shared classes, grouped by dataset;
- ``comparison_<method>.png``: each shared class's mean explanation map, one row per dataset.

Class names are matched through :func:`canonical_class`, the one place that decides which
classes are "the same" (the emotion vocabulary replaces it when it lands).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sweeps.leaderboard import read_leaderboard  # noqa: E402
from xai_lab.atomic import atomic_write_json, atomic_write_with  # noqa: E402
from xai_lab.config import flatten, read_yaml  # noqa: E402
from xai_lab.data.dataset import Dataset, load_dataset  # noqa: E402
from xai_lab.data.emotions import class_key, common_classes  # noqa: E402
from xai_lab.errors import UserError  # noqa: E402
from xai_lab.evaluate import LoadedRun, load_run  # noqa: E402
from xai_lab.explain.class_means import ClassMeans  # noqa: E402
from xai_lab.explain.run import check_methods, explain_settings  # noqa: E402
from xai_lab.plots import save_figure  # noqa: E402
from xai_lab.runs import new_run_id, resolve_run_dir, train_log_rows  # noqa: E402
from xai_lab.scores import report_scores  # noqa: E402

log = logging.getLogger(__name__)

IGNORED_KEYS = ("run.", "data.", "explain.")  # differ by construction between datasets


def best_reports(results: Path) -> dict[str, tuple[str, Path]]:
    """``{dataset: (trial_id, report folder)}`` of each dataset's best trial whose report is ok."""
    board = read_leaderboard(results / "leaderboard.csv")
    out = {}
    if board.empty:
        return out
    for dataset, rows in board[board["report"] == "ok"].sort_values("rank").groupby("dataset", sort=False):
        trial = str(rows.iloc[0]["trial_id"])
        out[str(dataset)] = (trial, results / "reports" / str(dataset) / trial)
    return out


def write_comparison(results: Path) -> Path | None:
    """Write comparison.csv / .png / _<method>.png; returns the CSV path (None without any report)."""
    best = best_reports(results)
    if not best:
        return None
    summaries = {d: json.loads((folder / "test_summary.json").read_text()) for d, (_, folder) in best.items()}
    configs = {d: flatten(read_yaml(folder / "config.yaml")) for d, (_, folder) in best.items()}
    shared = common_classes(*(s["class_names"] for s in summaries.values()))
    differing = sorted(
        k
        for k in set().union(*configs.values())
        if not k.startswith(IGNORED_KEYS) and len({json.dumps(c.get(k)) for c in configs.values()}) > 1
    )
    rows = []
    for d, s in summaries.items():
        per_class = {class_key(name): v for name, v in s["per_class"].items()}
        f1s = [per_class[c]["f1"] for c in shared]
        only = sorted({class_key(c) for c in s["class_names"]} - set(shared))
        rows.append(
            {
                "dataset": d,
                "trial_id": best[d][0],
                "test_accuracy": s["accuracy"],
                "test_macro_f1": s["macro_f1"],
                "shared_macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
                "n_test": s["n"],
                **{f"f1:{c}": per_class[c]["f1"] for c in shared},
                "classes_not_shared": " ".join(only),
                **{f"cfg:{k}": configs[d].get(k) for k in differing},
            }
        )
    table = pd.DataFrame(rows)
    csv = results / "comparison.csv"
    atomic_write_with(csv, lambda p: table.to_csv(p, index=False))
    atomic_write_json(
        results / "comparison.json",
        {"shared_classes": shared, "differing_keys": differing, "datasets": list(best)},
    )
    if shared:  # figures over the shared classes; datasets that share none are compared in the table only
        _plot_f1(table, shared, results / "comparison.png")
        methods = sorted({p.parent.name for _, f in best.values() for p in f.glob("xai/*/class_means.npz")})
        for method in methods:
            _plot_maps(best, shared, method, results / f"comparison_{method}.png")
        regions = region_rows(best, shared)
        if not regions.empty:
            atomic_write_with(results / "regions.csv", lambda p: regions.to_csv(p, index=False))
            for method, part in regions.groupby("method", sort=True):
                _plot_regions(part, shared, str(method), results / f"regions_{method}.png")
    return csv


def region_rows(best: dict[str, tuple[str, Path]], shared: list[str]) -> pd.DataFrame:
    """``regions.csv``: per dataset, method, shared class and face region, the best model's share of the
    attribution mass there (its ``metrics.json`` regions ``by_class``), beside the randomized model's."""
    rows = []
    for d, (_, folder) in best.items():
        metrics_file = folder / "xai" / "metrics.json"
        entries = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        for method, e in entries.items():
            regions = e.get("regions") if isinstance(e, dict) else None
            for name, v in ((regions or {}).get("by_class") or {}).items():
                if class_key(name) not in shared:
                    continue
                rows += [{"dataset": d, "method": method, "class": class_key(name), "region": r, "n": v["n"],
                          "share": v["share"][r], "randomized_model": v["randomized_model"][r],
                          "area": v["area"][r], "outcome": v["outcome"][r], "source": regions["source"]}
                         for r in regions["names"]]
    return pd.DataFrame(rows)


def _plot_regions(part: pd.DataFrame, shared: list[str], method: str, path: Path) -> None:
    """One panel per shared class: each dataset's share of the mass per face region (bars) and the same
    method on the randomized model (black ticks)."""
    classes = [c for c in shared if c in set(part["class"])]
    datasets = list(dict.fromkeys(part["dataset"]))
    regions = list(dict.fromkeys(part["region"]))
    fig, axes = plt.subplots(1, len(classes), figsize=(2.6 * len(classes) + 0.8, 2.9), squeeze=False, sharey=True)
    width = 0.8 / max(1, len(datasets))
    for ax, c in zip(axes[0], classes, strict=True):
        for i, d in enumerate(datasets):
            rows = part[(part["class"] == c) & (part["dataset"] == d)].set_index("region")
            if rows.empty:
                continue
            xs = np.arange(len(regions)) + (i - (len(datasets) - 1) / 2) * width
            ax.bar(xs, [rows["share"].get(r, np.nan) for r in regions], width, label=d, color=f"C{i}")
            ax.scatter(xs, [rows["randomized_model"].get(r, np.nan) for r in regions], marker="_", color="black",
                       s=40, zorder=3, label="randomized model" if i == 0 else None)
        ax.set_title(c, fontsize=9)
        ax.set_xticks(range(len(regions)), [r.replace("_", " ") for r in regions], rotation=45, ha="right",
                      fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of the mass")
    axes[0][-1].legend(fontsize=7, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(f"{method}: where on the face, per shared class (true class; black: randomized model)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _plot_f1(table: pd.DataFrame, shared: list[str], path: Path) -> None:
    labels = shared + ["macro-F1 (shared)"]
    n = len(table)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 1), 3.6))
    width = 0.8 / max(n, 1)
    colors = plt.cm.tab10.colors
    for i, (_, row) in enumerate(table.iterrows()):
        values = [row[f"f1:{c}"] for c in shared] + [row["shared_macro_f1"]]
        xs = np.arange(len(labels)) + (i - (n - 1) / 2) * width
        ax.bar(
            xs,
            values,
            width=width * 0.95,
            color=colors[i % 10],
            label=f"{row['dataset']} (acc {row['test_accuracy']:.2f}, F1 {row['test_macro_f1']:.2f})",
        )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test F1")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"best trial per dataset: test F1 on the {len(shared)} shared classes", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)


def _plot_maps(best: dict[str, tuple[str, Path]], shared: list[str], method: str, path: Path) -> None:
    maps = {}
    for d, (_, folder) in best.items():
        f = folder / "xai" / method / "class_means.npz"
        maps[d] = {class_key(k): v for k, v in ClassMeans.load(f).maps.items()} if f.is_file() else {}
    rows, cols = len(maps), max(1, len(shared))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.6, 1.75 * rows + 0.4), squeeze=False)
    for i, (d, by_class) in enumerate(maps.items()):
        for j, c in enumerate(shared):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if c in by_class:
                ax.imshow(by_class[c], cmap="inferno", vmin=0, vmax=max(float(by_class[c].max()), 1e-6))
            if i == 0:
                ax.set_title(c, fontsize=9)
            if j == 0:
                ax.set_ylabel(d, fontsize=8)
    fig.suptitle(f"{method}: mean map of each shared class (rows: datasets)", fontsize=10)
    save_figure(fig, path)


# --- xai-lab compare: runs already trained -------------------------------------------------------

# What compare's overrides may set (key prefixes): how the runs are explained and where they run, never
# what a model is or which data it is scored on.
COMPARE_OVERRIDES = ("explain.", "run.device", "run.progress", "train.eval_batch_size", "train.amp")


@dataclass
class ComparedRun:
    """One run of a comparison: its name there (the dataset column), its report id and the loaded model."""

    name: str
    run_id: str
    run: LoadedRun
    dataset: Dataset


def parse_run_arg(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by its dataset later) -> ``(name or "", resolved run folder)``."""
    name, sep, path = text.partition("=")
    if not sep or "/" in name or not name:  # a path may hold '=' after a '/': then it is a bare path
        name, path = "", text
    return name, resolve_run_dir(path)


def run_id_of(run_dir: Path) -> str:
    """The id a run's report goes under: its folder's name, with the parent's for a cv fold (``cv-…_fold3``) and
    the trial's for a sweep checkpoint (``<trial>``)."""
    if re.fullmatch(r"checkpoint_\d+", run_dir.name):
        return run_dir.parent.name
    if re.fullmatch(r"fold\d+", run_dir.name):
        return f"{run_dir.parent.name}_{run_dir.name}"
    return run_dir.name


def check_out_folder(out: Path) -> None:
    """A comparison writes into a new or empty folder: never over an earlier result."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not empty; choose a new folder (results are never "
                        "overwritten)")


def compare_runs(runs: list[str], out: str | Path | None = None, *, methods: list[str] | None = None,
                 num_each: int | None = None, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False,
                 progress: bool = True) -> Path:
    """``xai-lab compare``: the comparison a sweep writes, for runs already trained.

    Each run is reported on its own test split (:func:`xai_lab.report.report_model`: evaluation, plots,
    explanations with both baselines and class means), every model is tested on every run's test split over
    the classes they share (the transfer matrix), and the folder gets ``leaderboard.csv`` (one row per run),
    the comparison and ``index.html``.

    Args:
        runs: run folders (``train``'s, a ``cv`` fold's ``fold<k>``, a sweep trial's checkpoint), each
            ``PATH`` (named by its ``data.name``) or ``NAME=PATH``. Names must differ.
        out: a new or empty folder (default ``artifacts/comparisons/<time>``).
        methods: the explainers run on every run (default: the first run's ``explain.methods``).
        num_each: images per gallery (default: each run's ``explain.num_each``).
        overrides: ``key=value`` of :data:`COMPARE_OVERRIDES` (``explain.class_means=32``, ``run.device=cpu``).
        smoke: tiny: the first images of each split, the smoke explain settings.

    Returns:
        The path of ``index.html``.
    """
    from xai_lab.config import SMOKE_EVAL_IMAGES, SMOKE_EXPLAIN

    if not runs:
        raise UserError("compare needs at least one run (--runs RUN [RUN ...])")
    out = Path(out) if out else Path("artifacts") / "comparisons" / new_run_id()
    check_out_folder(out)
    compared = load_compared([parse_run_arg(text) for text in runs], [*(SMOKE_EXPLAIN if smoke else []), *overrides],
                             progress)
    methods = check_methods(list(methods or compared[0].run.cfg.explain.methods))
    # built in a staging folder beside --out and renamed into place at the end: a comparison that fails leaves nothing
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    stage.mkdir(parents=True)
    try:
        _compare_into(stage, compared, methods, num_each, SMOKE_EVAL_IMAGES if smoke else None)
        atomic_write_json(stage / "compare.json", {"name": out.name,
                                                   "runs": {c.name: str(c.run.run_dir) for c in compared},
                                                   "methods": methods, "smoke": smoke})
        write_comparison(stage)
        from sweeps.report import build_report

        build_report(stage)
        if out.is_dir():
            out.rmdir()  # empty (check_out_folder)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out / "index.html"


def load_compared(named: list[tuple[str, Path]], overrides: list[str], progress: bool) -> list[ComparedRun]:
    """Load each ``(name, run folder)`` (its ``best.pt``, its saved config with ``overrides``, its dataset).

    Raises:
        UserError: an override outside :data:`COMPARE_OVERRIDES`, or two runs with the same name.
    """
    from xai_lab.config import apply_overrides, from_dict, load_saved, parse_override, to_dict

    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if not key.startswith(COMPARE_OVERRIDES):
            raise UserError(f"override '{text}' cannot be set by compare; allowed: "
                            f"{', '.join(k + '*' if k.endswith('.') else k for k in COMPARE_OVERRIDES)}")
    compared: list[ComparedRun] = []
    for name, run_dir in named:
        cfg = from_dict(apply_overrides(to_dict(load_saved(run_dir / "config.yaml")), overrides))
        name = name or cfg.data.name
        if any(c.name == name for c in compared):
            raise UserError(f"two runs are named {name!r} (trained on the same data); name them: --runs "
                            f"{name}_a=RUN_A {name}_b=RUN_B")
        run = load_run(run_dir, cfg.run.device)
        run.cfg = cfg
        compared.append(ComparedRun(name, run_id_of(run.run_dir), run, load_dataset(cfg.data, progress=progress)))
    return compared


def _compare_into(out: Path, compared: list[ComparedRun], methods: list[str], num_each: int | None,
                  max_images: int | None) -> None:
    """:func:`compare_runs`'s work: a report per run, ``leaderboard.csv``, and the transfer matrix."""
    from xai_lab.report import report_model
    from xai_lab.transfer import plan_transfer, transfer_scores, transfer_table, write_transfer

    rows = []
    for c in compared:
        report_dir = out / "reports" / c.name / c.run_id
        explain = explain_settings(c.run.cfg.explain, num_each=num_each, methods=methods)
        log.info("compare: reporting %s (%s)", c.name, c.run.run_dir)
        report_model(c.run, report_dir, dataset=c.dataset, max_images=max_images, explain=explain)
        rows.append(run_row(c, report_dir))
    board = pd.DataFrame(rows)
    atomic_write_with(out / "leaderboard.csv", lambda p: board.to_csv(p, index=False))
    if len(compared) > 1:
        by_name = {c.name: c for c in compared}
        plan = plan_transfer({c.name: c.dataset.class_names for c in compared})
        scores = {pair: transfer_scores(by_name[pair[0]].run, by_name[pair[1]].dataset, sets, max_images=max_images)
                  for pair, sets in plan.items()}
        write_transfer(transfer_table(list(by_name), scores), out)
        explain = compared[0].run.cfg.explain
        write_agreement(out, {c.name: c.run for c in compared}, {c.name: c.dataset for c in compared}, methods,
                        explain, max_images or explain.metrics.num_images)


def write_agreement(out: Path, runs: dict[str, LoadedRun], datasets: dict[str, Dataset], methods: list[str],
                    explain, n_faces: int) -> Path | None:
    """``agreement.csv``: each dataset's test faces explained by its own model and by every other model that
    shares classes (:func:`xai_lab.explain.agreement.cross_explanations`), per method."""
    from xai_lab.explain.agreement import cross_explanations
    from xai_lab.explain.run import method_params

    tables = [cross_explanations(runs, datasets, m, method_params(explain, m), explain.layer, n_faces=n_faces,
                                 batch_size=explain.batch_size, seed=explain.metrics.seed) for m in methods]
    tables = [t for t in tables if not t.empty]
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    csv = out / "agreement.csv"
    atomic_write_with(csv, lambda p: table.to_csv(p, index=False))
    return csv


def run_row(c: ComparedRun, report_dir: Path) -> dict:
    """The leaderboard row of a compared run: what its ``train_log.jsonl`` says of its training, and its report's
    scores (``xai_lab.scores.report_scores``)."""
    train_log = c.run.run_dir / "train_log.jsonl"
    log_rows = [row for _, row in train_log_rows(train_log)] if train_log.is_file() else []
    f1 = [r["val_macro_f1"] for r in log_rows if r.get("val_macro_f1") == r.get("val_macro_f1")]  # NaN: no val
    return {
        "dataset": c.name,
        "rank": 1,
        "trial_id": c.run_id,
        "status": "completed",
        "base": False,
        "score": max(f1) if f1 else float("nan"),
        "best_epoch": c.run.epoch,
        "epochs_run": log_rows[-1]["epoch"] if log_rows else 0,
        "wall_seconds": sum(r.get("epoch_seconds", 0.0) + r.get("val_seconds", 0.0) for r in log_rows),
        "images_per_second": float(np.mean([r["images_per_second"] for r in log_rows])) if log_rows else float("nan"),
        "error": "",
        "trial_dir": str(c.run.run_dir),
        "checkpoint": str(c.run.run_dir),
        "report": "ok",
        **report_scores(report_dir),
    }
