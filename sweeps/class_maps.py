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
    out: dict[str, np.ndarray] = {}
    for k, name in enumerate(class_names):
        idx = np.flatnonzero(labels == k)[:per_class]
        if len(idx) == 0:
            continue
        x = torch.from_numpy(np.require(images[idx], requirements=["C", "W"])).to(device).float().div_(255)
        target = torch.full((len(idx),), k, dtype=torch.long, device=device)
        maps = explain_batched(method, model, x, target, batch_size).float()
        lo = maps.amin(dim=(1, 2), keepdim=True)
        hi = maps.amax(dim=(1, 2), keepdim=True)
        maps = (maps - lo) / (hi - lo).clamp(min=1e-12)
        out[name] = maps.mean(0).cpu().numpy().astype(np.float32)
    return out


def save_class_maps(path: Path, maps: dict[str, np.ndarray]) -> None:
    """``class_means.npz``: one array per class name."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **maps)

    atomic_write_with(path, write)


def load_class_maps(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
