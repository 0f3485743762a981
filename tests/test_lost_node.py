"""A node lost mid-sweep: a two-node Ray cluster on loopback (``ray start --head`` and ``ray start --address``, both
``--node-ip-address=127.0.0.1``, in a temp folder of their own); while a trial trains on the worker node, that
node's raylet is killed (kill -9, with its workers). The trial resumes from its checkpoint on the surviving node
and the sweep completes with every trial. Processes are stopped by pid, never by name."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import ROOT, cli_env, make_folder_dataset, write_tiny_experiment

SWEEP = """name: lost
experiments: [{config: tiny.yaml, overrides: [model.depth=8, model.stem=auto]}]
space:
  train.lr: {type: float, low: 5.0e-4, high: 5.0e-3, log: true}
search: {num_samples: 2, max_concurrent: 2, evaluate_base_first: false}
scheduler: {type: fifo, max_epochs: 12}
resources: {cpu: 1, gpu: 0}
fanout: {top_k: 1, num_each: 2, maps_per_class: 4, methods: [saliency]}
max_failures: 2
checkpoint_every: 1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raylets() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}


def _ray(env: dict, *args: str) -> None:
    ray = str(Path(sys.executable).with_name("ray"))
    res = subprocess.run([ray, "start", *args, "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
def test_a_node_lost_mid_sweep_resumes_its_trial_on_the_other(tmp_path):
    make_folder_dataset(tmp_path / "data" / "raw" / "tiny", ["happy", "sad", "angry"], 30)
    write_tiny_experiment(tmp_path, "tiny", "data/raw/tiny")
    (tmp_path / "lost.yaml").write_text(SWEEP)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = cli_env(RAY_TMPDIR=temp, RAY_AUTH_MODE="token", RAY_health_check_period_ms="1000",
                  RAY_health_check_failure_threshold="3")
    port = _free_port()
    sweep = None
    try:
        before = _raylets()
        _ray(env, "--head", f"--port={port}", "--include-dashboard=false")
        head = _raylets() - before
        _ray(env, f"--address=127.0.0.1:{port}")
        (worker,) = _raylets() - before - head
        sweep = subprocess.Popen([sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "lost.yaml", "--address",
                                  f"127.0.0.1:{port}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        # wait for a trial that trains on the worker node and has a checkpoint to come back from
        victim, deadline = None, time.monotonic() + 300
        on_worker = set()
        while victim is None and time.monotonic() < deadline:
            assert sweep.poll() is None, sweep.communicate()
            on_worker = {p.pid for p in psutil.Process(worker).children(recursive=True)}
            for trial in (tmp_path / "ray_results" / "lost" / "tiny").glob("*/result.json"):
                rows = [json.loads(line) for line in trial.read_text().splitlines() if line.strip()]
                if rows and rows[-1]["pid"] in on_worker and list(trial.parent.glob("checkpoint_*")) \
                        and rows[-1]["epoch"] < 8:
                    victim = (trial.parent.name, rows[-1]["epoch"])
            time.sleep(0.2)
        assert victim, "no trial was seen training on the worker node"
        _kill_tree(worker)
        out, err = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, (out + err)[-3000:]
        board = pd.read_csv(tmp_path / "ray_results" / "lost" / "leaderboard.csv", dtype={"trial_id": str})
        assert len(board) == 2 and set(board["status"]) == {"completed"}
        assert set(board["epochs_run"]) == {12}
        row = board.set_index("trial_id").loc[victim[0]]
        assert row["failures"] >= 1  # it failed with its node, and came back from its checkpoint
        rows = [json.loads(line) for line in
                (tmp_path / "ray_results" / "lost" / "tiny" / victim[0] / "result.json").read_text().splitlines()]
        assert rows[-1]["epoch"] == 12 and any(r["pid"] not in on_worker for r in rows if r["epoch"] > victim[1])
        assert (tmp_path / "ray_results" / "lost" / "index.html").is_file()
    finally:
        if sweep is not None and sweep.poll() is None:
            sweep.kill()
        for p in psutil.process_iter(["cmdline"]):  # the cluster's daemons: their command lines name its temp dir
            if any(temp in part for part in (p.info["cmdline"] or [])):
                _kill_tree(p.pid)
        subprocess.run(["rm", "-rf", temp], check=False)
        assert ROOT  # the test ran from its own folder; nothing of the project's was touched
        os.environ.pop("RAY_ADDRESS", None)
