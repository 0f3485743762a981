"""Stopped single runs, in real processes: SIGTERM during ``xai-lab train`` exits 143 within seconds with
``last.pt`` whole and the ``--resume`` command printed, which then finishes the run; ``xai-lab cv`` stopped the
same way carries on with ``cv --resume``, keeping the folds that had finished byte for byte. A stop that comes
while a checkpoint is written waits for the write and for the note of which epoch it holds (``held_stop``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli_env

from xai_lab.checkpoint import load_checkpoint
from xai_lab.signals import StopSignals, held_stop

EXP = "configs/experiments/exp003_resnet20_synthfaces_clear.yaml"
SMALL = ["data.synthfaces.n_per_class=40", "model.depth=8", "run.progress=false", "run.device=cpu",
         "explain.methods=[saliency]"]


def start(tmp_path: Path, *argv: str, ignore_ctrl_c: bool = False) -> subprocess.Popen:
    """``xai-lab ARGV`` in ``tmp_path``; ``ignore_ctrl_c``: with SIGINT ignored, as a job started with ``&``
    from a script (or under nohup) is, where SIGTERM is what stops it."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    command = [sys.executable, "-m", "xai_lab", "-q", *argv]
    if ignore_ctrl_c:
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    return subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{pattern} never appeared")


def term(proc: subprocess.Popen) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.monotonic() - t0


def resume_command(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xai-lab ") and "SIGTERM" in lines[0], err
    return lines[0].split("carry on with: ", 1)[1].split()


def test_sigterm_during_train_exits_143_and_resumes(tmp_path):
    proc = start(tmp_path, "train", "--config", EXP, *SMALL, "train.epochs=8")
    last = wait_for("artifacts/runs/*/2*/last.pt", tmp_path, proc)
    code, err, seconds = term(proc)
    assert code == 143 and seconds < 30, err
    command = resume_command(err)
    assert command[:3] == ["xai-lab", "train", "--resume"]
    assert (tmp_path / command[3]).resolve() == last.parent.resolve()
    epoch = int(load_checkpoint(last)["epoch"])  # whole, not torn by the stop
    assert 1 <= epoch < 8 and f"last.pt holds epoch {epoch}" in err
    done = subprocess.run([sys.executable, "-m", "xai_lab", "-q", *command[1:]], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((last.parent / "train_summary.json").read_text())
    rows = [json.loads(line) for line in (last.parent / "train_log.jsonl").read_text().splitlines()]
    assert summary["final"]["epoch"] == 8 and summary["epochs_run"] == 8 - epoch  # this process ran the rest
    assert [r["epoch"] for r in rows] == list(range(1, 9))  # each epoch logged once


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigterm_during_cv_carries_on_with_the_folds_not_finished(tmp_path):
    proc = start(tmp_path, "cv", "--config", EXP, *SMALL, "train.epochs=3", "data.folds=3", ignore_ctrl_c=True)
    second = wait_for("artifacts/runs/*/cv-*/fold1/last.pt", tmp_path, proc)
    cv_dir = second.parent.parent
    code, err, seconds = term(proc)
    assert code == 143 and seconds < 30, err
    command = resume_command(err)
    assert command[:3] == ["xai-lab", "cv", "--resume"] and (tmp_path / command[3]).resolve() == cv_dir.resolve()
    report = tmp_path / "artifacts/reports" / cv_dir.parent.name / cv_dir.name
    finished = {"run": digest(cv_dir / "fold0"), "report": digest(report / "fold0")}
    assert "train_summary.json" in finished["run"] and "test_summary.json" in finished["report"]
    assert not (report / "cv_summary.json").exists()
    done = subprocess.run([sys.executable, "-m", "xai_lab", "-q", *command[1:]], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert {"run": digest(cv_dir / "fold0"), "report": digest(report / "fold0")} == finished
    result = json.loads((report / "cv_summary.json").read_text())
    assert result["folds_run"] == [0, 1, 2] and len(result["per_fold"]) == 3
    again = subprocess.run([sys.executable, "-m", "xai_lab", "-q", *command[1:]], cwd=tmp_path, env=cli_env(),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already finished" in again.stderr


@pytest.fixture
def handlers():
    """Put SIGINT's and SIGTERM's handlers back after a test that sets them."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_stop_inside_held_stop_takes_effect_when_the_block_ends(handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the test process inherited
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held_stop():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now; the block goes on
            done.append("written")
    assert done == ["written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    with held_stop():  # no signal, nothing raised
        done.append("again")
    assert done == ["written", "again"]


def test_sigterm_inside_held_stop_reaches_the_handler_installed_before(handlers):
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))  # as the fan-out's flag
    stop = StopSignals()
    with held_stop():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == []  # held
    assert seen == [signal.SIGINT] and stop.exit_code == 143


def test_sigterm_inside_held_stop_stops_a_job_that_ignores_ctrl_c(handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started with & from a script
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt):
        with held_stop():
            os.kill(os.getpid(), signal.SIGINT)  # ignored, as before the block
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert stop.exit_code == 143 and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
