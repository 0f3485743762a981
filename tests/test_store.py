"""The run store (MLflow tracking): every verb records its run, a store that does not answer costs no result,
``runs --sync`` records what was made while it was off exactly once, and concurrent writers lose nothing, on
SQLite and on a real PostgreSQL server (Debian's package on 127.0.0.1, started by ``.ci/postgres-start``)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: stay on 127.0.0.1

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import ROOT, cli_env, make_folder_dataset, write_tiny_experiment  # noqa: E402

from xai_lab.cli import main  # noqa: E402
from xai_lab.store import Store, search  # noqa: E402

EXP = "configs/experiments/exp003_resnet20_synthfaces_clear.yaml"
NAME = "exp003_resnet20_synthfaces_clear"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URI of a PostgreSQL server on loopback: ``$XAI_LAB_TEST_POSTGRES`` (``.ci/run`` starts one), else one
    started here with ``.ci/postgres-start`` (``make postgres`` installs Debian's package)."""
    uri = os.environ.get("XAI_LAB_TEST_POSTGRES")
    if not uri:
        out = subprocess.run([str(ROOT / ".ci" / "postgres-start")], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"no PostgreSQL server for the store's tests: {out.stderr.strip()}"
        uri = out.stdout.strip()
    return uri


def fresh_database(server: str) -> str:
    """A new, empty database on the server; its URI."""
    import psycopg

    name = f"xai_lab_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {name}")
    return server.rsplit("/", 1)[0] + f"/{name}"


