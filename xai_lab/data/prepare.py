"""``prepare``: a dataset folder into ``metadata.csv``, seeded splits and a decoded uint8 cache.

Output, under ``<data.processed_root>/<data.name>/``::

    metadata.csv              path,label,label_idx,subject,width,height,sha1 (+ source columns)
    splits/{train,val,test}.csv  the same columns, one file per split
    dataset.json              class names, counts, skipped files, the config that made it
    cache/<key>/images.npy    every image decoded once: uint8 [N, C, S, S], rows as in metadata.csv
    cache/<key>/masks.npy     ground-truth masks (bool [N, 1, S, S]) where the source has them

``path`` is relative to ``data.root``. The cache key hashes the manifest's content and
the decode settings, so a changed dataset gets a fresh cache and an unchanged one is
reused. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from xai_lab.atomic import atomic_write_json, atomic_write_with
from xai_lab.config import DataConfig
from xai_lab.data.sources import MASK_SUFFIX, get_source
from xai_lab.data.splits import SPLITS, split_indices
from xai_lab.errors import UserError

METADATA_COLUMNS = ["path", "label", "label_idx", "subject", "width", "height", "sha1"]


def processed_dir(data: DataConfig) -> Path:
    return Path(data.processed_root) / data.name


def config_sha1(data: DataConfig) -> str:
    """Hash of the data settings that decide what ``prepare`` writes."""
    return hashlib.sha1(json.dumps(asdict(data), sort_keys=True).encode()).hexdigest()


class BadImage(Exception):
    pass


def decode_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, int, int]:
    """Decode an image file to uint8 ``[channels, size, size]``.

    Non-square images are resized on the short side and centre-cropped (as torchvision's
    Resize + CenterCrop). Returns the array and the original width and height.
    """
    try:
        with Image.open(path) as im:
            im.load()
            width, height = im.size
            im = im.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    if (width, height) != (size, size):
        scale = size / min(width, height)
        w, h = max(size, round(width * scale)), max(size, round(height * scale))
        im = im.resize((w, h), Image.Resampling.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), width, height


def _decode_row(root: Path, rel: str, size: int, channels: int):
    path = root / rel
    try:
        raw = path.read_bytes()
    except OSError as e:
        return rel, None, f"cannot read: {e.strerror}"
    try:
        arr, w, h = decode_image(path, size, channels)
    except BadImage as e:
        return rel, None, f"not a readable image ({e})"
    mask_path = path.with_name(path.name[: -len(path.suffix)] + MASK_SUFFIX)
    mask = None
    if mask_path.is_file():
        try:
            mask = decode_image(mask_path, size, 1)[0] > 127
        except BadImage as e:
            return rel, None, f"unreadable mask {mask_path.name} ({e})"
    return rel, (arr, mask, w, h, hashlib.sha1(raw).hexdigest()), None


def prepare(data: DataConfig, progress: bool = False) -> Path:
    """Scan, check, decode and split the dataset of ``data``; return the processed folder.

    Raises:
        UserError: missing folders, empty classes, unreadable images (listed; with
            ``data.on_bad_image: skip`` they are left out and recorded in dataset.json).
    """
    source = get_source(data.source)
    source.materialize(data)
    class_names = source.class_names(data)
    table = source.list_images(data)
    if data.limit_per_class:
        table = table.groupby("label", sort=False, group_keys=False).head(data.limit_per_class)
        table = table.reset_index(drop=True)

    root = Path(data.root)
    decoded, bad = _decode_all(root, table["path"].tolist(), data.image_size, data.channels, progress)
    if bad and data.on_bad_image == "error":
        shown = "; ".join(f"{root / p}: {why}" for p, why in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(
            f"{len(bad)} unreadable image(s): {shown}{more}; fix or remove them, or set data.on_bad_image=skip"
        )
    keep = [p in decoded for p in table["path"]]
    table = table[keep].reset_index(drop=True)
    if table.empty:
        raise UserError(f"no readable images in {root}")

    index = {name: i for i, name in enumerate(class_names)}
    table.insert(2, "label_idx", table["label"].map(index).astype(int))
    rows = [decoded[p] for p in table["path"]]
    table.insert(4, "width", [r[2] for r in rows])
    table.insert(5, "height", [r[3] for r in rows])
    table.insert(6, "sha1", [r[4] for r in rows])
    images = np.stack([r[0] for r in rows])
    masks = np.stack([r[1] for r in rows]) if all(r[1] is not None for r in rows) else None

    groups = table["subject"].to_numpy() if data.group_by_subject else None
    s = data.split
    split_idx = split_indices(table["label_idx"].to_numpy(), (s.train, s.val, s.test), data.split_seed, groups)

    out = processed_dir(data)
    metadata_csv = table.to_csv(index=False)
    key = _cache_key(metadata_csv, data)
    _write_cache(out / "cache", key, images, masks)
    for split in SPLITS:
        part = table.iloc[split_idx[split]]
        atomic_write_with(out / "splits" / f"{split}.csv", lambda p, part=part: part.to_csv(p, index=False))
    atomic_write_with(out / "metadata.csv", lambda p: p.write_text(metadata_csv))
    counts = table["label"].value_counts()
    atomic_write_json(
        out / "dataset.json",
        {
            "name": data.name,
            "source": data.source,
            "root": str(root),
            "class_names": class_names,
            "n_images": len(table),
            "class_counts": {c: int(counts.get(c, 0)) for c in class_names},
            "split_sizes": {k: len(v) for k, v in split_idx.items()},
            "has_masks": masks is not None,
            "skipped": [{"path": p, "reason": why} for p, why in bad],
            "cache_key": key,
            "config_sha1": config_sha1(data),
            "data_config": asdict(data),
        },
    )
    return out


def _decode_all(root: Path, paths: list[str], size: int, channels: int, progress: bool):
    from tqdm.auto import tqdm

    decoded, bad = {}, []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _decode_row(root, p, size, channels), paths, chunksize=64)
        for rel, row, err in tqdm(results, total=len(paths), desc="decode", disable=not progress, leave=False):
            if err is None:
                decoded[rel] = row
            else:
                bad.append((rel, err))
    return decoded, bad


def _cache_key(metadata_csv: str, data: DataConfig) -> str:
    h = hashlib.sha1(metadata_csv.encode())
    h.update(f"|{data.image_size}|{data.channels}".encode())
    return h.hexdigest()[:16]


def _write_cache(cache_root: Path, key: str, images: np.ndarray, masks: np.ndarray | None) -> None:
    final = cache_root / key
    if (final / "images.npy").is_file():
        return
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    np.save(tmp / "images.npy", images)
    if masks is not None:
        np.save(tmp / "masks.npy", masks)
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
