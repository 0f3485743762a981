"""Which images an explain call shows and scores, and the (image, target) pairs it explains.

The galleries (:func:`select_galleries`), the images the metrics score (:func:`scored_indices`) and
those averaged into the class means (:func:`class_mean_indices`) each ask for (image, target class)
pairs; :func:`plan_requests` merges them so that every distinct pair is explained once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xai_lab.config import ExplainConfig, ExplainMetricsConfig


def select_confident(probs: np.ndarray, num_each: int) -> dict[str, np.ndarray]:
    """Indices of the ``num_each`` most (descending) and least (ascending) confident predictions."""
    conf = probs.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    n = min(num_each, len(conf))
    return {"high_conf": order[:n].copy(), "low_conf": order[::-1][:n].copy()}


def select_misclassified(probs: np.ndarray, labels: np.ndarray, num_each: int) -> np.ndarray:
    """Indices of the ``num_each`` most confident wrong predictions (most confident first)."""
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:num_each]


def select_per_class(probs: np.ndarray, labels: np.ndarray, per_class: int, num_classes: int) -> list[np.ndarray]:
    """For each true class, the indices of its ``per_class`` most confidently predicted images."""
    conf = probs.max(axis=1)
    out = []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        out.append(idx[np.argsort(-conf[idx], kind="stable")][:per_class])
    return out


def select_galleries(probs: np.ndarray, labels: np.ndarray, ec: ExplainConfig,
                     class_names: list[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{gallery: (indices, file names)}`` for the galleries in ``ec.selection``."""
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    confident = select_confident(probs, ec.num_each)
    for group in ec.selection:
        if group in confident or group == "misclassified":
            idx = confident[group] if group in confident else select_misclassified(probs, labels, ec.num_each)
            out[group] = (idx, [f"sample{r:02d}.png" for r in range(len(idx))])
        else:
            per = select_per_class(probs, labels, ec.per_class, len(class_names))
            names = [f"{class_names[k]}_{r:02d}.png" for k, idx in enumerate(per) for r in range(len(idx))]
            out[group] = (np.concatenate(per).astype(np.int64), names)
    return out


def scored_indices(n: int, mc: ExplainMetricsConfig) -> np.ndarray:
    """The images the metrics score: ``mc.num_images`` of ``n`` drawn at random (seeded), sorted; none when off."""
    rng = np.random.default_rng(mc.seed)
    return np.sort(rng.permutation(n)[: mc.num_images]) if mc.enabled else np.zeros(0, np.int64)


def class_mean_indices(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """The images averaged into the class means: the first ``per_class`` of each true class (0: all), class by class."""
    per = [np.flatnonzero(labels == k)[: per_class or None] for k in range(num_classes)]
    return np.concatenate(per).astype(np.int64)


@dataclass(frozen=True)
class ExplainRequests:
    """The (image, target class) pairs that a set of outputs asks for, each distinct pair explained once.

    Attributes:
        index, target: the distinct pairs (image indices into the split, the classes explained), sorted.
        rows: ``{output: the positions in index/target of the pairs it asked for, in its order}``.
    """

    index: np.ndarray
    target: np.ndarray
    rows: dict[str, np.ndarray]

    def targets(self, output: str) -> np.ndarray:
        """The classes ``output`` asked to explain, in its order."""
        return self.target[self.rows[output]]

    def inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct pairs as one batch on the device of uint8 ``images``: float images in [0, 1], targets."""
        dev = images.device
        x = images[torch.as_tensor(self.index, device=dev)].float().div_(255)
        return x, torch.as_tensor(self.target, device=dev)

    def split(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Maps of the distinct pairs [n, H, W] -> ``{output: its maps, in the order it asked}``."""
        return {name: maps[torch.as_tensor(rows, device=maps.device)] for name, rows in self.rows.items()}


def plan_requests(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> ExplainRequests:
    """The distinct pairs of ``{output: (image indices, target classes)}`` and where each output's pairs are."""
    asked = [np.stack([np.asarray(i, np.int64).reshape(-1), np.asarray(t, np.int64).reshape(-1)], 1)
             for i, t in outputs.values()]
    pairs, where = np.unique(np.concatenate([np.zeros((0, 2), np.int64), *asked]), axis=0, return_inverse=True)
    rows = np.split(where.reshape(-1), np.cumsum([len(a) for a in asked])[:-1]) if asked else []
    return ExplainRequests(pairs[:, 0].copy(), pairs[:, 1].copy(), dict(zip(outputs, rows, strict=True)))
