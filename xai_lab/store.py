"""The run store: every run, cross-validation, evaluation, explanation and sweep trial in one MLflow tracking store.

Each record is built from the folders the verbs write (a run folder, its report folder, a cv folder, a sweep's
results folder), so the same code records a run as it finishes and a run made while the store was off
(``xai-lab runs --sync PATH``). A record is found again by its key (tag ``xai_lab.id``: ``run:<exp>/<id>``,
``cv:<exp>/cv-<id>``, ``sweep:<name>``, ``trial:<sweep>/<dataset>/<trial>``), so recording twice adds nothing
twice: params are written once, epochs after the last one recorded, a report's scores and files when the files
changed (tag ``xai_lab.files``).

What a record holds:

* params: the resolved config, flattened (``model.depth``, ``train.lr``, ...; ``store.*`` left out);
* metrics: the per-epoch curves (step = epoch), ``best_val_macro_f1``, test accuracy and macro-F1, and per
  explainer its scores beside both baselines (``gradcam.pointing_game``, ``gradcam.pointing_game.random_maps``,
  ``gradcam.pointing_game.randomized_model``, ``gradcam.share_mouth``; :func:`xai_lab.scores.report_scores`);
* tags: ``xai_lab.kind`` (train, cv, cv_fold, sweep, trial), ``xai_lab.dataset``, ``xai_lab.experiment``,
  ``xai_lab.status``, ``xai_lab.run_dir``, ``xai_lab.report_dir``, the sweep, trial id and Optuna study of a
  trial, and ``mlflow.source.git.commit`` when the code is a git checkout;
* artifacts (``store.artifacts``): config.yaml, train_summary.json and the report folder (figures, JSON, tables).

Single runs and cross-validations go into the MLflow experiment named after the experiment (``run.name``),
a cross-validation's folds as children of its run; a sweep into ``sweep/<name>``: the sweep's own run and one
run per trial beside it, the experiment tagged with its Optuna studies. Only the process that ran the work
writes (a verb, or a sweep's driver after its trials and reports): trials never write, so any number
finishing at once cannot race for the store.

The store never costs a result: :func:`record` turns any failure into one warning line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from xai_lab.config import flatten
from xai_lab.errors import UserError
from xai_lab.scores import report_scores

log = logging.getLogger(__name__)

ENV = "XAI_LAB_STORE"
KEY_TAG = "xai_lab.key"  # a hash of the record's id: a value any filter string can quote
ID_TAG = "xai_lab.id"
FILES_TAG = "xai_lab.files"  # what was recorded from which file (size and mtime), so a sync adds only what changed
EPOCHS_TAG = "xai_lab.epochs_logged"
# Tune's bookkeeping in a trial's result.json, not curves of the run
TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
             "iterations_since_restore", "done", "early_stopped", "checkpoint_dir_name"}
STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "pruned": "FINISHED", "error": "FAILED"}
LOCKED_RETRIES = 8  # a busy SQLite file ("database is locked"): tries, 0.25 s doubling (~1 min in all)


def resolve_uri(configured: str = "") -> str | None:
    """The store's URI: ``store.uri``, else ``$XAI_LAB_STORE``, else ``$MLFLOW_TRACKING_URI``, else
    ``mlflow.db`` (SQLite) in the working folder, which is also where ``mlflow ui`` looks first. None: off."""
    uri = (configured or os.environ.get(ENV) or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.lower() in ("none", "off", "false"):
        return None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative: to the working folder
        uri = f"sqlite:///{(Path.cwd() / uri[len('sqlite:///'):]).resolve()}"
    return uri


def shown(uri: str) -> str:
    """The URI without its password, fit for a log line or a tag."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)


