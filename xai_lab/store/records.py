"""Records built from the folders the verbs write: a run folder and its report, a cross-validation (a run and a
child per fold), a sweep's results folder (the sweep and each trial), and :func:`sync` over folders made while the
store was off. Recording twice adds nothing twice: params are written once, epochs after the last one recorded,
a report's scores and files when the files changed (tag ``xai_lab.files``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from xai_lab.config import flatten
from xai_lab.errors import UserError
from xai_lab.scores import report_scores
from xai_lab.store.client import Store, shown

FILES_TAG = "xai_lab.files"  # what was recorded from which file (size and mtime), so a sync adds only what changed
EPOCHS_TAG = "xai_lab.epochs_logged"
# Tune's bookkeeping in a trial's result.json, not curves of the run
TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
             "iterations_since_restore", "done", "early_stopped", "checkpoint_dir_name"}
STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "FINISHED", "error": "FAILED"}


def record_training(store: Store, run_dir: Path, report_dir: Path | None = None, *, kind: str = "train",
                    experiment: str | None = None, record_id: str | None = None, name: str | None = None,
                    parent: str | None = None, tags: dict[str, str] | None = None,
                    status: str | None = None, times: tuple[float | None, float | None] | None = None) -> str:
    """Record a trained run folder (``config.yaml``, ``train_log.jsonl``, ``train_summary.json``) and its report
    folder when one is given and exists. Returns the MLflow run id."""
    from xai_lab.runs import train_log_rows

    run_dir = Path(run_dir).resolve()
    config = _read_yaml(run_dir / "config.yaml")
    exp_name = experiment or str(config.get("run", {}).get("name") or run_dir.parent.name)
    rel = _relative_id(run_dir)
    record_id = record_id or f"run:{rel}"
    summary = _read_json(run_dir / "train_summary.json")
    state = status or ("FINISHED" if summary else "KILLED")
    base_tags = {"xai_lab.kind": kind, "xai_lab.experiment": exp_name, "xai_lab.run_dir": str(run_dir),
                 "xai_lab.dataset": str(config.get("data", {}).get("name", "")),
                 "xai_lab.status": {"FINISHED": "finished", "KILLED": "stopped"}.get(state, state.lower()),
                 **(tags or {})}
    if (run_dir / "best.pt").is_file():
        base_tags["xai_lab.checkpoint"] = str(run_dir / "best.pt")
    exp_id = store.experiment(exp_name)
    start, end = times or _times(run_dir)
    run = store.upsert(exp_id, record_id, name or rel.split("/", 1)[-1], base_tags, parent, start)
    run_id = run.info.run_id
    if not run.data.params and config:
        store.log(run_id, params=config_params(config))
        _upload(store, run_id, [run_dir / "config.yaml"], "run")
    rows = [row for _, row in train_log_rows(run_dir / "train_log.jsonl")] \
        if (run_dir / "train_log.jsonl").is_file() else []
    _log_epochs(store, run, rows)
    if summary:
        done = _files_done(run)
        sig = _signature(run_dir / "train_summary.json")
        if done.get("train_summary.json") != sig:
            store.log(run_id, metrics=[(k, summary[k], int(summary.get("best_epoch") or 0))
                                       for k in ("best_val_macro_f1", "best_epoch", "epochs_run", "train_seconds",
                                                 "images_per_second") if k in summary])
            _upload(store, run_id, [run_dir / "train_summary.json"], "run")
            _mark(store, run, {"train_summary.json": sig})
    if report_dir is not None and Path(report_dir).is_dir():
        record_report(store, run, Path(report_dir))
    store.finish(run, state, end if state != "RUNNING" else None)
    return run_id


def record_report(store: Store, run, report_dir: Path) -> bool:
    """A report folder's scores (test accuracy and macro-F1, every explainer beside its baselines and region
    shares) and files on ``run``, when they changed since last recorded. Returns whether anything was."""
    report_dir = Path(report_dir).resolve()
    sources = {name: report_dir / name for name in ("test_summary.json", "xai/metrics.json")}
    sigs = {f"report/{name}": _signature(p) for name, p in sources.items() if p.is_file()}
    done = _files_done(run)
    same_folder = run.data.tags.get("xai_lab.report_dir") == str(report_dir)
    if not sigs or (same_folder and all(done.get(k) == v for k, v in sigs.items())):
        return False
    scores = report_scores(report_dir)
    summary = _read_json(report_dir / "test_summary.json")
    split = summary.get("split", "test")
    prefix = "test" if split == "test" else f"eval_{split}"  # evaluate --split val: not the training's val curves
    metrics = [(k.replace(":", ".").replace("test_", f"{prefix}_", 1), v, 0) for k, v in scores.items()
               if v is not None]
    for cls, entry in (summary.get("per_class") or {}).items():
        if isinstance(entry, dict) and "f1" in entry:
            metrics.append((f"{prefix}_f1.{_metric_name(cls)}", entry["f1"], 0))
    store.log(run.info.run_id, metrics=metrics, tags={"xai_lab.report_dir": str(report_dir)})
    run.data.tags["xai_lab.report_dir"] = str(report_dir)
    if store.artifacts:
        store.client.log_artifacts(run.info.run_id, str(report_dir), "report")
    _mark(store, run, sigs)
    return True


def record_cross(store: Store, run_dir: Path, summary: dict, out: Path) -> str:
    """``evaluate --data``: the run's accuracy on another dataset over the shared classes, as
    ``cross.<dataset>.accuracy`` / ``.macro_f1`` / ``.n`` on the run's record."""
    run_id = record_training(store, run_dir)
    name = f"cross.{_metric_name(summary['dataset'])}"
    store.log(run_id, metrics=[(f"{name}.{k}", summary[k], 0) for k in ("accuracy", "macro_f1", "n") if k in summary],
              tags={f"xai_lab.report_dir.{_metric_name(summary['dataset'])}": str(Path(out).resolve())})
    return run_id


