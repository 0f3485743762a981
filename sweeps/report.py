"""``xai-lab report``: one ``index.html`` over a sweep's best trials, to choose a model by looking.

The page holds the best model of each dataset, the cross-dataset comparison, the
leaderboard (sortable), and per reported trial everything its fan-out report folder holds
(``reports/<dataset>/<trial>/``, the single-run layout): hyperparameters, test metrics per
class, training curves, confusion matrix, explanation metrics and ``metrics.md``, the metric
curves, and per method its class means and galleries (most and least confident,
misclassified, per class); any other figure found there is shown too. A failed report shows
its error. Every link is relative, so the folder opens from ``file://`` and can be copied
whole. With ``--out`` the reports are copied there first. No Ray needed.

The HTML comes from Jinja2 templates (``sweeps/templates/``) with autoescape on: the code
here gathers plain data (text, numbers, relative URLs) and the templates render it, so
names from the user's folders and YAML (datasets, classes, trials, config values) always
reach the page as text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import jinja2
import pandas as pd

from sweeps.leaderboard import read_leaderboard
from xai_lab.atomic import atomic_write_text
from xai_lab.config import read_yaml
from xai_lab.errors import UserError
from xai_lab.plots import CURVES

COPIED = ("leaderboard.csv", "comparison.csv", "comparison.json", "sweep.yaml", "compare.json", "transfer.csv",
          "transfer.json", "regions.csv", "agreement.csv")

# The galleries explain draws under xai/<method>/<gallery>/, in page order; only the first starts open.
GALLERIES = {
    "high_conf": "most confident",
    "low_conf": "least confident",
    "misclassified": "misclassified (most confident mistakes)",
    "per_class": "per true class (most confident of each)",
}

# Files of a trial's report linked under its figures, when present.
TRIAL_FILES = (
    "config.yaml",
    "job.json",
    "test_summary.json",
    "test_confusion_matrix.csv",
    "xai/metrics.json",
    "xai/metrics.md",
)

METRIC_LABELS = {"deletion_auc": "deletion AUC ↓", "insertion_auc": "insertion AUC ↑",
                 "randomization_spearman": "randomization ρ ↓", "pointing_game": "pointing game ↑",
                 "mask_iou": "mask IoU ↑"}


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_sweep_dir(sweep: Path) -> None:
    if not (sweep / "leaderboard.csv").is_file():
        raise UserError(
            f"{sweep} is not a finished sweep (no leaderboard.csv); pass --sweep ray_results/<sweep>"
        )


def select_reported(board: pd.DataFrame, top: int | None) -> pd.DataFrame:
    """Trials that went through the fan-out (ok or failed), best first, ``top`` per dataset."""
    done = board[board["report"].fillna("") != ""].sort_values(["dataset", "rank"])
    return done.groupby("dataset", sort=False).head(top) if top is not None else done


def build_report(sweep: str | Path, top: int | None = None, out: str | Path | None = None) -> Path:
    """Write ``index.html`` for the sweep folder ``sweep``.

    Args:
        sweep: ``ray_results/<sweep>`` (holds leaderboard.csv, reports/, comparison.*).
        top: show the best ``top`` reported trials per dataset (all reported ones when None).
        out: a folder to pull the reports into (default: the sweep folder itself).

    Returns:
        The path of ``index.html``.
    """
    sweep = Path(sweep)
    check_sweep_dir(sweep)
    board = read_leaderboard(sweep / "leaderboard.csv")
    chosen = select_reported(board, top)
    dest = Path(out) if out else sweep
    if dest.resolve() != sweep.resolve():
        if dest.exists() and any(dest.iterdir()) and not (dest / "index.html").is_file():
            raise UserError(
                f"--out {dest} exists and is not an xai-lab report folder; choose a new or empty folder"
            )
        _copy_reports(sweep, dest, chosen)
    page = render(dest, board, chosen)
    index = dest / "index.html"
    atomic_write_text(index, page)
    return index


def _copy_reports(sweep: Path, dest: Path, chosen: pd.DataFrame) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (sweep / name).is_file():
            shutil.copy2(sweep / name, dest / name)
    for png in [*sweep.glob("comparison*.png"), *sweep.glob("transfer.png"), *sweep.glob("regions_*.png")]:
        shutil.copy2(png, dest / png.name)
    for row in chosen.itertuples():
        src = sweep / "reports" / row.dataset / row.trial_id
        if src.is_dir():
            shutil.copytree(src, dest / "reports" / row.dataset / row.trial_id, dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Rendering: plain data for the templates.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates of ``sweeps/templates/`` (found through the installed package), autoescaped."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sweeps", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    return env


def url(rel: str) -> str:
    """A relative path as a URL path. Percent-encoding is URL syntax, which autoescape does not cover: a
    ``#``, ``?`` or ``%`` in a dataset, trial or class name would otherwise cut or change the link (the
    template then HTML-escapes the result like any other value)."""
    return quote(rel, safe="/")


def anchor(prefix: str, *names: str) -> str:
    """A fragment id for names from the user's folders: letters, digits, ``_`` and ``-`` only (plus a short
    hash of the names when any was changed), so ``href='#…'`` links work whatever the names hold."""
    raw = "-".join(str(n) for n in names)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", raw)
    if slug != raw:
        slug += "-" + hashlib.sha1(raw.encode()).hexdigest()[:6]
    return f"{prefix}-{slug}"


def status(text: str) -> dict:
    """A status pill: its CSS key and its (shortened) text."""
    text = str(text)
    return {"key": "failed" if text.startswith("failed") else text,
            "text": text if len(text) < 40 else text[:40] + "…"}


def render(dest: Path, board: pd.DataFrame, chosen: pd.DataFrame) -> str:
    """The HTML of the report for the files under ``dest``."""
    return environment().get_template("index.html").render(page(dest, board, chosen))


def page(dest: Path, board: pd.DataFrame, chosen: pd.DataFrame) -> dict:
    """Everything ``index.html`` shows, as plain data. A sweep's folder has ``sweep.yaml``; one written by
    ``xai-lab compare`` has ``compare.json`` (one run per dataset, no search) instead."""
    sweep_cfg = read_yaml(dest / "sweep.yaml") if (dest / "sweep.yaml").is_file() else {}
    space = list((sweep_cfg.get("space") or {}).keys())
    datasets = list(dict.fromkeys(board["dataset"])) if not board.empty else []
    counts = board["status"].value_counts().to_dict() if not board.empty else {}
    sections = []
    for d in datasets:
        rows = chosen[chosen["dataset"] == d]
        base = board[(board["dataset"] == d) & (board["base"].astype(str) == "True")]
        base_row = base.iloc[0] if not base.empty else None
        sections.append({
            "name": d,
            "anchor": anchor("ds", d),
            "trials": [trial(dest, row._asdict(), board.loc[row.Index], space, base_row)
                       for row in rows.itertuples()],
        })
    return {
        "kind": "sweep" if sweep_cfg or not (dest / "compare.json").is_file() else "comparison",
        "name": sweep_cfg.get("name") or _compare_name(dest) or dest.name,
        "metric": (sweep_cfg.get("search") or {}).get("metric", "val_macro_f1"),
        "n_trials": len(board),
        "dataset_names": ", ".join(datasets),
        "status_summary": ", ".join(f"{v} {k}" for k, v in counts.items()),
        "headline": headline(dest, chosen),
        "best": best_cards(dest, chosen, space),
        "comparison": comparison(dest),
        "transfer": transfer(dest),
        "leaderboard": leaderboard(board, space),
        "datasets": sections,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
    }


def _summary(dest: Path, dataset: str, trial: str) -> dict | None:
    f = dest / "reports" / dataset / trial / "test_summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _explanation_metrics(dest: Path, dataset: str, trial: str) -> dict:
    f = dest / "reports" / dataset / trial / "xai" / "metrics.json"
    entries = json.loads(f.read_text()) if f.is_file() else {}
    return {m: e for m, e in entries.items() if isinstance(e, dict)}


def lead_method(entries: dict) -> str | None:
    """The method whose maps are most the model's doing: one that beats the randomized model first, then
    the largest lead over it in the pointing game (insertion AUC without masks)."""
    def lead(item) -> tuple:
        method, e = item
        key = "pointing_game" if "pointing_game" in e else "insertion_auc"
        gap = e.get(key, 0.0) - (e.get("randomized_model_baseline") or {}).get(key, 0.0)
        return bool(e.get("beats_randomized_model")), gap
    return max(entries.items(), key=lead)[0] if entries else None


def headline(dest: Path, chosen: pd.DataFrame) -> str:
    """Computed from the reports: how the best trial of each dataset did, and, with several datasets, how much
    worse the others are than the best in accuracy and in explanation metrics, then the transfer matrix's
    in-domain against cross-domain gap (:func:`xai_lab.transfer.transfer_sentence`)."""
    text = _best_sentence(dest, chosen)
    info = dest / "transfer.json"
    sentence = json.loads(info.read_text()).get("sentence") if info.is_file() else None
    return f"{text} {sentence}" if sentence else text


def _compare_name(dest: Path) -> str | None:
    """The name ``xai-lab compare`` gave its folder (it builds the report in a staging folder first)."""
    info = dest / "compare.json"
    return json.loads(info.read_text()).get("name") if info.is_file() else None


def _best_sentence(dest: Path, chosen: pd.DataFrame) -> str:
    best = []
    for d, rows in chosen.groupby("dataset", sort=False):
        ok = rows[rows["report"] == "ok"]
        summary = _summary(dest, d, ok.iloc[0]["trial_id"]) if not ok.empty else None
        if summary:
            best.append((d, summary, _explanation_metrics(dest, d, ok.iloc[0]["trial_id"])))
    if not best:
        return "No trial has a report yet."
    best.sort(key=lambda b: -b[1]["accuracy"])
    top, top_summary, top_metrics = best[0]
    method = lead_method(top_metrics)
    if len(best) == 1:
        verdict = f"; {method} {top_metrics[method]['randomized_model_verdict']}" if (
            method and "randomized_model_verdict" in top_metrics[method]) else ""
        return f"The best {top} model reaches test accuracy {top_summary['accuracy']:.2f} on {top_summary['n']} " \
               f"images{verdict}."
    clauses = []
    for d, summary, metrics in best[1:]:
        gap = top_summary["accuracy"] - summary["accuracy"]
        words = "visibly worse than" if gap >= 0.05 else "about as good as"
        clause = f"{d} is {words} {top}: test accuracy {summary['accuracy']:.2f} against {top_summary['accuracy']:.2f}"
        if method and method in metrics:
            keys = [k for k in ("pointing_game", "insertion_auc") if k in metrics[method] and k in top_metrics[method]]
            diffs = [metrics[method][k] - top_metrics[method][k] for k in keys]
            trend = "worse" if all(d < -0.02 for d in diffs) else (
                "mixed" if any(d < -0.02 for d in diffs) else "no worse")
            scores = ", ".join(f"{k.replace('_', ' ').replace('auc', 'AUC')} {metrics[method][k]:.2f} against "
                               f"{top_metrics[method][k]:.2f}" for k in keys)
            clause += f"; {method}'s explanations are {trend} ({scores})"
        clauses.append(clause)
    return "; ".join(clauses) + "."


def params(row, space: list[str], base_row=None) -> list[dict]:
    """The sampled hyperparameters of a trial; ``diff`` marks those that differ from the base config."""
    out = []
    for key in space:
        value = row[key]
        if _missing(value):
            continue
        out.append({"key": key, "label": key.split(".")[-1], "value": _fmt(value, 4),
                    "diff": base_row is not None and str(base_row[key]) != str(value)})
    return out


def best_cards(dest: Path, chosen: pd.DataFrame, space: list[str]) -> list[dict]:
    """One card per dataset: its best trial with an ok report."""
    cards = []
    for d, rows in chosen.groupby("dataset", sort=False):
        ok = rows[rows["report"] == "ok"]
        if ok.empty:
            continue
        row = ok.iloc[0]
        s = _summary(dest, d, row["trial_id"]) or {}
        cards.append({
            "dataset": d,
            "trial_id": row["trial_id"],
            "anchor": anchor("t", d, row["trial_id"]),
            "macro_f1": _fmt(s.get("macro_f1")),
            "accuracy": _fmt(s.get("accuracy")),
            "n": s.get("n", "–"),
            "val": _fmt(row["score"]),
            "epochs_run": row["epochs_run"],
            "wall_seconds": _fmt(row["wall_seconds"], 0),
            "params": params(row, space),
        })
    return cards


def agreement(dest: Path) -> list[dict]:
    """``agreement.csv`` as table rows: the same faces explained by their dataset's model and another."""
    csv = dest / "agreement.csv"
    if not csv.is_file():
        return []
    table = pd.read_csv(csv, dtype={"faces_of": str, "model": str, "method": str})
    regions = [c.removeprefix("own_share_") for c in table.columns if c.startswith("own_share_")]
    rows = []
    for _, r in table.iterrows():
        shares = ", ".join(f"{g.replace('_', ' ')} {r[f'share_{g}']:.0%} / {r[f'own_share_{g}']:.0%}"
                           for g in regions if g in ("brows", "eyes", "nose", "mouth"))
        rows.append({"faces_of": r["faces_of"], "model": r["model"], "method": r["method"], "n": int(r["n"]),
                     "spearman": f"{r['spearman']:.2f} [{r['spearman_low']:.2f}, {r['spearman_high']:.2f}]",
                     "top20": f"{r['top20_iou']:.2f} [{r['top20_iou_low']:.2f}, {r['top20_iou_high']:.2f}]",
                     "shares": shares})
    return rows


