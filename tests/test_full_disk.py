"""A full disk, made for real: a small tmpfs mounted for the test, filled but for a few hundred KB. Each write of
a run, a checkpoint, prepared data, a report, a sweep and the run store that meets it ends in one line naming the
path and exit 2 (the store: one warning, the run completes), leaves no half-written file, keeps every earlier
result, and the same command works once the space is freed (a sweep: with --resume)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, make_folder_dataset, write_tiny_experiment

from xai_lab.cli import main

EXP = "configs/experiments/exp003_resnet20_synthfaces_clear.yaml"
FAST = ["--smoke", "run.progress=false", "run.device=cpu"]


@pytest.fixture
def disk(tmp_path):
    """A 48 MB tmpfs of its own, owned by this user (mounted as root, or with sudo; else a clear failure)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    options = f"size=48m,uid={os.getuid()},gid={os.getgid()}"
    res = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.fail(f"the full-disk tests mount a tmpfs, as root or with sudo: {res.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run([*sudo, "umount", "-l", str(mount)], check=False)


def fill(disk: Path, keep: int) -> Path:
    """Fill ``disk`` but for ``keep`` bytes; the filler file, to delete to free the space."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - keep))
    return filler


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "filler"}


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def no_partial_files(disk: Path) -> None:
    partial = [p for p in disk.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name]
    assert not partial, partial


def test_train_prepare_and_report_on_a_full_disk(disk, in_tmp, capsys):
    out, data = [f"run.output_root={disk / 'out'}"], [f"data.processed_root={disk / 'processed'}"]
    assert main(["-q", "train", "--config", EXP, *FAST, *out, *data]) == 0  # an earlier result on that disk
    earlier = digest(disk)
    run = sorted((disk / "out/runs").glob("*/2*"))[0]
    filler = fill(disk, keep=200_000)
    capsys.readouterr()

    # a checkpoint: ResNet-20's last.pt does not fit in 200 KB
    assert main(["-q", "train", "--config", EXP, *FAST, *out, *data]) == 2
    line = one_line(capsys)
    assert "no space left on the device to write" in line and "last.pt" in line and str(disk / "out") in line
    # prepared data: another image size, a new cache that does not fit
    assert main(["-q", "prepare", "--config", EXP, *FAST, *data, "data.image_size=96"]) == 2
    assert "no space left on the device to write" in one_line(capsys)
    # a report: the explanation galleries
    assert main(["-q", "explain", "--run-dir", str(run), "--smoke", "--out", str(disk / "report")]) == 2
    assert "no space left on the device to write" in one_line(capsys)
    no_partial_files(disk)
    assert {k: v for k, v in digest(disk).items() if k in earlier} == earlier  # every earlier file as it was

    filler.unlink()  # space again: the same commands work
    assert main(["-q", "train", "--config", EXP, *FAST, *out, *data]) == 0
    assert main(["-q", "prepare", "--config", EXP, *FAST, *data, "data.image_size=96"]) == 0
    assert main(["-q", "explain", "--run-dir", str(run), "--smoke", "--out", str(disk / "report")]) == 0
    no_partial_files(disk)


def test_the_store_on_a_full_disk_costs_no_result(disk, in_tmp):
    fill(disk, keep=20_000)
    res = subprocess.run([sys.executable, "-m", "xai_lab", "-q", "train", "--config", EXP, *FAST], cwd=in_tmp,
                         env=cli_env(XAI_LAB_STORE=f"sqlite:///{disk / 'mlflow.db'}"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr  # the run is on another disk; the store's is full
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not recorded" in lines[0] and "runs --sync" in lines[0], res.stderr
    assert sorted((in_tmp / "artifacts/runs").glob("*/2*/best.pt"))


SWEEP = """name: full
experiments: [{{config: tiny.yaml, overrides: [model.depth=8, model.stem=auto]}}]  # ResNet-8: small checkpoints
space:
  train.lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
search: {{num_samples: 2, max_concurrent: 2}}
scheduler: {{type: fifo, max_epochs: 2}}
fanout: {{top_k: 1, num_each: 2, maps_per_class: 4, methods: [saliency]}}
storage: {storage}
"""


@pytest.mark.slow
def test_a_sweep_on_a_full_disk_stops_in_one_line_and_resumes(disk, tmp_path):
    make_folder_dataset(tmp_path / "data" / "raw" / "tiny", ["happy", "sad"], 10)
    write_tiny_experiment(tmp_path, "tiny", "data/raw/tiny")
    (tmp_path / "s.yaml").write_text(SWEEP.format(storage=disk / "rr"))
    filler = fill(disk, keep=300_000)
    cmd = [sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "s.yaml"]
    env = cli_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    # Ray's own log lines of the trials that failed come with it: xai-lab's is one line
    ours = [line for line in res.stderr.splitlines() if line.startswith("xai-lab")]
    assert len(ours) == 1 and ours[0].startswith("xai-lab sweep: error: no space left on the device of"), ours
    assert str(disk) in ours[0] and "--resume" in ours[0]
    filler.unlink()
    res = subprocess.run([*cmd, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (disk / "rr" / "full" / "index.html").is_file()
