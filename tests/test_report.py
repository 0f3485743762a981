"""One way to report on a model: report_model (evaluate, plots, explain on a model loaded once), the
requests every map is computed from, the one map normaliser, and class means that name their layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder_dataset, write_tiny_experiment

from xai_lab.experiment import load_experiment
from xai_lab.explain.class_means import ClassMeans
from xai_lab.explain.explainers import explain_batched, normalise_maps
from xai_lab.explain.selection import plan_requests
from xai_lab.models import cam_grid_size

LAYER3 = "backbone.layer3"
FAST = ["explain.num_each=2", "explain.per_class=1", "explain.compare_rows=2", "explain.metrics.num_images=4",
        "explain.metrics.steps=2", "explain.metrics.randomization_images=2"]


# --- requests and the normaliser (no model) ----------------------------------------------------


def test_plan_requests_explains_each_pair_once_and_gives_each_output_its_order():
    outputs = {
        "high_conf": (np.array([5, 2, 9]), np.array([1, 0, 1])),
        "scored": (np.array([2, 3]), np.array([0, 2])),  # (2, 0) again
        "class_means": (np.array([2, 5, 7]), np.array([1, 1, 0])),  # image 2 for another class: a new pair
        "empty": (np.zeros(0, np.int64), np.zeros(0, np.int64)),
    }
    req = plan_requests(outputs)
    pairs = list(zip(req.index.tolist(), req.target.tolist(), strict=True))
    assert pairs == sorted({(2, 0), (2, 1), (3, 2), (5, 1), (7, 0), (9, 1)})  # distinct, sorted
    for name, (idx, tgt) in outputs.items():
        assert req.index[req.rows[name]].tolist() == idx.tolist(), name
        assert req.targets(name).tolist() == tgt.tolist(), name
    # each output gets the maps of its pairs, in its order
    maps = torch.arange(len(req.index), dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 2)
    split = req.split(maps)
    assert split["scored"][:, 0, 0].tolist() == [pairs.index((2, 0)), pairs.index((3, 2))]
    assert split["empty"].shape == (0, 2, 2)
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2) * 20
    x, t = req.inputs(images)
    assert x.dtype == torch.float32 and x.shape == (len(req.index), 1, 2, 2)
    assert torch.allclose(x[:, 0, 0, 0], torch.as_tensor(req.index * 20 / 255, dtype=torch.float32))
    assert t.tolist() == req.target.tolist()
    assert plan_requests({}).index.shape == (0,)


def test_normalise_maps_scales_each_map_by_its_own_range():
    maps = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.full((2, 2), 7.0),
                        torch.tensor([[0.0, 1e-14], [0.0, 0.0]])])
    out = normalise_maps(maps)
    assert isinstance(out, torch.Tensor) and out.dtype == maps.dtype
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map becomes zeros
    assert torch.equal(out[2], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # however small its range
    flat = normalise_maps(maps.numpy().astype(np.float64))  # numpy in, float32 numpy out, one map or many
    assert isinstance(flat, np.ndarray) and flat.dtype == np.float32
    np.testing.assert_allclose(flat, out.numpy())
    np.testing.assert_allclose(normalise_maps(maps[0].numpy()), out[0].numpy())


def test_class_means_without_a_record_still_load(tmp_path):
    path = tmp_path / "class_means.npz"
    np.savez_compressed(path, happy=np.ones((4, 4), np.float32))  # written before the record existed
    cm = ClassMeans.load(path)
    assert list(cm.maps) == ["happy"] and cm.target_layer == "" and cm.counts == {}


# --- on a trained run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(module_workdir):
    """A one-epoch run on a tiny folder dataset; its explain section names layer3 for the Grad-CAM family."""
    from xai_lab.train import fit

    make_folder_dataset(module_workdir / "data" / "raw" / "tiny", ["happy", "sad", "angry"], 24, seed=3)
    exp = write_tiny_experiment(module_workdir, "tiny", "data/raw/tiny", methods=("saliency", "gradcam"))
    overrides = ["train.epochs=1", f"explain.layer={LAYER3}", "explain.class_means=2", *FAST]
    cfg = load_experiment(exp, overrides)
    summary = fit(cfg)
    return cfg, Path(summary["run_dir"])


def _layer_grid(model, name: str) -> list[int]:
    shapes = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: shapes.append(out.shape[-2:]))
    with torch.no_grad():
        model(torch.zeros(1, 1, 48, 48, device=next(model.parameters()).device))
    handle.remove()
    return list(shapes[0])


def _expected_means(run, data, method: str, layer: str, per_class: int) -> dict[str, np.ndarray]:
    """Each class's mean map computed here, independently: its first images explained for it on ``layer``."""
    out = {}
    for k, name in enumerate(run.class_names):
        idx = np.flatnonzero(data.labels == k)[:per_class]
        x = torch.from_numpy(data.images[idx]).float() / 255
        maps = explain_batched(method, run.model, x, torch.full((len(idx),), k), layer=run.model.get_submodule(layer))
        out[name] = normalise_maps(maps).mean(0).numpy()
    return out


def _count_loads(monkeypatch) -> list[str]:
    import xai_lab.checkpoint

    calls: list[str] = []
    real = xai_lab.checkpoint.model_from_checkpoint

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(xai_lab.checkpoint, "model_from_checkpoint", counting)
    return calls