def comparison(dest: Path) -> dict | None:
    """The cross-dataset comparison (``comparison.csv`` / ``.json`` / ``*.png``), or None without one."""
    info_f, csv_f = dest / "comparison.json", dest / "comparison.csv"
    if not csv_f.is_file():
        return None
    info = json.loads(info_f.read_text()) if info_f.is_file() else {}
    table = pd.read_csv(csv_f, dtype={"classes_not_shared": str, "dataset": str, "trial_id": str})
    shared = info.get("shared_classes", [])
    not_shared = table["classes_not_shared"].fillna("") if "classes_not_shared" in table else None
    left_out = [f"{d}: {c}" for d, c in zip(table["dataset"], not_shared, strict=True) if c] if (
        not_shared is not None) else []
    cols = [c for c in table.columns if c != "classes_not_shared"]
    maps = [{"method": png.stem.removeprefix("comparison_"), "src": url(png.name),
             "max_width": 150 * max(1, len(shared)) + 120} for png in sorted(dest.glob("comparison_*.png"))]
    return {
        "shared": shared,
        "left_out": "; ".join(left_out),
        "columns": [c.replace("f1:", "F1 ").replace("cfg:", "") for c in cols],
        "rows": [[_fmt(r[c]) for c in cols] for _, r in table.iterrows()],
        "differing": info.get("differing_keys") or [],
        "f1_png": url("comparison.png") if (dest / "comparison.png").is_file() else None,
        "maps": maps,
        "regions": [{"method": png.stem.removeprefix("regions_"), "src": url(png.name)}
                    for png in sorted(dest.glob("regions_*.png"))],
        "agreement": agreement(dest),
        "explanations": [{"dataset": d, "trial_id": t, "table": explanation_table(_explanation_metrics(dest, d, t))}
                         for d, t in zip(table["dataset"], table["trial_id"], strict=True)
                         if _explanation_metrics(dest, d, t)],
    }


