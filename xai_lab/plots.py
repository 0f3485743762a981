"""``plots``: training curves and the normalised test confusion matrix as PNGs (matplotlib).

Files: ``train_loss.png``, ``val_loss.png``, ``val_accuracy.png``, ``val_macrof1.png`` and
``test_confusion_matrix.png`` in the run's report folder.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xai_lab.atomic import atomic_write_with  # noqa: E402
from xai_lab.errors import UserError  # noqa: E402
from xai_lab.runs import train_log_rows  # noqa: E402

CURVES = {
    "train_loss.png": ("train_loss", "train loss"),
    "val_loss.png": ("val_loss", "validation loss"),
    "val_accuracy.png": ("val_accuracy", "validation accuracy"),
    "val_macrof1.png": ("val_macro_f1", "validation macro-F1"),
}


def read_train_log(run_dir: Path) -> list[dict]:
    """The rows of ``<run_dir>/train_log.jsonl`` (one JSON object per finished epoch), in order.

    The one reader of the file. ``fit`` appends a line per epoch, so a crash can leave the last
    line torn: an unparseable last line is skipped. A bad line anywhere else is a UserError that
    names the file and the line.
    """
    path = Path(run_dir) / "train_log.jsonl"
    try:
        rows = [row for _, row in train_log_rows(path)]
    except FileNotFoundError:
        raise UserError(f"no train_log.jsonl in {run_dir}: the run has not finished an epoch") from None
    if not rows:
        raise UserError(f"no finished epoch in {path}: the run has not finished an epoch")
    return rows


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> None:
    """Save ``fig`` as PNG atomically and close it.

    Every text is drawn as written: class, dataset and run names come from users' folders and configs,
    and matplotlib would read a ``$`` in them as the start of a formula (mangled, or an error).
    """
    for text in fig.findobj(matplotlib.text.Text):
        text.set_parse_math(False)
    atomic_write_with(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_curves(log: list[dict], report_dir: Path, title: str = "") -> list[Path]:
    """One PNG per curve; the best epoch by val macro-F1 is marked."""
    epochs = [row["epoch"] for row in log]
    best = max(log, key=lambda r: r["val_macro_f1"])["epoch"]
    written = []
    for filename, (key, label) in CURVES.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(epochs, [row[key] for row in log], marker="o", ms=3, lw=1.5, color="#1f5f8b")
        ax.axvline(best, color="#c44e52", ls="--", lw=1, label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{title} {label}".strip(), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        save_figure(fig, report_dir / filename)
        written.append(report_dir / filename)
    return written


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> None:
    """Row-normalised confusion matrix (each true class sums to 1), with counts in the cells."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.8 + 0.7 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.55 else "black")
    ax.set_title(title or "test confusion matrix (row-normalised)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    save_figure(fig, path)


def plot_run(run_dir: str | Path, report_dir: str | Path | None = None) -> list[Path]:
    """Curves from ``train_log.jsonl`` and the confusion matrix from ``evaluate``'s CSV."""
    from xai_lab.evaluate import read_confusion
    from xai_lab.runs import report_dir_for, resolve_run_dir

    run_dir = resolve_run_dir(run_dir)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(run_dir)
    cm_csv = report_dir / "test_confusion_matrix.csv"
    if not cm_csv.is_file():
        raise UserError(f"no {cm_csv}: run `xai-lab evaluate --run-dir {run_dir}` first")
    written = plot_curves(read_train_log(run_dir), report_dir, title=run_dir.parent.name)
    cm, names = read_confusion(report_dir)
    plot_confusion(cm, names, report_dir / "test_confusion_matrix.png")
    return written + [report_dir / "test_confusion_matrix.png"]