def connections(server: str, uri: str, settle: bool = True) -> int:
    """How many connections are open to the database of ``uri``; ``settle``: given a few seconds to reach 0 (a
    server process ends a moment after its client closed the connection)."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as con:
        for _ in range(50 if settle else 1):
            count = con.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                (uri.rsplit("/", 1)[1],)).fetchone()[0]
            if count == 0:
                break
            time.sleep(0.1)
    return count


def sqlite(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def run_cli(*argv: str) -> int:
    return main(["-q", *argv])


@pytest.fixture(scope="module")
def verbs(module_workdir):
    """train, evaluate, explain and cv (smoke-sized) in one working folder, recording in its own SQLite store."""
    store = sqlite(module_workdir)
    os.environ["XAI_LAB_STORE"] = store
    try:
        assert run_cli("train", "--config", EXP, "--smoke", "run.progress=false") == 0
        run_dir = sorted((module_workdir / "artifacts/runs" / NAME).glob("2*"))[-1]
        assert run_cli("evaluate", "--run-dir", str(run_dir), "--smoke") == 0
        assert run_cli("explain", "--run-dir", str(run_dir), "--smoke", "--methods", "saliency,gradcam") == 0
        assert run_cli("cv", "--config", EXP, "--smoke", "data.folds=3", "run.progress=false", "--only", "0,1") == 0
    finally:
        os.environ["XAI_LAB_STORE"] = "none"
    return module_workdir, run_dir, store


def test_every_verb_writes_its_record(verbs):
    work, run_dir, uri = verbs
    store = Store(uri)
    runs = search(store).set_index("tags.xai_lab.id")
    train = runs.loc[f"run:{NAME}/{run_dir.name}"]
    assert train["experiment"] == NAME and train["status"] == "FINISHED"
    assert train["tags.xai_lab.kind"] == "train" and train["tags.xai_lab.run_dir"] == str(run_dir)
    assert train["params.model.name"] == "resnet20" and train["params.train.epochs"] == "1"
    assert "params.store.uri" not in runs.columns  # the store's own setting is not a param of the run
    assert len(store.client.get_metric_history(train["run_id"], "val_macro_f1")) == 1  # one epoch, one point
    # evaluate: test metrics; explain: every method beside both baselines, and the report's files as artifacts
    assert 0 <= train["metrics.test_accuracy"] <= 1 and "metrics.test_f1.happy" in runs.columns
    for method in ("saliency", "gradcam"):
        for name in ("insertion_auc", "insertion_auc.random_maps", "insertion_auc.randomized_model"):
            assert pd.notna(train[f"metrics.{method}.{name}"]), (method, name)
    assert train["tags.xai_lab.report_dir"] == str(work / "artifacts/reports" / NAME / run_dir.name)
    report = [a.path for a in store.client.list_artifacts(train["run_id"], "report/xai")]
    assert "report/xai/metrics.json" in report and "report/xai/saliency" in report
    assert {a.path for a in store.client.list_artifacts(train["run_id"], "run")} == \
        {"run/config.yaml", "run/train_summary.json"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    got = store.client.get_run(train["run_id"]).data.tags.get("mlflow.source.git.commit", "")
    assert got == commit
    # cv: one parent with the mean over the folds, a child per fold that ran, each with its test accuracy
    parent = runs[runs["tags.xai_lab.kind"] == "cv"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    folds = runs[runs["tags.xai_lab.kind"] == "cv_fold"]
    assert sorted(folds["tags.xai_lab.fold"]) == ["0", "1"]
    children = store.client.search_runs([store.experiment(NAME)],
                                        f"tags.mlflow.parentRunId = '{parent['run_id'].iloc[0]}'")
    assert len(children) == 2
    assert parent["metrics.test_accuracy"].iloc[0] == pytest.approx(folds["metrics.test_accuracy"].mean())


def test_runs_lists_filters_sorts_and_writes_csv(verbs, capsys):
    _, run_dir, uri = verbs
    capsys.readouterr()
    assert main(["runs", "--store", uri]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    for column in ("experiment", "run", "test_accuracy", "saliency.pointing_game", "xai_lab.report_dir"):
        assert column in header
    assert run_dir.name in out
    code = main(["runs", "--store", uri, "--csv", "--filter", "tags.xai_lab.kind = 'cv_fold'",
                 "--sort", "params.data.fold ASC", "--columns", "run,params.data.fold,test_accuracy,kind"])
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert code == 0 and list(table.columns) == ["run", "data.fold", "test_accuracy", "xai_lab.kind"]
    assert table["data.fold"].tolist() == [0, 1] and set(table["xai_lab.kind"]) == {"cv_fold"}
    # mistakes are one line and exit 2
    for argv, words in ((["--filter", "metrics.test_accuracy >>> 1"], "cannot search"),
                        (["--columns", "no_such_thing"], "no run has 'no_such_thing'"),
                        (["--experiment", "nope"], "no experiment 'nope'")):
        assert main(["runs", "--store", uri, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_a_store_that_does_not_answer_costs_no_result(in_tmp, kind):
    (in_tmp / "blocker").write_text("a file where the store's folder should be")
    uri = {"postgres": f"postgresql://xai:secret@127.0.0.1:{free_port()}/xai_lab",
           "sqlite": f"sqlite:///{in_tmp / 'blocker' / 'mlflow.db'}"}[kind]
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "xai_lab", "-q", "train", "--config", EXP, "--smoke",
                          "run.progress=false"], cwd=in_tmp, env=cli_env(XAI_LAB_STORE=uri),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert time.time() - t0 < 60
    run_dir = sorted((in_tmp / "artifacts/runs" / NAME).glob("2*"))[-1]
    assert (run_dir / "best.pt").is_file() and (run_dir / "train_summary.json").is_file()
    warning = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(warning) == 1, out.stderr
    assert "not recorded" in warning[0] and f"xai-lab runs --sync {run_dir}" in warning[0]
    assert "secret" not in out.stderr


def test_sync_adds_what_is_missing_exactly_once(verbs, tmp_path, capsys):
    work, run_dir, _ = verbs
    uri = sqlite(tmp_path)
    capsys.readouterr()
    assert main(["runs", "--store", uri, "--sync", str(work / "artifacts")]) == 0
    assert "4 new records" in capsys.readouterr().out  # the run, the cv and its two folds
    store = Store(uri)
    first = search(store)
    history = len(store.client.get_metric_history(first.set_index("run").loc[run_dir.name, "run_id"], "val_loss"))
    assert main(["runs", "--store", uri, "--sync", str(work / "artifacts/runs"), str(run_dir)]) == 0
    assert "0 new records" in capsys.readouterr().out
    again = search(store)
    assert len(again) == len(first) == 4
    assert sorted(again["tags.xai_lab.id"]) == sorted(first["tags.xai_lab.id"])
    rid = again.set_index("run").loc[run_dir.name, "run_id"]
    assert len(store.client.get_metric_history(rid, "val_loss")) == history == 1  # no epoch logged twice
    assert again.set_index("run").loc[run_dir.name, "metrics.test_accuracy"] == \
        first.set_index("run").loc[run_dir.name, "metrics.test_accuracy"]
    assert main(["runs", "--store", uri, "--sync", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_four_writers_at_once_lose_nothing(verbs, tmp_path, kind, request):
    """Four processes recording into one new store at once: the database is created once, the experiment
    once (the losers of that race find it), and every record arrives."""
    _, run_dir, _ = verbs
    uri = sqlite(tmp_path) if kind == "sqlite" else fresh_database(request.getfixturevalue("postgres_server"))
    copies = []
    for i in range(4):
        copy = tmp_path / "runs" / NAME / f"{run_dir.name}{i}"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.pt", "tb"))
        copies.append(copy)
    procs = [subprocess.Popen([sys.executable, "-m", "xai_lab", "runs", "--store", uri, "--sync", str(c)],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in copies]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    runs = search(Store(uri))
    assert sorted(runs["run"]) == sorted(c.name for c in copies)
    assert set(runs["experiment"]) == {NAME} and set(runs["status"]) == {"FINISHED"}


@pytest.mark.postgres
def test_a_closed_store_keeps_no_connection_open(postgres_server):
    """MLflow pools a database's connections for the life of the process; closing the store (as every verb does
    when it has recorded) closes them, and the store reconnects when used again."""
    uri = fresh_database(postgres_server)
    with Store(uri) as store:
        store.experiment("one")
        assert connections(postgres_server, uri, settle=False) >= 1  # pooled, open
    assert connections(postgres_server, uri) == 0
    store.experiment("two")  # reconnects
    assert {e.name for e in store.client.search_experiments()} >= {"one", "two"}
    store.close()
    assert connections(postgres_server, uri) == 0


SWEEP = """name: pg
experiments: [tiny.yaml]
space:
  train.lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
