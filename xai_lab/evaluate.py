"""``evaluate``: test metrics of a run's best checkpoint, computed with scikit-learn.

Writes ``test_summary.json`` (accuracy, macro-F1, n, per-class precision/recall/F1/support,
class names, checkpoint, the Grad-CAM grid ``cam_grid`` of the model's last block; ``explain``
adds an ``explanations`` block) and ``test_confusion_matrix.csv`` (rows: true class, columns:
predicted class, raw counts) into the run's report folder. With the run's ``train.tta_flip``,
predictions average each image with its mirror image (:func:`predict_logits`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from xai_lab.atomic import atomic_write_json, atomic_write_with
from xai_lab.config import ExperimentConfig, save_config
from xai_lab.device import autocast, to_device
from xai_lab.models import cam_grid_size

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int, amp: bool = True, *, tta_flip: bool = False
) -> torch.Tensor:
    """Logits (float32, on the model's device) for uint8 ``images`` [N, C, H, W], in batches.

    With ``tta_flip`` (``train.tta_flip``): ``log(mean(softmax))`` over each image and its horizontal
    mirror (one forward pass of twice the batch). These log-probabilities stand in for logits
    everywhere (softmax gives the averaged probabilities back; argmax and cross-entropy are right).
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True).float().div_(255)
        if tta_flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast(device, amp):
            logits = model(x).float()
        if tta_flip:
            a, b = logits.log_softmax(1).chunk(2)
            logits = torch.logaddexp(a, b) - math.log(2)
        out.append(logits)
    if not out:
        return torch.empty(0, 0, device=device)
    return torch.cat(out)


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class metrics over every class in ``class_names``."""
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "class_names": list(class_names),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
    }


def evaluate_split(model, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                   batch_size: int = 512, amp: bool = True, *,
                   tta_flip: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run ``model`` on one split; return (summary, confusion matrix, softmax probabilities)."""
    device = next(model.parameters()).device
    logits = predict_logits(model, to_device(images, device), batch_size, amp, tta_flip=tta_flip)
    probs = logits.softmax(dim=1).cpu().numpy()
    y_pred = probs.argmax(axis=1)
    summary = classification_summary(labels, y_pred, class_names)
    cm = confusion_matrix(labels, y_pred, labels=list(range(len(class_names))))
    return summary, cm, probs


def write_evaluation(report_dir: Path, summary: dict, cm: np.ndarray, class_names: list[str]) -> None:
    """``test_summary.json`` and ``test_confusion_matrix.csv``, atomically."""
    table = pd.DataFrame(cm, index=pd.Index(class_names, name="true"), columns=class_names)
    atomic_write_with(report_dir / "test_confusion_matrix.csv", lambda p: table.to_csv(p))
    atomic_write_json(report_dir / "test_summary.json", summary)


def read_confusion(report_dir: Path) -> tuple[np.ndarray, list[str]]:
    table = pd.read_csv(report_dir / "test_confusion_matrix.csv", index_col=0)
    return table.to_numpy(), list(table.columns)


@dataclass
class LoadedRun:
    """A run's ``best.pt``, loaded once: the model (eval mode, on its device) and what describes it."""

    run_dir: Path
    model: torch.nn.Module
    cfg: ExperimentConfig
    class_names: list[str]
    epoch: int  # the checkpoint's epoch

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_run(run_dir: str | Path, device: str | None = None) -> LoadedRun:
    """Load a run's ``best.pt`` (``latest`` links are followed) onto ``device`` (default: its ``run.device``)."""
    from xai_lab.checkpoint import model_from_checkpoint
    from xai_lab.device import resolve_device
    from xai_lab.runs import resolve_run_dir

    run_dir = resolve_run_dir(run_dir)
    model, cfg, class_names, state = model_from_checkpoint(run_dir / "best.pt", "cpu")
    model.to(resolve_device(device or cfg.run.device))
    return LoadedRun(run_dir, model, cfg, class_names, int(state["epoch"]))


