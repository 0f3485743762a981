"""``explain``: attribution galleries for a run's best checkpoint.

For each method, the ``num_each`` most and least confident images of the split (by the
softmax probability of the predicted class) are explained for their predicted class, in
one batch on the device, and drawn into ``xai/<method>/{high_conf,low_conf}/sampleNN.png``;
``xai/<method>/selection.csv`` lists the images shown.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xai_lab.atomic import atomic_write_with
from xai_lab.errors import UserError
from xai_lab.explain.drawing import draw_explanation
from xai_lab.explain.explainers import EXPLAINERS, explain_batched

log = logging.getLogger(__name__)


def select_confident(probs: np.ndarray, num_each: int) -> dict[str, np.ndarray]:
    """Indices of the ``num_each`` most (descending) and least (ascending) confident predictions."""
    conf = probs.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    n = min(num_each, len(conf))
    return {"high_conf": order[:n].copy(), "low_conf": order[::-1][:n].copy()}


def check_methods(methods: list[str]) -> list[str]:
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise UserError(f"unknown explanation method '{unknown[0]}'; valid: {', '.join(EXPLAINERS)}")
    if not methods:
        raise UserError(f"no explanation method given; valid: {', '.join(EXPLAINERS)}")
    return methods


def explain_run(
    run_dir: str | Path,
    report_dir: str | Path | None = None,
    *,
    split: str | None = None,
    num_each: int | None = None,
    methods: list[str] | None = None,
    dataset=None,
    device: str | None = None,
) -> dict[str, list[Path]]:
    """Write explanation galleries for the run's ``best.pt``.

    Args:
        run_dir: the run folder.
        report_dir: where ``xai/`` goes; the run's report folder when None.
        split, num_each, methods: override ``explain.*`` of the run's config.
        dataset: the prepared dataset (loaded from the run's config when None).
        device: overrides ``run.device``.

    Returns:
        ``{method: [written PNG paths]}``.
    """
    from xai_lab.checkpoint import model_from_checkpoint
    from xai_lab.data.dataset import load_dataset
    from xai_lab.device import resolve_device, to_device
    from xai_lab.evaluate import predict_logits
    from xai_lab.runs import report_dir_for, resolve_run_dir

    run_dir = resolve_run_dir(run_dir)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(run_dir)
    model, cfg, class_names, _ = model_from_checkpoint(run_dir / "best.pt", "cpu")
    split = split or cfg.explain.split
    num_each = num_each or cfg.explain.num_each
    methods = check_methods(list(methods or cfg.explain.methods))
    dev = resolve_device(device or cfg.run.device)
    model.to(dev)
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    if split not in dataset.splits:
        raise UserError(f"unknown split '{split}'; valid: {', '.join(dataset.splits)}")
    data = dataset.splits[split]
    if len(data) == 0:
        raise UserError(f"the {split} split of {dataset.name} is empty: nothing to explain")

    images = to_device(data.images, dev)
    probs = predict_logits(model, images, cfg.train.eval_batch_size, cfg.train.amp).softmax(1).cpu().numpy()
    chosen = select_confident(probs, num_each)
    written: dict[str, list[Path]] = {}
    for method in methods:
        written[method] = []
        rows = []
        for group, idx in chosen.items():
            x = images[torch.as_tensor(idx, device=dev)].float().div_(255)
            pred = torch.as_tensor(probs[idx].argmax(1), device=dev)
            maps = explain_batched(method, model, x, pred, cfg.explain.batch_size).cpu().numpy()
            for rank, i in enumerate(idx):
                true, guess, conf = class_names[data.labels[i]], class_names[probs[i].argmax()], probs[i].max()
                path = report_dir / "xai" / method / group / f"sample{rank:02d}.png"
                title = f"true: {true} | pred: {guess} ({conf:.2f})"
                draw_explanation(data.images[i], maps[rank], title, path, method)
                written[method].append(path)
                rows.append({"group": group, "file": f"{group}/sample{rank:02d}.png", "path": data.paths[i],
                             "true": true, "pred": guess, "confidence": float(conf)})
        table = pd.DataFrame(rows)
        atomic_write_with(report_dir / "xai" / method / "selection.csv", lambda p, t=table: t.to_csv(p, index=False))
        log.info("%s: %d images -> %s", method, len(written[method]), report_dir / "xai" / method)
    return written