def record_cv(store: Store, cv_dir: Path) -> str:
    """A cross-validation: its own run (the mean and standard deviation over the folds) and a child run per
    fold (:func:`record_training`). Returns the parent's MLflow run id."""
    from xai_lab.runs import report_dir_for

    cv_dir = Path(cv_dir).resolve()
    config = _read_yaml(cv_dir / "config.yaml")
    exp_name = str(config.get("run", {}).get("name") or cv_dir.parent.name)
    rel = _relative_id(cv_dir)
    report_dir = report_dir_for(cv_dir)
    result = _read_json(report_dir / "cv_summary.json")
    folds = sorted(cv_dir.glob("fold*/config.yaml"), key=lambda p: int(p.parent.name[4:] or 0))
    finished = bool(result) and len(result.get("folds_run", [])) == len(folds)
    exp_id = store.experiment(exp_name)
    tags = {"xai_lab.kind": "cv", "xai_lab.experiment": exp_name, "xai_lab.run_dir": str(cv_dir),
            "xai_lab.dataset": str(config.get("data", {}).get("name", "")),
            "xai_lab.status": "finished" if finished else "stopped"}
    if result:
        tags["xai_lab.report_dir"] = str(report_dir)
    start, end = _times(cv_dir, report_dir / "cv_summary.json")
    parent = store.upsert(exp_id, f"cv:{rel}", rel.split("/", 1)[-1], tags, start=start)
    if not parent.data.params and config:
        store.log(parent.info.run_id, params=config_params(config))
    for fold in folds:
        record_training(store, fold.parent, report_dir / fold.parent.name, kind="cv_fold", experiment=exp_name,
                        parent=parent.info.run_id, name=f"{cv_dir.name}/{fold.parent.name}",
                        tags={"xai_lab.fold": fold.parent.name[4:]})
    sig = _signature(report_dir / "cv_summary.json")
    if result and _files_done(parent).get("cv_summary.json") != sig:
        metrics = []
        for key in ("test_accuracy", "test_macro_f1"):
            metrics += [(key, result[key]["mean"], 0), (f"{key}_std", result[key]["std"], 0)]
        metrics += [("pooled_test_accuracy", result["pooled_test_accuracy"], 0), ("folds", len(folds), 0)]
        store.log(parent.info.run_id, metrics=metrics)
        _upload(store, parent.info.run_id, [report_dir / "cv_summary.json", report_dir / "cv_folds.csv",
                                            cv_dir / "config.yaml"], "cv")
        _mark(store, parent, {"cv_summary.json": sig})
    store.finish(parent, "FINISHED" if finished else "KILLED", end)
    return parent.info.run_id


