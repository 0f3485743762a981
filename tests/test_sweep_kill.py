"""Sweeps killed and resumed: the driver gets SIGKILL while trials run, and SIGKILL, Ctrl-C and SIGTERM
during the fan-out; each time ``--resume`` keeps what finished (byte for byte) and ends the sweep.

Every driver is the real ``xai-lab sweep`` in its own process (and process group, so the Ray processes a
killed driver leaves behind are cleaned up when the test ends, after the resume ran beside them).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_env, make_folder_dataset, write_tiny_experiment

# a local Ray on 127.0.0.1 for every xai-lab process the tests start
LOCAL_ENV = cli_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")

SWEEP = """name: {name}
experiments: [tiny.yaml]
space:
  train.sampler: {{type: categorical, choices: [none, sqrt_balanced]}}
  train.lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
search: {{num_samples: {n}, max_concurrent: 2, seed: 0}}
scheduler: {{type: fifo, max_epochs: {epochs}}}
resources: {{cpu: 1, gpu: auto}}
fanout: {{top_k: {top}, cpu: 2, methods: [gradcam], num_each: 2, maps_per_class: 4}}
"""


class Driver:
    """One ``xai-lab -q sweep`` process in a process group of its own."""

    groups: list[int] = []

    def __init__(self, folder: Path, config: str, resume: bool = False):
        args = [sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", config, *(["--resume"] if resume else [])]
        self.log = open(folder / f"driver-{len(Driver.groups)}.log", "w+")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(args, cwd=folder, env=LOCAL_ENV, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        Driver.groups.append(self.proc.pid)

    def until(self, condition, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the driver ended early:\n{self.output()[-3000:]}"
            assert time.time() < deadline, f"timed out:\n{self.output()[-3000:]}"
            time.sleep(0.1)

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the driver alone (not its Ray processes); returns the time it was sent."""
        os.kill(self.proc.pid, sig)
        return time.time()

    def wait(self, timeout: float = 400) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()


@pytest.fixture
def sweep_folder(tmp_path):
    make_folder_dataset(tmp_path / "data" / "raw" / "tiny", ["happy", "sad", "surprise"], 14)
    write_tiny_experiment(tmp_path, "tiny", "data/raw/tiny")
    yield tmp_path
    for pgid in Driver.groups:  # the Ray processes the drivers started, killed ones included
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    Driver.groups.clear()


def _finished_trials(exp: Path, epochs: int) -> dict[str, bytes]:
    """``{trial folder: result.json bytes}`` of the trials whose last result is their last epoch."""
    out = {}
    for result in exp.glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows and rows[-1].get("training_iteration") == epochs:
            out[result.parent.name] = result.read_bytes()
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_kill_9_while_trials_run_then_resume(sweep_folder):
    epochs = 12  # a trial takes several seconds: the kill finds some finished and some running
    (sweep_folder / "s.yaml").write_text(SWEEP.format(name="killed", n=5, epochs=epochs, top=1))
    results = sweep_folder / "ray_results" / "killed"
    exp = results / "tiny"
    first = Driver(sweep_folder, "s.yaml")
    first.until(lambda: len(_finished_trials(exp, epochs)) >= 1
                and len(list(exp.glob("*/result.json"))) > len(_finished_trials(exp, epochs)))
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    finished = _finished_trials(exp, epochs)
    assert 1 <= len(finished) < 5
    checkpoints = {t: _files(exp / t) for t in finished}

    second = Driver(sweep_folder, "s.yaml", resume=True)
    assert second.wait() == 0, second.output()[-3000:]
    board = pd.read_csv(results / "leaderboard.csv")
    assert len(board) == 5 and board["trial_id"].is_unique
    assert set(board["status"]) <= {"completed", "early_stopped"}
    for trial, text in finished.items():  # finished before the kill: kept byte for byte
        assert (exp / trial / "result.json").read_bytes() == text
        assert _files(exp / trial) == checkpoints[trial]  # its checkpoint, run, events, ...: nothing rewritten
    assert len(_finished_trials(exp, epochs)) == 5  # every trial ran to its last epoch
    with sqlite3.connect(results / "optuna.db") as db:  # the same study, continued: one row per trial
        states = db.execute("SELECT t.state FROM trials t JOIN studies s USING (study_id) "
                            "WHERE s.study_name = 'killed/tiny'").fetchall()
    assert sorted(s for (s,) in states).count("COMPLETE") == 5
    assert (board["report"] == "ok").sum() == 1 and (results / "index.html").is_file()


