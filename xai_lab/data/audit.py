"""The data audit: duplicates, leakage, label conflicts and per-class statistics of a prepared dataset.

Run by ``prepare`` and by ``xai-lab audit --config EXP``; writes ``audit.json`` and ``audit.md``
beside ``metadata.csv``. Findings:

- exact duplicates: rows with the same SHA-1 (file bytes; raw pixels for CSV rows), within a
  split, across splits (leakage) and across classes (label conflicts);
- near duplicates: pairs whose 64-bit perceptual hashes (pHash: the 8x8 low-frequency DCT of a
  32x32 grayscale copy against its median; Zauner 2010) are within
  ``data.audit.near_duplicate_distance`` bits, confirmed by a mean absolute gray-level difference
  of at most ``data.audit.near_duplicate_pixel_delta`` on the decoded cache (byte-identical pairs
  are exact duplicates, not counted here). The pixel check matters for aligned face crops: on
  CK+ a pHash alone matches the same person's different expressions (mean difference 13-50),
  while consecutive frames of one sequence differ by 2-6;
- blank images (a single gray level; FER2013 holds all-black ones);
- subjects found in more than one split (and in more than one split of any fold);
- per class: original image sizes and modes, and brightness (mean gray level of the decoded
  images), flagged when a class differs from the rest (the "one class has another resolution" check);
- class balance per split, and what ``prepare`` skipped, excluded or deduplicated;
- split shift: per split (and per fold's test set) the original sizes, modes and file types and,
  on the decoded cache, brightness, contrast, sharpness, saturated pixels and JPEG blockiness;
  every pair of splits (each fold against the other folds) is compared with a two-sided
  Mann-Whitney U test and Cliff's delta (chi-squared and total variation for sizes, modes, types),
  one value per subject, and a shift is flagged when the Bonferroni-corrected p is below
  ``data.audit.split_shift_alpha`` and the effect is at least ``data.audit.split_shift_effect``.

The audit describes the prepared dataset: rows that ``data.dedup`` dropped are listed under
``dedup`` and no longer counted as duplicates.

Each finding is one ``check_*`` function (the split shift: :func:`split_shift_sections`) that returns
its section of the report and appends its warnings; :func:`audit_table` runs them in order.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from xai_lab.atomic import atomic_write_json, atomic_write_text
from xai_lab.config import AuditConfig, DataConfig
from xai_lab.data.dedup import duplicate_groups
from xai_lab.errors import UserError

SPLIT_ORDER = ("train", "val", "test")
BLANK_RANGE = 2  # an image whose gray levels span at most this is blank
IMBALANCE_RATIO = 5  # the largest class with this many times the smallest's images is flagged
MIN_CLASS_FOR_STATS = 10  # brightness of a class with fewer images is reported, not flagged
MIN_UNITS_FOR_SHIFT = 10  # a split (fold) with fewer images (subjects) is described, not compared


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` is the DCT of ``x``)."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(images: np.ndarray, batch: int = 4096) -> np.ndarray:
    """64-bit perceptual hashes of uint8 images ``[N, C, H, W]`` as uint64 ``[N]``."""
    import torch
    import torch.nn.functional as F

    d = dct_matrix(32).astype(np.float32)
    out = np.empty(len(images), dtype=np.uint64)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.asarray(images[start : start + batch], dtype=np.float32)).mean(
            dim=1, keepdim=True
        )
        small = F.interpolate(x, size=(32, 32), mode="area")[:, 0].numpy()
        low = (d @ small @ d.T)[:, :8, :8].reshape(len(small), 64)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[start : start + batch] = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)
    return out


def near_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 256) -> np.ndarray:
    """All pairs ``(i, j)``, ``i < j``, of hashes at most ``max_distance`` bits apart: int64 ``[P, 2]``."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def pixel_difference(images: np.ndarray, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean absolute difference (gray levels) between the two images of each pair."""
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), chunk):
        p = pairs[start : start + chunk]
        a, b = np.asarray(images[p[:, 0]], np.float32), np.asarray(images[p[:, 1]], np.float32)
        out[start : start + chunk] = np.abs(a - b).reshape(len(p), -1).mean(axis=1)
    return out


class AuditRows(NamedTuple):
    """The columns the checks read, one entry per row of metadata.csv (without a ``split`` column: ``train``)."""

    labels: np.ndarray
    splits: np.ndarray
    subjects: np.ndarray
    paths: np.ndarray
    sha1: np.ndarray


def audit_rows(table: pd.DataFrame) -> AuditRows:
    """The label, split, subject, path and SHA-1 columns of ``table`` as string arrays."""
    return AuditRows(
        labels=table["label"].astype(str).to_numpy(),
        splits=(
            table["split"].astype(str).to_numpy() if "split" in table else np.full(len(table), "train", dtype=object)
        ),
        subjects=table["subject"].astype(str).to_numpy(),
        paths=table["path"].astype(str).to_numpy(),
        sha1=table["sha1"].astype(str).to_numpy(),
    )


