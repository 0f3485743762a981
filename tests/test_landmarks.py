"""Facial landmarks (dlib) at prepare time, face regions from them, and where on the face a map's mass falls."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SHARED

from xai_lab.data.dataset import load_dataset
from xai_lab.data.landmarks import LANDMARKS_FILE, SOURCE_FILE, find_landmarks
from xai_lab.experiment import load_experiment
from xai_lab.explain.regions import (
    MASK_REGIONS,
    REGIONS,
    landmark_region_masks,
    landmark_regions,
    mask_regions,
    region_shares,
)
from xai_lab.explain.scoring import region_summary


def drawn_face(size: int = 48) -> np.ndarray:
    """68 points of an upright face drawn by hand in a ``size`` px image (iBUG 300-W numbering): jaw from
    (8, 20) round the chin (24, 44) to (40, 20), brows at y=15, eyes centred at (17, 19) and (31, 19),
    nose down to y=29, mouth centred at (24, 36)."""
    s = size / 48
    t = np.linspace(np.pi, 0, 17)
    jaw = np.stack([24 + 16 * np.cos(t), 20 + 24 * np.sin(t)], 1)
    brows = [np.stack([np.linspace(12, 21, 5), np.full(5, 15.0)], 1), np.stack([np.linspace(27, 36, 5),
                                                                               np.full(5, 15.0)], 1)]
    nose = np.concatenate([np.stack([np.full(4, 24.0), np.linspace(19, 26, 4)], 1),
                           np.stack([np.linspace(21, 27, 5), np.full(5, 29.0)], 1)])
    a = np.linspace(0, 2 * np.pi, 7)[:-1]
    eyes = [np.stack([cx + 3 * np.cos(a), 19 + 1.2 * np.sin(a)], 1) for cx in (17, 31)]
    b = np.linspace(np.pi, -np.pi, 13)[:-1]
    outer = np.stack([24 + 6 * np.cos(b), 36 - 2.5 * np.sin(b)], 1)
    c = np.linspace(np.pi, -np.pi, 9)[:-1]
    inner = np.stack([24 + 4 * np.cos(c), 36 - 1 * np.sin(c)], 1)
    points = np.concatenate([jaw, *brows, nose, *eyes, outer, inner]).astype(np.float32)
    assert points.shape == (68, 2)
    return points * s


def test_regions_of_a_drawn_face_sit_where_its_parts_are():
    labels = landmark_regions(drawn_face(), 48)
    at = {name: REGIONS.index(name) for name in REGIONS}
    assert labels[36, 24] == at["mouth"]  # (row y, column x)
    assert labels[19, 17] == labels[19, 31] == at["eyes"]
    assert labels[15, 14] == labels[15, 34] == at["brows"]
    assert labels[27, 24] == at["nose"]
    assert labels[32, 12] == at["rest_of_face"]  # a cheek
    assert labels[9, 24] == at["rest_of_face"]  # the forehead, above the brows
    assert labels[0, 0] == labels[47, 0] == labels[2, 47] == at["outside"]
    masks = landmark_region_masks(drawn_face()[None], 48)
    assert masks.shape == (1, len(REGIONS), 48, 48) and (masks.sum(1) == 1).all()  # one region per pixel
    # a larger image, the same face: the same regions, scaled
    big = landmark_regions(drawn_face(96), 96)
    assert big[72, 48] == at["mouth"] and big[38, 34] == at["eyes"]


def test_region_shares_have_known_answers():
    regions = landmark_region_masks(drawn_face()[None].repeat(3, 0), 48)
    on_mouth = np.zeros((48, 48))
    on_mouth[35:38, 22:27] = 1.0
    uniform = np.ones((48, 48))
    shares = region_shares(np.stack([on_mouth, uniform, np.zeros((48, 48))]), regions)
    assert shares[0, REGIONS.index("mouth")] == pytest.approx(1.0)
    area = regions[0].reshape(len(REGIONS), -1).mean(1)
    assert shares[1] == pytest.approx(area) and shares[2] == pytest.approx(area)  # no mass: the area's answer
    assert shares.sum(1) == pytest.approx(np.ones(3))
    # synthfaces' masks run through the same code under their own names
    masks = np.zeros((2, 1, 8, 8), bool)
    masks[:, :, 2:4, 2:4] = True
    shares = region_shares(np.abs(np.random.default_rng(0).normal(size=(2, 8, 8))), mask_regions(masks))
    assert shares.shape == (2, len(MASK_REGIONS)) and shares.sum(1) == pytest.approx([1, 1])


def test_region_summary_tells_more_less_and_cannot_tell_from_the_paired_interval():
    rng = np.random.default_rng(0)
    n = 40
    method = np.stack([rng.uniform(0.4, 0.6, n), rng.uniform(0.0, 0.1, n), np.zeros(n)], 1)
    method[:, 2] = 1 - method[:, :2].sum(1)
    randomized = np.stack([rng.uniform(0.1, 0.2, n), method[:, 1] + rng.normal(0, 0.01, n), np.zeros(n)], 1)
    randomized[:, 2] = 1 - randomized[:, :2].sum(1)
    areas = np.tile([0.1, 0.1, 0.8], (n, 1))
    out = region_summary(["mouth", "eyes", "rest"], method, areas, randomized, areas, seed=0)
    assert out["outcome"] == {"mouth": "more", "eyes": "cannot tell", "rest": "less"}
    assert out["relative"]["mouth"] == pytest.approx(method[:, 0].mean() / 0.1)
    d, lo, hi = out["intervals"]["mouth"]["randomized_model"]
    assert lo < d < hi and lo > 0.25


def test_dlib_finds_and_fits_faces_of_the_shared_samples():
    ck = load_dataset(load_experiment(ROOT / "configs" / "experiments" / "exp004_resnet20_ckplus.yaml",
                                      [f"data.root={SHARED / 'ckplus48'}", "data.landmarks=false"]).data)
    faces = ck.splits["test"].images[:24]
    blank = np.full((1, 1, 48, 48), 128, np.uint8)
    points, source = find_landmarks(np.concatenate([faces, blank]), workers=1)
    assert points.shape == (25, 68, 2) and source.dtype == np.uint8
    assert source[:24].mean() >= 0.9 and source[24] == 0  # a blank image: no face found, a template fitted
    for p in points:
        brows, eyes, nose, mouth = p[17:27].mean(0), p[36:48].mean(0), p[27:36].mean(0), p[48:68].mean(0)
        assert brows[1] < eyes[1] < nose[1] < mouth[1]  # top to bottom
        assert p[36:42, 0].mean() < p[42:48, 0].mean()  # the eye on the image's left first
        assert (p > -6).all() and (p < 54).all()
    # a real 48 px mouth is a region of several pixels, not a slit
    labels = landmark_regions(points[0], 48)
    assert (labels == REGIONS.index("mouth")).sum() >= 8


def test_prepare_caches_landmarks_once_and_the_audit_reports_them(tmp_path):
    cfg = load_experiment(ROOT / "configs" / "experiments" / "exp011_resnet20_fer2013_cpu.yaml",
                          [f"data.root={SHARED / 'fer2013-sample'}", f"data.processed_root={tmp_path}",
                           "data.name=fer"])
    data = load_dataset(cfg.data)
    out = tmp_path / "fer"
    info = json.loads((out / "dataset.json").read_text())
    cache = out / "cache" / info["cache_key"]
    n = info["n_images"]
    assert info["landmarks"]["n"] == n and 0 < info["landmarks"]["detected"] < n
    test = data.splits["test"]
    assert test.landmarks.shape == (len(test), 68, 2) and set(np.unique(test.landmark_source)) <= {0, 1}
    audit = json.loads((out / "audit.json").read_text())["landmarks"]
    assert audit["detected"] == info["landmarks"]["detected"] and set(audit["by_split"]) == {"train", "val", "test"}
    assert set(audit["by_class"]) == set(info["class_names"]) and (out / "landmarks.png").stat().st_size > 10_000
    assert "## Facial landmarks" in (out / "audit.md").read_text()
    # found once: loading again reads the cache
    stamp = (cache / LANDMARKS_FILE).stat().st_mtime_ns
    again = load_dataset(cfg.data)
    assert (cache / LANDMARKS_FILE).stat().st_mtime_ns == stamp
    assert np.array_equal(again.splits["test"].landmarks, test.landmarks)
    # off: no landmarks, nothing computed
    off = load_experiment(ROOT / "configs" / "experiments" / "exp011_resnet20_fer2013_cpu.yaml",
                          [f"data.root={SHARED / 'fer2013-sample'}", f"data.processed_root={tmp_path}",
                           "data.name=fer_off", "data.landmarks=false"])
    plain = load_dataset(off.data)
    assert plain.splits["test"].landmarks is None
    info_off = json.loads((tmp_path / "fer_off" / "dataset.json").read_text())
    assert info_off["landmarks"] is None
    assert not (tmp_path / "fer_off" / "cache" / info_off["cache_key"] / SOURCE_FILE).exists()


def test_explain_scores_regions_on_real_faces_and_on_synthfaces(tmp_path):
    from xai_lab.explain.run import explain_model
    from xai_lab.models import build_model

    torch.manual_seed(0)
    common = [f"data.processed_root={tmp_path / 'processed'}", "run.device=cpu", "run.progress=false",
              "explain.metrics.num_images=16", "explain.class_means=3", "explain.num_each=2",
              "explain.metrics.randomization_images=2"]
    ck = load_experiment(ROOT / "configs" / "experiments" / "exp004_resnet20_ckplus.yaml",
                         [*common, f"data.root={SHARED / 'ckplus48'}", "data.limit_per_class=8", "data.name=ck8",
                          "data.folds=0"])
    synth = load_experiment(ROOT / "configs" / "experiments" / "exp000_resnet18_saliency_synthfaces.yaml",
                            [*common, "model.name=resnet8", "model.input_size=48"])
    for cfg, names in ((ck, list(REGIONS)), (synth, list(MASK_REGIONS))):
        data = load_dataset(cfg.data)
        model = build_model(cfg.model, len(data.class_names), cfg.data.channels).eval()
        report = tmp_path / cfg.data.name
        result = explain_model(model, cfg, data.class_names, report, dataset=data, methods=["gradcam"])
        regions = result.metrics["gradcam"]["regions"]
        assert regions["names"] == names
        scored = regions["scored"]
        assert scored["n"] == min(16, len(data.splits["test"])) and sum(scored["share"].values()) == pytest.approx(1.0)
        assert sum(scored["area"].values()) == pytest.approx(1.0)
        assert set(scored["outcome"].values()) <= {"more", "less", "cannot tell"}
        assert set(regions["by_class"]) <= set(data.class_names) and regions["by_class"]
        assert (report / "xai" / "gradcam" / "regions.png").stat().st_size > 5000
        per_face = pd.read_csv(report / "xai" / "gradcam" / "region_shares.csv")
        assert len(per_face) == scored["n"] and per_face[[f"share_{r}" for r in names]].sum(axis=1).round(6).eq(1).all()
        assert per_face[f"share_{names[0]}"].mean() == pytest.approx(scored["share"][names[0]])
        assert set(per_face["landmarks"]) <= ({"detected", "fitted"} if names == list(REGIONS) else {"none"})
        assert "## gradcam: where on the face" in (report / "xai" / "metrics.md").read_text()
        summary = json.loads(json.dumps(result.summary))
        assert set(summary["methods"]["gradcam"]["region_shares"]) == set(names)
    assert regions["source"] == "masks" and regions["detected_fraction"] is None