class Store:
    """An MLflow tracking store reached through ``MlflowClient``, checked to answer when opened."""

    def __init__(self, uri: str, artifacts: bool = True):
        self.uri, self.artifacts = uri, artifacts
        _quiet_mlflow()
        _probe(uri)
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()  # again: importing MLflow sets its logger's level
        with _init_lock(uri):  # MLflow creates a new database's tables when it opens it; two at once break it
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)
        self.created: list[str] = []  # ids of the records this store object created
        self._experiments: dict[str, str] = {}
        self._commit = _git_commit()

    # --- experiments and runs --------------------------------------------------------------------------

    def experiment(self, name: str, tags: dict[str, str] | None = None) -> str:
        """The id of the experiment ``name``, created if missing (another process creating it first is fine)."""
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        found = self._call(self.client.get_experiment_by_name, name)
        # mlflow ui shows the experiment as model training (runs, params, metrics), not as GenAI traces
        tags = {"mlflow.experimentKind": "custom_model_development", **(tags or {})}
        if found is None:
            try:
                exp_id = self._call(self.client.create_experiment, name, self._artifact_location(name))
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp_id = self._call(self.client.get_experiment_by_name, name).experiment_id
        else:
            exp_id = found.experiment_id
            if found.lifecycle_stage == "deleted":
                self._call(self.client.restore_experiment, exp_id)
        for key, value in tags.items():
            if found is None or found.tags.get(key) != value:
                self._call(self.client.set_experiment_tag, exp_id, key, value)
        self._experiments[name] = exp_id
        return exp_id

    def _artifact_location(self, name: str) -> str | None:
        """SQLite: the artifacts beside the database file (``mlartifacts/``), wherever the command ran."""
        if not self.uri.startswith("sqlite:///"):
            return None  # the server's or MLflow's default
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]
        folder = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" / f"{slug}-{_digest(name)[:8]}"
        return folder.resolve().as_uri()

    def find(self, exp_id: str, record_id: str):
        """The run recorded as ``record_id`` in the experiment, or None."""
        runs = self._call(self.client.search_runs, [exp_id], f"tags.`{KEY_TAG}` = '{_digest(record_id)}'",
                          max_results=2)
        return runs[0] if runs else None

    def upsert(self, exp_id: str, record_id: str, name: str, tags: dict[str, str], parent: str | None = None,
               start: float | None = None):
        """The run of ``record_id`` (created if missing, its tags updated; ``start``: when the work began, in
        seconds since the epoch); returns the MLflow ``Run``."""
        run = self.find(exp_id, record_id)
        tags = {**tags, ID_TAG: record_id, KEY_TAG: _digest(record_id)}
        if self._commit:
            tags.setdefault("mlflow.source.git.commit", self._commit)
        if parent:
            tags["mlflow.parentRunId"] = parent
        if run is None:
            run = self._call(self.client.create_run, exp_id, tags=tags, run_name=name,
                             start_time=int(start * 1000) if start else None)
            self.created.append(record_id)
        else:
            changed = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
            self.log(run.info.run_id, tags=changed)
        return run

    def log(self, run_id: str, params: dict | None = None, metrics: Iterable[tuple[str, float, int]] = (),
            tags: dict[str, str] | None = None) -> None:
        """Params, ``(name, value, step)`` metrics and tags, in batches MLflow accepts."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ps = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), now, int(s)) for k, v, s in metrics if _finite(v)]
        ts = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items()]
        for i in range(0, len(ps), 100):
            self._call(self.client.log_batch, run_id, params=ps[i:i + 100])
        for i in range(0, len(ms), 1000):
            self._call(self.client.log_batch, run_id, metrics=ms[i:i + 1000])
        for i in range(0, len(ts), 100):
            self._call(self.client.log_batch, run_id, tags=ts[i:i + 100])

    def finish(self, run, status: str, end: float | None = None) -> None:
        """Set the MLflow status (FINISHED, FAILED, KILLED, RUNNING) and end time (seconds since the epoch)
        when they changed."""
        end_ms = int(end * 1000) if end else None
        if run.info.status != status or (end_ms and run.info.end_time != end_ms):
            if status == "RUNNING":
                self._call(self.client.update_run, run.info.run_id, status)
            else:
                self._call(self.client.set_terminated, run.info.run_id, status, end_ms)

    def _call(self, fn: Callable, *args, **kwargs):
        """``fn``, tried again while SQLite says the database is locked (another process is writing)."""
        for attempt in range(LOCKED_RETRIES):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - only the lock is retried
                if "database is locked" not in str(e) or attempt == LOCKED_RETRIES - 1:
                    raise
                time.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")


def open_store(configured: str = "", artifacts: bool = True) -> Store | None:
    """The store ``configured`` names (see :func:`resolve_uri`), or None when it is off.

    Raises:
        UserError: it does not answer (one line naming it and why).
    """
    uri = resolve_uri(configured)
    if uri is None:
        return None
    try:
        return Store(uri, artifacts)
    except Exception as e:  # noqa: BLE001 - whatever MLflow or the driver raises, said in one line
        raise UserError(f"the run store {shown(uri)} does not answer: {_reason(e)}") from None


def record(store_cfg, what: str, fn: Callable[[Store], Any], sync: str | Path) -> Any:
    """Run ``fn(store)`` on the store ``store_cfg`` (a :class:`xai_lab.config.StoreConfig`) names.

    The store never costs a result: when it is off this does nothing; when it does not answer or a write
    fails, it logs one warning (what was not recorded, why, and the ``xai-lab runs --sync`` that records it
    later) and returns None.
    """
    uri = resolve_uri(store_cfg.uri)
    if uri is None:
        return None
    try:
        return fn(Store(uri, store_cfg.artifacts))
    except Exception as e:  # noqa: BLE001 - see above: a warning, never a failed run
        log.warning("run store %s: %s not recorded (%s); record it later: xai-lab runs --sync %s",
                    shown(uri), what, _reason(e), Path(sync).resolve())
        return None


# --- records -----------------------------------------------------------------------------------------------


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


# --- queries ------------------------------------------------------------------------------------------------


def search(store: Store, filter_string: str = "", order_by: list[str] | None = None,
           experiments: list[str] | None = None, max_results: int = 1000):
    """Runs of the store as a DataFrame: ``run``, ``experiment``, ``status``, ``start``, ``run_id`` and every
    ``params.*``, ``metrics.*``, ``tags.*`` (MLflow's own tags left out).

    Raises:
        UserError: an experiment that does not exist, or a filter or sort MLflow cannot parse.
    """
    import pandas as pd
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    client = store.client
    if experiments:
        exps = []
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                known = ", ".join(e.name for e in client.search_experiments()) or "none"
                raise UserError(f"no experiment {name!r} in the store {shown(store.uri)}; experiments: {known}")
            exps.append(exp)
    else:
        exps = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    names = {e.experiment_id: e.name for e in exps}
    runs, token = [], None
    try:
        while names and len(runs) < max_results:
            page = client.search_runs(list(names), filter_string, ViewType.ACTIVE_ONLY,
                                      min(1000, max_results - len(runs)), order_by or ["attributes.start_time DESC"],
                                      token)
            runs += list(page)
            token = page.token
            if not token:
                break
    except MlflowException as e:
        raise UserError(f"the store cannot search that: {str(e).splitlines()[0]}") from None
    rows = []
    for r in runs:
        row = {"run": r.info.run_name, "experiment": names.get(r.info.experiment_id, ""),
               "status": r.info.status, "start": pd.Timestamp(r.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
               "run_id": r.info.run_id}
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items() if not k.startswith("mlflow.")})
        rows.append(row)
    return pd.DataFrame(rows)


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


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


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


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


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


def _finite(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v == v and abs(v) != float("inf")


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


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    """The commit of the xai-lab checkout that runs, when it is one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@contextlib.contextmanager
def _init_lock(uri: str):
    """One process at a time opens the store for the first time: MLflow checks whether a database has its
    tables and then creates them, and processes that find them missing together each run the migrations, the
    later ones failing. SQLite: a lock file (one machine); PostgreSQL: an advisory lock (any machine)."""
    if uri.startswith("sqlite:///"):
        import fcntl

        with open(Path(tempfile.gettempdir()) / f"xai-lab-store-{_digest(uri)}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif uri.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10})
        try:
            with engine.connect() as con:
                con.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext('xai-lab run store'))"))
                try:
                    yield
                finally:
                    con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext('xai-lab run store'))"))
        finally:
            engine.dispose()
    else:
        yield


