"""Prepared datasets in memory: each split as uint8 arrays, ready to move to the device once.

A FER-sized dataset (35k images of 48x48) is 80 MB as uint8: it lives on the GPU whole and
is augmented there in batches (see :mod:`xai_lab.data.augment`), so no per-image CPU
pipeline stands between the GPU and its data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xai_lab.config import DataConfig
from xai_lab.data.prepare import SPLITS, config_sha1, prepare, processed_dir, split_dir
from xai_lab.errors import UserError


@dataclass
class Split:
    """One split: ``images`` uint8 [N, C, S, S], ``labels`` int64 [N], optional masks and soft targets."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    masks: np.ndarray | None = None  # bool [N, 1, S, S]: the pixels that carry the expression
    soft_targets: np.ndarray | None = None  # float32 [N, K]: label distributions (e.g. FER+ votes)
    landmarks: np.ndarray | None = None  # float32 [N, 68, 2]: dlib's points (xai_lab.data.landmarks)
    landmark_source: np.ndarray | None = None  # uint8 [N]: 1 detected, 0 fitted from the crop

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(
            images=self.images[idx],
            labels=self.labels[idx],
            paths=[self.paths[i] for i in idx],
            masks=None if self.masks is None else self.masks[idx],
            soft_targets=None if self.soft_targets is None else self.soft_targets[idx],
            landmarks=None if self.landmarks is None else self.landmarks[idx],
            landmark_source=None if self.landmark_source is None else self.landmark_source[idx],
        )

    def concat(self, other: Split) -> Split:
        """This split's images followed by ``other``'s."""

        def cat(a, b):
            return None if a is None else np.concatenate([a, b])

        return Split(
            images=np.concatenate([self.images, other.images]),
            labels=np.concatenate([self.labels, other.labels]),
            paths=self.paths + other.paths,
            masks=cat(self.masks, other.masks),
            soft_targets=cat(self.soft_targets, other.soft_targets),
            landmarks=cat(self.landmarks, other.landmarks),
            landmark_source=cat(self.landmark_source, other.landmark_source),
        )


@dataclass
class Dataset:
    """A prepared dataset: class names and the train/val/test splits."""

    name: str
    root: str
    class_names: list[str]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(data: DataConfig, progress: bool = False) -> Dataset:
    """Load the prepared dataset of ``data``, preparing it first when missing or made differently.

    With ``data.fold >= 0`` the splits are those of that fold (``splits/fold<k>/``), else the
    holdout split. Prepared files whose recorded data config differs from ``data`` are rebuilt, so a run
    always sees exactly the split its own config describes.
    """
    out = processed_dir(data)
    info = _read_info(out)
    if info is None or info.get("config_sha1") != config_sha1(data) or not _cache_path(out, info).is_dir():
        prepare(data, progress=progress)
        info = _read_info(out)
    metadata = pd.read_csv(
        out / "metadata.csv", dtype={"subject": str, "path": str, "label": str}, keep_default_na=False
    )
    cache = _cache_path(out, info)
    images = np.load(cache / "images.npy", mmap_mode="r")
    masks = np.load(cache / "masks.npy", mmap_mode="r") if (cache / "masks.npy").is_file() else None
    marks = None
    if data.landmarks and masks is None:  # found at prepare; a cache made with data.landmarks=false gets them now
        from xai_lab.data.landmarks import cache_landmarks

        marks = cache_landmarks(cache, images)
    if len(images) != len(metadata):
        raise UserError(f"{cache} does not match {out / 'metadata.csv'}; run `xai-lab prepare` again")
    row_of = {p: i for i, p in enumerate(metadata["path"])}
    soft_cols = [c for c in metadata.columns if c.startswith("p_")]
    splits = {}
    for name in SPLITS:
        split_csv = split_dir(out, data.fold) / f"{name}.csv"
        part = pd.read_csv(split_csv, dtype={"path": str}, keep_default_na=False)
        try:
            idx = np.array([row_of[p] for p in part["path"]], dtype=np.int64)
        except KeyError as e:
            raise UserError(f"{split_csv} names {e} missing from metadata.csv; run prepare again") from None
        splits[name] = Split(
            images=np.ascontiguousarray(images[idx]),
            labels=metadata["label_idx"].to_numpy(np.int64)[idx],
            paths=metadata["path"].iloc[idx].tolist(),
            masks=None if masks is None else np.ascontiguousarray(masks[idx]),
            soft_targets=metadata[soft_cols].to_numpy(np.float32)[idx] if soft_cols else None,
            landmarks=None if marks is None else np.ascontiguousarray(marks[0][idx]),
            landmark_source=None if marks is None else np.ascontiguousarray(marks[1][idx]),
        )
    if data.fold >= 0 and not data.fold_val:  # the validation fold trains too; val is left empty
        splits["train"] = splits["train"].concat(splits["val"])
        splits["val"] = splits["val"].subset(np.arange(0))
    return Dataset(name=data.name, root=str(data.root), class_names=list(info["class_names"]), splits=splits)


def _read_info(out: Path) -> dict | None:
    try:
        return json.loads((out / "dataset.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _cache_path(out: Path, info: dict) -> Path:
    return out / "cache" / str(info.get("cache_key"))
