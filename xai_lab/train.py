"""``fit``: one training run, as a plain function (a process, a notebook or a Ray trial).

The data path is the fast one: each split is a uint8 tensor that lives on the training
device; an epoch is a permutation (or weighted draw) of indices made on the device; each
batch is gathered by indexing, augmented as a whole batch (:mod:`xai_lab.data.augment`)
and resized inside the model. Nothing is decoded or copied per image, and the loop reads
no value back to the host until the epoch ends.

The optional recipe, each part off by default: the one-cycle schedule (``train.scheduler:
onecycle``, :func:`lr_factor`), mixup/CutMix (``train.mixup``, ``train.cutmix``,
``train.mix_prob``), a weight EMA (``train.ema_decay``; see :mod:`xai_lab.recipe`) and flip
test-time augmentation in validation (``train.tta_flip``). With the EMA on, validation,
``best.pt`` and ``last.pt``'s ``model`` are the EMA's weights; ``last.pt`` also holds the raw
weights (``model_raw``) and the EMA's update count (``ema``) to resume both. ``last.pt``'s ``rng``
holds the state of the generator that draws batch order, augmentation and mixing, so a run
resumed from it on the same kind of device draws what the uninterrupted run would have.

Outputs in the run folder: ``config.yaml`` (resolved), ``last.pt`` (every
``train.checkpoint_every`` epochs and the last, or as ``fit``'s :class:`CheckpointPolicy` says),
``best.pt`` (best val macro-F1, written with ``last.pt``), ``train_log.jsonl`` (one line per epoch),
``tb/`` (TensorBoard scalars, unless ``run.tensorboard`` is off) and ``train_summary.json``.

``fit`` is a loop over named steps around a :class:`TrainState` (the model, optimizer, schedule,
EMA, generator and on-device data, the epoch, the best epoch so far and its waiting weights):
:func:`_open_run` and :func:`_build` (with :func:`_resume`) set it up; then, epoch by epoch,
:func:`_train_epoch`, :func:`_validate`, :func:`_log_epoch`, :func:`_checkpoint` (:func:`_save`)
and :func:`_should_stop` (the callback, and the patience rule); :func:`_summary` ends the run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch.optim.swa_utils import AveragedModel

from xai_lab.atomic import atomic_write_json, atomic_write_text, raise_if_full
from xai_lab.checkpoint import CheckpointPolicy, Saved, init_from_checkpoint, load_checkpoint, save_run_checkpoint
from xai_lab.config import ExperimentConfig, TrainConfig, save_config, to_dict
from xai_lab.data.augment import augment_batch
from xai_lab.data.dataset import Dataset, load_dataset
from xai_lab.data.sampler import epoch_indices, sample_weights
from xai_lab.device import autocast, release_device_memory, resolve_device, to_device
from xai_lab.errors import RunStopped
from xai_lab.evaluate import predict_logits
from xai_lab.models import build_model
from xai_lab.recipe import (
    EMA_KEYS,
    ema_checkpoint,
    make_ema,
    mix_batch,
    mix_rng,
    mixed_cross_entropy,
    mixing_on,
    restore_ema,
    update_ema,
)
from xai_lab.runs import create_run_dir, train_log_rows
from xai_lab.signals import held_stop

log = logging.getLogger(__name__)

# TensorBoard tags of the epoch metrics, grouped into one card section each (loss, accuracy, macro_f1, ...).
TB_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_accuracy": "accuracy/val",
    "val_macro_f1": "macro_f1/val",
    "best_val_macro_f1": "macro_f1/best_val",
    "lr": "train/lr",
    "images_per_second": "speed/images_per_second",
    "epoch_seconds": "time/epoch_seconds",
    "val_seconds": "time/val_seconds",
    "gpu_mem_peak_mb": "memory/gpu_peak_mb",
}

# callback(metrics, saved) after every epoch -> True to stop the run. ``metrics``: the epoch's train_log.jsonl row
# with ``best_val_macro_f1`` (so far) and ``early_stopped`` (fit stops after this epoch on patience, before
# train.epochs); ``saved``: the checkpoint written after this epoch (run folder, files; see Saved), else None.
EpochCallback = Callable[[dict[str, Any], "Saved | None"], "bool | None"]


def seed_everything(seed: int) -> None:
    """Seed torch's global generators (model init). Data order and augmentation use their own."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases and normalisation weights (1-d parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def onecycle_factor(step: int, warmup: float, total: int) -> float:
    """One-cycle (Smith & Topin 2017): a cosine rise from 1/25 at step 0 to 1 at step ``warmup``, then a
    cosine fall to 1e-4 at the last step ``total - 1`` (torch's OneCycleLR shape, but ending at lr/1e4)."""
    start, end = 1 / 25, 1e-4
    if step < warmup:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / warmup))
    p = min(1.0, (step - warmup) / max(1.0, total - 1 - warmup))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * p))


