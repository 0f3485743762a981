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

Each finding is one ``check_*`` function that returns its section of the report and appends its
warnings; :func:`audit_table` runs them in order. The perceptual hashes live in
:mod:`xai_lab.data.near_duplicates`, the split shift in :mod:`xai_lab.data.split_shift`, and
``audit.md`` is written by :mod:`xai_lab.data.audit_markdown`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from xai_lab.atomic import atomic_write_json, atomic_write_text
from xai_lab.config import AuditConfig, DataConfig
from xai_lab.data.audit_markdown import audit_markdown
from xai_lab.data.dedup import duplicate_groups
from xai_lab.data.near_duplicates import confirmed_near_pairs
from xai_lab.data.split_shift import SPLIT_ORDER, split_shift_sections
from xai_lab.errors import UserError

BLANK_RANGE = 2  # an image whose gray levels span at most this is blank
IMBALANCE_RATIO = 5  # the largest class with this many times the smallest's images is flagged
MIN_CLASS_FOR_STATS = 10  # brightness of a class with fewer images is reported, not flagged


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
    report["landmarks"] = check_landmarks(out, info, table, np.asarray(images), data.audit.max_examples)
    atomic_write_json(out / "audit.json", report)
    atomic_write_text(out / "audit.md", audit_markdown(report))
    return report


def check_landmarks(out: Path, info: dict, table: pd.DataFrame, images: np.ndarray,
                    max_examples: int) -> dict[str, Any] | None:
    """Whether the face regions can be trusted: the fraction of faces whose landmarks dlib's detector found
    (the rest were fitted from the crop), per split and class, and ``landmarks.png``, a gallery of fits of
    each kind. None when the dataset has no landmarks (``data.landmarks: false``, or masks of its own)."""
    from xai_lab.data.landmarks import draw_landmark_gallery, load_landmarks

    found = load_landmarks(out / "cache" / str(info["cache_key"]))
    if found is None:
        return None
    points, source = np.asarray(found[0]), np.asarray(found[1]).astype(bool)
    splits, labels = table["split"].to_numpy(), table["label"].to_numpy()
    gallery = draw_landmark_gallery(images, points, source, out / "landmarks.png", per_kind=min(12, max_examples))
    return {
        "n": int(len(source)),
        "detected": int(source.sum()),
        "detected_fraction": float(source.mean()) if len(source) else None,
        "by_split": {s: float(source[splits == s].mean()) for s in SPLIT_ORDER if (splits == s).any()},
        "by_class": {c: float(source[labels == c].mean()) for c in info["class_names"] if (labels == c).any()},
        "gallery": gallery,
        "model": "dlib shape_predictor_68_face_landmarks (iBUG 300-W; non-commercial terms)",
    }