def transfer(dest: Path) -> dict | None:
    """The transfer matrix (``transfer.csv``, ``transfer.png``) as table rows, or None without one (a single
    dataset, or no two datasets reported)."""
    from xai_lab.transfer import read_transfer

    csv = dest / "transfer.csv"
    if not csv.is_file():
        return None
    table = read_transfer(csv)
    if table["trained_on"].nunique() < 2:
        return None
    rows = [{"trained_on": r["trained_on"], "tested_on": r["tested_on"], "in_domain": bool(r["in_domain"]),
             "classes": r["classes"] or "–", "n": int(r["n"]), "accuracy": _fmt(r["accuracy"]),
             "macro_f1": _fmt(r["macro_f1"]), "reference": _fmt(r["in_domain_accuracy"]), "gap": _fmt(r["gap"]),
             "note": r["note"]} for _, r in table.iterrows()]
    return {"rows": rows, "png": url("transfer.png") if (dest / "transfer.png").is_file() else None,
            "n_datasets": int(table["trained_on"].nunique())}


def leaderboard(board: pd.DataFrame, space: list[str]) -> dict:
    """Every trial as table rows (cells with their sort keys), and the errors of the trials that failed."""
    if board.empty:
        return {"columns": [], "rows": [], "errors": []}
    cols = [
        "dataset", "rank", "trial_id", "status", "score", *space,
        "best_epoch", "epochs_run", "wall_seconds", "images_per_second", "report",
        *[c for c in ("test_accuracy", "test_macro_f1") if c in board.columns],
        *[c for c in board.columns if ":" in c and ":share_" not in c],  # explanation metrics per method
        # (region shares stay in leaderboard.csv; the report draws them per trial, regions.png)
    ]
    top = board["score"].max() if board["score"].notna().any() else 1.0
    rows = []
    for _, r in board.iterrows():
        rep = str(r.get("report") or "")
        cls = "failed" if rep.startswith("failed") or r["status"] == "error" else ("reported" if rep else "")
        rows.append({"cls": cls, "cells": [_leaderboard_cell(r, c, rep, top) for c in cols]})
    errors = [{"dataset": r["dataset"], "trial_id": r["trial_id"], "error": r["error"]}
              for _, r in board[board["error"].fillna("") != ""].iterrows()]
    return {
        "columns": [{"label": c.split(".")[-1] if "." in c else c,
                     "left": c in ("dataset", "trial_id", "status", "report")} for c in cols],
        "rows": rows,
        "errors": errors,
    }