# a trial's leaderboard.csv columns recorded as metrics (its checkpoint holds no train_summary.json)
TRIAL_METRICS = ("score", "best_val_macro_f1", "best_epoch", "epochs_run", "wall_seconds", "images_per_second",
                 "failures")
SWEEP_FILES = ("sweep.yaml", "leaderboard.csv", "comparison.csv", "comparison.png", "transfer.csv", "transfer.png",
               "regions.csv", "index.html")


def record_sweep(store: Store, results: Path, finished: bool | None = None) -> dict[str, int]:
    """A sweep's results folder: the sweep's own run (its leaderboard, comparison and report), one run per
    trial of ``leaderboard.csv`` (config, curves, status, Optuna study; its fan-out report when it has one), in
    the experiment ``sweep/<name>`` tagged with the Optuna storage and studies. ``finished``: whether the
    driver got to the end (default: index.html exists). Returns ``{"trials": n, "reports": n}`` recorded."""
    import pandas as pd

    results = Path(results).resolve()
    sweep = _read_yaml(results / "sweep.yaml")
    if not sweep:
        raise UserError(f"{results} is not a sweep's results folder (no sweep.yaml)")
    name = str(sweep.get("name") or results.name)
    optuna_url = (sweep.get("search") or {}).get("storage") or f"sqlite:///{results / 'optuna.db'}"
    board_path = results / "leaderboard.csv"
    board = pd.read_csv(board_path, dtype=str).fillna("") if board_path.is_file() else pd.DataFrame()
    datasets = list(dict.fromkeys(board["dataset"])) if len(board) else []
    studies = [f"{name}/{d}" for d in datasets]  # sweeps.driver.study_name
    finished = (results / "index.html").is_file() if finished is None else finished
    exp_id = store.experiment(f"sweep/{name}", {
        "optuna.storage": shown(optuna_url), "optuna.studies": ", ".join(studies), "xai_lab.sweep_dir": str(results),
        "mlflow.note.content": f"Sweep {name} ({results}): {len(board)} trials over {', '.join(datasets) or '-'}; "
                               f"Optuna studies {', '.join(studies) or '-'} in {shown(optuna_url)}"})
    start, end = _times(results, results / "index.html" if finished else board_path)
    parent = store.upsert(exp_id, f"sweep:{name}", name, start=start, tags={
        "xai_lab.kind": "sweep", "xai_lab.sweep": name, "xai_lab.run_dir": str(results),
        "xai_lab.report_dir": str(results / "index.html") if finished else "",
        "xai_lab.status": "finished" if finished else "stopped", "optuna.studies": ", ".join(studies)})
    # the trials sit beside the sweep's run in its experiment (tag xai_lab.sweep), not under it: mlflow ui
    # lists them with their params and metrics without a row to expand first
    if not parent.data.params:
        store.log(parent.info.run_id, params={k: v for k, v in flatten(sweep).items()
                                              if not k.startswith(("store.", "space.")) and not isinstance(v, list)})
    counts = {"trials": 0, "reports": 0}
    for row in board.to_dict("records"):
        trial, dataset = row["trial_id"], row["dataset"]
        ckpt = Path(row["checkpoint"]) if row.get("checkpoint") and "://" not in row["checkpoint"] else None
        report = results / "reports" / dataset / trial
        tags = {"xai_lab.sweep": name, "xai_lab.trial_id": trial, "optuna.study": f"{name}/{dataset}",
                "xai_lab.rank": row.get("rank", ""), "xai_lab.trial_dir": row.get("trial_dir", ""),
                "xai_lab.dataset": dataset, "xai_lab.status": row.get("status", "")}
        state = STATUS.get(row.get("status", ""), "FINISHED" if finished else "KILLED")
        rows = _result_rows(Path(row.get("trial_dir") or "/nonexistent") / "result.json")
        times = (rows[0]["timestamp"] - rows[0].get("time_this_iter_s", 0), rows[-1]["timestamp"]) if rows else None
        common = dict(kind="trial", experiment=f"sweep/{name}", record_id=f"trial:{name}/{dataset}/{trial}",
                      name=f"{dataset}/{trial}", status=state, times=times,
                      tags={k: v for k, v in tags.items() if v != ""})
        if ckpt is not None and (ckpt / "config.yaml").is_file():
            run_id = record_training(store, ckpt, report, **common)
        else:
            run_id = _record_bare_trial(store, exp_id, row, sweep, rows, **common)
        run = store.client.get_run(run_id)
        store.log(run_id, metrics=[(k, float(row[k]), 0) for k in TRIAL_METRICS if _number(row.get(k))])
        counts["trials"] += 1
        counts["reports"] += bool(run.data.tags.get("xai_lab.report_dir"))
    sigs = {f: _signature(results / f) for f in SWEEP_FILES if (results / f).is_file()}
    if sigs and _files_done(parent) != sigs:
        _upload(store, parent.info.run_id, [results / f for f in sigs], "sweep")
        for png in sorted(results.glob("*.png")):
            _upload(store, parent.info.run_id, [png], "sweep")
        _mark(store, parent, sigs)
    store.finish(parent, "FINISHED" if finished else "KILLED", end)
    return counts


