"""Dataset sources: how each dataset is found on disk and listed, one registry entry each.

A source turns ``cfg.data`` into a table of images and the ordered class names;
:func:`xai_lab.data.prepare.prepare` does the rest (decoding, checks, splits, dedup, cache,
audit) the same way for every source. The table has one row per image:

``path``        where the image is, relative to ``data.root`` (``fer2013.csv#12`` for a CSV row: line 12)
``label``       the class name, as the dataset spells it (see :mod:`xai_lab.data.emotions`)
``subject``     who is shown (CK+), else the image's own name
``split``       optional: the split the dataset itself gives (train/val/test); kept by ``prepare``
other columns   kept in ``metadata.csv`` (votes, vote entropy, ``p_<class>`` soft targets, ...)
``_error``      optional: why a row is malformed ("" if fine); handled as ``data.on_bad_row`` says
``_excluded``   optional: why a row is left out by design (e.g. FER+ "no majority"); counted
``_pixels``     optional: the decoded pixels (uint8 [H, W]) for sources without image files

Columns starting with ``_`` never reach ``metadata.csv``. Sources register themselves with
:func:`register_source`; :func:`get_source` looks them up.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from xai_lab.config import DataConfig
from xai_lab.data.decode import MASK_SUFFIX, Decoded, decode_files, decode_pixels
from xai_lab.data.synthfaces import MIN_INTENSITY
from xai_lab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")
__all__ = ["MASK_SUFFIX", "IMAGE_SUFFIXES", "Source", "get_source", "list_sources", "register_source"]

# Folder names of a dataset that ships its own split ({train,val,test}/<class>/...).
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

SOURCES: dict[str, Source] = {}


def register_source(cls: type[Source]) -> type[Source]:
    """Class decorator: add an instance of ``cls`` to the registry under ``cls.name``."""
    SOURCES[cls.name] = cls()
    return cls


def _import_builtins() -> None:
    """Sources defined in other modules register on import."""
    import xai_lab.data.fer  # noqa: F401


def list_sources() -> list[str]:
    """Names of the registered sources."""
    _import_builtins()
    return list(SOURCES)


def get_source(name: str) -> Source:
    """The registered source called ``name``; UserError listing the valid ones otherwise."""
    _import_builtins()
    try:
        return SOURCES[name]
    except KeyError:
        raise UserError(f"unknown data source '{name}'; valid: {', '.join(SOURCES)}") from None


def default_root(data: DataConfig) -> str:
    return get_source(data.source).default_root(data)


def default_name(data: DataConfig) -> str:
    return get_source(data.source).default_name(data)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.endswith(MASK_SUFFIX)
        and not p.name.startswith(".")
    )


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_folders(root: Path) -> dict[str, str]:
    """``{folder name: split}`` when ``root`` holds a train folder and a val or test folder, else ``{}``."""
    found = {name: SPLIT_FOLDERS[name.lower()] for name in _subfolders(root) if name.lower() in SPLIT_FOLDERS}
    splits = set(found.values())
    return found if "train" in splits and len(splits) > 1 else {}


@register_source
class Source:
    """Any ImageFolder dataset: ``<root>/<class>/<image>``, or ``<root>/{train,val,test}/<class>/<image>``.

    In the second layout the dataset's own split is kept (a missing val is carved from train).
    """

    name = "folder"

    def default_root(self, data: DataConfig) -> str:
        """``data.root`` when the config leaves it empty ("" : the user must give it)."""
        return ""

    def default_name(self, data: DataConfig) -> str:
        """``data.name`` when the config leaves it empty: the root folder's name."""
        name = Path(data.root).name or "dataset"
        return f"{name}_limit{data.limit_per_class}" if data.limit_per_class else name

    def materialize(self, data: DataConfig) -> None:
        """Make sure the raw files exist (generated sources write them here)."""
        root = Path(data.root)
        if not root.is_dir():
            raise UserError(f"dataset folder not found: {root} (config key data.root)")

    def class_names(self, data: DataConfig) -> list[str]:
        """The ordered class names (label index = position): here the sorted class folder names."""
        root = Path(data.root)
        splits = split_folders(root)
        if splits:
            names = sorted({c for folder in splits for c in _subfolders(root / folder)})
        else:
            names = _subfolders(root)
        if not names:
            raise UserError(f"no class folders in {root}: expected {root}/<class>/<image files>")
        return names

    def list_images(self, data: DataConfig) -> pd.DataFrame:
        """One row per image: ``path`` (relative to the root, posix), ``label``, ``subject`` (+ ``split``)."""
        root = Path(data.root)
        splits = split_folders(root)
        classes = self.class_names(data)
        rows = []
        for folder, split in splits.items() if splits else [("", None)]:
            base = root / folder if folder else root
            for label in _subfolders(base) if folder else classes:
                if label not in classes:
                    raise UserError(
                        f"unexpected class folder {base / label}; valid classes: {', '.join(classes)}"
                    )
                files = _image_files(base / label)
                if not files:
                    raise UserError(
                        f"empty class folder: {base / label} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                    )
                for p in files:
                    row = {
                        "path": p.relative_to(root).as_posix(),
                        "label": label,
                        "subject": subject_of(p.name, data.subject_pattern),
                    }
                    if split:
                        row["split"] = split
                    rows.append(row)
        return pd.DataFrame(rows, columns=["path", "label", "subject"] + (["split"] if splits else []))

    def decode(self, data: DataConfig, table: pd.DataFrame, progress: bool = False):
        """Decode every row of ``table``: ``({path: Decoded}, [(path, why), ...])``.

        Files are read from ``data.root``; rows that carry a ``_pixels`` array are decoded from it.
        """
        if "_pixels" in table.columns:
            decoded: dict[str, Decoded] = {
                p: decode_pixels(px, data.image_size, data.channels)
                for p, px in zip(table["path"], table["_pixels"], strict=True)
            }
            return decoded, []
        return decode_files(Path(data.root), table["path"].tolist(), data.image_size, data.channels, progress)


def subject_of(filename: str, pattern: str) -> str:
    """The subject id from a file name: the first group of ``pattern``, else the file's stem."""
    if pattern:
        m = re.search(pattern, filename)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return Path(filename).stem


@register_source
class CKPlusSource(Source):
    """CK+ in the Kaggle "CK+48" layout: ``<class>/S<subject>_<sequence>_<frame>.png``.

    The subject comes from the file name (``data.subject_pattern``, default ``^(S\\d+)_``) and
    ``sequence`` (``S010_004``) is kept as a column: the last frames of a sequence are near-copies,
    so splits must be grouped by subject (``data.group_by_subject: true``).
    """

    name = "ckplus"
    SUBJECT_PATTERN = r"^(S\d+)_"

    def list_images(self, data: DataConfig) -> pd.DataFrame:
        pattern = data.subject_pattern or self.SUBJECT_PATTERN
        table = super().list_images(data)
        names = table["path"].map(lambda p: p.rsplit("/", 1)[-1])
        table["subject"] = names.map(lambda n: subject_of(n, pattern))
        table["sequence"] = names.map(lambda n: "_".join(Path(n).stem.split("_")[:2]))
        return table


@register_source
class SynthFacesSource(Source):
    """The embedded dataset: generated into ``data/raw/<name>`` on first use, then read as a folder."""

    name = "synthfaces"

    def _base(self, data: DataConfig) -> str:
        s = data.synthfaces
        if (s.n_per_class, s.label_noise, s.seed, s.min_intensity, data.image_size) == (300, 0.0, 0, MIN_INTENSITY, 48):
            return "synthfaces"
        # the knobs that change the pixels or labels name the folder, so no two sets share one
        easier = f"_int{s.min_intensity:g}" if s.min_intensity != MIN_INTENSITY else ""
        size = f"_{data.image_size}px" if data.image_size != 48 else ""
        return f"synthfaces_n{s.n_per_class}_noise{s.label_noise:g}_seed{s.seed}{easier}{size}"

    def default_root(self, data: DataConfig) -> str:
        return f"data/raw/{self._base(data)}"

    def default_name(self, data: DataConfig) -> str:
        base = self._base(data)
        return f"{base}_limit{data.limit_per_class}" if data.limit_per_class else base

    def materialize(self, data: DataConfig) -> None:
        from xai_lab.data import synthfaces

        root = Path(data.root)
        if (root / "labels.csv").is_file():
            return
        if root.exists() and any(root.iterdir()):
            raise UserError(f"{root} exists but holds no synthfaces labels.csv; remove it or set data.root")
        s = data.synthfaces
        faces = synthfaces.generate(
            n_per_class=s.n_per_class, label_noise=s.label_noise, seed=s.seed, size=data.image_size,
            min_intensity=s.min_intensity,
        )
        if root.exists():
            root.rmdir()
        synthfaces.write_folder(faces, root)

    def class_names(self, data: DataConfig) -> list[str]:
        from xai_lab.data.synthfaces import CLASSES

        return list(CLASSES)

    def list_images(self, data: DataConfig) -> pd.DataFrame:
        """The folder listing joined with labels.csv (clean label, flip flag, subject)."""
        root = Path(data.root)
        labels = pd.read_csv(root / "labels.csv")
        table = labels.rename(columns={"file": "path"})[
            ["path", "label", "subject", "clean_label", "label_flipped"]
        ]
        missing = [p for p in table["path"] if not (root / p).is_file()]
        if missing:
            raise UserError(f"{root}/labels.csv names {len(missing)} missing image(s), e.g. {missing[0]}")
        return table.sort_values("path", kind="stable").reset_index(drop=True)
