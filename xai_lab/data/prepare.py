"""``prepare``: a dataset into ``metadata.csv``, seeded splits, a decoded uint8 cache and an audit.

Output, under ``<data.processed_root>/<data.name>/``::

    metadata.csv          path,label,label_idx,subject,width,height,sha1 (+ mode, converted, split, fold...)
    splits/{train,val,test}.csv          the same columns, one file per split (the holdout split)
    splits/fold<i>/{train,val,test}.csv  with data.folds = k: fold i (test = fold i, val = fold i+1)
    dataset.json          class names, counts, split sizes, skipped / excluded / deduplicated rows, config
    audit.json, audit.md  duplicates, leakage, label conflicts, per-class statistics (:mod:`.audit`)
    cache/<key>/images.npy    every image decoded once: uint8 [N, C, S, S], rows as in metadata.csv
    cache/<key>/masks.npy     ground-truth masks (bool [N, 1, S, S]) where the source has them
    cache/<key>/landmarks.npy, landmark_source.npy   dlib's 68 points per face where it has none
                              (``data.landmarks``; :mod:`.landmarks`), found once

``path`` is relative to ``data.root``. The split is the dataset's own where the source gives
one (a ``split`` column), else a seeded stratified holdout (grouped by subject if asked). The
cache key hashes the manifest's content and the decode settings, so a changed dataset gets a
fresh cache and an unchanged one is reused. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xai_lab.atomic import atomic_dir, atomic_write_json, atomic_write_with
from xai_lab.config import DataConfig
from xai_lab.data.decode import Decoded
from xai_lab.data.dedup import dedup_rows
from xai_lab.data.sources import Source, get_source
from xai_lab.data.splits import SPLITS, fold_indices, given_split_indices, kfold_assignments, split_indices
from xai_lab.errors import UserError

# Keys that do not change what prepare writes (the fold is chosen at load time; the audit re-runs).
_NOT_HASHED = ("fold", "fold_val", "audit", "landmarks")  # landmarks are added to the cache, not a new one


def processed_dir(data: DataConfig) -> Path:
    """``<data.processed_root>/<data.name>``: where ``prepare`` writes."""
    return Path(data.processed_root) / data.name


def config_sha1(data: DataConfig) -> str:
    """Hash of the data settings that decide what ``prepare`` writes."""
    values = {k: v for k, v in asdict(data).items() if k not in _NOT_HASHED}
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()


def split_dir(out: Path, fold: int) -> Path:
    """Where the split CSVs of ``fold`` are (-1: the holdout split)."""
    return out / "splits" if fold < 0 else out / "splits" / f"fold{fold}"


def _shown(messages: list[str], n: int = 3) -> str:
    """The first ``n`` messages, and how many more there are."""
    return "; ".join(messages[:n]) + (f" (and {len(messages) - n} more)" if len(messages) > n else "")


def prepare(data: DataConfig, progress: bool = False, audit: bool = True) -> Path:
    """Scan, check, decode, split and deduplicate the dataset of ``data``; return the processed folder.

    Args:
        data: the data section of the config.
        progress: show a decode progress bar.
        audit: run :func:`xai_lab.data.audit.audit_dataset` at the end (audit.json, audit.md).

    Raises:
        UserError: missing folders, empty classes, malformed CSV rows, unreadable images (one line
            naming them; with ``data.on_bad_row`` / ``data.on_bad_image: skip`` they are left out
            and recorded in dataset.json).
    """
    source = get_source(data.source)
    source.materialize(data)
    class_names = source.class_names(data)
    table, excluded, bad_rows = read_manifest(source, data, class_names)
    table, decoded, bad = decode_rows(source, data, table, progress)
    images, masks = add_image_columns(table, decoded, class_names)
    given = assign_splits(table, data)
    table, images, masks, dropped = drop_duplicates(table, images, masks, data.dedup)
    table = table.drop(columns=[c for c in table.columns if c.startswith("_")])
    out = processed_dir(data)
    key, split_sizes, fold_sizes = write_prepared(out, table, images, masks, data)
    info = dataset_info(
        data,
        class_names,
        table,
        given=given,
        split_sizes=split_sizes,
        fold_sizes=fold_sizes,
        has_masks=masks is not None,
        skipped=bad_rows + bad,
        excluded=excluded,
        dropped=dropped,
        cache_key=key,
    )
    ensure_landmarks(data, out, info)
    atomic_write_json(out / "dataset.json", info)
    if audit:
        from xai_lab.data.audit import audit_dataset

        audit_dataset(data, out)
    return out


def ensure_landmarks(data: DataConfig, out: Path, info: dict) -> None:
    """Find the faces' landmarks into the cache when ``data.landmarks`` asks and the data has no masks;
    record in ``info`` (dataset.json) whether it has them and how many were detected."""
    from xai_lab.data.landmarks import cache_landmarks

    cache = out / "cache" / str(info["cache_key"])
    if not data.landmarks or info.get("has_masks"):
        info["landmarks"] = None
        return
    images = np.load(cache / "images.npy", mmap_mode="r")
    _, source = cache_landmarks(cache, images)
    info["landmarks"] = {"n": int(len(source)), "detected": int(source.sum())}


def read_manifest(
    source: Source, data: DataConfig, class_names: list[str]
) -> tuple[pd.DataFrame, dict, list[tuple[str, str]]]:
    """The source's rows less the excluded and malformed ones, capped at ``data.limit_per_class``.

    Returns ``(table, {exclusion reason: rows}, [(path, why malformed), ...])``; malformed rows
    stop here unless ``data.on_bad_row`` is ``skip``, and so does a label that is not a class.
    """
    table = source.list_images(data)
    root = Path(data.root)
    for col in ("_error", "_excluded"):
        if col not in table.columns:
            table[col] = ""
    excluded = table.loc[table["_excluded"] != "", "_excluded"].value_counts().to_dict()
    table = table[table["_excluded"] == ""]
    bad_rows = list(table.loc[table["_error"] != "", ["path", "_error"]].itertuples(index=False, name=None))
    if bad_rows and data.on_bad_row == "error":
        messages = [why for _, why in bad_rows]
        raise UserError(
            f"{len(bad_rows)} malformed row(s) in {root}: {_shown(messages)}; fix them, or set "
            "data.on_bad_row=skip to leave them out"
        )
    table = table[table["_error"] == ""]
    unknown = sorted(set(table["label"]) - set(class_names))
    if unknown:
        raise UserError(f"label {unknown[0]!r} of {root} is not one of the classes {', '.join(class_names)}")
    if data.limit_per_class:
        keys = ["split", "label"] if "split" in table.columns else ["label"]
        table = table.groupby(keys, sort=False, group_keys=False).head(data.limit_per_class)
    return table.reset_index(drop=True), excluded, bad_rows


def decode_rows(
    source: Source, data: DataConfig, table: pd.DataFrame, progress: bool
) -> tuple[pd.DataFrame, dict[str, Decoded], list[tuple[str, str]]]:
    """Decode every row; ``(readable rows, {path: Decoded}, [(path, why unreadable), ...])``.

    Unreadable images stop here unless ``data.on_bad_image`` is ``skip``; so does a dataset with none readable.
    """
    root = Path(data.root)
    decoded, bad = source.decode(data, table, progress)
    if bad and data.on_bad_image == "error":
        raise UserError(
            f"{len(bad)} unreadable image(s): {_shown([f'{root / p}: {why}' for p, why in bad])}; "
            "fix or remove them, or set data.on_bad_image=skip"
        )
    table = table[[p in decoded for p in table["path"]]].reset_index(drop=True)
    if table.empty:
        raise UserError(f"no readable images in {root}")
    return table, decoded, bad


def add_image_columns(
    table: pd.DataFrame, decoded: dict[str, Decoded], class_names: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Add ``label_idx``, ``width``, ``height``, ``sha1`` and ``mode`` to ``table``; return its images and masks.

    The masks (bool ``[N, 1, S, S]``) are None unless every row has one.
    """
    index = {name: i for i, name in enumerate(class_names)}
    table.insert(2, "label_idx", table["label"].map(index).astype(int))
    rows = [decoded[p] for p in table["path"]]
    table.insert(4, "width", [r.width for r in rows])
    table.insert(5, "height", [r.height for r in rows])
    table.insert(6, "sha1", [r.sha1 for r in rows])
    table["mode"] = [r.mode for r in rows]
    table["converted"] = [r.converted for r in rows]
    images = np.stack([r.image for r in rows])
    masks = np.stack([r.mask for r in rows])[:, None] if all(r.mask is not None for r in rows) else None
    return images, masks