def _record_bare_trial(store: Store, exp_id: str, row: dict, sweep: dict, rows: list[dict], *, record_id: str,
                       name: str, status: str, tags: dict, times: tuple | None, **_) -> str:
    """A trial without a checkpoint (it failed before its first): the sampled values and what Tune logged."""
    space = [k for k in (sweep.get("space") or {}) if row.get(k, "") != ""]
    run = store.upsert(exp_id, record_id, name, {"xai_lab.kind": "trial", **tags}, start=times and times[0])
    if not run.data.params:
        store.log(run.info.run_id, params={k: row[k] for k in space})
    _log_epochs(store, run, rows)
    store.finish(run, status, times and times[1])
    return run.info.run_id


def _result_rows(path: Path) -> list[dict]:
    """The epochs of a trial's ``result.json`` (Tune's log, one JSON object per reported epoch)."""
    rows = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and _number(row.get("timestamp")):
            rows.append(row)
    return rows


# --- sync: what was made while the store was off ----------------------------------------------------------


def sync(store: Store, paths: Iterable[str | Path]) -> dict[str, int]:
    """Record every run, cross-validation and sweep found under ``paths`` (run folders, ``artifacts/runs``,
    ``artifacts``, a sweep folder, ``ray_results``). Already recorded ones gain only what is new.

    Raises:
        UserError: a path does not exist or holds nothing to record.
    """
    from xai_lab.runs import report_dir_for

    counts = {"runs": 0, "cv": 0, "sweeps": 0, "trials": 0}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UserError(f"--sync: {path} does not exist")
        found = 0
        for kind, folder in _discover(path.resolve()):
            found += 1
            if kind == "sweep":
                counts["sweeps"] += 1
                counts["trials"] += record_sweep(store, folder)["trials"]
            elif kind == "cv":
                counts["cv"] += 1
                record_cv(store, folder)
            else:
                counts["runs"] += 1
                record_training(store, folder, report_dir_for(folder))
        if not found:
            raise UserError(f"--sync: nothing to record under {path} (no run folder with config.yaml and "
                            "train_log.jsonl, no cross-validation, no sweep with sweep.yaml)")
    return counts


