"""The audit compares the splits: a train split stored unlike val and test is named; the real samples pass."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, SHARED
from PIL import Image, ImageFilter

from xai_lab.config import AuditConfig
from xai_lab.data.audit_markdown import summary_lines
from xai_lab.data.prepare import prepare
from xai_lab.data.split_shift import split_shift_sections
from xai_lab.experiment import build_data_config

CLASSES = ("happy", "sad")
PER_CLASS = 12  # 24 images per split: a small dataset


def face_like(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A smooth random gray image with fine texture and its own brightness and contrast."""
    # 7x7 (not 6x6) control points: no structure on the 8-pixel grid that the blockiness statistic measures
    coarse = Image.fromarray(rng.normal(0, 1, (7, 7)).astype(np.float32)).resize((size, size), Image.BICUBIC)
    z = np.asarray(coarse) + rng.normal(0, 0.3, (size, size))
    z = (z - z.mean()) / z.std()
    return np.clip(rng.uniform(100, 150) + rng.uniform(35, 50) * z, 0, 255).astype(np.uint8)


def lower_contrast(img: Image.Image) -> Image.Image:
    a = np.asarray(img, np.float32)
    return Image.fromarray(np.clip(a.mean() + 0.5 * (a - a.mean()), 0, 255).astype(np.uint8))


def blurred(img: Image.Image) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(1.2))


def upscaled_from_low_resolution(img: Image.Image) -> Image.Image:
    return img.resize((16, 16), Image.BILINEAR).resize(img.size, Image.BILINEAR)