def _quiet_mlflow() -> None:
    """MLflow's and Alembic's INFO lines (creating tables, ...) stay out of the command's output; a server that
    does not answer is given up on in seconds, not after MLflow's minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _probe(uri: str) -> None:
    """Fail fast, in one line, where MLflow would retry for minutes: a database that does not answer or a
    SQLite path that cannot be written (ConnectionError saying why)."""
    if uri.startswith("sqlite:///"):
        import sqlite3

        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(path, timeout=30)
            try:
                con.execute("PRAGMA schema_version").fetchall()
            finally:
                con.close()
        except (OSError, sqlite3.Error) as e:
            raise ConnectionError(f"cannot open {path}: {e}") from None
    elif uri.split(":", 1)[0].split("+")[0] in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        args = {"connect_timeout": 10} if uri.startswith(("postgresql", "mysql")) else {}
        engine = sqlalchemy.create_engine(uri, connect_args=args)
        try:
            with engine.connect():
                pass
        except Exception as e:  # noqa: BLE001 - the driver's own error, shortened
            raise ConnectionError(_reason(e).split(" (Background")[0]) from None
        finally:
            engine.dispose()
    elif uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10):
                pass
        except Exception as e:  # noqa: BLE001 - refused, timed out, 5xx: the server does not answer
            raise ConnectionError(_reason(e)) from None
