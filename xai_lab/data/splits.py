"""Seeded, stratified train/val/test splits and k folds, optionally grouped by subject (scikit-learn).

Three ways a row gets its split:

- :func:`split_indices`: a seeded, stratified holdout (grouped: no subject in two splits);
- :func:`given_split_indices`: the dataset's own split is kept (FER2013 train/test folders, the
  CSV's Usage column, the FER+ folders); a missing val is carved from train;
- :func:`kfold_assignments` + :func:`fold_indices`: k folds (grouped and stratified as far as
  grouping allows); for fold ``i`` the test set is fold ``i``, val is fold ``i+1 (mod k)`` and
  train the other ``k-2`` folds, so every row is tested exactly once.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

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
            train, val = _group_holdout(
                rest, labels[rest], groups[rest], val_frac / (1.0 - test_frac), seed + 1
            )
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


def given_split_indices(
    labels: np.ndarray,
    given: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Keep the split the dataset gives (``given``: train/val/test per row).

    When no row is marked val, ``fractions[1] / (fractions[0] + fractions[1])`` of the train rows
    become val (stratified, grouped when ``groups`` is given); test rows stay test.
    """
    labels, given = np.asarray(labels), np.asarray(given)
    parts = {name: np.flatnonzero(given == name) for name in SPLITS}
    if len(parts["val"]) == 0 and len(parts["train"]):
        train = parts["train"]
        frac = fractions[1] / (fractions[0] + fractions[1])
        try:
            if groups is None:
                parts["train"], parts["val"] = _holdout(train, labels[train], frac, seed)
            else:
                parts["train"], parts["val"] = _group_holdout(
                    train, labels[train], np.asarray(groups)[train], frac, seed
                )
        except ValueError as e:
            raise UserError(
                f"cannot carve val ({frac:.3g} of {len(train)} train images) from the dataset's train "
                f"split: {e}"
            ) from None
    return {name: np.sort(idx) for name, idx in parts.items()}


def kfold_assignments(labels: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """The fold (0..k-1) whose test set holds each row: stratified, grouped when ``groups`` is given."""
    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    folds = np.full(len(labels), -1, dtype=np.int64)
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < k:
            raise UserError(f"data.folds={k} needs at least {k} subjects, found {n_groups}")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(idx, labels, groups)
    else:
        if len(labels) < k:
            raise UserError(f"data.folds={k} needs at least {k} images, found {len(labels)}")
        parts = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, labels)
    try:
        for i, (_, test) in enumerate(parts):
            folds[test] = i
    except ValueError as e:
        raise UserError(f"cannot split {len(labels)} images into {k} folds: {e}") from None
    return folds


def fold_indices(assignments: np.ndarray, fold: int) -> dict[str, np.ndarray]:
    """Fold ``fold``'s split: test = that fold, val = the next fold (mod k), train = the rest."""
    assignments = np.asarray(assignments)
    k = int(assignments.max()) + 1
    val_fold = (fold + 1) % k
    return {
        "train": np.flatnonzero((assignments != fold) & (assignments != val_fold)),
        "val": np.flatnonzero(assignments == val_fold),
        "test": np.flatnonzero(assignments == fold),
    }
