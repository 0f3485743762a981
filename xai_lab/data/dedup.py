"""``data.dedup``: what ``prepare`` does with exact duplicates (the same SHA-1) before writing.

- ``keep``: nothing (the audit still reports them);
- ``drop_conflicts``: every copy of an image filed under two or more labels (which label is
  right cannot be told);
- ``drop_cross_split``: copies that would leak between splits: the copy in the latest split
  (test, then val, then train) is kept, so a dataset's given test set stays whole;
- ``drop_all``: both of the above, and repeated copies within a split (the first is kept).

Near duplicates (perceptual hash) are reported by the audit, never dropped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


def duplicate_groups(sha1: pd.Series) -> list[np.ndarray]:
    """Row indices of each set of two or more rows with the same hash, in first-seen order."""
    codes, uniques = pd.factorize(sha1)
    counts = np.bincount(codes, minlength=len(uniques))
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [order[starts[c] : starts[c + 1]] for c in range(len(uniques)) if counts[c] > 1]


def dedup_rows(table: pd.DataFrame, mode: str) -> tuple[np.ndarray, list[dict]]:
    """Which rows ``mode`` drops: ``(bool mask [N], [{path, label, split, reason}, ...])``.

    ``table`` needs ``path``, ``label``, ``split`` and ``sha1`` columns.
    """
    drop = np.zeros(len(table), dtype=bool)
    if mode == "keep":
        return drop, []
    reasons: dict[int, str] = {}
    labels, splits, paths = table["label"].to_numpy(), table["split"].to_numpy(), table["path"].to_numpy()
    for group in duplicate_groups(table["sha1"]):
        if mode in ("drop_conflicts", "drop_all") and len(set(labels[group])) > 1:
            for i in group:
                reasons[i] = f"conflicting labels ({', '.join(sorted(set(labels[group])))})"
            continue
        live = list(group)
        if mode in ("drop_cross_split", "drop_all") and len(set(splits[group])) > 1:
            latest = max(splits[group], key=SPLIT_RANK.__getitem__)
            keeper = next(i for i in group if splits[i] == latest)
            for i in group:
                if splits[i] != latest:
                    reasons[i] = f"also in {latest} ({paths[keeper]})"
            live = [i for i in group if splits[i] == latest]
        if mode == "drop_all":
            for i in live[1:]:
                reasons[i] = f"duplicate of {paths[live[0]]}"
    for i in reasons:
        drop[i] = True
    dropped = [
        {"path": str(paths[i]), "label": str(labels[i]), "split": str(splits[i]), "reason": reasons[i]}
        for i in sorted(reasons)
    ]
    return drop, dropped