search: {{num_samples: 4, max_concurrent: 4, seed: 0, evaluate_base_first: false}}
scheduler: {{type: fifo, max_epochs: 2}}
resources: {{cpu: 0.5, gpu: auto}}
fanout: {{top_k: 1, cpu: 1, num_each: 2, maps_per_class: 4, methods: [saliency]}}
store: {{uri: "{uri}"}}
"""


@pytest.mark.postgres
def test_a_sweep_of_four_concurrent_trials_on_postgres(postgres_server, tmp_path, monkeypatch):
    """A sweep whose four trials run at once on a 2-CPU Ray, recorded in PostgreSQL: every trial with its config,
    curves and status beside the sweep's run, the reported one with its scores and files; the experiment names
    its Optuna study. Then the same folder synced into an empty store adds each record once."""
    import ray

    from sweeps.config import load_sweep
    from sweeps.driver import run_sweep

    uri = fresh_database(postgres_server)
    make_folder_dataset(tmp_path / "data/raw/tiny", ["happy", "sad", "angry"], 10, seed=3)
    write_tiny_experiment(tmp_path, "tiny", "data/raw/tiny")
    (tmp_path / "pg.yaml").write_text(SWEEP.format(uri=uri))
    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        outcome = run_sweep(load_sweep("pg.yaml"), verbose=0, progress=False)
    finally:
        ray.shutdown()
    assert outcome.recorded == {"trials": 4, "reports": 1, "uri": uri.replace(":xai@", ":***@")}
    assert connections(postgres_server, uri) == 0  # the driver closed what it opened
    trials = pd.read_csv(outcome.leaderboard, dtype={"trial_id": str})
    # the four ran at once: each trial's time span (from Tune's result.json) overlaps every other one
    spans = []
    for trial_dir in trials["trial_dir"]:
        last = json.loads((Path(trial_dir) / "result.json").read_text().splitlines()[-1])
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    assert max(s for s, _ in spans) <= min(e for _, e in spans) + 1, spans

    store = Store(uri)
    exp = store.client.get_experiment_by_name("sweep/pg")
    assert exp.tags["optuna.studies"] == "pg/tiny" and exp.tags["optuna.storage"].endswith("pg/optuna.db")
    runs = search(store).set_index("tags.xai_lab.id")
    assert len(runs) == 5
    parent = runs.loc["sweep:pg"]
    assert parent["status"] == "FINISHED" and parent["tags.xai_lab.kind"] == "sweep"
    recorded = runs[runs["tags.xai_lab.kind"] == "trial"]
    assert sorted(recorded["tags.xai_lab.trial_id"]) == sorted(trials["trial_id"])
    assert set(recorded["status"]) == {"FINISHED"} and set(recorded["tags.optuna.study"]) == {"pg/tiny"}
    for _, row in recorded.iterrows():
        assert float(row["params.train.lr"]) == pytest.approx(
            trials.set_index("trial_id").loc[row["tags.xai_lab.trial_id"], "train.lr"])
        assert len(store.client.get_metric_history(row["run_id"], "val_macro_f1")) == 2
        assert row["tags.xai_lab.sweep"] == "pg"
        info = store.client.get_run(row["run_id"]).info  # when the trial ran, not when it was recorded
        last = json.loads((Path(row["tags.xai_lab.trial_dir"]) / "result.json").read_text().splitlines()[-1])
        assert info.end_time == pytest.approx(last["timestamp"] * 1000, abs=1)
        assert info.end_time - info.start_time == pytest.approx(last["time_total_s"] * 1000, abs=1500)
    best = recorded[recorded["tags.xai_lab.rank"] == "1"].iloc[0]
    assert 0 <= best["metrics.test_accuracy"] <= 1 and pd.notna(best["metrics.saliency.insertion_auc"])
    assert "report/xai/metrics.json" in [a.path for a in store.client.list_artifacts(best["run_id"], "report/xai")]
    assert "sweep/leaderboard.csv" in [a.path for a in store.client.list_artifacts(parent["run_id"], "sweep")]

    # a sweep made while the store was off: synced once, then nothing more
    other = sqlite(tmp_path / "later")
    for expected in ("5 new records", "0 new records"):
        out = subprocess.run([sys.executable, "-m", "xai_lab", "runs", "--store", other, "--sync",
                              str(outcome.paths.results)], env=cli_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and expected in out.stdout, out.stdout + out.stderr
    assert len(search(Store(other))) == 5
