"""The Tune trainable: one trial is one :func:`xai_lab.train.fit`, reporting through its callback.

The dataset arrives once per sweep through Ray's object store (``tune.with_parameters``);
the trial's sampled parameters are dotted experiment keys set on the base experiment. After
every epoch the callback reports the epoch's metrics with a checkpoint holding the run
folder (``config.yaml``, ``best.pt``, ``last.pt``, ``train_log.jsonl``): a retried or
resumed trial continues from it, and the fan-out evaluates its ``best.pt``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ray import tune

from sweeps.config import trial_config
from xai_lab.data.dataset import Dataset
from xai_lab.train import fit

CHECKPOINT_FILES = ("config.yaml", "best.pt", "last.pt", "train_log.jsonl")


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows (fit replaces files atomically, so links stay intact)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def train_trial(config: dict[str, Any], *, base: dict, dataset: Dataset) -> None:
    """Train one trial of the sweep.

    Args:
        config: the sampled parameters (dotted experiment keys) from the searcher.
        base: the base experiment of this dataset, as a dict (``to_dict``).
        dataset: the prepared dataset (read-only arrays from the object store).
    """
    import logging

    import torch

    logging.getLogger("ray.train").setLevel(
        logging.WARNING
    )  # one "checkpoint created" line per epoch is noise
    cfg = trial_config(base, config)
    cfg.run.progress = False
    cfg.run.name = tune.get_context().get_trial_id()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a retried trial starts from its checkpoint, not from a half-written folder
    run_dir.mkdir(parents=True)

    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            for name in CHECKPOINT_FILES:
                if (Path(saved) / name).is_file():
                    shutil.copy2(Path(saved) / name, run_dir / name)
        resume_from = run_dir / "last.pt"

    def report(metrics: dict[str, Any], last_pt: Path) -> bool:
        with tempfile.TemporaryDirectory(prefix="xai-ckpt-") as tmp:
            for name in CHECKPOINT_FILES:
                if (run_dir / name).is_file():
                    _link_or_copy(run_dir / name, Path(tmp) / name)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        return False

    fit(cfg, dataset=dataset, run_dir=run_dir, callback=report, resume_from=resume_from)
