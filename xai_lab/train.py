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
``train.checkpoint_every`` epochs and the last), ``best.pt`` (best val macro-F1, written with
``last.pt``), ``train_log.jsonl`` (one line per epoch), ``tb/`` (TensorBoard scalars, unless
``run.tensorboard`` is off) and ``train_summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch.optim.swa_utils import AveragedModel

from xai_lab.atomic import atomic_write_json, atomic_write_text
from xai_lab.checkpoint import init_from_checkpoint, load_checkpoint, save_checkpoint
from xai_lab.config import ExperimentConfig, TrainConfig, save_config, to_dict
from xai_lab.data.augment import augment_batch
from xai_lab.data.dataset import Dataset, load_dataset
from xai_lab.data.sampler import epoch_indices, sample_weights
from xai_lab.device import autocast, release_device_memory, resolve_device, to_device
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

log = logging.getLogger(__name__)

# callback(metrics of the epoch, path of last.pt when written that epoch, else None) -> True to stop early.
EpochCallback = Callable[[dict[str, Any], "Path | None"], "bool | None"]


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
    channels_last = device.type == "cuda" and tc.channels_last
    loss_sum = torch.zeros((), device=device)
    rng = mix_rng(generator) if mixing_on(tc) else None  # mixup/CutMix draws, seeded from the epoch's state
    for i in range(steps):
        idx = order[i * tc.batch_size : (i + 1) * tc.batch_size]
        x = augment_batch(images[idx].float().div_(255), cfg.augment, generator)
        x, lam = mix_batch(x, tc, rng) if rng is not None else (x, 1.0)
        if channels_last:
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


