"""Bad sweep input through the real ``xai-lab sweep`` command: one line on stderr, exit code 2, no traceback,
nothing written: a storage root that cannot be written, a ``--resume`` of a deleted sweep, a resource request
no node can hold, and two sweeps started at once under one name."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_env, make_folder_dataset, write_tiny_experiment

# a local Ray on 127.0.0.1 for every xai-lab process the tests start
LOCAL_ENV = cli_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")

SWEEP = """name: same
experiments: [tiny.yaml]
space:
  train.lr: {type: float, low: 5.0e-4, high: 5.0e-3, log: true}
search: {num_samples: 2, max_concurrent: 1}
scheduler: {type: fifo, max_epochs: 1}
fanout: {top_k: 0}
"""


@pytest.fixture
def folder(tmp_path):
    make_folder_dataset(tmp_path / "data" / "raw" / "tiny", ["happy", "sad"], 6)
    write_tiny_experiment(tmp_path, "tiny", "data/raw/tiny")
    (tmp_path / "s.yaml").write_text(SWEEP)
    return tmp_path


def _sweep(folder: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "s.yaml", *args]
    return subprocess.run(cmd, cwd=folder, env=LOCAL_ENV, capture_output=True, text=True, timeout=timeout)


# Ray's own log lines (``2026-11-30 07:17:54,071 WARNING file.py:85 -- ...``), printed when it starts
RAY_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING) \S+:\d+ -- ")


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    """The one line xai-lab wrote on stderr (Ray's start-up log lines aside)."""
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip() and not RAY_LOG.match(line)]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("root", ["file", "/sys/xai-lab-results"], ids=["under-a-file", "read-only-mount"])
def test_a_storage_root_that_cannot_be_written(folder, root):
    if root == "file":
        (folder / "notes.txt").write_text("a regular file")
        root = str(folder / "notes.txt" / "ray_results")
    line = _one_error_line(_sweep(folder, f"storage={root}"))
    assert line.startswith("xai-lab sweep: error: cannot write the sweep folder") and root in line


def test_resume_of_a_deleted_sweep_folder(folder):
    line = _one_error_line(_sweep(folder, "--resume"))
    assert "nothing to resume" in line and "sweep.yaml does not exist" in line
    assert not (folder / "ray_results").exists() or not any((folder / "ray_results").rglob("*.yaml"))


def test_a_request_no_node_can_hold_is_refused_before_training(folder):
    line = _one_error_line(_sweep(folder, "fanout.top_k=1", "fanout.gpu=0.5"))
    assert "fanout (cpu=1.0, gpu=0.5)" in line and "0.5 GPU" in line and "0 GPU" in line and "auto" in line
    assert not list((folder / "ray_results" / "same").glob("*/*/result.json"))  # no trial ran
    line = _one_error_line(_sweep(folder, "name=cpus", "resources.cpu=64"))
    assert "64 CPU" in line and "resources (cpu=64.0" in line


def test_two_sweeps_of_one_name_at_once(folder):
    cmd = [sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "s.yaml"]
    procs = [subprocess.Popen(cmd, cwd=folder, env=LOCAL_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs, strict=True) if p.returncode == 2)
    lines = [line for line in refused.splitlines() if line.strip() and not RAY_LOG.match(line)]
    assert len(lines) == 1 and ("in use by a running sweep" in lines[0] or "already holds a sweep" in lines[0])
    board = pd.read_csv(folder / "ray_results" / "same" / "leaderboard.csv")
    assert len(board) == 2  # one sweep's trials, nothing mixed in


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_no_ray_answers_is_exit_2_within_a_minute(folder, tmp_path):
    """Nothing listening, a web server, and ``auto`` after a ``ray start`` cluster died without ``ray stop``
    (its address left in Ray's temp folder): one line naming the address, not minutes of Ray's retries."""
    import http.server
    import tempfile
    import threading
    import time

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    dead = f"127.0.0.1:{_free_port()}"
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text(dead)
    try:
        for address, env, shown in ((dead, {}, dead), (f"127.0.0.1:{web.server_address[1]}", {}, "127.0.0.1"),
                                    ("auto", {"RAY_TMPDIR": str(temp)}, dead)):
            t0 = time.monotonic()
            res = subprocess.run([sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "s.yaml", "--address",
                                  address], cwd=folder, env={**LOCAL_ENV, **env}, capture_output=True, text=True,
                                 timeout=120)
            line = _one_error_line(res)
            assert time.monotonic() - t0 < 60 and "no Ray cluster answers at" in line and shown in line, line
            assert not (folder / "ray_results" / "same" / "sweep.yaml").exists()
    finally:
        web.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
