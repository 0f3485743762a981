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

Every report carries ``early_stopped``: true at the epoch where ``fit`` stops itself because
``train.early_stopping_patience`` epochs passed without a better val macro-F1 (fit's own rule,
followed here epoch by epoch), so the leaderboard tells such a trial from one ASHA stopped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
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


class PatienceWatch:
    """``fit``'s early-stopping rule, followed from the metrics its callback gets.

    ``fit`` stops after the epoch where ``epoch - best_epoch >= train.early_stopping_patience`` (0: never),
    ``best_epoch`` being the first epoch with the best val macro-F1 (a strictly better one moves it).
    The callback does not get ``best_epoch``, so this keeps its own, seeded from the rows of
    ``train_log.jsonl`` when a trial resumes from a checkpoint.
    """

    def __init__(self, patience: int, max_epochs: int, rows: Iterable[dict[str, Any]] = ()):
        self.patience, self.max_epochs = patience, max_epochs
        self.best_f1, self.best_epoch = -1.0, 0
        for row in rows:
            self.update(row)

    def update(self, metrics: dict[str, Any]) -> bool:
        """Take one epoch's metrics (``epoch``, ``val_macro_f1``); True when ``fit`` stops after it on
        patience before ``max_epochs`` (at ``max_epochs`` the trial has completed anyway)."""
        epoch = int(metrics["epoch"])
        if float(metrics["val_macro_f1"]) > self.best_f1:
            self.best_f1, self.best_epoch = float(metrics["val_macro_f1"]), epoch
        out = bool(self.patience) and epoch - self.best_epoch >= self.patience
        return out and epoch < self.max_epochs


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
    rows: list[dict[str, Any]] = []
    if resume_from is not None and (run_dir / "train_log.jsonl").is_file():
        from xai_lab.plots import read_train_log

        rows = read_train_log(run_dir)  # the epochs up to the checkpoint: fit's best epoch so far
    watch = PatienceWatch(cfg.train.early_stopping_patience, cfg.train.epochs, rows)

    wanted = set(checkpoint_epochs)

    def checkpoint_at(epoch: int) -> bool:
        return epoch in wanted or (checkpoint_every > 0 and epoch % checkpoint_every == 0)

    def report(metrics: dict[str, Any], last_pt: Path | None) -> bool:
        metrics = dict(metrics, early_stopped=watch.update(metrics))
        if last_pt is None:
            tune.report(metrics)
            return False
        # After the last epoch (or the one fit stops at on patience) nothing resumes the trial: its checkpoint
        # is what the fan-out reads, without last.pt and its optimizer state (ResNet18: 171 MB becomes 43 MB).
        final = metrics["early_stopped"] or metrics["epoch"] >= (
            max(checkpoint_epochs) if checkpoint_epochs else cfg.train.epochs)
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
