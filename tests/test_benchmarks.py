"""Each benchmark runs with --smoke and prints one JSON line with its keys (that they run, not how fast).

The three run in this process (one torch import) and the two sweep benchmarks share one local
Ray (2 CPUs, 127.0.0.1), as the scripts do when Ray is already up.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: stay on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_smoke(name: str, capsys, *extra: str) -> dict:
    returned = load(name).main(["--smoke", *extra])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(returned))
    assert printed["benchmark"] == name and printed["settings"]["smoke"] is True
    return printed


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def test_throughput_smoke(capsys):
    out = run_smoke("throughput", capsys)
    (row,) = out["results"]
    assert (row["depth"], row["input_size"]) == (18, 48)
    for key in ("project_img_per_s", "bare_step_img_per_s", "dataloader_img_per_s", "ratio_vs_bare",
                "ratio_vs_dataloader", "fer2013_epoch_s"):
        assert row[key] > 0, key
    assert set(row["peak_gpu_mem_mb"]) == {"project", "bare", "dataloader"}
    assert set(row["switches"]) == {"cudnn_benchmark", "channels_last", "bf16"}  # compile: not in smoke
    assert all(s["project_img_per_s"] > 0 and "vs_default" in s for s in row["switches"].values())


def test_packing_smoke(ray_local, capsys):
    out = run_smoke("packing", capsys)
    assert out["mode"] in ("gpu-fractions", "cpu-fractions") and out["note"]
    assert [r["trials_at_once"] for r in out["levels"]] == [1, 2]
    for row in out["levels"]:
        assert row["trials_ok"] == row["trials_at_once"]
        assert row["aggregate_img_per_s"] > 0 and row["sweep_wall_s"] > 0 and row["speedup_vs_one"] > 0
    assert out["auto_gpu_fraction"] == 0.25  # ResNet18 at 48 px packs four to a GPU


def test_sweep_overhead_smoke(ray_local, capsys):
    out = run_smoke("sweep_overhead", capsys)
    assert out["trials"] == out["trials_ok"] == 2
    assert 0 < out["trial_compute_s"] < out["tune_wall_s"] <= out["total_wall_s"]
    for key in ("overhead_fraction", "ray_start_s", "dataset_s", "in_trial_overhead_s", "outside_trial_s",
                "checkpoint_mb_per_trial", "resources_per_trial"):
        assert key in out, key
    assert out["ray_start_s"] < 1  # Ray was already up: the script used it


def test_bad_levels_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        load("packing").main(["--levels", "0,2"])
    assert e.value.code == 2 and "--levels" in capsys.readouterr().err


def test_fer_recipe_smoke(capsys):
    """The FER recipe on the FER2013 and FER+ samples: one JSON line per dataset, then the summary line."""
    returned = load("fer_recipe").main(["--smoke"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines[-1] == json.loads(json.dumps(returned))
    assert returned["benchmark"] == "fer_recipe" and returned["settings"]["smoke"] is True
    rows = [line for line in lines if "dataset" in line]
    assert [r["dataset"] for r in rows] == ["fer2013", "ferplus"] and rows == returned["results"]
    for row in rows:
        assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["test_macro_f1"] <= 1, row
        assert row["train_seconds"] > 0 and row["epochs"] == 1 and row["n_test"] > 0
        assert row["config"]["tta_flip"] and row["config"]["ema_decay"] > 0 and row["config"]["stem"] == "small"
    assert "train.scheduler=onecycle" in returned["settings"]["recipe"]


def test_fer_recipe_missing_dataset_is_one_line_and_exit_2(capsys, tmp_path):
    missing = tmp_path / "nonexistent"
    with pytest.raises(SystemExit) as e:
        load("fer_recipe").main(["--fer2013-root", str(missing), "--datasets", "fer2013"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(missing) in err and "kaggle" in err.lower()


def test_baselines_smoke_scores_the_majority_class_of_the_training_split(capsys, tmp_path):
    import numpy as np

    from xai_lab.data.dataset import load_dataset
    from xai_lab.experiment import load_experiment, smoke_overrides

    shared = BENCH.parents[1] / "shared" / "datasets" / "fer2013-sample"
    config = str(BENCH.parent / "configs" / "experiments" / "exp011_resnet20_fer2013_cpu.yaml")
    extra = [f"data.root={shared}", f"data.processed_root={tmp_path}"]
    out = run_smoke("baselines", capsys, "--config", config, *extra)
    data = load_dataset(load_experiment(config, [*smoke_overrides(config), *extra]).data)
    majority = np.bincount(data.splits["train"].labels).argmax()
    assert out["majority_class"] == data.class_names[majority] and out["n_test"] == len(data.splits["test"])
    expected = float(np.mean(data.splits["test"].labels == majority))
    assert out["majority_test_accuracy"] == round(expected, 4)
    assert 0 <= out["logreg_test_accuracy"] <= 1 and out["logreg_fit_seconds"] >= 0
