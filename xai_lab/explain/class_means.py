"""Class mean maps: each true class's average explanation, and the ``class_means.npz`` that records it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from xai_lab.atomic import atomic_write_with
from xai_lab.explain.explainers import normalise_maps


def class_means(maps: torch.Tensor, classes: np.ndarray,
                class_names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each class's mean of the ``maps`` whose ``classes`` is it, every map scaled to [0, 1] first
    (:func:`normalise_maps`): ``({name: float32 [H, W]}, {name: count})`` for the classes present."""
    scaled = normalise_maps(maps)
    means, counts = {}, {}
    for k, name in enumerate(class_names):
        rows = np.flatnonzero(classes == k)
        if len(rows):
            means[name] = scaled[torch.as_tensor(rows, device=maps.device)].mean(0).cpu().numpy().astype(np.float32)
            counts[name] = len(rows)
    return means, counts


@dataclass
class ClassMeans:
    """``xai/<method>/class_means.npz``: each true class's mean map (:func:`class_means`) and how it was made.

    The maps are those of the first ``explain.class_means`` images of each class of the split,
    explained for their true class with the method's ``explain.<method>`` parameters and, for the
    Grad-CAM family, ``explain.layer``. The npz holds one float32 [H, W] array per class name and,
    under ``__meta__``, the other fields as JSON (an npz written without it loads with defaults).
    """

    maps: dict[str, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)
    method: str = ""
    split: str = ""
    target_layer: str = ""  # the Grad-CAM family's layer, recorded for every method (as in metrics.json)
    uses_layer: bool = False  # whether the method reads target_layer
    cam_grid: list[int] = field(default_factory=list)  # [h, w] of target_layer's output
    params: dict = field(default_factory=dict)  # the method's explain.<method> parameters

    META_KEY: ClassVar[str] = "__meta__"

    def save(self, path: Path) -> None:
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "maps"}
        _save_npz(path, {**self.maps, self.META_KEY: np.array(json.dumps(meta))})

    @classmethod
    def load(cls, path: str | Path) -> ClassMeans:
        with np.load(path) as z:
            maps = {k: z[k] for k in z.files if k != cls.META_KEY}
            meta = json.loads(str(z[cls.META_KEY])) if cls.META_KEY in z.files else {}
        return cls(maps, **meta)

    def title(self) -> str:
        """The method, and for the Grad-CAM family the layer and its grid (the class-means figure's title)."""
        if not self.uses_layer:
            return self.method
        return f"{self.method} on {self.target_layer} ({'x'.join(map(str, self.cam_grid))})"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **arrays)

    atomic_write_with(path, write)
