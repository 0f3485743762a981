"""Dataset sources: how each dataset is found on disk and listed, one registry entry each.

A source turns ``cfg.data`` into a table of images (``path`` relative to the root,
``label``, ``subject``, plus any columns of its own) and the ordered class names.
:func:`xai_lab.data.prepare.prepare` does the rest (decoding, checks, splits, cache)
the same way for every source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from xai_lab.config import DataConfig
from xai_lab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm")
MASK_SUFFIX = ".mask.png"  # a ground-truth mask sits beside its image as <stem>.mask.png


class Source:
    """Base class: a folder of ``<root>/<class>/<image>`` files."""

    name = "folder"

    def default_root(self, data: DataConfig) -> str:
        return ""

    def default_name(self, data: DataConfig) -> str:
        name = Path(data.root).name or "dataset"
        return f"{name}_limit{data.limit_per_class}" if data.limit_per_class else name

    def materialize(self, data: DataConfig) -> None:
        """Make sure the raw files exist (generated sources write them here)."""
        root = Path(data.root)
        if not root.is_dir():
            raise UserError(f"dataset folder not found: {root} (config key data.root)")

    def class_names(self, data: DataConfig) -> list[str]:
        root = Path(data.root)
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise UserError(f"no class folders in {root}: expected {root}/<class>/<image files>")
        return names

    def list_images(self, data: DataConfig) -> pd.DataFrame:
        """One row per image: ``path`` (relative to the root, posix), ``label``, ``subject``."""
        root = Path(data.root)
        rows = []
        for label in self.class_names(data):
            files = sorted(
                p
                for p in (root / label).rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not p.name.endswith(MASK_SUFFIX)
                and not p.name.startswith(".")
            )
            if not files:
                raise UserError(f"empty class folder: {root / label} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            for p in files:
                rel = p.relative_to(root).as_posix()
                rows.append({"path": rel, "label": label, "subject": subject_of(p.name, data.subject_pattern)})
        return pd.DataFrame(rows, columns=["path", "label", "subject"])


def subject_of(filename: str, pattern: str) -> str:
    """The subject id from a file name: the first group of ``pattern``, else the file's stem."""
    if pattern:
        m = re.search(pattern, filename)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return Path(filename).stem


class SynthFacesSource(Source):
    """The embedded dataset: generated into ``data/raw/<name>`` on first use, then read as a folder."""

    name = "synthfaces"

    def _base(self, data: DataConfig) -> str:
        s = data.synthfaces
        if (s.n_per_class, s.label_noise, s.seed) == (300, 0.0, 0):
            return "synthfaces"
        return f"synthfaces_n{s.n_per_class}_noise{s.label_noise:g}_seed{s.seed}"

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
        faces = synthfaces.generate(n_per_class=s.n_per_class, label_noise=s.label_noise, seed=s.seed,
                                    size=data.image_size)
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
        table = labels.rename(columns={"file": "path"})[["path", "label", "subject", "clean_label", "label_flipped"]]
        missing = [p for p in table["path"] if not (root / p).is_file()]
        if missing:
            raise UserError(f"{root}/labels.csv names {len(missing)} missing image(s), e.g. {missing[0]}")
        return table.sort_values("path", kind="stable").reset_index(drop=True)


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    SOURCES[source.name] = source
    return source


for _source in (Source(), SynthFacesSource()):
    register_source(_source)


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise UserError(f"unknown data source '{name}'; valid: {', '.join(SOURCES)}") from None


def default_root(data: DataConfig) -> str:
    return get_source(data.source).default_root(data)


def default_name(data: DataConfig) -> str:
    return get_source(data.source).default_name(data)