def _leaderboard_cell(r, c: str, rep: str, top) -> dict:
    v = r[c]
    cell = {"kind": "text", "text": _fmt(v, 4), "sort": "" if _missing(v) else str(v),
            "left": c in ("dataset", "trial_id")}
    if c == "trial_id" and rep:
        cell.update(kind="link", href="#" + anchor("t", r["dataset"], v), left=True)
    elif c == "status":
        label = str(v) + (" (base)" if str(r.get("base")) == "True" else "")
        cell.update(kind="status", status=status(label), left=True)
    elif c == "report":
        cell.update(kind="status", status=status(rep) if rep else None, left=True, sort=rep)
    elif c == "score":
        width = 0 if pd.isna(v) or not top else max(0.0, 60 * float(v) / float(top))
        cell.update(kind="bar", text=_fmt(v), width=round(width))
    return cell


def explanation_table(entries: dict) -> dict | None:
    """Each method's explanation metrics beside its two baselines, and the verdicts."""
    if not entries:
        return None
    keys = [k for k in METRIC_LABELS if any(k in e for e in entries.values())]
    rows = []
    for method, e in entries.items():
        cells = []
        for k in keys:
            rnd = (e.get("random_baseline") or {}).get(k)
            rmod = (e.get("randomized_model_baseline") or {}).get(k)
            cells.append({"value": _fmt(e.get(k)),
                          "baselines": " · ".join(_fmt(v, 2) for v in (rnd, rmod) if v is not None)})
        rows.append({"method": method, "cells": cells})
    verdicts = [{"method": method, "text": e[key]} for method, e in entries.items()
                for key in ("randomization_verdict", "randomized_model_verdict") if e.get(key)]
    return {"columns": [METRIC_LABELS[k] for k in keys], "rows": rows, "verdicts": verdicts}