def assign_splits(table: pd.DataFrame, data: DataConfig) -> bool:
    """Set ``table``'s ``split`` (and with ``data.folds``, ``fold``) column; whether the dataset gave the split.

    A given split is kept (val carved from train where it has none) and rules out k-fold; otherwise
    the split is a seeded stratified holdout, grouped by subject when ``data.group_by_subject``.
    """
    labels = table["label_idx"].to_numpy()
    groups = table["subject"].astype(str).to_numpy() if data.group_by_subject else None
    fractions = (data.split.train, data.split.val, data.split.test)
    given = "split" in table.columns
    if given:
        if data.folds:
            raise UserError(
                f"data.folds={data.folds}: the {data.source} data in {Path(data.root)} comes with its own split, "
                "so k-fold does not apply; set data.folds=0"
            )
        split_idx = given_split_indices(labels, table["split"].to_numpy(), fractions, data.split_seed, groups)
    else:
        split_idx = split_indices(labels, fractions, data.split_seed, groups)
    split_col = np.empty(len(table), dtype=object)
    for name, idx in split_idx.items():
        split_col[idx] = name
    table["split"] = split_col
    if data.folds:
        table["fold"] = kfold_assignments(labels, data.folds, data.split_seed, groups)
    return given


def drop_duplicates(
    table: pd.DataFrame, images: np.ndarray, masks: np.ndarray | None, mode: str
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, list[dict]]:
    """The rows, images and masks that ``data.dedup`` (``mode``) keeps, and the dropped rows' records."""
    drop, dropped = dedup_rows(table, mode)
    if drop.any():
        keep = ~drop
        table, images = table[keep].reset_index(drop=True), images[keep]
        masks = None if masks is None else masks[keep]
    return table, images, masks, dropped


