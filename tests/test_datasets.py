"""The dataset sources on the real samples in ../shared/datasets (read in place, prepared into tmp)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED
from PIL import Image

from xai_lab.config import DataConfig
from xai_lab.data.dataset import load_dataset
from xai_lab.data.fer import FERPLUS_CLASSES, ferplus_label, vote_entropy
from xai_lab.data.prepare import prepare
from xai_lab.data.sources import list_sources
from xai_lab.errors import UserError
from xai_lab.experiment import build_data_config

CKPLUS_COUNTS = {
    "anger": 135,
    "contempt": 54,
    "disgust": 177,
    "fear": 75,
    "happy": 207,
    "sadness": 84,
    "surprise": 249,
}


def data_config(tmp, **values) -> DataConfig:
    return build_data_config({"processed_root": str(tmp), **values})


def test_data_source_is_checked_against_the_source_registry():
    """The config layer knows no source names: resolving refuses an unknown one and lists the registered ones."""
    with pytest.raises(UserError, match="'data.source' must be one of ") as err:
        build_data_config({"source": "affectnet"})
    assert all(name in str(err.value) for name in list_sources()) and "affectnet" in str(err.value)


# --- CK+ ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckplus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckplus")
    data = data_config(
        tmp, source="ckplus", root=str(SHARED / "ckplus48"), name="ckplus", group_by_subject=True, folds=10
    )
    out = prepare(data)
    return data, out


def test_ckplus_whole_with_subject_independent_splits(ckplus):
    data, out = ckplus
    meta = pd.read_csv(out / "metadata.csv", dtype={"subject": str})
    assert len(meta) == 981
    assert meta["label"].value_counts().to_dict() == CKPLUS_COUNTS
    assert meta["subject"].nunique() == 118 and meta["subject"].str.fullmatch(r"S\d{3}").all()
    assert meta.loc[meta["path"] == "anger/S010_004_00000017.png", "subject"].item() == "S010"
    assert (meta.groupby("subject")["split"].nunique() == 1).all()  # no subject in two splits
    info = json.loads((out / "dataset.json").read_text())
    sizes = info["split_sizes"]
    assert sum(sizes.values()) == 981 and 0.6 < sizes["train"] / 981 < 0.8
    for name in ("train", "val", "test"):  # every class in every split, as far as grouping allows
        part = pd.read_csv(out / "splits" / f"{name}.csv")
        assert set(part["label"]) == set(CKPLUS_COUNTS) and len(part) == sizes[name]


def test_ckplus_ten_folds_test_every_image_once_and_never_split_a_subject(ckplus):
    data, out = ckplus
    meta = pd.read_csv(out / "metadata.csv", dtype={"subject": str})
    assert sorted(meta["fold"].unique()) == list(range(10))
    assert (meta.groupby("subject")["fold"].nunique() == 1).all()
    tested = []
    for k in range(10):
        parts = {
            s: pd.read_csv(out / "splits" / f"fold{k}" / f"{s}.csv", dtype={"subject": str})
            for s in ("train", "val", "test")
        }
        subjects = [set(p["subject"]) for p in parts.values()]
        assert (
            not (subjects[0] & subjects[1])
            and not (subjects[0] & subjects[2])
            and not (subjects[1] & subjects[2])
        )
        assert sum(len(p) for p in parts.values()) == 981
        assert 80 <= len(parts["test"]) <= 120
        tested += parts["test"]["path"].tolist()
    assert sorted(tested) == sorted(meta["path"])
    fold3 = load_dataset(DataConfig(**{**data.__dict__, "fold": 3}))
    assert len(fold3.splits["test"]) == len(pd.read_csv(out / "splits" / "fold3" / "test.csv"))


def test_ckplus_audit(ckplus):
    _, out = ckplus
    audit = json.loads((out / "audit.json").read_text())
    assert audit["images"] == 981
    assert audit["exact_duplicates"]["groups"] == 0
    assert audit["subjects"]["in_more_than_one_split"] == 0
    assert audit["subjects"]["per_fold"] == [0] * 10
    near = audit["near_duplicates"]
    assert (
        near["pairs"] > 300 and near["across_splits"] == 0 and near["across_classes"] == 0
    )  # frames of a sequence
    assert audit["per_class"]["happy"]["sizes"] == {"48x48": 207} and audit["per_class"]["happy"][
        "modes"
    ] == {"L": 207}
    assert audit["class_balance"]["counts"] == CKPLUS_COUNTS
    assert (out / "audit.md").read_text().startswith("# Data audit: ckplus")


# --- FER2013 --------------------------------------------------------------------------------------

# Real faults of the sample: byte-identical images under two classes, and in both train and test.
FER_CONFLICT = {
    "train/angry/Training_71646870.jpg",
    "train/sad/Training_93190350.jpg",
    "train/sad/Training_95029336.jpg",
}
FER_LEAK = {
    "test/angry/PublicTest_87724897.jpg",
    "train/angry/Training_52193451.jpg",
    "train/angry/Training_56677459.jpg",
}


def _groups(audit: dict) -> list[set]:
    return [set(e["paths"]) for e in audit["exact_duplicates"]["examples"]]


def test_fer2013_folders_keep_the_test_folder_and_audit_finds_the_faults(tmp_path):
    data = data_config(tmp_path, source="fer2013", root=str(SHARED / "fer2013-sample"), name="fer")
    out = prepare(data)
    meta = pd.read_csv(out / "metadata.csv")
    assert len(meta) == 231
    assert (meta["split"] == "test").sum() == 108 and set(
        meta.loc[meta["split"] == "test", "path"].str[:5]
    ) == {"test/"}
    assert set(meta.loc[meta["split"] != "test", "path"].str[:6]) == {"train/"}
    assert (meta["split"] == "val").sum() > 0
    assert list(json.loads((out / "dataset.json").read_text())["class_names"]) == [
        "angry",
        "disgust",
        "fear",
        "happy",
        "sad",
        "surprise",
        "neutral",
    ]
    audit = json.loads((out / "audit.json").read_text())
    ex = audit["exact_duplicates"]
    assert ex["groups"] == 4 and ex["images"] == 21
    assert ex["across_classes"] == 3 and ex["across_splits"] >= 1
    groups = _groups(audit)
    assert FER_CONFLICT in groups and FER_LEAK in groups
    assert audit["label_conflicts"]["groups"] == 3
    assert any("leakage" in w for w in audit["warnings"])
    assert audit["blank_images"]["images"] == 12  # the all-black image, filed under five classes


def test_fer2013_csv_usage_becomes_the_split(tmp_path):
    root = SHARED / "fer2013-csv-sample"
    data = data_config(tmp_path, source="fer2013", root=str(root), layout="csv", name="fercsv")
    ds = load_dataset(data)
    meta = pd.read_csv(tmp_path / "fercsv" / "metadata.csv")
    raw = pd.read_csv(root / "fer2013.csv")
    assert len(meta) == len(raw) == 231
    assert meta["path"].iloc[0] == "fer2013.csv#2"  # line 2: the first row after the header
    assert (meta["label_idx"].to_numpy() == raw["emotion"].to_numpy()).all()
    usage = raw["Usage"].map({"Training": "train", "PublicTest": "val", "PrivateTest": "test"})
    assert (meta["split"].to_numpy() == usage.to_numpy()).all()
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 123, "val": 50, "test": 58}
    first = np.array(raw["pixels"].iloc[0].split(), dtype=np.uint8).reshape(48, 48)
    assert (ds.splits["train"].images[0, 0] == first).all()
    audit = json.loads((tmp_path / "fercsv" / "audit.json").read_text())
    ex = audit["exact_duplicates"]
    assert (ex["groups"], ex["images"], ex["across_classes"]) == (4, 21, 3) and ex["across_splits"] >= 1


def test_dedup_modes_on_the_fer2013_sample(tmp_path):
    kept = {}
    for mode in ("drop_conflicts", "drop_cross_split", "drop_all"):
        data = data_config(
            tmp_path, source="fer2013", root=str(SHARED / "fer2013-sample"), name=mode, dedup=mode
        )
        out = prepare(data)
        info = json.loads((out / "dataset.json").read_text())
        audit = json.loads((out / "audit.json").read_text())
        meta = pd.read_csv(out / "metadata.csv")
        kept[mode] = set(meta["path"])
        assert info["dedup"]["mode"] == mode and len(meta) == 231 - len(info["dedup"]["dropped"])
        if mode == "drop_conflicts":
            assert len(info["dedup"]["dropped"]) == 18 and audit["exact_duplicates"]["across_classes"] == 0
            assert not FER_CONFLICT & kept[mode]
        if mode == "drop_cross_split":
            assert audit["exact_duplicates"]["across_splits"] == 0
            assert "test/angry/PublicTest_87724897.jpg" in kept[mode]  # the test copy stays
            assert not {"train/angry/Training_52193451.jpg", "train/angry/Training_56677459.jpg"} & kept[mode]
        if mode == "drop_all":
            assert audit["exact_duplicates"]["groups"] == 0 and audit["prepare"]["dedup"]["dropped"] == 20


# --- FER+ -----------------------------------------------------------------------------------------


def test_ferplus_label_rules():
    v = np.array
    # majority (Barsoum et al.): single votes dropped, > half of the remaining votes needed.
    assert ferplus_label(v([7, 0, 0, 2, 0, 0, 0, 0, 1, 0]), "majority")[:2] == (0, "")
    assert ferplus_label(v([4, 4, 2, 0, 0, 0, 0, 0, 0, 0]), "majority")[:2] == (-1, "no majority")
    assert ferplus_label(v([5, 4, 1, 0, 0, 0, 0, 0, 0, 0]), "majority")[:2] == (
        0,
        "",
    )  # 5 > 9/2 once the 1 is gone
    assert ferplus_label(v([2, 0, 0, 0, 0, 0, 0, 0, 8, 0]), "majority")[:2] == (-1, "unknown")
    assert ferplus_label(v([0, 0, 0, 0, 0, 0, 0, 0, 0, 10]), "majority")[:2] == (-1, "NF")
    # plurality: the most votes; ties left out.
    assert ferplus_label(v([4, 3, 3, 0, 0, 0, 0, 0, 0, 0]), "plurality")[:2] == (0, "")
    assert ferplus_label(v([4, 4, 2, 0, 0, 0, 0, 0, 0, 0]), "plurality")[:2] == (-1, "tie")
    # probability: the emotion votes (singles dropped), normalised.
    idx, why, p = ferplus_label(v([6, 3, 1, 0, 0, 0, 0, 0, 0, 0]), "probability")
    assert (idx, why) == (0, "") and np.allclose(p, [6 / 9, 3 / 9, 0, 0, 0, 0, 0, 0])
    assert ferplus_label(v([2, 0, 0, 0, 0, 0, 0, 0, 8, 0]), "probability")[:2] == (-1, "unknown")
    assert vote_entropy(v([[10, 0], [5, 5]])) == pytest.approx([0.0, 1.0])


def test_ferplus_folders_majority(tmp_path):
    data = data_config(tmp_path, source="ferplus", root=str(SHARED / "ferplus-sample"), name="fp")
    ds = load_dataset(data)
    meta = pd.read_csv(tmp_path / "fp" / "metadata.csv")
    info = json.loads((tmp_path / "fp" / "dataset.json").read_text())
    assert ds.class_names == list(FERPLUS_CLASSES) and "contempt" in ds.class_names
    assert info["excluded"] == {"no majority": 6} and len(meta) == 75 - 6
    row = meta.set_index("path").loc["FER2013Train/fer0001388.png"]  # votes 7,0,0,2,0,0,0,0,1,0
    assert (
        row["label"] == "neutral"
        and row["votes_sadness"] == 2
        and row["vote_entropy"] == pytest.approx(1.1568)
    )
    assert meta.groupby("split")["path"].apply(lambda p: set(p.str.split("/").str[0])).to_dict() == {
        "train": {"FER2013Train"},
        "val": {"FER2013Valid"},
        "test": {"FER2013Test"},
    }
    assert ds.splits["train"].soft_targets is None


def test_ferplus_probability_gives_soft_targets(tmp_path):
    data = data_config(
        tmp_path,
        source="ferplus",
        root=str(SHARED / "ferplus-sample"),
        name="fpp",
        ferplus={"label_mode": "probability"},
    )
    ds = load_dataset(data)
    soft = ds.splits["train"].soft_targets
    assert soft is not None and soft.shape == (len(ds.splits["train"]), 8)
    assert np.allclose(soft.sum(axis=1), 1.0, atol=1e-4)
    assert (soft.argmax(axis=1) == ds.splits["train"].labels).all()


def _ferplus_csv_pair(tmp_path, n=30):
    """fer2013.csv (sample rows) and fer2013new.csv (the real vote rows) of the same length and Usage."""
    fer = pd.read_csv(SHARED / "fer2013-csv-sample" / "fer2013.csv").head(n)
    new = pd.read_csv(SHARED / "ferplus-sample" / "fer2013new.csv").head(n)
    new.loc[n - 10 :, "Usage"] = "PublicTest"  # a given val split, so nothing is carved from 20 images
    fer["Usage"] = new["Usage"].to_numpy()
    fer.to_csv(tmp_path / "fer2013.csv", index=False)
    new.to_csv(tmp_path / "fer2013new.csv", index=False)
    return fer, new


def test_ferplus_csv_pair_joins_row_by_row(tmp_path):
    fer, new = _ferplus_csv_pair(tmp_path)
    data = data_config(
        tmp_path / "p",
        source="ferplus",
        root=str(tmp_path),
        name="fpcsv",
        ferplus={"label_mode": "plurality"},
    )
    ds = load_dataset(data)
    meta = pd.read_csv(tmp_path / "p" / "fpcsv" / "metadata.csv")
    info = json.loads((tmp_path / "p" / "fpcsv" / "dataset.json").read_text())
    assert info["excluded"].get("no image name (dropped by FER+)") == 2  # lines 19 and 25 of the real file
    row = meta.set_index("path").loc["fer2013.csv#2"]
    assert row["image"] == "fer0000000.png" and row["label"] == "neutral"  # votes 4,0,0,1,3,2,0,0,0,0
    assert row["votes_neutral"] == 4 and row["votes_anger"] == 3
    got = ds.splits["train"].images[list(ds.splits["train"].paths).index("fer2013.csv#2"), 0]
    assert (got == np.array(fer["pixels"].iloc[0].split(), dtype=np.uint8).reshape(48, 48)).all()
    new.head(10).to_csv(tmp_path / "fer2013new.csv", index=False)
    with pytest.raises(UserError, match="row by row"):
        prepare(data_config(tmp_path / "q", source="ferplus", root=str(tmp_path), name="x"))


def test_folder_source_and_the_audit_flag_a_class_stored_at_another_resolution(tmp_path):
    for cls, value, size in (("a", 10, 48), ("b", 200, 64), ("c", 100, 48)):
        (tmp_path / "raw" / cls).mkdir(parents=True)
        for i in range(10):
            img = np.full((size, size), value + i, np.uint8)
            Image.fromarray(img).save(tmp_path / "raw" / cls / f"{i}.png")
    data = data_config(tmp_path, source="folder", root=str(tmp_path / "raw"), name="f")
    ds = load_dataset(data)
    assert ds.class_names == ["a", "b", "c"] and sum(len(s) for s in ds.splits.values()) == 30
    assert ds.splits["train"].images.shape[1:] == (1, 48, 48)
    audit = json.loads((tmp_path / "f" / "audit.json").read_text())
    assert audit["per_class"]["b"]["sizes"] == {"64x64": 10}
    assert any("class b: most images are 64x64" in w for w in audit["warnings"])
    assert any("class b: mean brightness" in w for w in audit["warnings"])