# ---------------------------------------------------------------------------------------------
# One reported trial: every file of its report folder.
# ---------------------------------------------------------------------------------------------


class Figures:
    """The PNGs of one report folder, handed out as page figures; remembers which were shown so the rest
    can be listed at the end (a figure the fan-out starts writing reaches the page before the page knows
    its name)."""

    def __init__(self, dest: Path, folder: str):
        self.dest, self.folder, self.shown = dest, folder, set()

    def get(self, rel: str, label: str, caption: str = "") -> dict | None:
        """The figure ``<folder>/<rel>`` as ``{src, alt, caption}``, or None when the file is missing."""
        path = f"{self.folder}/{rel}"
        if not (self.dest / path).is_file():
            return None
        self.shown.add(rel)
        return {"src": url(path), "alt": label, "caption": caption}

    def rest(self) -> list[dict]:
        root = self.dest / self.folder
        others = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) if root.is_dir() else []
        return [self.get(rel, rel, rel) for rel in others if rel not in self.shown]


def trial(dest: Path, row: dict, full_row, space: list[str], base_row) -> dict:
    """One reported trial: its leaderboard numbers, and its report (or why the report failed)."""
    d, t = row["dataset"], row["trial_id"]
    folder = f"reports/{d}/{t}"
    out = {
        "anchor": anchor("t", d, t),
        "trial_id": t,
        "rank": row["rank"],
        "status": status(row["report"] if row["report"] != "ok" else row["status"]),
        "score": _fmt(row["score"]),
        "best_epoch": row["best_epoch"],
        "epochs_run": row["epochs_run"],
        "wall_seconds": _fmt(row["wall_seconds"], 0),
        "images_per_second": _fmt(row["images_per_second"], 0),
        "params": params(full_row, space, base_row),
        "error": None,
    }
    if str(row["report"]).startswith("failed"):
        error = dest / folder / "error.txt"
        out["error"] = error.read_text() if error.is_file() else row["report"]
        return out
    figs = Figures(dest, folder)
    out.update(
        summary=summary_table(_summary(dest, d, t)),
        curves=[f for f in (figs.get(name, label) for name, (_, label) in CURVES.items()) if f],
        confusion=figs.get("test_confusion_matrix.png", "confusion matrix"),
        explanations=explanation_table(_explanation_metrics(dest, d, t)),
        metric_curves=figs.get("xai/metric_curves.png", "deletion, insertion and randomization curves"),
        metrics_md=metrics_markdown(dest / folder / "xai" / "metrics.md", folder),
        methods=[method_galleries(figs, p.name) for p in sorted((dest / folder / "xai").glob("*/")) if p.is_dir()],
        compared=[f for f in (figs.get(f"xai/comparison_{g}.png", f"{g}: every method", label)
                              for g, label in _gallery_labels(dest / folder / "xai", "comparison_")) if f],
        files=[{"name": rel, "href": url(f"{folder}/{rel}")} for rel in _trial_files(dest / folder)],
    )
    out["others"] = figs.rest()
    return out


