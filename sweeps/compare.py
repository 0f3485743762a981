"""Comparison across datasets: the best reported trial of each, on the classes they share.

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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sweeps.leaderboard import read_leaderboard  # noqa: E402
from xai_lab.atomic import atomic_write_json, atomic_write_with  # noqa: E402
from xai_lab.config import flatten, read_yaml  # noqa: E402
from xai_lab.data.emotions import class_key, common_classes  # noqa: E402
from xai_lab.explain.run import ClassMeans  # noqa: E402
from xai_lab.plots import save_figure  # noqa: E402

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
    _plot_f1(table, shared, results / "comparison.png")
    methods = sorted({p.parent.name for _, f in best.values() for p in f.glob("xai/*/class_means.npz")})
    for method in methods:
        _plot_maps(best, shared, method, results / f"comparison_{method}.png")
    return csv


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