def reencoded_as_jpeg(img: Image.Image) -> Image.Image:
    """A low-quality JPEG round trip, stored as PNG again: the manifest cannot tell."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=20)
    return Image.open(buf).convert("L")


def stored_larger(img: Image.Image) -> Image.Image:
    return img.resize((96, 96), Image.BICUBIC)


def make_split_dataset(root, alter=None, splits=("train", "val", "test"), seed=0, per_class=PER_CLASS):
    """``root/<split>/<class>/*.png``; ``alter`` changes every train image."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = Image.fromarray(face_like(rng))
                if alter is not None and split == "train":
                    img = alter(img)
                img.save(folder / f"{split}_{cls}_{i:02d}.png")
    return root


def audit_of(tmp_path, **data) -> dict:
    out = prepare(build_data_config({"processed_root": str(tmp_path / "processed"), **data}))
    return json.loads((out / "audit.json").read_text())


def shift_warnings(audit: dict) -> list[str]:
    return [w for w in audit["warnings"] if w.startswith("split shift")]


@pytest.mark.parametrize(
    "alter, statistic",
    [
        (lower_contrast, "contrast"),
        (blurred, "sharpness"),
        (upscaled_from_low_resolution, "sharpness"),
        (reencoded_as_jpeg, "blockiness"),
        (stored_larger, "size"),
    ],
    ids=["contrast", "blur", "low-resolution", "jpeg", "size"],
)
def test_an_altered_train_split_is_named_with_the_statistic(tmp_path, alter, statistic):
    root = make_split_dataset(tmp_path / "raw", alter)
    audit = audit_of(tmp_path, source="folder", root=str(root), name="altered")
    findings = audit["split_shift"]["findings"]
    assert statistic in {f["statistic"] for f in findings}
    assert all(f["split"] == "train" and set(f["against"]) <= {"val", "test"} for f in findings)  # val ~ test
    expected = f"split shift: {statistic} of train differs from val and test ("
    assert any(w.startswith(expected) for w in audit["warnings"])
    assert any(line.startswith("  split shift (images;") for line in summary_lines(audit))


def test_the_warning_reaches_audit_md_and_the_summary(tmp_path):
    root = make_split_dataset(tmp_path / "raw", lower_contrast)
    audit = audit_of(tmp_path, source="folder", root=str(root), name="low")
    md = (tmp_path / "processed" / "low" / "audit.md").read_text()
    warning = next(w for w in shift_warnings(audit) if w.startswith("split shift: contrast of train"))
    assert "## Splits compared (distribution shift)" in md and f"- {warning}" in md
    assert f"  warning: {warning}" in summary_lines(audit)
    stats = audit["split_stats"]["splits"]
    assert stats["train"]["contrast"]["median"] < 0.6 * stats["test"]["contrast"]["median"]
    assert stats["train"]["size"] == {"48x48": 24} and stats["train"]["format"] == {"png": 24}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_unaltered_dataset_built_the_same_way_does_not_warn(tmp_path, seed):
    root = make_split_dataset(tmp_path / "raw", seed=seed)
    audit = audit_of(tmp_path, source="folder", root=str(root), name="plain")
    shift = audit["split_shift"]
    assert shift["findings"] == [] and not shift_warnings(audit)
    assert shift["compared"] == ["train", "val", "test"] and shift["tests"] == 15  # 5 numbers x 3 pairs
    assert audit["split_stats"]["unit"] == "image" and audit["split_stats"]["splits"]["val"]["images"] == 24


def test_with_train_and_test_folders_val_is_carved_from_train_so_test_stands_out(tmp_path):
    """val carved from an altered train/ is altered too, so test stands out; with a val too small, train vs test."""
    root = make_split_dataset(tmp_path / "raw", lower_contrast, splits=("train", "test"), per_class=40)
    audit = audit_of(tmp_path, source="folder", root=str(root), name="carved")
    assert audit["split_sizes"]["val"] >= 10 and audit["split_shift"]["compared"] == ["train", "val", "test"]
    assert any(w.startswith("split shift: contrast of test differs from train and val (") for w in audit["warnings"])
    assert {f["split"] for f in audit["split_shift"]["findings"]} == {"test"}
    small = make_split_dataset(tmp_path / "small", lower_contrast, splits=("train", "test"))
    audit = audit_of(tmp_path, source="folder", root=str(small), name="small")
    assert audit["split_sizes"]["val"] < 10 and audit["split_shift"]["compared"] == ["train", "test"]
    assert any(w.startswith("split shift: contrast of train differs from test (") for w in audit["warnings"])


def test_a_fold_whose_images_differ_is_named(tmp_path):
    """Each fold's test set against the other folds (here fold 2 has half the contrast)."""
    rng = np.random.default_rng(0)
    n, folds = 60, np.repeat(np.arange(4), 15)
    images = np.stack([face_like(rng) for _ in range(n)])[:, None]
    low = images[folds == 2].astype(np.float32)
    images[folds == 2] = (128 + 0.5 * (low - 128)).astype(np.uint8)
    splits = rng.permutation(np.repeat(np.array(["train", "val", "test"], dtype=object), 20))
    names = [f"{i}.png" for i in range(n)]
    table = pd.DataFrame({"path": names, "width": 48, "height": 48, "mode": "L", "split": splits, "fold": folds})
    warnings: list[str] = []
    subjects = np.array([f"s{i}" for i in range(n)], dtype=object)
    out = split_shift_sections(table, images, splits, subjects, AuditConfig(), warnings)
    found = {(f["statistic"], f["split"]) for f in out["split_shift"]["findings"]}
    assert ("contrast", "fold2") in found and all(split == "fold2" for _, split in found)
    assert any(w.startswith("split shift: contrast of fold2 differs from other folds") for w in warnings)
    assert list(out["split_stats"]["folds"]) == ["fold0", "fold1", "fold2", "fold3"]


def _ckplus() -> dict:
    data = yaml.safe_load((ROOT / "configs" / "data" / "ckplus.yaml").read_text())
    return {**data, "root": str(SHARED / "ckplus48")}  # holdout split by subject, and 10 folds


@pytest.mark.parametrize(
    "data, unit, tests",
    [
        (_ckplus(), "subject", 15 + 10 * 5),  # 3 pairs and 10 folds x 5 numbers: all 48x48, L, png
        ({"source": "fer2013", "root": str(SHARED / "fer2013-sample")}, "image", 15),
        ({"source": "fer2013", "root": str(SHARED / "fer2013-csv-sample"), "layout": "csv"}, "image", 15),
        ({"source": "ferplus", "root": str(SHARED / "ferplus-sample")}, "image", 15),
    ],
    ids=["ckplus48", "fer2013-sample", "fer2013-csv-sample", "ferplus-sample"],
)
def test_the_shared_samples_show_no_split_shift(tmp_path, data, unit, tests):
    audit = audit_of(tmp_path, **data)
    assert not shift_warnings(audit), shift_warnings(audit)
    shift = audit["split_shift"]
    assert shift["compared"] == ["train", "val", "test"] and shift["tests"] == tests
    assert audit["split_stats"]["unit"] == unit