def _gallery_labels(folder: Path, prefix: str = "") -> list[tuple[str, str]]:
    """The galleries found in ``folder`` (sub-folders, or ``<prefix><gallery>.png`` files): known ones in
    page order, then any other, named by its folder."""
    if prefix:
        found = {p.stem.removeprefix(prefix) for p in folder.glob(f"{prefix}*.png")}
    else:
        found = {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    return [(g, GALLERIES[g]) for g in GALLERIES if g in found] + [(g, g) for g in sorted(found - set(GALLERIES))]


def _trial_files(root: Path) -> list[str]:
    files = [rel for rel in TRIAL_FILES if (root / rel).is_file()]
    return files + sorted(p.relative_to(root).as_posix() for p in root.glob("xai/*/selection.csv"))


def summary_table(s: dict | None) -> dict | None:
    """Test accuracy, macro-F1 and the per-class table of ``test_summary.json``."""
    if not s:
        return None
    return {
        "split": s.get("split", "test"),
        "n": s["n"],
        "accuracy": _fmt(s["accuracy"]),
        "macro_f1": _fmt(s["macro_f1"]),
        "per_class": [{"name": name, "precision": _fmt(m["precision"]), "recall": _fmt(m["recall"]),
                       "f1": _fmt(m["f1"]), "bar": round(60 * m["f1"]), "support": m["support"]}
                      for name, m in s["per_class"].items()],
    }


def method_galleries(figs: Figures, method: str) -> dict:
    """One method's class means and galleries, each figure captioned from ``selection.csv``."""
    xai = figs.dest / figs.folder / "xai" / method
    captions = _captions(xai)
    order = {rel: i for i, rel in enumerate(captions)}
    galleries = []
    for group, label in _gallery_labels(xai):
        files = sorted((p.name for p in (xai / group).glob("*.png")),
                       key=lambda n, g=group: (order.get(f"{g}/{n}", len(order)), n))
        figures = [figs.get(f"xai/{method}/{group}/{n}", Path(n).stem, captions.get(f"{group}/{n}", ""))
                   for n in files]
        if figures:
            galleries.append({"key": group, "label": label, "open": group == "high_conf", "figures": figures})
    return {
        "name": method,
        "class_means": figs.get(f"xai/{method}/class_means.png", f"{method}: mean map per true class"),
        "regions": figs.get(f"xai/{method}/regions.png", f"{method}: share of the attribution mass per face region "
                            "and true class, beside the randomized model"),
        "galleries": galleries,
    }


def _captions(method_dir: Path) -> dict[str, str]:
    """``{gallery/file: caption}`` from ``selection.csv``, in its order (the order explain chose)."""
    f = method_dir / "selection.csv"
    if not f.is_file():
        return {}
    table = pd.read_csv(f, dtype={"path": str, "true": str, "pred": str, "file": str})
    return {
        r["file"]: f"{r['path']} · true {r['true']}, predicted {r['pred']} ({r['confidence']:.2f})"
        for _, r in table.iterrows()
    }


# ---------------------------------------------------------------------------------------------
# xai/metrics.md, read into blocks (headings, paragraphs, lists, tables of inline spans).
# ---------------------------------------------------------------------------------------------

INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")
TABLE_RULE = re.compile(r"^:?-+:?$")


def spans(text: str) -> list[dict]:
    """``**bold**`` and ```code``` of one line of Markdown, as ``{tag, text}`` spans (tag "" for text)."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        if m.start() > pos:
            out.append({"tag": "", "text": text[pos:m.start()]})
        out.append({"tag": "b" if m.group(1) is not None else "code", "text": m.group(1) or m.group(2)})
        pos = m.end()
    if pos < len(text):
        out.append({"tag": "", "text": text[pos:]})
    return out


def markdown_blocks(text: str) -> list[dict]:
    """The little Markdown ``metrics_markdown`` writes (``#`` headings, paragraphs, ``-`` lists, pipe
    tables) as blocks for the template; anything else is kept as paragraph text."""
    blocks: list[dict] = []
    last = None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            last = None
        elif s.startswith("#"):
            last = None
            blocks.append({"kind": "heading", "spans": spans(s.lstrip("#").strip())})
        elif s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(TABLE_RULE.match(c) for c in cells):
                continue
            if last is None or last["kind"] != "table":
                last = {"kind": "table", "header": [spans(c) for c in cells], "rows": []}
                blocks.append(last)
            else:
                last["rows"].append([spans(c) for c in cells])
        elif s.startswith(("- ", "* ")):
            if last is None or last["kind"] != "list":
                last = {"kind": "list", "entries": []}
                blocks.append(last)
            last["entries"].append(spans(s[2:]))
        elif last is not None and last["kind"] == "paragraph":
            last["spans"] += spans(" " + s)
        else:
            last = {"kind": "paragraph", "spans": spans(s)}
            blocks.append(last)
    return blocks


def metrics_markdown(path: Path, folder: str) -> dict | None:
    """``xai/metrics.md`` of a trial, read into blocks, with a link to the file."""
    if not path.is_file():
        return None
    return {"href": url(f"{folder}/xai/metrics.md"), "blocks": markdown_blocks(path.read_text())}