def evaluate_run(
    run_dir: str | Path,
    report_dir: str | Path | None = None,
    *,
    dataset=None,
    split: str = "test",
    max_images: int | None = None,
    device: str | None = None,
) -> dict:
    """Evaluate a run's ``best.pt`` on ``split`` and write the report files.

    Args:
        run_dir: the run folder (``latest`` links are followed).
        report_dir: where to write; the run's report folder when None.
        dataset: the prepared dataset (loaded from the run's config when None).
        split: which split to score.
        max_images: score only the first n images (smoke runs).
        device: overrides the run's ``run.device``.

    Returns:
        The summary written to ``test_summary.json``.
    """
    from xai_lab.runs import report_dir_for

    run = load_run(run_dir, device)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(run.run_dir)
    return evaluate_model(run.model, run.cfg, run.class_names, report_dir, dataset=dataset, split=split,
                          max_images=max_images, checkpoint=run.checkpoint, epoch=run.epoch)


def evaluate_model(
    model: torch.nn.Module,
    cfg,
    class_names: list[str],
    report_dir: str | Path,
    *,
    dataset=None,
    split: str = "test",
    max_images: int | None = None,
    checkpoint: str | Path = "",
    epoch: int = 0,
) -> dict:
    """Score a loaded ``model`` (on its device, in eval mode) on ``split``; write the report files.

    The part of :func:`evaluate_run` after loading, for callers that already hold the model
    (:func:`xai_lab.report.report_model` evaluates, plots and explains one loaded model).

    Args:
        cfg: the run's config (data, ``train.eval_batch_size``, ``train.amp``).
        checkpoint, epoch: recorded in the summary.
    """
    from xai_lab.data.dataset import load_dataset

    report_dir = Path(report_dir)
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    data = dataset.splits[split]
    if max_images is not None:
        data = data.subset(np.arange(min(max_images, len(data))))
    if len(data) == 0:
        from xai_lab.errors import UserError

        raise UserError(f"the {split} split of {dataset.name} is empty: nothing to evaluate")
    summary, cm, _ = evaluate_split(model, data.images, data.labels, class_names, cfg.train.eval_batch_size,
                                    cfg.train.amp, tta_flip=cfg.train.tta_flip)
    side = cam_grid_size(cfg.model)  # the Grad-CAM grid of the last block, recorded beside accuracy
    summary.update(split=split, checkpoint=str(checkpoint), epoch=epoch, dataset=dataset.name, cam_grid=[side, side])
    write_evaluation(report_dir, summary, cm, class_names)
    save_config(cfg, report_dir / "config.yaml")
    log.info("%s: accuracy %.4f macro-F1 %.4f on %d %s images -> %s", Path(checkpoint).parent.name or cfg.run.name,
             summary["accuracy"], summary["macro_f1"], summary["n"], split, report_dir)
    return summary


def score_on_shared_classes(logits: np.ndarray, labels: np.ndarray, model_classes: list[str],
                            data_classes: list[str], emotions: list[str] | None = None) -> tuple[dict, np.ndarray]:
    """Score a model's ``logits`` on a dataset's images over the emotions both share (or ``emotions``, a subset).

    Classes are lined up on the emotion vocabulary (:mod:`xai_lab.data.emotions`): images of the
    dataset's other classes are left out, and the prediction is the most likely of the scored emotions
    (the model's other outputs are ignored). ``accuracy_all_outputs`` is the stricter score where a
    prediction of any other class counts as wrong.

    Args:
        logits: [N, K_model] for the dataset's images, in order.
        labels: [N] the dataset's label indices.
        emotions: the emotions to score on, each shared by both (default: every shared one).

    Returns:
        ``(summary, confusion)``: :func:`classification_summary` over the scored emotions plus
        ``accuracy_all_outputs``, ``shared_classes``, ``model_only_classes``, ``data_only_classes`` and
        ``n_left_out``; the confusion matrix (rows: true emotion). ``n`` is 0 (metrics NaN) when no
        image of a scored emotion is there.
    """
    from xai_lab.data.emotions import shared_classes

    shared = shared_classes(model_classes, data_classes)
    wanted = shared.emotions if emotions is None else [e for e in shared.emotions if e in set(emotions)]
    pos = [shared.emotions.index(e) for e in wanted]
    model_idx = np.asarray([shared.model_idx[i] for i in pos], dtype=np.int64)
    to_scored = np.full(len(data_classes), -1)
    to_scored[[shared.data_idx[i] for i in pos]] = np.arange(len(wanted))
    y_true = to_scored[labels]
    keep = y_true >= 0
    y_true, scored = y_true[keep], logits[keep]
    cm = np.zeros((len(wanted), len(wanted)), dtype=np.int64)
    if len(y_true):
        y_pred = scored[:, model_idx].argmax(axis=1)
        summary = classification_summary(y_true, y_pred, wanted)
        all_outputs = float(np.mean(scored.argmax(axis=1) == model_idx[y_true]))
        cm = confusion_matrix(y_true, y_pred, labels=list(range(len(wanted))))
    else:
        summary = {"accuracy": float("nan"), "macro_f1": float("nan"), "n": 0, "class_names": wanted,
                   "per_class": {}}
        all_outputs = float("nan")
    summary.update(accuracy_all_outputs=all_outputs, shared_classes=wanted, model_only_classes=shared.model_only,
                   data_only_classes=shared.data_only, n_left_out=int((~keep).sum()))
    return summary, cm


