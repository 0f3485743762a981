"""The Tune trainable: one trial is one :func:`xai_lab.train.fit`, reporting through its callback.

The dataset is put into Ray's object store once per sweep by the driver; every trial reads
the same read-only arrays from it (no copy per trial on the node). The trial's sampled
parameters are dotted experiment keys set on the base experiment. After every epoch the
callback reports the epoch's metrics; at the epochs where a checkpoint is needed (ASHA's
rungs, where a trial may be stopped, the last epoch, and every ``checkpoint_every`` epochs)
the report carries a checkpoint holding the run folder (``config.yaml``, ``best.pt``,
``last.pt``, ``train_log.jsonl``): a retried or resumed trial continues from it, and the
fan-out evaluates its ``best.pt``. Fewer checkpoints is the largest saving of sweep overhead:
a ResNet18 checkpoint with its AdamW state is ~170 MB that Tune copies into storage.

Trials run with ``reuse_actors``: one Ray actor (one Python process with torch imported)
runs trial after trial, so ``fit`` frees its GPU memory when a trial ends or is stopped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray
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


def train_trial(
    config: dict[str, Any],
    *,
    base: dict,
    dataset: Dataset | ray.ObjectRef,
    checkpoint_epochs: tuple[int, ...] = (),
    checkpoint_every: int = 0,
) -> None:
    """Train one trial of the sweep.

    Args:
        config: the sampled parameters (dotted experiment keys) from the searcher.
        base: the base experiment of this dataset, as a dict (``to_dict``).
        dataset: the prepared dataset, or its object-store reference (read-only arrays).
        checkpoint_epochs: epochs that always carry a checkpoint (ASHA's rungs, ``max_epochs``).
        checkpoint_every: a checkpoint every this many epochs as well (0: none besides the above).
    """
    import logging

    import torch

    logging.getLogger("ray.train").setLevel(
        logging.WARNING
    )  # one "checkpoint created" line per epoch is noise
    if isinstance(dataset, ray.ObjectRef):
        dataset = ray.get(dataset)
    cfg = trial_config(base, config)
    cfg.run.progress = False
    cfg.run.tensorboard = False  # Tune writes the same scalars (and the HParams) per trial
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
        if not resume_from.is_file():
            return  # the final checkpoint (no last.pt): the trial had finished; its results are in

    wanted = set(checkpoint_epochs)

    def checkpoint_at(epoch: int) -> bool:
        return epoch in wanted or (checkpoint_every > 0 and epoch % checkpoint_every == 0)

    def report(metrics: dict[str, Any], last_pt: Path | None) -> bool:
        if last_pt is None:
            tune.report(metrics)
            return False
        # After the last epoch nothing resumes the trial: its checkpoint is what the fan-out reads,
        # without last.pt and its optimizer state (a ResNet18's 171 MB checkpoint becomes 43 MB).
        final = metrics["epoch"] >= (max(checkpoint_epochs) if checkpoint_epochs else cfg.train.epochs)
        with tempfile.TemporaryDirectory(prefix="xai-ckpt-") as tmp:
            for name in CHECKPOINT_FILES:
                if final and name == "last.pt":
                    continue
                if (run_dir / name).is_file():
                    _link_or_copy(run_dir / name, Path(tmp) / name)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        return False

    fit(cfg, dataset=dataset, run_dir=run_dir, callback=report, resume_from=resume_from,
        checkpoint_at=checkpoint_at)
