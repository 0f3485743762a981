"""The run store's connection: where it is (``store.uri``, ``$XAI_LAB_STORE``, ``$MLFLOW_TRACKING_URI``, else
``mlflow.db`` in the working folder), an MLflow client checked to answer before anything is written, records
found again by their id, writes retried while SQLite is busy, and :func:`record`, which turns any failure into
one warning so that the store never costs a result. :func:`search` reads the runs back as a table."""

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

from xai_lab.errors import UserError

log = logging.getLogger(__name__)

ENV = "XAI_LAB_STORE"
KEY_TAG = "xai_lab.key"  # a hash of the record's id: a value any filter string can quote
ID_TAG = "xai_lab.id"
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

    def close(self) -> None:
        """Close the database connections MLflow keeps pooled for this store's URI. MLflow holds them for the life
        of the process; a notebook or a sweep driver that records into many stores would keep each one's
        connections open, and a PostgreSQL server has only so many. Using the store again reconnects."""
        engine = getattr(self.client._tracking_client.store, "engine", None)  # SQL stores; None for a server
        if engine is not None:
            engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        with Store(uri, store_cfg.artifacts) as opened:
            return fn(opened)
    except Exception as e:  # noqa: BLE001 - see above: a warning, never a failed run
        log.warning("run store %s: %s not recorded (%s); record it later: xai-lab runs --sync %s",
                    shown(uri), what, _reason(e), Path(sync).resolve())
        return None


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


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def _finite(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v == v and abs(v) != float("inf")


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