def evaluate_other_dataset(
    run_dir: str | Path,
    dataset,
    report_dir: str | Path | None = None,
    *,
    split: str = "test",
    max_images: int | None = None,
    device: str | None = None,
) -> dict:
    """Score a run's best checkpoint on another dataset, over the emotions both share
    (:func:`score_on_shared_classes`).

    Writes ``test_summary.json`` and ``test_confusion_matrix.csv`` into ``report_dir``
    (default: the run's report folder ``/cross_<dataset>``), never over the run's own results.

    Returns:
        The summary: accuracy, macro-F1, per class (named by the vocabulary), ``shared_classes``,
        ``model_only_classes``, ``data_only_classes``, ``n_left_out``, ``trained_on``, ``dataset``.
    """
    from xai_lab.data.emotions import common_classes
    from xai_lab.errors import UserError
    from xai_lab.runs import report_dir_for

    run = load_run(run_dir, device)
    run_dir, cfg, model_classes = run.run_dir, run.cfg, run.class_names
    if not common_classes(model_classes, dataset.class_names):
        raise UserError(f"the model's classes ({', '.join(model_classes)}) and {dataset.name}'s "
                        f"({', '.join(dataset.class_names)}) share no emotion")
    data, left_out = shared_split(dataset, model_classes, split, cfg.data.channels, max_images)
    if len(data) == 0:
        raise UserError(f"the {split} split of {dataset.name} holds no image of a shared class")
    logits = split_logits(run, data.images)
    summary, cm = score_on_shared_classes(logits, data.labels, model_classes, dataset.class_names)
    summary["n_left_out"] = left_out
    summary.update(split=split, checkpoint=str(run.checkpoint), epoch=run.epoch, cross_dataset=True,
                   trained_on=cfg.data.name, dataset=dataset.name)
    if report_dir is None:
        report_dir = report_dir_for(run_dir) / f"cross_{dataset.name}"
    report_dir = Path(report_dir)
    write_evaluation(report_dir, summary, cm, summary["shared_classes"])
    log.info("%s on %s (%s, shared: %s): accuracy %.4f macro-F1 %.4f on %d images (%d left out) -> %s",
             run_dir.name, dataset.name, split, ", ".join(summary["shared_classes"]), summary["accuracy"],
             summary["macro_f1"], summary["n"], summary["n_left_out"], report_dir)
    return summary


def shared_split(dataset, model_classes: list[str], split: str, channels: int,
                 max_images: int | None = None) -> tuple:
    """The images of ``split`` whose class the model knows (the first ``max_images`` of them when given).

    Returns:
        ``(split, n_left_out)``: those images (possibly none), and how many of the split's images are of
        other classes.

    Raises:
        UserError: the channels differ from the model's.
    """
    from xai_lab.data.emotions import shared_classes
    from xai_lab.errors import UserError

    data = dataset.splits[split]
    if data.images.shape[1] != channels:
        raise UserError(f"{dataset.name} has {data.images.shape[1]} channel(s) but the model takes "
                        f"{channels}; set data.channels={channels}")
    known = np.zeros(len(dataset.class_names), dtype=bool)
    known[shared_classes(model_classes, dataset.class_names).data_idx] = True
    keep = np.flatnonzero(known[data.labels])
    if max_images is not None:
        keep = keep[:max_images]
    return data.subset(keep), int((~known[data.labels]).sum())


def split_logits(run: LoadedRun, images: np.ndarray) -> np.ndarray:
    """A loaded run's logits for uint8 ``images`` [N, C, H, W] (with its ``train.tta_flip``), on the host."""
    cfg = run.cfg
    if len(images) == 0:
        return np.zeros((0, len(run.class_names)), dtype=np.float32)
    return predict_logits(run.model, to_device(images, run.device), cfg.train.eval_batch_size, cfg.train.amp,
                          tta_flip=cfg.train.tta_flip).float().cpu().numpy()
