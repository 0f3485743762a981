"""``xai-lab sweep --config configs/sweeps/fer_compare.yaml --smoke`` end to end on real faces: the shipped sweep
as it is, its data folders (data/raw/{ckplus,fer2013,ferplus}) holding the shared CK+ and the FER2013 and FER+
samples. Two one-epoch trials a dataset, the fan-out (every explainer, at the smoke settings), the transfer
matrix, the comparison and the report; with a dead cluster's address left as Ray's "current cluster"."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, SHARED, cli_env


@pytest.mark.slow
def test_fer_compare_smoke_runs_every_step_on_the_shared_samples(tmp_path):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    for name, sample in (("ckplus", "ckplus48"), ("fer2013", "fer2013-sample"), ("ferplus", "ferplus-sample")):
        (raw / name).symlink_to(SHARED / sample)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    cmd = [sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "configs/sweeps/fer_compare.yaml", "--smoke",
           "name=smoke"]
    # A `ray start` cluster that died without `ray stop` left its address as Ray's "current cluster": a sweep
    # without --address starts a Ray of its own all the same (short temp folder: Ray's socket paths are limited)
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    (temp / "ray").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{s.getsockname()[1]}")
    t0 = time.perf_counter()
    try:
        env = cli_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=str(temp))
        res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    print(f"fer_compare --smoke: {time.perf_counter() - t0:.0f} s")
    assert res.returncode == 0, res.stderr[-3000:]
    results = tmp_path / "ray_results" / "smoke"
    board = pd.read_csv(results / "leaderboard.csv", dtype={"report": str, "trial_id": str})
    names = ["ckplus_limit12", "fer2013_limit12", "ferplus_limit12"]
    assert sorted(board["dataset"].unique()) == names and len(board) == 6
    assert set(board["model.depth"]) == {20} and set(board["epochs_run"]) == {1}  # the cheapest trial, one epoch
    reported = board[board["report"] == "ok"]
    assert sorted(reported["dataset"]) == names  # the best trial of each
    for row in reported.itertuples():
        metrics = json.loads((results / "reports" / row.dataset / row.trial_id / "xai" / "metrics.json").read_text())
        assert len([m for m, e in metrics.items() if isinstance(e, dict)]) == 7  # every registered explainer
        config = (results / "reports" / row.dataset / row.trial_id / "config.yaml").read_text()
        assert "samples: 4" in config and "window: 16" in config  # explained at the smoke settings
    table = pd.read_csv(results / "transfer.csv", keep_default_na=False)
    assert len(table) == 9 and (table["n"] > 0).all()
    cross = {(r.trained_on, r.tested_on): r.classes.split() for r in table.itertuples() if not r.in_domain}
    assert cross[("ckplus_limit12", "fer2013_limit12")] == ["happiness", "surprise", "sadness", "anger", "disgust",
                                                            "fear"]  # no contempt, no neutral
    assert "contempt" in cross[("ckplus_limit12", "ferplus_limit12")] and "neutral" not in cross[
        ("ckplus_limit12", "ferplus_limit12")]
    page = (results / "index.html").read_text()
    assert 'id="transfer"' in page and "In-domain test accuracy averages" in page
