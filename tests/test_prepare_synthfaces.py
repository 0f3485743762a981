"""prepare on the embedded dataset: generated once, read as a folder, masks and label flips carried through."""

import json

import numpy as np
import pandas as pd

from xai_lab.data.dataset import load_dataset
from xai_lab.data.prepare import prepare
from xai_lab.experiment import load_experiment

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"


def test_prepare_writes_folder_dataset_manifest_splits_and_masks(in_tmp):
    cfg = load_experiment(EXP, ["data.synthfaces.n_per_class=10", "data.synthfaces.label_noise=0.3"])
    out = prepare(cfg.data)
    raw = in_tmp / cfg.data.root
    assert raw.name == "synthfaces_n10_noise0.3_seed0"
    assert len(list(raw.glob("*/*.mask.png"))) == 70 and len(list(raw.glob("*/*.png"))) == 140
    meta = pd.read_csv(out / "metadata.csv")
    assert list(meta.columns[:7]) == ["path", "label", "label_idx", "subject", "width", "height", "sha1"]
    assert {"clean_label", "label_flipped"} <= set(meta.columns)
    flipped = meta[meta.label_flipped == 1]
    assert len(flipped) > 0 and (flipped.label != flipped.clean_label).all()
    assert (meta.path.str.split("/").str[0] == meta.label).all()  # filed under the (noisy) label
    info = json.loads((out / "dataset.json").read_text())
    assert info["has_masks"] and info["n_images"] == 70 and sum(info["split_sizes"].values()) == 70

    data = load_dataset(cfg.data)
    splits = data.splits
    paths = [set(s.paths) for s in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    test = splits["test"]
    assert test.images.dtype == np.uint8 and test.images.shape[1:] == (1, 48, 48)
    assert test.masks.dtype == bool and test.masks.shape == test.images.shape and test.masks.any()


def test_prepare_is_deterministic_and_reuses_the_cache(in_tmp):
    cfg = load_experiment(EXP, ["data.synthfaces.n_per_class=8"])
    out = prepare(cfg.data)
    first = {p: p.read_bytes() for p in [out / "metadata.csv", *sorted((out / "splits").iterdir())]}
    caches = list((out / "cache").iterdir())
    prepare(cfg.data)
    assert {p: p.read_bytes() for p in first} == first
    assert list((out / "cache").iterdir()) == caches


def test_changed_split_settings_are_rebuilt_on_load(in_tmp):
    cfg = load_experiment(EXP, ["data.synthfaces.n_per_class=10"])
    a = load_dataset(cfg.data)
    cfg2 = load_experiment(EXP, ["data.synthfaces.n_per_class=10", "data.split_seed=1"])
    b = load_dataset(cfg2.data)
    assert a.splits["test"].paths != b.splits["test"].paths
    assert load_dataset(cfg.data).splits["test"].paths == a.splits["test"].paths
