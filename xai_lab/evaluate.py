"""``evaluate``: test metrics of a run's best checkpoint, computed with scikit-learn.

Writes ``test_summary.json`` (accuracy, macro-F1, n, per-class precision/recall/F1/support,
class names, checkpoint, the Grad-CAM grid ``cam_grid`` of the model's last block; ``explain``
adds an ``explanations`` block) and ``test_confusion_matrix.csv`` (rows: true class, columns:
predicted class, raw counts) into the run's report folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from xai_lab.atomic import atomic_write_json, atomic_write_with
from xai_lab.config import save_config
from xai_lab.device import autocast, to_device

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module, images: torch.Tensor, batch_size: int, amp: bool = True
) -> torch.Tensor:
    """Logits (float32, on the model's device) for uint8 ``images`` [N, C, H, W], in batches."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True).float().div_(255)
        with autocast(device, amp):
            out.append(model(x).float())
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
                   batch_size: int = 512, amp: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """Run ``model`` on one split; return (summary, confusion matrix, softmax probabilities)."""
    device = next(model.parameters()).device
    logits = predict_logits(model, to_device(images, device), batch_size, amp)
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
    from xai_lab.checkpoint import model_from_checkpoint
    from xai_lab.data.dataset import load_dataset
    from xai_lab.device import resolve_device
    from xai_lab.models import cam_grid_size
    from xai_lab.runs import report_dir_for, resolve_run_dir

    run_dir = resolve_run_dir(run_dir)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(run_dir)
    ckpt = run_dir / "best.pt"
    model, cfg, class_names, state = model_from_checkpoint(ckpt, "cpu")
    dev = resolve_device(device or cfg.run.device)
    model.to(dev)
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    data = dataset.splits[split]
    if max_images is not None:
        data = data.subset(np.arange(min(max_images, len(data))))
    if len(data) == 0:
        from xai_lab.errors import UserError

        raise UserError(f"the {split} split of {dataset.name} is empty: nothing to evaluate")
    summary, cm, _ = evaluate_split(model, data.images, data.labels, class_names, cfg.train.eval_batch_size,
                                    cfg.train.amp)
    side = cam_grid_size(cfg.model)  # the Grad-CAM grid of the last block, recorded beside accuracy
    summary.update(split=split, checkpoint=str(ckpt), epoch=int(state["epoch"]), dataset=dataset.name,
                   cam_grid=[side, side])
    write_evaluation(report_dir, summary, cm, class_names)
    save_config(cfg, report_dir / "config.yaml")
    log.info("%s: accuracy %.4f macro-F1 %.4f on %d %s images -> %s", run_dir.name, summary["accuracy"],
             summary["macro_f1"], summary["n"], split, report_dir)
    return summary
