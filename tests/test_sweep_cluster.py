"""The sweep verb end to end in its own process: --dashboard on a local Ray, and --address on a
two-node Ray cluster on loopback (started and stopped by this test, by process, never by name)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_env, make_folder_dataset, write_tiny_experiment

SMOKE_SWEEP = """name: {name}
experiments: [tiny.yaml]
space:
  train.sampler: {{type: categorical, choices: [none, sqrt_balanced]}}
  train.lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
search: {{num_samples: 4, max_concurrent: 2}}
scheduler: {{type: asha, max_epochs: 3}}
fanout: {{methods: [gradcam]}}
"""

CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                  head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes our stdin
cluster.shutdown()
"""


@pytest.fixture
def tiny_sweep(tmp_path):
    make_folder_dataset(tmp_path / "data" / "raw" / "tiny", ["happy", "sad", "surprise"], 14)
    write_tiny_experiment(tmp_path, "tiny", "data/raw/tiny")
    (tmp_path / "smoke.yaml").write_text(SMOKE_SWEEP.format(name="smoke"))
    return tmp_path


def _check_results(folder: Path) -> None:
    board = pd.read_csv(folder / "leaderboard.csv")
    assert len(board) == 2 and set(board["status"]) <= {"completed", "pruned"}  # --smoke: two trials
    assert (board["report"] == "ok").sum() == 1
    row = board[board["report"] == "ok"].iloc[0]
    # --smoke prepares its own small copy of the dataset (tiny_limit12), beside the full one
    assert row["dataset"] == "tiny_limit12"
    assert (folder / "reports" / row["dataset"] / row["trial_id"] / "xai" / "gradcam" / "high_conf" /
            "sample00.png").is_file()
    assert (folder / "index.html").is_file()


def _api_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_dashboard_serves_health_while_the_sweep_runs(tiny_sweep):
    env = cli_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "smoke.yaml", "--smoke", "--dashboard"],
        cwd=tiny_sweep,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, health, signed_in, anonymous = [], None, None, None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ray dashboard: "):
                url = line.split(": ", 1)[1].strip()
                assert url.startswith("http://127.0.0.1:"), url
                for _ in range(60):  # the dashboard's HTTP server may come up a moment after ray.init
                    try:
                        with urllib.request.urlopen(f"{url}/api/gcs_healthz", timeout=5) as r:
                            health = (r.status, r.read().decode())
                        break
                    except OSError:
                        time.sleep(0.5)
                signed_in = _api_status(url, token=(Path.home() / ".ray" / "auth_token").read_text().strip())
                anonymous = _api_status(url, token=None)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert rc == 0, out[-3000:]
    assert health is not None and health[0] == 200, out[-2000:]
    assert "report: " in out
    # how to sign in, right under the URL; one TensorBoard hint (the project's, for the sweep folder)
    assert lines[lines.index(next(x for x in lines if x.startswith("Ray dashboard: "))) + 1].strip() == (
        "sign in with the token in ~/.ray/auth_token (print it: ray get-auth-token)")
    assert "Token authentication is enabled" not in out
    assert (signed_in, anonymous) == (200, 401)  # the API answers with the token, and only with it
    assert out.count("tensorboard --logdir") == 1 and "TensorBoard: tensorboard --logdir " in out
    _check_results(tiny_sweep / "ray_results" / "smoke")


def test_smoke_sweep_on_a_two_node_loopback_cluster(tiny_sweep):
    env = cli_env()  # multi-node: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER unset; every address is 127.0.0.1
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER],
        cwd=tiny_sweep,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = cluster.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), (
            cluster.stderr.read() if cluster.poll() is not None else address
        )
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "xai_lab",
                "-q",
                "sweep",
                "--config",
                "smoke.yaml",
                "--smoke",
                "--address",
                address,
            ],
            cwd=tiny_sweep,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        assert f"connected to the Ray cluster at {address}: 2 nodes, 2 CPUs" in res.stdout
        _check_results(tiny_sweep / "ray_results" / "smoke")
    finally:
        cluster.stdin.close()  # the helper shuts its own nodes down
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.kill()