def check_exact_duplicates(
    table: pd.DataFrame, rows: AuditRows, max_examples: int, warnings: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Same SHA-1 in two or more rows: flags groups that span splits (leakage) or classes (label conflicts)."""
    groups = duplicate_groups(table["sha1"].astype(str))
    entries = [
        {
            "sha1": str(table["sha1"].iloc[g[0]]),
            "paths": rows.paths[g].tolist(),
            "labels": rows.labels[g].tolist(),
            "splits": rows.splits[g].tolist(),
        }
        for g in groups
    ]
    n_cross_split = sum(len(set(e["splits"])) > 1 for e in entries)
    conflicts = [e for e in entries if len(set(e["labels"])) > 1]
    exact = {
        "groups": len(groups),
        "images": int(sum(len(g) for g in groups)),
        "within_one_split": len(groups) - n_cross_split,
        "across_splits": n_cross_split,
        "across_classes": len(conflicts),
        "examples": sorted(entries, key=lambda e: (-len(set(e["splits"])), -len(set(e["labels"]))))[:max_examples],
    }
    if n_cross_split:
        warnings.append(f"{n_cross_split} exact duplicate group(s) span two or more splits (leakage)")
    if conflicts:
        warnings.append(f"{len(conflicts)} exact duplicate group(s) are filed under different classes")
    return exact, {"groups": len(conflicts), "examples": conflicts[:max_examples]}


def confirmed_near_pairs(images: np.ndarray, sha1: np.ndarray, cfg: AuditConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pHashes and the near-duplicate pairs: close hashes, different bytes, small mean gray difference."""
    n = len(sha1)
    hashes = phash(images) if n else np.empty(0, dtype=np.uint64)
    pairs = near_pairs(hashes, cfg.near_duplicate_distance) if n > 1 else np.empty((0, 2), dtype=np.int64)
    if len(pairs):
        pairs = pairs[sha1[pairs[:, 0]] != sha1[pairs[:, 1]]]
        pairs = pairs[pixel_difference(images, pairs) <= cfg.near_duplicate_pixel_delta]
    return hashes, pairs


def check_near_duplicates(images: np.ndarray, rows: AuditRows, cfg: AuditConfig, warnings: list[str]) -> dict[str, Any]:
    """Near duplicates (pHash within a few bits, confirmed on the pixels): flags pairs that span two splits."""
    hashes, pairs = confirmed_near_pairs(images, rows.sha1, cfg)
    i, j = (pairs[:, 0], pairs[:, 1]) if len(pairs) else (np.empty(0, int), np.empty(0, int))
    x_split, x_class = rows.splits[i] != rows.splits[j], rows.labels[i] != rows.labels[j]
    dist = np.bitwise_count(hashes[i] ^ hashes[j]) if len(pairs) else np.empty(0, int)
    order = np.lexsort((dist, ~x_class, ~x_split))  # cross-split, then cross-class pairs first
    near = {
        "hash": "pHash 64-bit",
        "max_distance": cfg.near_duplicate_distance,
        "max_pixel_delta": cfg.near_duplicate_pixel_delta,
        "pairs": int(len(pairs)),
        "across_splits": int(x_split.sum()),
        "across_classes": int(x_class.sum()),
        "same_subject": int((rows.subjects[i] == rows.subjects[j]).sum()),
        "examples": [
            {
                "paths": [rows.paths[i[k]], rows.paths[j[k]]],
                "labels": [rows.labels[i[k]], rows.labels[j[k]]],
                "splits": [rows.splits[i[k]], rows.splits[j[k]]],
                "distance": int(dist[k]),
            }
            for k in order[: cfg.max_examples]
        ],
    }
    if near["across_splits"]:
        warnings.append(
            f"{near['across_splits']} near-duplicate pair(s) span two splits "
            f"(pHash <= {cfg.near_duplicate_distance} bits, "
            f"gray difference <= {cfg.near_duplicate_pixel_delta:g})"
        )
    return near


def subjects_across_fold_splits(folds: np.ndarray, subjects: np.ndarray) -> list[int]:
    """Per fold: how many subjects have images in more than one of its train, val and test sets."""
    from xai_lab.data.splits import fold_indices

    per_fold = []
    for f in range(int(folds.max()) + 1):
        names = np.empty(len(subjects), dtype=object)
        for name, idx in fold_indices(folds, f).items():
            names[idx] = name
        counts = pd.DataFrame({"subject": subjects, "split": names}).groupby("subject")["split"].nunique()
        per_fold.append(int((counts > 1).sum()))
    return per_fold


def check_subjects(
    table: pd.DataFrame, rows: AuditRows, grouped: bool, max_examples: int, warnings: list[str]
) -> dict[str, Any]:
    """Subjects: flags a subject with images in two splits, and with folds every fold where that happens."""
    subj = pd.DataFrame({"subject": rows.subjects, "split": rows.splits})
    per_subject = subj.groupby("subject")["split"].nunique()
    leaking = sorted(per_subject[per_subject > 1].index.tolist())
    found: dict[str, Any] = {
        "subjects": int(len(per_subject)),
        "images_per_subject_max": int(subj["subject"].value_counts().max()) if len(subj) else 0,
        "grouped_by_subject": bool(grouped),
        "in_more_than_one_split": len(leaking),
        "examples": leaking[:max_examples],
    }
    if leaking:
        warnings.append(f"{len(leaking)} subject(s) appear in more than one split")
    if "fold" in table:
        per_fold = subjects_across_fold_splits(table["fold"].to_numpy(), rows.subjects)
        found["folds_with_subject_in_two_splits"] = int(sum(c > 0 for c in per_fold))
        found["per_fold"] = per_fold
        if any(per_fold):
            warnings.append(f"subjects cross splits in {sum(c > 0 for c in per_fold)} of {len(per_fold)} folds")
    return found


def check_blank_images(flat: np.ndarray, rows: AuditRows, max_examples: int, warnings: list[str]) -> dict[str, Any]:
    """Blank images: flags every image whose gray levels span at most :data:`BLANK_RANGE` (FER2013 has black ones)."""
    blank_idx = np.flatnonzero(flat.max(axis=1) - flat.min(axis=1) <= BLANK_RANGE) if len(flat) else np.empty(0, int)
    blank = {
        "images": int(len(blank_idx)),
        "examples": [{"path": rows.paths[k], "label": rows.labels[k], "split": rows.splits[k]} for k in blank_idx][
            :max_examples
        ],
    }
    if len(blank_idx):
        warnings.append(f"{len(blank_idx)} blank image(s) (a single gray level), e.g. {rows.paths[blank_idx[0]]}")
    return blank


def check_classes(
    table: pd.DataFrame,
    rows: AuditRows,
    flat: np.ndarray,
    class_names: list[str],
    cfg: AuditConfig,
    warnings: list[str],
) -> dict[str, Any]:
    """Per class: flags no images, a usual size or a mode unlike the rest, a mean brightness far from the mean."""
    n = len(rows.labels)
    brightness = flat.mean(axis=1) if n else np.empty(0)
    sizes = (table["width"].astype(str) + "x" + table["height"].astype(str)).to_numpy()
    modes = table["mode"].astype(str).to_numpy() if "mode" in table else np.full(n, "?", dtype=object)
    overall_size = Counter(sizes).most_common(1)[0][0] if n else ""
    overall_brightness = float(brightness.mean()) if n else 0.0
    per_class = {}
    for c in class_names:
        m = rows.labels == c
        if not m.any():
            per_class[c] = {"images": 0}
            warnings.append(f"class {c} has no images")
            continue
        size_counts, mode_counts = Counter(sizes[m]), Counter(modes[m])
        b = brightness[m]
        per_class[c] = {
            "images": int(m.sum()),
            "sizes": dict(size_counts.most_common()),
            "modes": dict(mode_counts.most_common()),
            "brightness_mean": round(float(b.mean()), 2),
            "brightness_std": round(float(b.std()), 2),
        }
        main_size = size_counts.most_common(1)[0][0]
        if main_size != overall_size:
            warnings.append(f"class {c}: most images are {main_size}, the dataset's usual size is {overall_size}")
        other_modes = set(mode_counts) - set(Counter(modes[~m]))
        if other_modes and (~m).any():
            warnings.append(f"class {c}: image mode(s) {', '.join(sorted(other_modes))} found in no other class")
        if m.sum() >= MIN_CLASS_FOR_STATS and abs(float(b.mean()) - overall_brightness) > cfg.brightness_delta:
            warnings.append(f"class {c}: mean brightness {b.mean():.1f} vs {overall_brightness:.1f} overall")
    return per_class


def check_class_balance(rows: AuditRows, class_names: list[str], warnings: list[str]) -> dict[str, Any]:
    """Images per class and split: flags a largest class with :data:`IMBALANCE_RATIO` times the smallest's."""
    by_split = {s: {c: int(((rows.splits == s) & (rows.labels == c)).sum()) for c in class_names} for s in SPLIT_ORDER}
    totals = {c: int((rows.labels == c).sum()) for c in class_names}
    present = {c: v for c, v in totals.items() if v}  # empty classes are flagged by check_classes
    largest = max(present, key=present.get) if present else ""
    smallest = min(present, key=present.get) if present else ""
    ratio = round(present[largest] / present[smallest], 2) if present else 0.0
    if ratio >= IMBALANCE_RATIO:
        warnings.append(f"class imbalance: {largest} has {ratio}x the images of {smallest}")
    return {
        "counts": totals,
        "by_split": by_split,
        "imbalance_ratio": ratio,
        "largest": largest,
        "smallest": smallest,
        "empty_classes": [c for c, v in totals.items() if not v],
    }


def check_empty_splits(splits: np.ndarray, warnings: list[str]) -> None:
    """Flags each of train, val and test that holds no image."""
    empty_splits = [s for s in SPLIT_ORDER if not (splits == s).any()]
    if empty_splits:
        warnings.append(f"empty split(s): {', '.join(empty_splits)}")


def prepare_summary(info: dict, dedup_mode: str, max_examples: int) -> dict[str, Any]:
    """What ``prepare`` left out (from dataset.json): skipped and excluded rows, and the rows dedup dropped."""
    dedup = info.get("dedup", {})
    return {
        "skipped": len(info.get("skipped", [])),
        "excluded": info.get("excluded", {}),
        "dedup": {
            "mode": dedup.get("mode", dedup_mode),
            "dropped": len(dedup.get("dropped", [])),
            "examples": dedup.get("dropped", [])[:max_examples],
        },
    }


def audit_table(
    table: pd.DataFrame,
    images: np.ndarray,
    class_names: list[str],
    data: DataConfig,
    info: dict | None = None,
) -> dict[str, Any]:
    """The audit of one prepared dataset (``table`` = metadata.csv, ``images`` = the cache, same rows).

    The checks run in the order of the report; each returns its section and appends its warnings to
    ``warnings``, so the warnings follow that order too. ``info`` is dataset.json (what prepare left out).
    """
    cfg, n = data.audit, len(table)
    rows = audit_rows(table)
    flat = images.reshape(n, -1) if n else np.empty((0, 1), dtype=np.uint8)
    warnings: list[str] = []
    exact, conflicts = check_exact_duplicates(table, rows, cfg.max_examples, warnings)
    near = check_near_duplicates(images, rows, cfg, warnings)
    subjects = check_subjects(table, rows, data.group_by_subject, cfg.max_examples, warnings)
    blank = check_blank_images(flat, rows, cfg.max_examples, warnings)
    per_class = check_classes(table, rows, flat, class_names, cfg, warnings)
    balance = check_class_balance(rows, class_names, warnings)
    check_empty_splits(rows.splits, warnings)
    shift = split_shift_sections(table, images, rows.splits, rows.subjects, cfg, warnings)
    return {
        "dataset": data.name,
        "source": data.source,
        "root": data.root,
        "images": n,
        "classes": list(class_names),
        "split_sizes": {s: int((rows.splits == s).sum()) for s in SPLIT_ORDER},
        "exact_duplicates": exact,
        "label_conflicts": conflicts,
        "near_duplicates": near,
        "blank_images": blank,
        "subjects": subjects,
        "per_class": per_class,
        "class_balance": balance,
        **shift,
        "prepare": prepare_summary(info or {}, data.dedup, cfg.max_examples),
        "warnings": warnings,
    }


# --- split shift ---------------------------------------------------------------------------------

SHIFT_NUMBERS = {  # per image, on the decoded cache (gray = mean over channels)
    "brightness": "mean gray level",
    "contrast": "standard deviation of the gray levels",
    "sharpness": "variance of the 4-neighbour Laplacian",
    "saturated": "fraction of pixel values at 0 or 255",
    "blockiness": "mean step across 8x8 block edges / within blocks (JPEG blocking; 1: none)",
}
SHIFT_CATEGORIES = {"size": "original width x height", "mode": "original PIL mode", "format": "file type"}
OTHER_FOLDS = "other folds"


def _blockiness(gray: np.ndarray) -> np.ndarray:
    """Mean absolute step between neighbours across the 8x8 block edges over the mean step within blocks."""
    sums, counts = np.zeros((2, len(gray))), np.zeros(2)
    for axis in (1, 2):
        step = np.abs(np.diff(gray, axis=axis))
        at_edge = np.arange(step.shape[axis]) % 8 == 7
        for k, part in enumerate((at_edge, ~at_edge)):
            sums[k] += np.compress(part, step, axis=axis).sum(axis=(1, 2))
            counts[k] += part.sum() * step.shape[3 - axis]
    if not counts.all():
        return np.full(len(gray), np.nan)
    edge, inner = sums[0] / counts[0], sums[1] / counts[1]
    return np.where(inner > 0, edge / np.maximum(inner, 1e-12), 1.0)


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """The numbers of :data:`SHIFT_NUMBERS` for each image of a uint8 cache ``[N, C, H, W]``."""
    parts = []
    batch = max(1, 2**22 // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), batch):
        x = np.asarray(images[start : start + batch])
        gray = x.astype(np.float32).mean(axis=1)
        flat = gray.reshape(len(x), -1)
        lap = 4 * gray[:, 1:-1, 1:-1] - gray[:, :-2, 1:-1] - gray[:, 2:, 1:-1] - gray[:, 1:-1, :-2] - gray[:, 1:-1, 2:]
        parts.append(
            pd.DataFrame(
                {
                    "brightness": flat.mean(axis=1, dtype=np.float64),
                    "contrast": flat.std(axis=1, dtype=np.float64),
                    "sharpness": lap.reshape(len(x), -1).var(axis=1, dtype=np.float64),
                    "saturated": ((x == 0) | (x == 255)).reshape(len(x), -1).mean(axis=1),
                    "blockiness": _blockiness(gray),
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SHIFT_NUMBERS), dtype=float)


def image_categories(table: pd.DataFrame) -> pd.DataFrame:
    """Original size, mode and file type of each row (a CSV row's type is ``csv``)."""
    paths = table["path"].astype(str)
    return pd.DataFrame(
        {
            "size": (table["width"].astype(str) + "x" + table["height"].astype(str)).to_numpy(),
            "mode": table["mode"].astype(str).to_numpy() if "mode" in table else "?",
            "format": [Path(p.split("#")[0]).suffix.lower().lstrip(".") or "?" for p in paths],
        },
        index=range(len(table)),
    )


def split_units(values: pd.DataFrame, groups: np.ndarray, subjects: np.ndarray) -> pd.DataFrame:
    """One row per (group, subject): the median of each number and the most frequent size, mode and type.

    Frames of one subject are not independent samples; testing one value per subject keeps a
    split of 18 CK+ subjects from counting as 141 observations.
    """
    frame = values.assign(group=groups, subject=subjects)
    keys = ["group", "subject"]
    if not frame.duplicated(keys).any():
        return frame
    units = frame.groupby(keys, sort=False)[list(SHIFT_NUMBERS)].median()
    for c in SHIFT_CATEGORIES:
        top = frame.groupby([*keys, c], sort=False).size().rename("n").reset_index()
        units[c] = top.sort_values("n", ascending=False, kind="stable").drop_duplicates(keys).set_index(keys)[c]
    return units.reset_index()


def compare_numbers(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float]:
    """Two-sided Mann-Whitney U p-value (None: nothing to test) and Cliff's delta P(a > b) - P(a < b)."""
    from scipy.stats import mannwhitneyu

    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b) or np.ptp(np.concatenate([a, b])) == 0:
        return None, 0.0
    res = mannwhitneyu(a, b, alternative="two-sided")
    return float(res.pvalue), float(2 * res.statistic / (len(a) * len(b)) - 1)


def compare_categories(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float]:
    """Chi-squared p-value of the 2 x K table (None: one value on both sides) and the total variation distance."""
    from scipy.stats import chi2_contingency

    ca, cb = Counter(a.tolist()), Counter(b.tolist())
    keys = sorted(set(ca) | set(cb))
    if len(keys) < 2:
        return None, 0.0
    counts = np.array([[ca[k] for k in keys], [cb[k] for k in keys]], dtype=float)
    shares = counts / counts.sum(axis=1, keepdims=True)
    return float(chi2_contingency(counts).pvalue), float(0.5 * np.abs(shares[0] - shares[1]).sum())


def _describe(values: np.ndarray, stat: str) -> float | str | None:
    """What a comparison reports of one side: the median of a number, the most frequent category and its share."""
    if stat in SHIFT_NUMBERS:
        x = values[~np.isnan(values)]
        return float(f"{np.median(x):.4g}") if len(x) else None
    top, count = Counter(values.tolist()).most_common(1)[0]
    return f"{top} ({100 * count / len(values):.0f}%)"


def split_comparisons(plan: list[tuple[str, str, pd.DataFrame, pd.DataFrame]]) -> list[dict[str, Any]]:
    """Every statistic compared between the two sides ``(name, against, units_a, units_b)`` of each plan entry."""
    out = []
    for name, against, ua, ub in plan:
        for stat in (*SHIFT_NUMBERS, *SHIFT_CATEGORIES):
            numeric = stat in SHIFT_NUMBERS
            a, b = (u[stat].to_numpy(dtype=float if numeric else object) for u in (ua, ub))
            p, effect = (compare_numbers if numeric else compare_categories)(a, b)
            out.append(
                {
                    "statistic": stat,
                    "split": name,
                    "against": against,
                    "n": [len(a), len(b)],
                    "values": [_describe(a, stat), _describe(b, stat)],
                    "effect": round(effect, 3),
                    "p": None if p is None else float(f"{p:.3g}"),
                }
            )
    return out


def decide_shifts(comparisons: list[dict[str, Any]], cfg: AuditConfig) -> int:
    """Mark each comparison ``shift`` (Bonferroni p < alpha and |effect| >= the threshold); the number of tests."""
    m = sum(c["p"] is not None for c in comparisons)
    for c in comparisons:
        c["p_bonferroni"] = None if c["p"] is None else float(f"{min(1.0, c['p'] * m):.3g}")
        c["shift"] = bool(
            c["p"] is not None
            and c["p_bonferroni"] < cfg.split_shift_alpha
            and abs(c["effect"]) >= cfg.split_shift_effect
        )
    return m


def _oriented(c: dict[str, Any], name: str) -> dict[str, Any]:
    """Comparison ``c`` seen from split ``name`` (its effect's sign and its values turned when needed)."""
    if c["split"] == name:
        return c
    flip = -1 if c["statistic"] in SHIFT_NUMBERS else 1
    turned = {"split": name, "against": c["split"], "n": c["n"][::-1], "values": c["values"][::-1]}
    return {**c, **turned, "effect": flip * c["effect"]}


def shift_findings(comparisons: list[dict[str, Any]], compared: list[str]) -> list[dict[str, Any]]:
    """Shifted comparisons as findings; a split that differs from every other compared split is one finding."""
    findings = []
    for stat in (*SHIFT_NUMBERS, *SHIFT_CATEGORIES):
        shifted = [c for c in comparisons if c["statistic"] == stat and c["shift"]]
        pairs = [c for c in shifted if c["against"] != OTHER_FOLDS]
        odd = [
            s
            for s in compared
            if len(compared) > 2 and sum(s in (c["split"], c["against"]) for c in pairs) == len(compared) - 1
        ]
        groups = [[_oriented(c, s) for c in pairs if s in (c["split"], c["against"])] for s in odd]
        groups += [[c] for c in pairs if c["split"] not in odd and c["against"] not in odd]
        groups += [[c] for c in shifted if c["against"] == OTHER_FOLDS]
        for g in groups:
            findings.append(
                {
                    "statistic": stat,
                    "split": g[0]["split"],
                    "against": [c["against"] for c in g],
                    "values": [g[0]["values"][0]] + [c["values"][1] for c in g],
                    "effect": [c["effect"] for c in g],
                    "p_bonferroni": [c["p_bonferroni"] for c in g],
                }
            )
    return findings


def shift_warning(f: dict[str, Any]) -> str:
    """The warning line of one split-shift finding."""
    numeric = f["statistic"] in SHIFT_NUMBERS
    kind, effect, form = ("median", "Cliff's delta", "+.2f") if numeric else ("mostly", "total variation", ".2f")
    return (
        f"split shift: {f['statistic']} of {f['split']} differs from {' and '.join(f['against'])} "
        f"({kind} {f['values'][0]} vs {', '.join(map(str, f['values'][1:]))}; "
        f"{effect} {', '.join(format(e, form) for e in f['effect'])}; "
        f"Bonferroni p <= {max(f['p_bonferroni']):.2g})"
    )


def split_statistics(
    values: pd.DataFrame, groups: np.ndarray, subjects: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Per group: images, subjects, the size/mode/type mix and the median, mean and std of each number."""
    out = {}
    for name in names:
        m = np.asarray(groups == name)
        v = values[m]
        row: dict[str, Any] = {"images": int(m.sum()), "subjects": len(set(subjects[m]))}
        row.update({c: dict(Counter(v[c].tolist()).most_common()) for c in SHIFT_CATEGORIES})
        for c in SHIFT_NUMBERS:
            x = v[c].dropna().to_numpy()
            moments = (("median", np.median), ("mean", np.mean), ("std", np.std))
            row[c] = {k: float(f"{f(x):.4g}") for k, f in moments} if len(x) else {}
        out[name] = row
    return out


def _fold_plan(units: pd.DataFrame, names: list[str]) -> list[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """Each fold's test set (the fold) against the other folds."""
    plan = []
    for name in names:
        m = (units["group"] == name).to_numpy()
        if m.sum() >= MIN_UNITS_FOR_SHIFT and (~m).sum() >= MIN_UNITS_FOR_SHIFT:
            plan.append((name, OTHER_FOLDS, units[m], units[~m]))
    return plan


def split_shift_sections(
    table: pd.DataFrame,
    images: np.ndarray,
    splits: np.ndarray,
    subjects: np.ndarray,
    cfg: AuditConfig,
    warnings: list[str],
) -> dict[str, Any]:
    """The report's ``split_stats`` and ``split_shift``; appends a ``split shift: ...`` warning per finding.

    Every pair of splits is compared, and with folds each fold's test set against the other folds.
    """
    values = pd.concat([image_statistics(images), image_categories(table)], axis=1)
    names = [s for s in SPLIT_ORDER if (splits == s).any()]
    units = split_units(values, splits, subjects)
    compared = [s for s in names if (units["group"] == s).sum() >= MIN_UNITS_FOR_SHIFT]
    by = {s: units[units["group"] == s] for s in compared}
    plan = [(a, b, by[a], by[b]) for a, b in itertools.combinations(compared, 2)]
    stats: dict[str, Any] = {
        "unit": "subject" if len(units) < len(values) else "image",
        "splits": split_statistics(values, splits, subjects, names),
    }
    if "fold" in table:
        folds = np.array([f"fold{k}" for k in table["fold"]], dtype=object)
        fold_names = [f"fold{k}" for k in sorted(set(table["fold"]))]
        stats["folds"] = split_statistics(values, folds, subjects, fold_names)
        plan += _fold_plan(split_units(values, folds, subjects), fold_names)
    comparisons = split_comparisons(plan)
    tests = decide_shifts(comparisons, cfg)
    findings = shift_findings(comparisons, compared)
    warnings += [shift_warning(f) for f in findings]
    rule = {
        "numbers": "two-sided Mann-Whitney U test; effect: Cliff's delta",
        "categories": "chi-squared test of the 2 x K counts; effect: total variation distance",
        "correction": "Bonferroni over all tests",
        "alpha": cfg.split_shift_alpha,
        "min_effect": cfg.split_shift_effect,
        "min_units": MIN_UNITS_FOR_SHIFT,
        "statistics": {**SHIFT_NUMBERS, **SHIFT_CATEGORIES},
    }
    shift = {"rule": rule, "tests": tests, "compared": compared, "comparisons": comparisons, "findings": findings}
    return {"split_stats": stats, "split_shift": shift}


def audit_dataset(data: DataConfig, out: str | Path) -> dict[str, Any]:
    """Audit the dataset in ``out``: write ``audit.json`` and ``audit.md`` there, return the report."""
    out = Path(out)
    try:
        info = json.loads((out / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{out} holds no prepared dataset; run `xai-lab prepare` first") from None
    table = pd.read_csv(
        out / "metadata.csv",
        dtype={"subject": str, "path": str, "label": str, "sha1": str},
        keep_default_na=False,
    )
    images = np.load(out / "cache" / str(info["cache_key"]) / "images.npy", mmap_mode="r")
    report = audit_table(table, np.asarray(images), list(info["class_names"]), data, info)
    atomic_write_json(out / "audit.json", report)
    atomic_write_text(out / "audit.md", audit_markdown(report))
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal."""
    ex, near, subj, bal = (
        report["exact_duplicates"],
        report["near_duplicates"],
        report["subjects"],
        report["class_balance"],
    )
    s = report["split_sizes"]
    lines = [
        f"audit of {report['dataset']}: {report['images']} images, "
        f"{len(report['classes'])} classes, "
        f"train/val/test {s['train']}/{s['val']}/{s['test']}",
        f"  exact duplicates: {ex['groups']} group(s) of {ex['images']} images; "
        f"{ex['across_splits']} across splits, "
        f"{ex['across_classes']} across classes (label conflicts)",
        f"  near duplicates (pHash <= {near['max_distance']} bits, "
        f"gray difference <= {near['max_pixel_delta']:g}): "
        f"{near['pairs']} pair(s); "
        f"{near['across_splits']} across splits, {near['across_classes']} across classes",
        f"  blank images: {report['blank_images']['images']}",
        f"  subjects: {subj['subjects']}, in more than one split: {subj['in_more_than_one_split']}"
        + (
            f"; folds with a subject in two splits: {subj['folds_with_subject_in_two_splits']}"
            if "per_fold" in subj
            else ""
        ),
        f"  class balance: largest/smallest = {bal['imbalance_ratio']} "
        f"({bal['largest']} / {bal['smallest']})",
    ]
    shift = report.get("split_shift")
    if shift:
        lines.append(
            f"  split shift ({report['split_stats']['unit']}s; Bonferroni p < {shift['rule']['alpha']:g}, "
            f"|effect| >= {shift['rule']['min_effect']:g}): {len(shift['findings'])} finding(s) in "
            f"{shift['tests']} tests"
        )
    prep = report["prepare"]
    if prep["skipped"] or prep["excluded"] or prep["dedup"]["dropped"]:
        excluded = ", ".join(f"{k} {v}" for k, v in prep["excluded"].items()) or "none"
        lines.append(
            f"  prepare: skipped {prep['skipped']}, excluded {excluded}, dedup={prep['dedup']['mode']} "
            f"dropped {prep['dedup']['dropped']}"
        )
    lines += [f"  warning: {w}" for w in report["warnings"]]
    return lines


def exact_duplicates_markdown(ex: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on exact duplicates: the counts and a table of the example groups."""
    md = [
        "",
        "## Exact duplicates (same SHA-1)",
        "",
        f"{ex['groups']} group(s), {ex['images']} images: {ex['within_one_split']} within one split, "
        f"{ex['across_splits']} across splits, {ex['across_classes']} across classes.",
        "",
    ]
    if ex["examples"]:
        md += ["| files | labels | splits |", "|---|---|---|"]
        md += [
            f"| {'<br>'.join(e['paths'])} | {', '.join(e['labels'])} | {', '.join(e['splits'])} |"
            for e in ex["examples"]
        ]
    return md


def near_duplicates_markdown(near: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on near duplicates: the thresholds, the counts and a table of the example pairs."""
    md = [
        "",
        f"## Near duplicates (pHash <= {near['max_distance']} bits, mean gray difference <= "
        f"{near['max_pixel_delta']:g}, not byte-identical)",
        "",
        f"{near['pairs']} pair(s): {near['across_splits']} across splits, "
        f"{near['across_classes']} across classes, "
        f"{near['same_subject']} of the same subject.",
        "",
    ]
    if near["examples"]:
        md += ["| files | labels | splits | distance |", "|---|---|---|---|"]
        md += [
            f"| {'<br>'.join(e['paths'])} | {', '.join(e['labels'])} | {', '.join(e['splits'])} "
            f"| {e['distance']} |"
            for e in near["examples"]
        ]
    return md


def subjects_markdown(subj: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on subjects: how many, whether the splits group them, which cross splits."""
    md = [
        "",
        "## Subjects",
        "",
        f"{subj['subjects']} subject(s), at most {subj['images_per_subject_max']} images each; "
        f"grouped splits: "
        f"{subj['grouped_by_subject']}; in more than one split: {subj['in_more_than_one_split']}.",
    ]
    if "per_fold" in subj:
        md.append(f"Folds: subjects in two splits per fold: {subj['per_fold']}.")
    return md


def per_class_markdown(per_class: dict[str, Any]) -> list[str]:
    """The ``audit.md`` table of sizes, modes and brightness per class."""
    md = [
        "",
        "## Per class",
        "",
        "| class | images | sizes | modes | brightness (mean ± std) |",
        "|---|---|---|---|---|",
    ]
    for c, v in per_class.items():
        if not v["images"]:
            md.append(f"| {c} | 0 | | | |")
            continue
        sizes = ", ".join(f"{k}: {n}" for k, n in v["sizes"].items())
        modes = ", ".join(f"{k}: {n}" for k, n in v["modes"].items())
        md.append(
            f"| {c} | {v['images']} | {sizes} | {modes} | {v['brightness_mean']} ± {v['brightness_std']} |"
        )
    return md


def class_balance_markdown(bal: dict[str, Any]) -> list[str]:
    """The ``audit.md`` table of images per class and split, and the largest/smallest ratio."""
    md = [
        "",
        "## Class balance",
        "",
        "| class | " + " | ".join(SPLIT_ORDER) + " | total |",
        "|---|" + "---|" * (len(SPLIT_ORDER) + 1),
    ]
    for c, total in bal["counts"].items():
        md.append(f"| {c} | " + " | ".join(str(bal["by_split"][s][c]) for s in SPLIT_ORDER) + f" | {total} |")
    return md + ["", f"Largest/smallest class: {bal['imbalance_ratio']}.", ""]


def left_out_markdown(prep: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section on the rows ``prepare`` skipped, excluded or deduplicated."""
    return [
        "## What prepare left out",
        "",
        f"- skipped (unreadable or malformed, with on_bad_* = skip): {prep['skipped']}",
        f"- excluded by the labelling rule: {prep['excluded'] or 'none'}",
        f"- dedup = {prep['dedup']['mode']}: {prep['dedup']['dropped']} dropped",
        "",
    ]


def audit_markdown(report: dict[str, Any]) -> str:
    """``audit.md``: the report for people, a summary and then one section per check."""
    md = [
        f"# Data audit: {report['dataset']}",
        "",
        f"Source `{report['source']}` at `{report['root']}`: {report['images']} images, "
        f"classes {', '.join(report['classes'])}.",
        "",
        "## Summary",
        "",
    ]
    md += [f"- {line.strip()}" for line in summary_lines(report)[1:]]
    if not report["warnings"]:
        md.append("- no warnings")
    md += exact_duplicates_markdown(report["exact_duplicates"])
    md += near_duplicates_markdown(report["near_duplicates"])
    md += subjects_markdown(report["subjects"])
    md += per_class_markdown(report["per_class"])
    md += class_balance_markdown(report["class_balance"])
    md += split_shift_markdown(report)
    md += left_out_markdown(report["prepare"])
    return "\n".join(md)


def split_shift_markdown(report: dict[str, Any]) -> list[str]:
    """The ``audit.md`` section comparing the splits (and folds)."""
    stats, shift = report.get("split_stats"), report.get("split_shift")
    if not stats or not shift:
        return []
    rule, unit = shift["rule"], stats["unit"]
    md = [
        "## Splits compared (distribution shift)",
        "",
        "Per image, on the decoded cache: " + "; ".join(f"{k}: {v}" for k, v in SHIFT_NUMBERS.items())
        + ". From the manifest: " + ", ".join(f"{k} ({v})" for k, v in SHIFT_CATEGORIES.items())
        + f". One value per {unit} is tested (the median; the most frequent size, mode, type). "
        f"Each pair of splits with at least {rule['min_units']} {unit}s, and each fold's test set against the "
        "other folds, is compared with a two-sided Mann-Whitney U test and Cliff's delta (numbers) or a "
        "chi-squared test and the total variation distance (size, mode, format). A shift is reported when the "
        f"Bonferroni-corrected p ({shift['tests']} tests) is below {rule['alpha']:g} and the effect is at "
        f"least {rule['min_effect']:g}.",
        "",
        "| split | images | subjects | " + " | ".join([*SHIFT_CATEGORIES, *SHIFT_NUMBERS]) + " |",
        "|---" * (3 + len(SHIFT_CATEGORIES) + len(SHIFT_NUMBERS)) + "|",
    ]
    for name, row in {**stats["splits"], **stats.get("folds", {})}.items():
        mix = [", ".join(f"{k}: {n}" for k, n in row[c].items()) for c in SHIFT_CATEGORIES]
        nums = [str(row[c].get("median", "")) for c in SHIFT_NUMBERS]
        md.append(f"| {name} | {row['images']} | {row['subjects']} | " + " | ".join(mix + nums) + " |")
    md += [
        "",
        "Medians per image above. The comparisons (effect: Cliff's delta of the first side over the second, or the "
        "total variation; the folds' comparisons only when flagged; size, mode and format only where they vary):",
        "",
        "| statistic | split / against | n | values | effect | p (Bonferroni) | shift |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in shift["comparisons"]:
        if c["p"] is not None and (c["against"] != OTHER_FOLDS or c["shift"]):
            md.append(
                f"| {c['statistic']} | {c['split']} / {c['against']} | {c['n'][0]} / {c['n'][1]} "
                f"| {c['values'][0]} / {c['values'][1]} | {c['effect']:+.2f} | {c['p_bonferroni']:.3g} "
                f"| {'**yes**' if c['shift'] else ''} |"
            )
    md += [""] + ([f"- {shift_warning(f)}" for f in shift["findings"]] or ["- no split shift"])
    return md + [""]