def _discover(root: Path) -> Iterable[tuple[str, Path]]:
    """``("sweep" | "cv" | "run", folder)`` for each record under ``root``. Links are not followed (``latest``,
    a link loop), so each folder is found once."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if "sweep.yaml" in files:
            dirs[:] = []  # trials are recorded with their sweep
            yield "sweep", here
        elif here.name.startswith("cv-") and "config.yaml" in files:
            dirs[:] = []
            yield "cv", here
        elif "config.yaml" in files and "train_log.jsonl" in files:
            dirs[:] = []
            yield "run", here
        dirs[:] = [d for d in dirs if d not in ("tb", "xai")]


# --- helpers ------------------------------------------------------------------------------------------------


def config_params(config: dict) -> dict[str, Any]:
    """A saved config as MLflow params: dotted keys, the store's own settings left out."""
    return {k: v for k, v in flatten(config).items() if not k.startswith("store.")}


def _log_epochs(store: Store, run, rows: list[dict]) -> None:
    """Each epoch's numbers (step = epoch) after the last epoch already recorded on ``run``."""
    try:
        logged = int(run.data.tags.get(EPOCHS_TAG, 0))
    except ValueError:
        logged = 0
    new = [r for r in rows if r["epoch"] > logged]
    if not new:
        return
    metrics = [(k, v, r["epoch"]) for r in new for k, v in r.items()
               if k not in TUNE_KEYS and k != "epoch" and _number(v)]
    store.log(run.info.run_id, metrics=metrics, tags={EPOCHS_TAG: str(max(r["epoch"] for r in new))})


def _times(folder: Path, last: Path | None = None) -> tuple[float | None, float | None]:
    """When the work of a folder began and ended (seconds since the epoch): its config.yaml was written first,
    ``last`` (or train_summary.json, else train_log.jsonl) last."""
    def mtime(p: Path) -> float | None:
        try:
            return p.stat().st_mtime
        except OSError:
            return None

    start = mtime(folder / "config.yaml") or mtime(folder / "sweep.yaml")
    ends = [mtime(p) for p in (last, folder / "train_summary.json", folder / "train_log.jsonl") if p is not None]
    end = next((e for e in ends if e is not None), None)
    return start, end


def _files_done(run) -> dict[str, str]:
    try:
        return json.loads(run.data.tags.get(FILES_TAG, "{}"))
    except ValueError:
        return {}


def _mark(store: Store, run, sigs: dict[str, str]) -> None:
    """Remember which files were recorded (the run object is refreshed so later marks add to it)."""
    done = {**_files_done(run), **sigs}
    store.log(run.info.run_id, tags={FILES_TAG: json.dumps(done, sort_keys=True)})
    run.data.tags[FILES_TAG] = json.dumps(done, sort_keys=True)  # the entity's dict: later calls see it


def _upload(store: Store, run_id: str, files: list[Path], folder: str) -> None:
    if store.artifacts:
        for f in files:
            if f.is_file():
                store.client.log_artifact(run_id, str(f), folder)


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _relative_id(folder: Path) -> str:
    """``<exp>/<id>`` (or ``<exp>/cv-<id>/fold<k>``): the folder below ``runs/``, else its last two parts."""
    parts = folder.parts
    if "runs" in parts:
        i = len(parts) - 1 - parts[::-1].index("runs")
        if i < len(parts) - 1:
            return "/".join(parts[i + 1:])
    return "/".join(parts[-2:])


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- /]", "_", str(text))


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
        return value != ""
    except (TypeError, ValueError):
        return False


def _read_yaml(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}