def write_prepared(
    out: Path, table: pd.DataFrame, images: np.ndarray, masks: np.ndarray | None, data: DataConfig
) -> tuple[str, dict[str, int], dict[str, dict[str, int]]]:
    """Write the cache, the split CSVs (removing folds no longer asked for) and ``metadata.csv``.

    Returns the cache key, the holdout split's sizes and each fold's split sizes.
    """
    metadata_csv = table.to_csv(index=False)
    key = _cache_key(metadata_csv, data)
    _write_cache(out / "cache", key, images, masks)
    split_sizes = _write_splits(out, table, -1)
    fold_sizes = {}
    if data.folds:
        fold_sizes = {f"fold{i}": _write_splits(out, table, i) for i in range(data.folds)}
    for stale in (out / "splits").glob("fold*"):
        if stale.name not in fold_sizes:
            shutil.rmtree(stale, ignore_errors=True)
    atomic_write_with(out / "metadata.csv", lambda p: p.write_text(metadata_csv))
    return key, split_sizes, fold_sizes


def dataset_info(
    data: DataConfig,
    class_names: list[str],
    table: pd.DataFrame,
    *,
    given: bool,
    split_sizes: dict[str, int],
    fold_sizes: dict[str, dict[str, int]],
    has_masks: bool,
    skipped: list[tuple[str, str]],
    excluded: dict,
    dropped: list[dict],
    cache_key: str,
) -> dict[str, Any]:
    """``dataset.json``: classes and counts, split sizes, what was skipped, excluded or deduplicated, the config."""
    counts = table["label"].value_counts()
    return {
        "name": data.name,
        "source": data.source,
        "root": str(Path(data.root)),
        "class_names": class_names,
        "n_images": len(table),
        "class_counts": {c: int(counts.get(c, 0)) for c in class_names},
        "split_given_by_dataset": given,
        "split_sizes": split_sizes,
        "folds": fold_sizes,
        "has_masks": has_masks,
        "skipped": [{"path": p, "reason": why} for p, why in skipped],
        "conversions": _conversions(table),
        "excluded": {str(k): int(v) for k, v in excluded.items()},
        "dedup": {"mode": data.dedup, "dropped": dropped},
        "cache_key": cache_key,
        "config_sha1": config_sha1(data),
        "data_config": asdict(data),
    }


