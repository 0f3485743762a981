"""Seeded, stratified train/val/test splits, optionally grouped by subject (scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from xai_lab.errors import UserError

SPLITS = ("train", "val", "test")


def split_indices(
    labels: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Split row indices into train/val/test, stratified by ``labels``.

    Args:
        labels: class index per row.
        fractions: (train, val, test), summing to 1; test may be 0.
        seed: the split seed (same seed, same split).
        groups: optional subject per row: no group is put in two splits; the class
            proportions are then kept as far as the grouping allows (StratifiedGroupKFold).

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted, disjoint, covering every row.
    """
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    _, val_frac, test_frac = fractions
    try:
        if groups is None:
            rest, test = _holdout(idx, labels, test_frac, seed)
            train, val = _holdout(rest, labels[rest], val_frac / (1.0 - test_frac), seed + 1)
        else:
            groups = np.asarray(groups)
            rest, test = _group_holdout(idx, labels, groups, test_frac, seed)
            train, val = _group_holdout(rest, labels[rest], groups[rest], val_frac / (1.0 - test_frac), seed + 1)
    except ValueError as e:
        raise UserError(f"cannot split {len(labels)} images into fractions {fractions}: {e}") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _holdout(idx: np.ndarray, labels: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if frac <= 0:
        return idx, idx[:0]
    keep, held = train_test_split(idx, test_size=frac, stratify=labels, random_state=seed)
    return keep, held


def _group_holdout(
    idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``frac`` of the rows as whole groups: one fold of a StratifiedGroupKFold."""
    if frac <= 0:
        return idx, idx[:0]
    n_groups = len(np.unique(groups))
    n_splits = min(max(2, round(1.0 / frac)), n_groups)
    if n_splits < 2:
        raise ValueError(f"only {n_groups} subject(s): cannot hold any out")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, held = next(folds.split(idx, labels, groups))
    return idx[keep], idx[held]
