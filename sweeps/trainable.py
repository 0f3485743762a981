"""The Tune trainable: one trial is one :func:`xai_lab.train.fit`, reporting through its callback.

The dataset is put into Ray's object store once per sweep by the driver; every trial reads
the same read-only arrays from it (no copy per trial on the node). The trial's sampled
parameters are dotted experiment keys set on the base experiment. After every epoch the
callback reports the epoch's metrics; ``fit`` writes a checkpoint where the trial's
:class:`~xai_lab.checkpoint.CheckpointPolicy` asks (ASHA's rungs, where a trial may be stopped,
the last epoch, and every ``checkpoint_every`` epochs), and that epoch's report carries the run
folder as the Tune checkpoint (``config.yaml``, ``best.pt``, ``last.pt``, ``train_log.jsonl``):
a retried or resumed trial continues from it, and the fan-out evaluates its ``best.pt``. Fewer
checkpoints is the largest saving of sweep overhead: a ResNet18 checkpoint with its AdamW state
is ~170 MB that Tune copies into storage. The final checkpoint (the last epoch, or where ``fit``
stops on patience) is slim: nothing resumes the trial, so it holds no ``last.pt`` (ResNet18:
171 MB becomes 43 MB).

Trials run with ``reuse_actors``: one Ray actor (one Python process with torch imported)
runs trial after trial, so ``fit`` frees its GPU memory when a trial ends or is stopped.

Every report carries ``early_stopped`` (from ``fit``): true at the epoch where ``fit`` stops
itself because ``train.early_stopping_patience`` epochs passed without a better val macro-F1,
so the leaderboard tells such a trial from one ASHA stopped.

What a user watching the sweep sees of a trial: its folder is ``<dataset>/<trial id>``; ``fit``
writes its scalars there (TensorBoard's run of that name) and the trial writes its HParams row
beside them (:mod:`sweeps.tensorboard`); its first log line, in the Ray dashboard's actor logs and
the terminal, names the trial, the dataset and the sampled values.
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
from sweeps.tensorboard import DATASET, write_trial_hparams
from xai_lab.checkpoint import CheckpointPolicy, Saved
from xai_lab.data.dataset import Dataset
from xai_lab.train import fit

CHECKPOINT_FILES = ("config.yaml", "best.pt", "last.pt", "train_log.jsonl")


def restore_run_dir(run_dir: Path) -> Path | None:
    """Start the trial's run folder afresh, from the trial's Tune checkpoint when it has one.

    Returns:
        The ``last.pt`` to resume from; None for a fresh start.

    Raises:
        TrialFinished: the checkpoint is the trial's final one (no ``last.pt``): a trial that had ended when
            the driver stopped, before Tune recorded it. Nothing is touched: its files stay as they are.
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
        if fs.get_file_info(f"{path}/last.pt").type.name != "File":
            raise TrialFinished
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a retried trial starts from its checkpoint, not from a half-written folder
    run_dir.mkdir(parents=True)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as saved:
        for name in CHECKPOINT_FILES:
            if (Path(saved) / name).is_file():
                shutil.copy2(Path(saved) / name, run_dir / name)
    return run_dir / "last.pt"


class TrialFinished(Exception):
    """The trial's checkpoint is its final one: there is nothing left to train."""


def report(metrics: dict[str, Any], saved: Saved | None) -> None:
    """``fit``'s callback: the epoch's metrics to Tune, with a checkpoint when ``fit`` wrote one.

    The checkpoint is a snapshot of the run folder's checkpoint files (hard links where the file system
    allows; ``fit`` replaces files atomically, so a link keeps the bytes it was made from), not the
    folder itself, which also holds files being written (TensorBoard events, atomic-write temporaries).
    Tune copies it into storage before ``report`` returns.
    """
    if saved is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="xai-ckpt-") as tmp:
        for name in CHECKPOINT_FILES:
            if (saved.run_dir / name).is_file():
                _link_or_copy(saved.run_dir / name, Path(tmp) / name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _link_or_copy(src: Path, dst: Path) -> None:
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
    hparams: dict[str, Any] | None = None,
    experiment_dir: str | None = None,
) -> None:
    """Train one trial of the sweep.

    Args:
        config: the sampled parameters (dotted experiment keys) from the searcher.
        base: the base experiment of this dataset, as a dict (``to_dict``).
        dataset: the prepared dataset, or its object-store reference (read-only arrays).
        checkpoint_epochs: epochs that always carry a checkpoint (ASHA's rungs, ``max_epochs``); the
            last of them (else ``train.epochs``) carries the trial's final, slim one.
        checkpoint_every: a checkpoint every this many epochs as well (0: none besides the above).
        hparams: the HParams columns: ``{"dataset": name, "keys": [dotted keys shown per trial], ...}``
            (:func:`sweeps.tensorboard.hparam_columns`); the row gets the dataset and each key's value in this trial.
        experiment_dir: the experiment's folder in the sweep's storage when that is a local (or NFS) path: the
            trial's TensorBoard run is written there, ``<dataset>/<trial id>``, where TensorBoard sees it as it
            grows. None (storage is a URI): the trial's working folder, which Tune uploads with its artifacts.
    """
    import logging

    import torch

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    if isinstance(dataset, ray.ObjectRef):
        dataset = ray.get(dataset)
    cfg = trial_config(base, config)
    cfg.run.progress = False
    cfg.run.tensorboard = True  # the trial's scalars, in its own folder: TensorBoard's run <dataset>/<trial id>
    cfg.run.name = tune.get_context().get_trial_id()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    tb_dir = Path(experiment_dir) / cfg.run.name if experiment_dir else run_dir.parent
    try:
        resume_from = restore_run_dir(run_dir)
    except TrialFinished:
        return  # its results and final checkpoint are in
    name = (hparams or {}).get("dataset", cfg.data.name)
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())
    print(f"trial {cfg.run.name} of {name}: {shown}", flush=True)  # the actor's log, in the Ray dashboard
    if hparams is not None and resume_from is None:
        write_trial_hparams(tb_dir, trial_hparams(cfg, hparams), name=cfg.run.name)
    policy = CheckpointPolicy(every=checkpoint_every, epochs=frozenset(checkpoint_epochs),
                              slim_from=max(checkpoint_epochs, default=cfg.train.epochs))
    fit(cfg, dataset=dataset, run_dir=run_dir, callback=report, resume_from=resume_from, checkpoint=policy,
        tensorboard_dir=tb_dir)


def trial_hparams(cfg, columns: dict[str, Any]) -> dict[str, Any]:
    """One trial's HParams row: the dataset and the value this trial uses for each key of ``columns["keys"]``."""
    from xai_lab.config import flatten, to_dict

    flat = flatten(to_dict(cfg))
    return {DATASET: columns["dataset"], **{k: flat.get(k) for k in columns["keys"]}}
