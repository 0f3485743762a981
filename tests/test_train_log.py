"""train_log.jsonl: a torn last line (a crash mid-write) is skipped; a bad line before it is exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from xai_lab.config import save_config
from xai_lab.errors import UserError
from xai_lab.experiment import load_experiment
from xai_lab.plots import read_train_log

EXP = ROOT / "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"


def _epoch(n: int) -> str:
    return json.dumps({"epoch": n, "train_loss": 1.0 / n, "val_loss": 1.2 / n, "val_accuracy": 0.3 * n,
                       "val_macro_f1": 0.25 * n}) + "\n"


def _run_folder(tmp: Path, log: str) -> tuple[Path, Path]:
    """A run folder (config.yaml, train_log.jsonl) and a report folder holding evaluate's confusion CSV."""
    run, report = tmp / "run", tmp / "report"
    run.mkdir()
    report.mkdir()
    save_config(load_experiment(EXP), run / "config.yaml")
    (run / "train_log.jsonl").write_text(log)
    (report / "test_confusion_matrix.csv").write_text(",happy,sad\nhappy,3,1\nsad,0,4\n")
    return run, report


def _plots(run: Path, report: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "xai_lab", "plots", "--run-dir", str(run), "--out", str(report)],
                          cwd=run.parent, env=env, capture_output=True, text=True, timeout=300)


TORN = '{"epoch": 3, "train_loss": 0.3, "val_lo'  # the crash hit mid-write: no closing brace, no newline


def test_a_torn_last_line_is_skipped(tmp_path):
    run, report = _run_folder(tmp_path, _epoch(1) + _epoch(2) + TORN)
    assert [row["epoch"] for row in read_train_log(run)] == [1, 2]
    res = _plots(run, report)
    assert res.returncode == 0, res.stderr
    assert {"train_loss.png", "val_loss.png", "val_accuracy.png", "val_macrof1.png",
            "test_confusion_matrix.png"} <= {p.name for p in report.iterdir()}


def test_a_torn_middle_line_is_exit_2_naming_the_file_and_line(tmp_path):
    run, report = _run_folder(tmp_path, _epoch(1) + TORN + "\n" + _epoch(3))
    with pytest.raises(UserError, match=r"train_log.jsonl, line 2: not a JSON object"):
        read_train_log(run)
    res = _plots(run, report)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert f"{run / 'train_log.jsonl'}, line 2" in res.stderr
    assert not (report / "train_loss.png").exists()  # nothing written


def test_a_log_with_no_whole_line_is_exit_2(tmp_path):
    (tmp_path / "train_log.jsonl").write_text(TORN)
    with pytest.raises(UserError, match="no finished epoch in"):
        read_train_log(tmp_path)
    (tmp_path / "train_log.jsonl").write_text(_epoch(1) + "[1, 2]\n" + _epoch(2))
    with pytest.raises(UserError, match="line 2: not a JSON object"):
        read_train_log(tmp_path)