def _reports_done(results: Path) -> list[Path]:
    return sorted(results.glob("reports/*/*/job.json"))


@pytest.mark.slow  # four driver starts, about 90 s: make test-slow
def test_kill_ctrl_c_and_sigterm_during_the_fanout_keep_finished_reports(sweep_folder):
    (sweep_folder / "s.yaml").write_text(SWEEP.format(name="fan", n=4, epochs=1, top=4))
    results = sweep_folder / "ray_results" / "fan"
    kept: dict[Path, bytes] = {}
    for round_, sig in enumerate([signal.SIGKILL, signal.SIGINT, signal.SIGTERM]):
        driver = Driver(sweep_folder, "s.yaml", resume=round_ > 0)
        driver.until(lambda n=round_: len(_reports_done(results)) > n)
        for done in _reports_done(results):  # reports finished before this signal: never written again
            kept.setdefault(done.parent, _files(done.parent))
        sent = driver.signal(sig)
        rc = driver.wait(timeout=60)
        took, out = time.time() - sent, driver.output()
        if sig == signal.SIGKILL:
            assert rc == -signal.SIGKILL
            continue
        assert rc == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], out[-3000:]
        assert took < 30, f"{took:.0f} s to stop"
        assert "Traceback" not in out, out[-3000:]
        assert "--resume" in out.splitlines()[-1], out[-1000:]
        board = pd.read_csv(results / "leaderboard.csv", dtype={"report": str})
        assert (board["report"] == "ok").sum() >= len(kept)  # the leaderboard records the reports done
    last = Driver(sweep_folder, "s.yaml", resume=True)
    assert last.wait() == 0, last.output()[-3000:]
    board = pd.read_csv(results / "leaderboard.csv", dtype={"report": str})
    assert (board["report"] == "ok").sum() == 4
    for folder, files in kept.items():
        assert _files(folder) == files, folder
    assert (results / "index.html").is_file()


def test_a_snapshot_file_cut_off_by_the_kill_is_put_back(tmp_path, monkeypatch):
    """Tune copies its snapshot into the experiment folder after writing it (atomically) in the driver's staging
    folder; a kill mid-copy leaves an empty or cut-off file there, and Tune would restore a broken sweep."""
    import ray

    from sweeps.driver import repair_experiment_state
    from xai_lab.errors import UserError

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    exp = tmp_path / "ray_results" / "s" / "tiny"
    staging = tmp_path / "tmp" / "ray" / "session_1" / "artifacts" / "2026-11-30_08-21-16" / "tiny" / "driver_artifacts"
    exp.mkdir(parents=True)
    staging.mkdir(parents=True)
    name = "searcher-state-2026-11-30_08-21-16.pkl"
    with open(staging / name, "wb") as f:
        ray.cloudpickle.dump({"searcher": [1, 2, 3]}, f)
    (exp / name).write_bytes((staging / name).read_bytes()[:7])  # cut off
    (exp / "experiment_state-2026-11-30_08-21-16.json").write_text('{"trial_data": []}')  # intact: left alone
    assert repair_experiment_state(exp) == [name]
    assert (exp / name).read_bytes() == (staging / name).read_bytes()
    assert repair_experiment_state(exp) == []  # nothing left to repair

    (exp / name).write_bytes(b"")
    (staging / name).unlink()
    with pytest.raises(UserError, match="cut off when the driver stopped and no intact copy is left"):
        repair_experiment_state(exp)
