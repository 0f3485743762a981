"""Each class's mean explanation map: what a model looks at, on average, for each emotion.

The maps of up to ``per_class`` images of each true class (explained for that class) are
normalised to [0, 1] one by one and averaged, for every method in the explainer registry
that is asked for. The comparison sets these side by side across datasets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xai_lab.atomic import atomic_write_with
from xai_lab.explain.explainers import explain_batched


def class_mean_maps(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    method: str,
    per_class: int,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Mean [H, W] map per class name, over the first ``per_class`` images of that class.

    Args:
        model: the trained model, in eval mode, on its device.
        images: uint8 [N, C, H, W]; labels: int [N].
        class_names: the model's classes (label index -> name).
        method: a registered explainer.
        per_class: how many images of each class to average.

    Returns:
        ``{class name: float32 [H, W]}`` for the classes present in ``labels``.
    """
    device = next(model.parameters()).device
    # One explain_batched call over every class's images (not one per class), then a mean per class.
    chosen = [(k, np.flatnonzero(labels == k)[:per_class]) for k in range(len(class_names))]
    chosen = [(k, idx) for k, idx in chosen if len(idx)]
    if not chosen:
        return {}
    idx = np.concatenate([i for _, i in chosen])
    classes = torch.as_tensor(np.concatenate([np.full(len(i), k) for k, i in chosen]), device=device)
    x = torch.from_numpy(np.require(images[idx], requirements=["C", "W"])).to(device).float().div_(255)
    maps = explain_batched(method, model, x, classes, batch_size).float()
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    maps = (maps - lo) / (hi - lo).clamp(min=1e-12)
    sums = torch.zeros(len(class_names), *maps.shape[1:], device=device).index_add_(0, classes, maps)
    counts = torch.bincount(classes, minlength=len(class_names)).clamp(min=1).view(-1, 1, 1)
    means = (sums / counts).cpu().numpy().astype(np.float32)
    return {class_names[k]: means[k] for k, _ in chosen}


def save_class_maps(path: Path, maps: dict[str, np.ndarray]) -> None:
    """``class_means.npz``: one array per class name."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **maps)

    atomic_write_with(path, write)


def load_class_maps(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
