"""The transfer matrix: each dataset's model on every dataset's test split, over the classes they share.

The question people in facial-expression research ask first of a model: how does it do on
another dataset's faces (lab-posed CK+ against in-the-wild FER2013)? Each cell (A -> B) scores
A's model on B's test faces of the emotions A and B share (:func:`xai_lab.evaluate.score_on_shared_classes`:
the prediction is the most likely shared emotion). The diagonal (A -> A) is in-domain, over every class.

A cross cell and the diagonal differ in more than the domain: the cross cell scores fewer classes
(CK+ has contempt and no neutral, FER2013 the reverse). So each cross cell also carries the
in-domain reference on the very same faces and classes: B's own model on B's test faces of the
emotions A and B share, restricted the same way (``in_domain_accuracy``, ``in_domain_macro_f1``).
Their difference (``gap``) is what training on another dataset costs, with the faces and the label
set held fixed.

The work is one forward pass per (model, dataset) pair (:func:`transfer_scores`, a Ray task per pair
in a sweep's fan-out, a plain call in ``xai-lab compare``); :func:`plan_transfer` says which class
sets each pair is scored on, :func:`transfer_table` joins the scores into ``transfer.csv``'s rows,
:func:`write_transfer` writes it with ``transfer.png`` (a heatmap), and :func:`transfer_sentence`
states the gap in one computed sentence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xai_lab.atomic import atomic_write_with
from xai_lab.data.emotions import common_classes
from xai_lab.evaluate import LoadedRun, score_on_shared_classes, shared_split, split_logits

# transfer.csv's columns, in order; classes are space-separated class keys (xai_lab.data.emotions.class_key).
# After them, one ``f1:<class>`` column per class scored anywhere (first seen first): which emotions transfer.
COLUMNS = ("trained_on", "tested_on", "in_domain", "classes", "n_classes", "n", "accuracy", "macro_f1",
           "accuracy_all_outputs", "n_left_out", "in_domain_accuracy", "in_domain_macro_f1", "gap", "note")

ClassSet = tuple[str, ...] | None  # the emotions a pair is scored on; None: every shared one


def plan_transfer(classes: dict[str, list[str]]) -> dict[tuple[str, str], list[ClassSet]]:
    """Which class sets each (model, dataset) pair is scored on, for one model and one test split per name.

    Args:
        classes: ``{name: class names}`` of each dataset (its model has the same classes).

    Returns:
        ``{(trained_on, tested_on): [class set, ...]}``: a cross pair on every emotion the two share (None);
        a diagonal pair on all its classes (None) and, for each other dataset, on the emotions the two
        share (the in-domain reference of the cross cell). Pairs that share nothing get no class set to
        score (:func:`transfer_table` still writes their row, with a note).
    """
    plan: dict[tuple[str, str], list[ClassSet]] = {}
    for model, model_classes in classes.items():
        for data, data_classes in classes.items():
            if model != data:
                plan[(model, data)] = [None] if common_classes(model_classes, data_classes) else []
                continue
            sets: list[ClassSet] = [None]
            for other, other_classes in classes.items():
                shared = tuple(common_classes(other_classes, data_classes))
                if other != data and shared and shared not in sets and len(shared) < len(data_classes):
                    sets.append(shared)
            plan[(model, data)] = sets
    return plan


def transfer_scores(run: LoadedRun, dataset, class_sets: list[ClassSet], *, split: str = "test",
                    max_images: int | None = None) -> list[dict]:
    """Score a loaded run's model on ``dataset``'s ``split`` once per class set (one forward pass for all).

    Args:
        run: the model (:func:`xai_lab.evaluate.load_run`).
        dataset: the prepared dataset to test on.
        class_sets: from :func:`plan_transfer` (None: every emotion the model and the dataset share).
        max_images: score only the first n images of the shared classes (smoke runs).

    Returns:
        One dict per class set: ``classes`` (the list scored, or None as asked), ``n``, ``accuracy``,
        ``macro_f1``, ``accuracy_all_outputs``, ``n_left_out``, ``per_class`` F1.
    """
    if not class_sets:
        return []
    data, left_out = shared_split(dataset, run.class_names, split, run.cfg.data.channels, max_images)
    logits = split_logits(run, data.images)
    rows = []
    for classes in class_sets:
        summary, _ = score_on_shared_classes(logits, data.labels, run.class_names, dataset.class_names,
                                             None if classes is None else list(classes))
        rows.append({
            "classes": None if classes is None else list(classes),
            "scored": summary["shared_classes"],
            "n": summary["n"],
            "accuracy": summary["accuracy"],
            "macro_f1": summary["macro_f1"],
            "accuracy_all_outputs": summary["accuracy_all_outputs"],
            "n_left_out": left_out + (len(data) - summary["n"]),
            "per_class_f1": {c: m["f1"] for c, m in summary["per_class"].items()},
        })
    return rows


def transfer_table(names: list[str], scores: dict[tuple[str, str], list[dict]],
                   failed: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """``transfer.csv``'s rows: one per (trained_on, tested_on) pair of ``names``, in that order.

    Args:
        names: the datasets, each with its model.
        scores: ``{(trained_on, tested_on): transfer_scores(...)}`` for the pairs of :func:`plan_transfer`;
            ``[]`` for a pair that shares no class.
        failed: ``{pair: why}`` of pairs whose scoring failed (their rows carry the reason as ``note``).
    """
    failed = failed or {}

    def first(pair: tuple[str, str], classes: ClassSet) -> dict | None:
        for row in scores.get(pair, []):
            if (None if row["classes"] is None else tuple(row["classes"])) == classes:
                return row
        return None

    rows = []
    for model in names:
        for data in names:
            cell = first((model, data), None)
            row = {"trained_on": model, "tested_on": data, "in_domain": model == data}
            if cell is None or not cell["n"]:
                if (model, data) in failed:
                    note = failed[(model, data)]
                elif cell is not None:
                    note = "no test image of a shared class"
                else:
                    note = "no shared class" if (model, data) in scores else "not scored"
                rows.append({**row, "classes": "", "n_classes": 0, "n": 0, "note": note})
                continue
            row.update(classes=" ".join(cell["scored"]), n_classes=len(cell["scored"]), n=cell["n"],
                       accuracy=cell["accuracy"], macro_f1=cell["macro_f1"],
                       accuracy_all_outputs=cell["accuracy_all_outputs"], n_left_out=cell["n_left_out"], note="",
                       **{f"f1:{c}": f for c, f in cell["per_class_f1"].items()})
            full = first((data, data), None)
            if model != data and full is not None:  # the reference: data's own model, same faces and classes
                same = cell["scored"] == full["scored"]  # the pair shares every class of the test split
                ref = full if same else first((data, data), tuple(cell["scored"]))
                if ref is not None and ref["n"]:
                    row.update(in_domain_accuracy=ref["accuracy"], in_domain_macro_f1=ref["macro_f1"],
                               gap=ref["accuracy"] - cell["accuracy"])
            rows.append(row)
    per_class = list(dict.fromkeys(k for row in rows for k in row if k.startswith("f1:")))
    table = pd.DataFrame(rows, columns=[*COLUMNS, *per_class])
    return table.astype({"n_classes": int, "n": int, "n_left_out": "Int64"})


def read_transfer(path: str | Path) -> pd.DataFrame:
    """``transfer.csv`` as written by :func:`write_transfer`."""
    table = pd.read_csv(path, dtype={"trained_on": str, "tested_on": str, "classes": str, "note": str},
                        keep_default_na=False, na_values=[""])
    return table.fillna({"classes": "", "note": ""})


def write_transfer(table: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """Write ``transfer.csv`` and ``transfer.png`` (the heatmap) into ``out``, atomically."""
    from xai_lab.atomic import atomic_write_json

    csv = out / "transfer.csv"
    atomic_write_with(csv, lambda p: table.to_csv(p, index=False))
    atomic_write_json(out / "transfer.json", {"sentence": transfer_sentence(table)})
    png = out / "transfer.png"
    plot_transfer(table, png)
    return csv, png


def plot_transfer(table: pd.DataFrame, path: Path) -> None:
    """A heatmap of test accuracy: rows the dataset a model was trained on, columns the test split; each cell
    says its accuracy, macro-F1, n and how many classes it scores (or why it has no score)."""
    from xai_lab.plots import plt, save_figure

    names = list(dict.fromkeys(table["trained_on"]))
    grid = np.full((len(names), len(names)), np.nan)
    fig, ax = plt.subplots(figsize=(1.9 * len(names) + 2.2, 1.3 * len(names) + 1.4))
    for _, r in table.iterrows():
        i, j = names.index(r["trained_on"]), names.index(r["tested_on"])
        if r["n"]:
            grid[i, j] = r["accuracy"]
            text = f"{r['accuracy']:.2f}\nF1 {r['macro_f1']:.2f}\nn={int(r['n'])}, {int(r['n_classes'])} cl."
        else:
            text = r["note"] or "no score"
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if np.isfinite(grid[i, j]) and grid[i, j] < 0.6 else "black")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1)
    for i in range(len(names)):  # the diagonal: in-domain
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="#d62728", lw=2))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("tested on (test split, shared classes)")
    ax.set_ylabel("trained on")
    ax.set_title("transfer matrix: test accuracy (framed: in-domain)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    save_figure(fig, path)


def transfer_sentence(table: pd.DataFrame) -> str | None:
    """In-domain against cross-domain accuracy in one computed sentence (None without a scored cross cell)."""
    cross = table[~table["in_domain"].astype(bool) & (table["n"] > 0)]
    diagonal = table[table["in_domain"].astype(bool) & (table["n"] > 0)]
    if cross.empty or diagonal.empty:
        return None
    text = (f"In-domain test accuracy averages {diagonal['accuracy'].mean():.2f}; across datasets "
            f"{cross['accuracy'].mean():.2f} over the classes each pair shares")
    paired = cross.dropna(subset=["gap"]) if "gap" in cross else cross.iloc[0:0]
    if not paired.empty:
        text += (f", {paired['gap'].mean():.2f} below the target dataset's own model on the same faces and "
                 f"classes ({paired['in_domain_accuracy'].mean():.2f})")
    best, worst = cross.loc[cross["accuracy"].idxmax()], cross.loc[cross["accuracy"].idxmin()]
    text += f"; best transfer {best['trained_on']} → {best['tested_on']} ({best['accuracy']:.2f})"
    if len(cross) > 1:
        text += f", worst {worst['trained_on']} → {worst['tested_on']} ({worst['accuracy']:.2f})"
    return text + "."