def lr_factor(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up, then cosine, step or constant; or one-cycle."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return onecycle_factor(step, warmup, cfg.epochs * steps_per_epoch)
    if step < warmup:
        return min(1.0, (step + 1) / warmup)
    if cfg.scheduler == "cosine":
        total = max(1.0, cfg.epochs * steps_per_epoch - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / total)))
    if cfg.scheduler == "step":
        return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    return 1.0


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to average 1 over the classes present."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return w


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    targets: torch.Tensor,
    order: torch.Tensor,
    steps: int,
    cfg: ExperimentConfig,
    generator: torch.Generator,
    loss_weight: torch.Tensor | None = None,
    on_step: Callable[[int], object] | None = None,
    ema: AveragedModel | None = None,
) -> torch.Tensor:
    """``steps`` optimisation steps over batches ``order[i*bs:(i+1)*bs]`` of the on-device data.

    Args:
        images: uint8 [N, C, H, W] on the training device.
        targets: class indices [N] or label distributions [N, K] on the device.
        ema: updated from ``model`` after every step (:mod:`xai_lab.recipe`).

    Returns:
        The summed loss as a device tensor (read it once, after the epoch).
    """
    tc = cfg.train
    device = images.device
    loss_sum = torch.zeros((), device=device)
    rng = mix_rng(generator) if mixing_on(tc) else None  # mixup/CutMix draws, seeded from the epoch's state
    for i in range(steps):
        idx = order[i * tc.batch_size : (i + 1) * tc.batch_size]
        x = augment_batch(images[idx].float().div_(255), cfg.augment, generator)
        x, lam = mix_batch(x, tc, rng) if rng is not None else (x, 1.0)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, tc.amp):
            logits = model(x)
        loss = mixed_cross_entropy(logits.float(), targets[idx], lam, loss_weight, tc.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            update_ema(ema, model, tc)
        loss_sum += loss.detach()
        if on_step is not None:
            on_step(1)
    return loss_sum


@dataclass
class DeviceData:
    """The splits a run reads on its training device, and what its batch draws are weighted by."""

    x_train: torch.Tensor | None  # uint8 [N, C, H, W]
    targets: torch.Tensor | None  # class indices [N], or label distributions [N, K] (soft targets)
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    weights: torch.Tensor | None  # per-image sampling weights (train.sampler), None: a permutation
    loss_weight: torch.Tensor | None  # class weights of the loss (train.class_weighted_loss)


@dataclass
class TrainState:
    """One run in progress: what it trains, where it writes, and how far it got.

    Every device tensor of the run is reachable from here only, so :meth:`release` frees them all,
    however ``fit`` is left.
    """

    cfg: ExperimentConfig
    dataset: Dataset
    run_dir: Path
    device: torch.device
    policy: CheckpointPolicy
    steps_per_epoch: int
    data: DeviceData | None = None
    model: torch.nn.Module | None = None  # the raw weights, trained
    step_model: torch.nn.Module | None = None  # model, or its torch.compile (train.compile)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    ema: AveragedModel | None = None  # the weight EMA (train.ema_decay), None when off
    gen: torch.Generator | None = None  # draws batch order, augmentation and mixing
    writer: Any = None  # TensorBoard's SummaryWriter (run.tensorboard)
    tb_dir: Path | None = None  # where it writes
    bar: Any = None  # the tqdm progress bar
    init_info: dict[str, Any] | None = None  # where model.init_from took the weights from
    start_epoch: int = 1
    epoch: int = 0  # the last epoch trained (start_epoch - 1 before the first)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's train_log.jsonl row
    best_f1: float = -1.0
    best_epoch: int = 0
    best_weights: dict[str, Any] | None = None  # a better epoch's weights and metrics, not yet in best.pt
    saved_epoch: int = 0  # the epoch of the last checkpoint
    images_seen: int = 0
    train_seconds: float = 0.0

    @property
    def eval_model(self) -> torch.nn.Module:
        """The model validated and saved as ``model``: the EMA's when one runs."""
        return self.model if self.ema is None else self.ema.module

    @property
    def out_of_patience(self) -> bool:
        """``train.early_stopping_patience`` epochs (0: never) since the best epoch: the run stops here."""
        patience = self.cfg.train.early_stopping_patience
        return bool(patience) and self.epoch - self.best_epoch >= patience

    @property
    def early_stopped(self) -> bool:
        """Out of patience before ``train.epochs``: the run ends early (at ``train.epochs`` it has completed)."""
        return self.out_of_patience and self.epoch < self.cfg.train.epochs

    def release(self) -> None:
        """Close the progress outputs, drop every device tensor and hand the cached blocks back to the driver."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.data is not None:  # emptied in place: a frame of a traceback may still hold the object
            for name in ("x_train", "targets", "x_val", "y_val", "weights", "loss_weight"):
                setattr(self.data, name, None)
        self.data = self.model = self.step_model = self.optimizer = self.scheduler = self.ema = None
        self.gen = self.best_weights = self.bar = self.writer = None
        release_device_memory(self.device)


def fit(
    cfg: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    run_dir: str | Path | None = None,
    callback: EpochCallback | None = None,
    resume_from: str | Path | None = None,
    checkpoint: CheckpointPolicy | None = None,
    tensorboard_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train one model as ``cfg`` says.

    Args:
        cfg: the resolved experiment config.
        dataset: the prepared data (loaded, and prepared if needed, from ``cfg.data`` when None).
        run_dir: where to write; a fresh ``<output_root>/runs/<name>/<run_id>`` when None.
        callback: called after every epoch (:data:`EpochCallback`); returning True stops training.
        resume_from: a ``last.pt`` to continue from (:func:`_resume`). Rows of ``train_log.jsonl`` after the
            epoch training starts from (all of them without ``resume_from``), and a torn last line, are dropped
            first (:func:`trim_train_log`).
        checkpoint: after which epochs ``last.pt``/``best.pt`` are written, and whether the final
            checkpoint is slim; default :meth:`CheckpointPolicy.for_run` (``train.checkpoint_every``).
        tensorboard_dir: where the TensorBoard scalars go (``run.tensorboard``); default ``<run_dir>/tb``.
            A sweep's trial writes them into its own folder, the run TensorBoard names ``<dataset>/<trial>``.

    ``cfg.model.init_from`` (a run folder or checkpoint) starts the model from another run's
    weights, with a fresh head when the classes differ (:func:`xai_lab.checkpoint.init_from_checkpoint`).

    Returns:
        A summary: ``best_val_macro_f1``, ``best_epoch``, ``epochs_run``, the last epoch's
        metrics, ``train_seconds``, ``images_per_second``, ``run_dir`` and more (:func:`_summary`).

    Raises:
        RunStopped: Ctrl-C or SIGTERM (:class:`xai_lab.signals.StopSignals`) stopped it; ``last.pt`` and
            ``best.pt`` are the last ones written, whole (atomic writes), and ``train --resume`` continues.

    Memory: whether it returns or raises (a Ray trial stopped by ASHA leaves through a
    ``SystemExit`` raised in its callback), ``fit`` drops its model, optimizer and on-device data
    and empties the CUDA cache before it leaves (:meth:`TrainState.release`).
    """
    t_start = time.perf_counter()
    state = _open_run(cfg, dataset, run_dir, checkpoint or CheckpointPolicy.for_run(cfg.train))
    state.tb_dir = Path(tensorboard_dir) if tensorboard_dir else state.run_dir / "tb"
    try:
        _build(state, resume_from)
        for epoch in range(state.start_epoch, cfg.train.epochs + 1):
            state.epoch = epoch
            train_loss, seconds = _train_epoch(state)
            _validate(state, train_loss, seconds)
            _log_epoch(state)  # before the checkpoint: a stop in between leaves a row that a resume drops
            saved = _checkpoint(state)
            if _should_stop(state, callback, saved):
                break
        if state.saved_epoch != state.epoch:  # the callback stopped the run between checkpoints
            _save(state)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through xai_lab.signals: the checkpoints written stand
        if isinstance(e, RunStopped):
            raise
        raise RunStopped(state.run_dir, state.saved_epoch) from None
    finally:
        state.release()
    return _summary(state, t_start)


def _open_run(
    cfg: ExperimentConfig, dataset: Dataset | None, run_dir: str | Path | None, policy: CheckpointPolicy
) -> TrainState:
    """Seed, pick the device, load the data and open the run folder (its ``config.yaml``)."""
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark  # process-wide; fit owns the process's training
        torch.cuda.reset_peak_memory_stats(device)  # gpu_mem_peak_mb is this run's, in a reused process too
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    run_dir = Path(run_dir) if run_dir is not None else create_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    steps_per_epoch = max(1, len(dataset.splits["train"]) // cfg.train.batch_size)  # drop the last partial batch
    return TrainState(cfg, dataset, run_dir, device, policy, steps_per_epoch)


def _build(s: TrainState, resume_from: str | Path | None) -> None:
    """Put the data on the device; build the model, optimizer, schedule, EMA and generator; resume; open
    the progress outputs (TensorBoard, the progress bar)."""
    cfg, tc, device, steps = s.cfg, s.cfg.train, s.device, s.steps_per_epoch
    s.data = _device_data(s.dataset, tc, device)
    model = build_model(cfg.model, s.dataset.num_classes, cfg.data.channels)
    if cfg.model.init_from and resume_from is None:
        s.init_info = init_from_checkpoint(model, cfg.model.init_from, s.dataset.class_names)
        log.info("initialised from %s (head %s)", s.init_info["path"], s.init_info["head"])
    model = model.to(device)
    if tc.channels_last:  # NHWC: faster convolutions on CUDA and in oneDNN on the CPU
        model = model.to(memory_format=torch.channels_last)
    s.model, s.optimizer = model, make_optimizer(model, tc)
    s.scheduler = torch.optim.lr_scheduler.LambdaLR(s.optimizer, lambda i: lr_factor(i, steps, tc))
    s.step_model = torch.compile(model) if tc.compile else model
    s.ema = make_ema(model, tc)
    s.gen = torch.Generator(device=device)
    s.gen.manual_seed(cfg.run.seed)
    if resume_from is not None:
        _resume(s, resume_from)
    s.epoch = s.saved_epoch = s.start_epoch - 1
    # the log starts where training does: rows a stopped run logged after its checkpoint (or before its first) go
    dropped = trim_train_log(s.run_dir, s.saved_epoch)
    if dropped:
        log.info("dropped %d train_log.jsonl rows logged after epoch %d", dropped, s.saved_epoch)
    _open_progress(s, resumed=resume_from is not None)


def _device_data(dataset: Dataset, tc: TrainConfig, device: torch.device) -> DeviceData:
    """The train and val splits on ``device``, with the sampling weights and the loss's class weights."""
    train, val, k = dataset.splits["train"], dataset.splits["val"], dataset.num_classes
    y_train = to_device(train.labels, device)
    return DeviceData(
        x_train=to_device(train.images, device),
        targets=y_train if train.soft_targets is None else to_device(train.soft_targets, device),
        x_val=to_device(val.images, device),
        y_val=to_device(val.labels, device),
        weights=sample_weights(y_train, tc.sampler, k),
        loss_weight=class_weights(y_train, k) if tc.class_weighted_loss else None,
    )


def _resume(s: TrainState, path: str | Path) -> None:
    """Continue from the ``last.pt`` at ``path``: model, EMA, optimizer, schedule, epoch, best epoch, and the
    generator's state (an exact continuation on the same kind of device; fresh draws on another)."""
    state = load_checkpoint(path)
    s.model.load_state_dict(state.get("model_raw", state["model"]))  # "model" is the EMA when one ran
    restore_ema(s.ema, state)
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    s.start_epoch = int(state["epoch"]) + 1
    s.best_f1, s.best_epoch = float(state["best_val_macro_f1"]), int(state["best_epoch"])
    rng = state.get("rng")
    if rng is not None and rng.get("device") == s.device.type:  # the draws of the uninterrupted run
        s.gen.set_state(rng["generator"])
    else:  # a checkpoint from before "rng" was saved, or from another kind of device
        if rng is not None:
            log.warning("%s was written on %s, this run is on %s: resumed with fresh random draws",
                        path, rng.get("device"), s.device.type)
        s.gen.manual_seed(s.cfg.run.seed + s.start_epoch)  # a resumed run draws fresh batches
    log.info("resumed from %s at epoch %d", path, s.start_epoch)


def _open_progress(s: TrainState, resumed: bool) -> None:
    """TensorBoard's writer (unless ``run.tensorboard`` is off) and the progress bar of the epochs to run."""
    from tqdm.auto import tqdm

    if s.cfg.run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the events of epochs after the checkpoint that a killed run logged
        s.writer = SummaryWriter(str(s.tb_dir), purge_step=s.start_epoch if resumed else None)
    total_steps = (s.cfg.train.epochs - s.start_epoch + 1) * s.steps_per_epoch
    s.bar = tqdm(total=total_steps, desc=f"train {s.cfg.run.name}", unit="step", disable=not s.cfg.run.progress,
                 leave=False, dynamic_ncols=True)


def _train_epoch(s: TrainState) -> tuple[float, float]:
    """Train epoch ``s.epoch``: a fresh draw of batches, one optimisation step each.

    Returns:
        The mean training loss (the epoch's one host sync) and the epoch's seconds.
    """
    tc = s.cfg.train
    s.model.train()
    t0 = time.perf_counter()
    order = epoch_indices(s.data.weights, len(s.dataset.splits["train"]), s.gen)
    loss_sum = train_steps(s.step_model, s.optimizer, s.scheduler, s.data.x_train, s.data.targets, order,
                           s.steps_per_epoch, s.cfg, s.gen, s.data.loss_weight, on_step=s.bar.update, ema=s.ema)
    train_loss = float(loss_sum) / s.steps_per_epoch
    seconds = time.perf_counter() - t0
    s.images_seen += s.steps_per_epoch * tc.batch_size
    s.train_seconds += seconds
    return train_loss, seconds


def _validate(s: TrainState, train_loss: float, epoch_seconds: float) -> None:
    """Score the validated model (the EMA's when one runs, with ``train.tta_flip``) on the val split: the
    epoch's metrics (``s.metrics``); a better val macro-F1 makes this the best epoch, whose weights wait
    on the device (a cheap copy) for the next checkpoint to write them to ``best.pt``."""
    tc, val, k = s.cfg.train, s.dataset.splits["val"], s.dataset.num_classes
    s.eval_model.eval()
    t_val = time.perf_counter()
    val_loss = val_accuracy = val_f1 = float("nan")  # no val split (data.fold_val false): every epoch is best
    if len(val):
        val_logits = predict_logits(s.eval_model, s.data.x_val, tc.eval_batch_size, tc.amp, tta_flip=tc.tta_flip)
        val_loss = float(F.cross_entropy(val_logits, s.data.y_val))
        pred = val_logits.argmax(1).cpu().numpy()
        del val_logits
        val_accuracy = float((pred == val.labels).mean())
        val_f1 = float(f1_score(val.labels, pred, labels=list(range(k)), average="macro", zero_division=0))
    s.metrics = {
        "epoch": s.epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "val_macro_f1": val_f1,
        "lr": s.optimizer.param_groups[0]["lr"],
        "epoch_seconds": epoch_seconds,
        "images_per_second": s.steps_per_epoch * tc.batch_size / epoch_seconds,
        "val_seconds": time.perf_counter() - t_val,
    }
    if s.device.type == "cuda":
        s.metrics["gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
    if not len(val) or val_f1 > s.best_f1:
        s.best_f1, s.best_epoch = val_f1, s.epoch
        s.best_weights = {"model": {n: t.detach().clone() for n, t in s.eval_model.state_dict().items()},
                          "metrics": s.metrics}


def _checkpoint(s: TrainState) -> Saved | None:
    """The checkpoint after epoch ``s.epoch``, when one is due: after the last epoch, at a stop on patience,
    and where the policy asks for one; slim where the policy says it is the run's final one."""
    due = s.epoch == s.cfg.train.epochs or s.out_of_patience or s.policy.wants(s.epoch)
    return _save(s, slim=s.policy.slim(s.epoch, s.early_stopped)) if due else None


def _save(s: TrainState, slim: bool = False) -> Saved:
    """Write ``last.pt`` (unless ``slim``) and ``best.pt`` when a better epoch came since the last checkpoint.

    ``last.pt`` holds what a resume needs: the validated weights as ``model``, and with the EMA on the
    raw weights and its count; the optimizer and schedule; the best epoch so far; and the state of the
    generator (batch order, augmentation and mixing all draw from it, none from torch's global RNG).
    ``best.pt`` holds the best epoch's weights and metrics, without optimizer, generator or EMA state.
    """
    last = {
        "model": s.eval_model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "epoch": s.epoch,
        "config": to_dict(s.cfg),
        "class_names": s.dataset.class_names,
        "metrics": s.metrics,
        "best_val_macro_f1": s.best_f1,
        "best_epoch": s.best_epoch,
        **ema_checkpoint(s.ema, s.model),
        "rng": {"generator": s.gen.get_state(), "device": s.device.type},  # a CPU ByteTensor
    }
    best = None
    if s.best_weights is not None:
        best = {key: v for key, v in last.items() if key not in ("optimizer", "rng", *EMA_KEYS)}
        best.update(model=s.best_weights["model"], metrics=s.best_weights["metrics"], epoch=s.best_epoch)
    with held_stop():  # a stop while the files are written takes effect once saved_epoch says what they hold
        written = save_run_checkpoint(s.run_dir, last, best, slim=slim)
        s.best_weights, s.saved_epoch = None, s.epoch
    return Saved(s.run_dir, s.epoch, written, slim)


def _log_epoch(s: TrainState) -> None:
    """Append the epoch's row to ``train_log.jsonl``; show it in TensorBoard, the progress bar and the log."""
    m = s.metrics
    path = s.run_dir / "train_log.jsonl"
    try:
        with open(path, "a") as f:  # a row torn by a full disk or a kill is dropped on resume (trim_train_log)
            f.write(json.dumps(m) + "\n")
    except OSError as e:
        raise_if_full(e, path)
        raise
    if s.writer is not None:
        for key, value in {**m, "best_val_macro_f1": s.best_f1}.items():
            if key != "epoch":
                s.writer.add_scalar(TB_TAGS.get(key, f"other/{key}"), value, s.epoch)
        s.writer.flush()
    s.bar.set_postfix(epoch=s.epoch, loss=f"{m['train_loss']:.3f}", val_f1=f"{m['val_macro_f1']:.3f}")
    log.info("epoch %d/%d train_loss %.4f val_acc %.4f val_macro_f1 %.4f (%.1fs, %.0f img/s)", s.epoch,
             s.cfg.train.epochs, m["train_loss"], m["val_accuracy"], m["val_macro_f1"], m["epoch_seconds"],
             m["images_per_second"])


def _should_stop(s: TrainState, callback: EpochCallback | None, saved: Saved | None) -> bool:
    """Tell the callback about the epoch; stop when it asks to, or when the run is out of patience."""
    report = dict(s.metrics, best_val_macro_f1=s.best_f1, early_stopped=s.early_stopped)
    if callback is not None and callback(report, saved):
        return True
    if s.out_of_patience:
        log.info("early stopping: no better val macro-F1 for %d epochs", s.cfg.train.early_stopping_patience)
        return True
    return False


def _summary(s: TrainState, t_start: float) -> dict[str, Any]:
    """The run's ``train_summary.json`` (written atomically), returned by ``fit``."""
    summary = {
        "run_dir": str(s.run_dir),
        "best_val_macro_f1": s.best_f1,
        "best_epoch": s.best_epoch,
        "epochs_run": s.epoch - s.start_epoch + 1,
        "final": s.metrics,
        "train_seconds": s.train_seconds,
        "images_per_second": s.images_seen / s.train_seconds if s.train_seconds else 0.0,
        "wall_seconds": time.perf_counter() - t_start,
        "device": str(s.device),
        "init_from": s.init_info,
    }
    atomic_write_json(s.run_dir / "train_summary.json", summary)
    return summary


def trim_train_log(run_dir: str | Path, epoch: int) -> int:
    """Cut ``<run_dir>/train_log.jsonl`` back to the rows of epochs up to ``epoch`` (a checkpoint's), atomically.

    Before a run resumes in place from ``last.pt``: the rows a killed run logged after its last
    checkpoint, and a last line torn by the kill, are dropped, so the resumed epochs are not logged
    twice. Kept rows keep their text. A missing log is left missing.

    Returns:
        How many lines were dropped.

    Raises:
        UserError: a line other than the last is not a JSON object with an ``epoch``.
    """
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        return 0
    text = path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    kept = [line for line, row in train_log_rows(path) if row["epoch"] <= epoch]
    if len(kept) != len(lines) or (kept and not text.endswith("\n")):  # a whole last row left without its newline
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