@pytest.mark.parametrize("layer", ["", LAYER3])
def test_report_class_means_npz_matches_the_layer_it_names(tiny_run, tmp_path, layer):
    """The npz records the layer (explain.layer, or the model's default target layer) and its grid; its maps
    are that layer's, and metrics.json names the same layer and grid."""
    import dataclasses

    from xai_lab.data.dataset import load_dataset
    from xai_lab.evaluate import load_run
    from xai_lab.report import report_model

    cfg, run_dir = tiny_run
    run = load_run(run_dir, "cpu")
    dataset = load_dataset(run.cfg.data)
    explain = dataclasses.replace(run.cfg.explain, layer=layer)
    report = report_model(run, tmp_path, dataset=dataset, explain=explain)
    assert (tmp_path / "test_summary.json").is_file() and (tmp_path / "train_loss.png").is_file()
    assert report.plots and set(report.explanations) == {"saliency", "gradcam"}
    named = layer or "backbone.layer4.1"  # the model's default target layer: the last residual block
    grid = _layer_grid(run.model, named)
    assert grid == ([cam_grid_size(cfg.model)] * 2 if not layer else [3, 3])
    metrics = json.loads((tmp_path / "xai" / "metrics.json").read_text())
    data = dataset.splits["test"]
    for method in ("saliency", "gradcam"):
        cm = ClassMeans.load(tmp_path / "xai" / method / "class_means.npz")
        assert (cm.method, cm.split, cm.target_layer, cm.cam_grid) == (method, "test", named, grid)
        assert cm.uses_layer == (method == "gradcam")
        assert metrics[method]["target_layer"] == cm.target_layer and metrics[method]["cam_grid"] == cm.cam_grid
        assert cm.counts == {n: min(2, int((data.labels == k).sum())) for k, n in enumerate(run.class_names)}
        assert (tmp_path / "xai" / method / "class_means.png").is_file()
        expected = _expected_means(run, data, method, named, 2)
        assert set(cm.maps) == set(expected)
        for name, mean in expected.items():
            np.testing.assert_allclose(cm.maps[name], mean, atol=1e-5, err_msg=f"{method} {name}")
    other = _expected_means(run, data, "gradcam", "backbone.layer4.1" if layer else LAYER3, 2)
    gradcam = ClassMeans.load(tmp_path / "xai" / "gradcam" / "class_means.npz").maps
    assert any(not np.allclose(gradcam[n], other[n], atol=1e-3) for n in other)  # the layer shows in the maps


def test_report_trial_loads_once_and_its_class_means_follow_explain_layer(tiny_run, monkeypatch):
    """The sweep's fan-out: one load, and class_means.npz (written once, by the explain step) has
    fanout.maps_per_class images per class on the run's explain.layer, with the method's parameters."""
    from sweeps.fanout import ReportJob, report_trial
    from xai_lab.data.dataset import load_dataset
    from xai_lab.evaluate import load_run

    cfg, run_dir = tiny_run
    dataset = load_dataset(cfg.data)
    calls = _count_loads(monkeypatch)
    job = ReportJob(dataset="tiny", trial_id="t0", checkpoint=str(run_dir.resolve()), methods=["saliency", "gradcam"],
                    split="test", num_each=2, maps_per_class=3, eval_max_images=0)
    files = report_trial(job, dataset)
    assert len(calls) == 1
    for name in ["test_summary.json", "test_confusion_matrix.png", "train_loss.png", "xai/metrics.json",
                 "xai/gradcam/class_means.png", "xai/gradcam/high_conf/sample01.png"]:
        assert name in files, name
    metrics = json.loads(files["xai/metrics.json"])
    run = load_run(run_dir, "cpu")
    data = dataset.splits["test"]
    for method in ("saliency", "gradcam"):
        path = Path(run_dir).parent / f"{method}_class_means.npz"
        path.write_bytes(files[f"xai/{method}/class_means.npz"])
        cm = ClassMeans.load(path)
        assert cm.target_layer == LAYER3 and cm.cam_grid == [3, 3] == metrics[method]["cam_grid"]
        assert cm.counts == {n: min(3, int((data.labels == k).sum())) for k, n in enumerate(run.class_names)}
        for name, mean in _expected_means(run, data, method, LAYER3, 3).items():
            np.testing.assert_allclose(cm.maps[name], mean, atol=1e-5, err_msg=f"{method} {name}")


def test_study_row_reports_through_one_load(tiny_run, tmp_path, monkeypatch):
    """study_row evaluates and explains a finished run with a single load of its best.pt."""
    from xai_lab.explain.study import study_row

    cfg, run_dir = tiny_run
    calls = _count_loads(monkeypatch)
    row = study_row(cfg, cfg.explain, {"knob": 1}, report_root=tmp_path, run_dir=run_dir)
    assert len(calls) == 1
    assert row["knob"] == 1 and 0 <= row["accuracy"] <= 1 and row["cam_grid"] == "3x3"
    assert "gradcam.deletion_auc" in row and "random.insertion_auc" in row
    report = tmp_path / cfg.run.name
    summary = json.loads((report / "test_summary.json").read_text())
    assert summary["accuracy"] == row["accuracy"] and set(summary["explanations"]["methods"]) == {"saliency",
                                                                                                  "gradcam"}
    assert not (report / "train_loss.png").exists()  # studies do not plot