def _conversions(table: pd.DataFrame) -> dict[str, Any]:
    """How many images of each original mode were read, and what was done to show how many as a viewer shows
    them (:func:`xai_lab.data.decode.visible`): ``{"modes": {"RGBA": 3, ...}, "converted": {"16-bit ...": 2}}``."""
    notes = [n for text in table.get("converted", pd.Series(dtype=str)).fillna("") for n in text.split("; ") if n]
    modes = table["mode"].value_counts() if "mode" in table else pd.Series(dtype=int)
    return {"modes": {str(k): int(v) for k, v in modes.items()},
            "converted": {k: int(v) for k, v in pd.Series(notes, dtype=str).value_counts().items()}}


def _write_splits(out: Path, table: pd.DataFrame, fold: int) -> dict[str, int]:
    """Write the train/val/test CSVs of ``fold`` (-1: the holdout split); return their sizes."""
    if fold < 0:
        parts = {name: np.flatnonzero(table["split"].to_numpy() == name) for name in SPLITS}
    else:
        parts = fold_indices(table["fold"].to_numpy(), fold)
    folder = split_dir(out, fold)
    for name, idx in parts.items():
        part = table.iloc[idx]
        atomic_write_with(folder / f"{name}.csv", lambda p, part=part: part.to_csv(p, index=False))
    return {name: len(idx) for name, idx in parts.items()}


def _cache_key(metadata_csv: str, data: DataConfig) -> str:
    """The cache folder's name: a hash of metadata.csv and the decode settings."""
    h = hashlib.sha1(metadata_csv.encode())
    h.update(f"|{data.image_size}|{data.channels}".encode())
    return h.hexdigest()[:16]


def _write_cache(cache_root: Path, key: str, images: np.ndarray, masks: np.ndarray | None) -> None:
    """Write ``cache_root/key/images.npy`` (and ``masks.npy``) unless present, via a temporary folder."""
    final = cache_root / key
    if (final / "images.npy").is_file():
        return
    with atomic_dir(final) as tmp:
        np.save(tmp / "images.npy", images)
        if masks is not None:
            np.save(tmp / "masks.npy", masks)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same cache first
            pass


def run_audit(data: DataConfig, progress: bool = False) -> tuple[dict[str, Any], Path]:
    """Audit ``data``'s prepared dataset, preparing it first when missing or made with other settings."""
    from xai_lab.data.audit import audit_dataset

    out = processed_dir(data)
    try:
        info = json.loads((out / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        info = None
    cache_ok = info is not None and (out / "cache" / str(info.get("cache_key")) / "images.npy").is_file()
    if info is None or info.get("config_sha1") != config_sha1(data) or not cache_ok:
        prepare(data, progress=progress, audit=False)
    elif data.landmarks and not info.get("landmarks") and not info.get("has_masks"):  # prepared without them
        ensure_landmarks(data, out, info)
        atomic_write_json(out / "dataset.json", info)
    return audit_dataset(data, out), out
