"""Shared fixtures. Tests run from the project root; shared datasets are at ../shared/datasets."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "datasets").resolve()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# No test writes to the project's run store (mlflow.db): the store's own tests name theirs (tests/test_store.py).
os.environ["XAI_LAB_STORE"] = "none"


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest has reported, without the interpreter's final teardown.

    This one process loads torch, Ray (started and shut down by several modules), MLflow with SQLAlchemy and
    psycopg, grpc and dlib. Their native teardown at interpreter exit (freeing extension modules, static
    destructors while their own threads still run) once crashed the process with a segmentation fault after
    every test had passed and the summary was printed, which failed ``make test``. The Python-level exit
    handlers still run here (with ``-X faulthandler``, as ``make test`` runs pytest, a crash in them prints
    its stack); only the native teardown after them is skipped. The exit status is pytest's own. Most commands
    under test run in processes of their own, whose exit codes the tests check.
    """
    if _EXIT_STATUS not in config.stash:  # pytest stopped before the session ran (a usage error)
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash[_EXIT_STATUS])


def cli_env(**extra: str) -> dict:
    """The environment of an ``xai-lab`` subprocess: this checkout on the path, none of the caller's Ray settings,
    unbuffered output, no usage stats; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test in a fresh folder holding a link to the project's configs/."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def module_workdir(tmp_path_factory):
    """Like ``in_tmp``, for module-scoped fixtures: a fresh folder with configs/, as the working directory."""
    work = tmp_path_factory.mktemp("work")
    (work / "configs").symlink_to(ROOT / "configs")
    old = os.getcwd()
    os.chdir(work)
    try:
        yield work
    finally:
        os.chdir(old)


def make_folder_dataset(
    root: Path, classes: list[str], n_per_class: int, seed: int = 0, size: int = 48
) -> Path:
    """A tiny ImageFolder dataset whose classes differ by where a bright bar is (learnable in a few steps)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in sorted(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.integers(0, 80, (size, size)).astype(np.uint8)
            row = 4 + (sum(map(ord, name)) % 5) * 8
            img[row : row + 8, 8:40] = 255
            Image.fromarray(img).save(folder / f"s{i:03d}_{name}.png")
    return root


def write_tiny_experiment(
    folder: Path, name: str, data_root: str, methods: tuple[str, ...] = ("saliency",)
) -> Path:
    """An experiment YAML for a tiny folder dataset: ResNet18, ImageNet stem, 48 px, CPU."""
    path = folder / f"{name}.yaml"
    path.write_text(
        "run: {seed: 0, device: cpu, progress: false}\n"
        f"data: {{source: folder, root: {data_root}, name: {name}, image_size: 48}}\n"
        "model: {depth: 18, stem: imagenet, input_size: 48}\n"
        "train: {epochs: 2, batch_size: 16, lr: 0.002, eval_batch_size: 64}\n"
        f"explain: {{methods: [{', '.join(methods)}], num_each: 2,\n"
        "          metrics: {num_images: 8, steps: 4, randomization_images: 2}}\n"
    )
    return path