def fit(
    cfg: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    run_dir: str | Path | None = None,
    callback: EpochCallback | None = None,
    resume_from: str | Path | None = None,
    checkpoint_at: Callable[[int], bool] | None = None,
) -> dict[str, Any]:
    """Train one model as ``cfg`` says.

    Args:
        cfg: the resolved experiment config.
        dataset: the prepared data (loaded, and prepared if needed, from ``cfg.data`` when None).
        run_dir: where to write; a fresh ``<output_root>/runs/<name>/<run_id>`` when None.
        callback: called after every epoch with the epoch's metrics and the path of
            ``last.pt`` when it was written that epoch (else None); returning True stops
            training (the sweep reports through this).
        resume_from: a ``last.pt`` to continue from (model, EMA, optimizer, schedule, epoch and the
            batch/augmentation generator's state: an exact continuation on the same kind of device).
            Rows of ``train_log.jsonl`` after its epoch are not dropped here: :func:`trim_train_log`.
        checkpoint_at: ``epoch -> bool``, the epochs after which ``last.pt`` (and ``best.pt``,
            when a better epoch came since) are written; default every ``train.checkpoint_every``
            epochs. The last epoch is always written.

    ``cfg.model.init_from`` (a run folder or checkpoint) starts the model from another run's
    weights, with a fresh head when the classes differ (:func:`xai_lab.checkpoint.init_from_checkpoint`).

    Returns:
        A summary: ``best_val_macro_f1``, ``best_epoch``, ``epochs_run``, the last epoch's
        metrics, ``train_seconds``, ``images_per_second`` and ``run_dir``.

    Memory: whether it returns or raises (a Ray trial stopped by ASHA leaves through a
    ``SystemExit`` raised in its report), ``fit`` drops its model, optimizer and on-device data
    and empties the CUDA cache before it leaves, so a stopped trial hands its GPU memory back
    to the trials packed beside it.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.run.device)
    tc = cfg.train
    seed_everything(cfg.run.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = tc.cudnn_benchmark  # process-wide; fit owns the process's training
        torch.cuda.reset_peak_memory_stats(device)  # gpu_mem_peak_mb is this run's, in a reused process too
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    run_dir = Path(run_dir) if run_dir is not None else create_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if checkpoint_at is None:
        def checkpoint_at(e: int) -> bool:
            return e % tc.checkpoint_every == 0

    train, val = dataset.splits["train"], dataset.splits["val"]
    k = dataset.num_classes
    steps_per_epoch = max(1, len(train) // tc.batch_size)  # drop the last partial batch
    start_epoch, best_f1, best_epoch = 1, -1.0, 0
    metrics: dict[str, Any] = {}
    images_seen, train_seconds, epoch = 0, 0.0, start_epoch - 1
    writer = bar = None
    # Everything that holds device memory is bound here, so that the finally below can drop it.
    x_train = y_train = soft_train = x_val = y_val = model = step_model = optimizer = scheduler = None
    ema = eval_model = None  # the weight EMA (train.ema_decay) and the model validated and saved: it, or model
    best_weights = None  # a better epoch's weights, not yet written to best.pt
    init_info = None  # where model.init_from took the weights from
    try:
        x_train, y_train = to_device(train.images, device), to_device(train.labels, device)
        soft_train = None if train.soft_targets is None else to_device(train.soft_targets, device)
        x_val, y_val = to_device(val.images, device), to_device(val.labels, device)

        model = build_model(cfg.model, k, cfg.data.channels)
        if cfg.model.init_from and resume_from is None:
            init_info = init_from_checkpoint(model, cfg.model.init_from, dataset.class_names)
            log.info("initialised from %s (head %s)", init_info["path"], init_info["head"])
        model = model.to(device)
        if device.type == "cuda" and tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, tc)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, tc))
        step_model = torch.compile(model) if tc.compile else model
        ema = make_ema(model, tc)
        eval_model = model if ema is None else ema.module

        weights = sample_weights(y_train, tc.sampler, k)
        loss_weight = class_weights(y_train, k) if tc.class_weighted_loss else None
        gen = torch.Generator(device=device)
        gen.manual_seed(cfg.run.seed)

        if resume_from is not None:
            state = load_checkpoint(resume_from)
            model.load_state_dict(state.get("model_raw", state["model"]))  # "model" is the EMA when one ran
            restore_ema(ema, state)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"]) + 1
            best_f1, best_epoch = float(state["best_val_macro_f1"]), int(state["best_epoch"])
            rng = state.get("rng")
            if rng is not None and rng.get("device") == device.type:  # the draws of the uninterrupted run
                gen.set_state(rng["generator"])
            else:  # a checkpoint from before "rng" was saved, or from another kind of device
                if rng is not None:
                    log.warning("%s was written on %s, this run is on %s: resumed with fresh random draws",
                                resume_from, rng.get("device"), device.type)
                gen.manual_seed(cfg.run.seed + start_epoch)  # a resumed run draws fresh batches
            log.info("resumed from %s at epoch %d", resume_from, start_epoch)
            del state
        epoch = start_epoch - 1

        from tqdm.auto import tqdm

        if cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events of epochs after the checkpoint that a killed run logged
            writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_epoch if resume_from is not None else None)
        total_steps = (tc.epochs - start_epoch + 1) * steps_per_epoch
        bar = tqdm(total=total_steps, desc=f"train {cfg.run.name}", unit="step", disable=not cfg.run.progress,
                   leave=False, dynamic_ncols=True)

        def save(epoch: int) -> Path:
            """``last.pt`` (and ``best.pt`` when a better epoch came since the last write)."""
            nonlocal best_weights
            state = {
                "model": eval_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "config": to_dict(cfg),
                "class_names": dataset.class_names,
                "metrics": metrics,
                "best_val_macro_f1": best_f1,
                "best_epoch": best_epoch,
                **ema_checkpoint(ema, model),  # the raw weights and the EMA's count, to resume both
                # Batch order, augmentation and mixing all draw from gen (nothing in the loop uses torch's
                # global RNG: no dropout), so its state is all a resume needs to draw the same (a CPU ByteTensor).
                "rng": {"generator": gen.get_state(), "device": device.type},
            }
            save_checkpoint(run_dir / "last.pt", state)
            if best_weights is not None:
                best = {k_: v for k_, v in state.items() if k_ not in ("optimizer", "rng", *EMA_KEYS)}
                best.update(model=best_weights["model"], metrics=best_weights["metrics"], epoch=best_epoch)
                save_checkpoint(run_dir / "best.pt", best)
                best_weights = None
            return run_dir / "last.pt"

        saved_epoch = start_epoch - 1
        for epoch in range(start_epoch, tc.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            order = epoch_indices(weights, len(train), gen)
            loss_sum = train_steps(step_model, optimizer, scheduler, x_train, y_train if soft_train is None
                                   else soft_train, order, steps_per_epoch, cfg, gen, loss_weight, on_step=bar.update,
                                   ema=ema)
            train_loss = float(loss_sum) / steps_per_epoch  # the epoch's one host sync
            epoch_seconds = time.perf_counter() - t0
            images_seen += steps_per_epoch * tc.batch_size
            train_seconds += epoch_seconds

            eval_model.eval()
            t_val = time.perf_counter()
            val_logits = predict_logits(eval_model, x_val, tc.eval_batch_size, tc.amp, tta_flip=tc.tta_flip)
            val_loss = float(F.cross_entropy(val_logits, y_val)) if len(val) else float("nan")
            pred = val_logits.argmax(1).cpu().numpy()
            del val_logits
            metrics = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": float((pred == val.labels).mean()) if len(val) else float("nan"),
                "val_macro_f1": float(f1_score(val.labels, pred, labels=list(range(k)), average="macro",
                                              zero_division=0)),
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": epoch_seconds,
                "images_per_second": steps_per_epoch * tc.batch_size / epoch_seconds,
                "val_seconds": time.perf_counter() - t_val,
            }
            if device.type == "cuda":
                metrics["gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            if metrics["val_macro_f1"] > best_f1:
                best_f1, best_epoch = metrics["val_macro_f1"], epoch
                # A device copy (cheap) until the next checkpoint writes it: best.pt is not written every epoch.
                best_weights = {"model": {n: t.detach().clone() for n, t in eval_model.state_dict().items()},
                                "metrics": metrics}
            patience_out = bool(tc.early_stopping_patience) and epoch - best_epoch >= tc.early_stopping_patience
            last_pt = None
            if epoch == tc.epochs or patience_out or checkpoint_at(epoch):
                last_pt, saved_epoch = save(epoch), epoch
            with open(run_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if writer is not None:
                for key, value in metrics.items():
                    if key != "epoch":
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_f1=f"{metrics['val_macro_f1']:.3f}")
            log.info("epoch %d/%d train_loss %.4f val_acc %.4f val_macro_f1 %.4f (%.1fs, %.0f img/s)", epoch,
                     tc.epochs, train_loss, metrics["val_accuracy"], metrics["val_macro_f1"], epoch_seconds,
                     metrics["images_per_second"])
            stop = callback(dict(metrics, best_val_macro_f1=best_f1), last_pt) if callback else False
            if stop:
                break
            if patience_out:
                log.info("early stopping: no better val macro-F1 for %d epochs", tc.early_stopping_patience)
                break
        if saved_epoch != epoch and epoch >= start_epoch:  # stopped by the callback between checkpoints
            save(epoch)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        # Drop every device tensor before leaving, even through an exception whose traceback keeps
        # this frame alive, then hand the cached blocks back to the driver (other trials on the GPU).
        x_train = y_train = soft_train = x_val = y_val = model = step_model = optimizer = scheduler = None
        ema = eval_model = best_weights = None
        release_device_memory(device)

    summary = {
        "run_dir": str(run_dir),
        "best_val_macro_f1": best_f1,
        "best_epoch": best_epoch,
        "epochs_run": epoch - start_epoch + 1,
        "final": metrics,
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if train_seconds else 0.0,
        "wall_seconds": time.perf_counter() - t_start,
        "device": str(device),
        "init_from": init_info,
    }
    atomic_write_json(run_dir / "train_summary.json", summary)
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
