"""The emotion vocabulary, cross-dataset evaluation, model.init_from and k-fold cross-validation.

Trainings here are one step (one batch of a few real images, the imagenet stem): fast on a CPU.
"""

import json

import pytest
from conftest import ROOT, SHARED

from xai_lab.cli import main
from xai_lab.data.emotions import EMOTIONS, canonical, shared_classes, vocabulary_mapping
from xai_lab.data.fer import FER2013_CLASSES, FERPLUS_CLASSES
from xai_lab.errors import UserError
from xai_lab.experiment import load_experiment
from xai_lab.train import fit

CKPLUS = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
TINY = [
    "run.progress=false",
    "run.device=cpu",
    "train.epochs=1",
    "train.batch_size=64",
    "train.warmup_epochs=0",
    "model.stem=imagenet",
]


def test_every_dataset_maps_onto_the_vocabulary():
    for names in (CKPLUS, list(FER2013_CLASSES), list(FERPLUS_CLASSES)):
        mapping = vocabulary_mapping(names)
        assert all(mapping[c] in EMOTIONS for c in names)
    assert canonical("Angry") == canonical("anger") == "anger"
    assert canonical("sad") == "sadness" and canonical("happy") == "happiness" and canonical("tree") is None


def test_shared_classes_between_datasets():
    s = shared_classes(list(FERPLUS_CLASSES), CKPLUS)
    assert s.emotions == ["happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
    assert [FERPLUS_CLASSES[i] for i in s.model_idx] == [
        "happiness",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
    ]
    assert [CKPLUS[i] for i in s.data_idx] == [
        "happy",
        "surprise",
        "sadness",
        "anger",
        "disgust",
        "fear",
        "contempt",
    ]
    assert s.model_only == ["neutral"] and s.data_only == []
    s = shared_classes(list(FER2013_CLASSES), CKPLUS)
    assert len(s.emotions) == 6 and s.data_only == ["contempt"] and s.model_only == ["neutral"]


@pytest.fixture(scope="module")
def ferplus_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ferplus_run")
    cfg = load_experiment(
        ROOT / "configs/experiments/exp020_resnet18_ferplus.yaml",
        [
            *TINY,
            f"data.root={SHARED / 'ferplus-sample'}",
            f"data.processed_root={tmp / 'processed'}",
            f"run.output_root={tmp / 'artifacts'}",
            "data.ferplus.label_mode=probability",
        ],
    )
    summary = fit(cfg)
    return tmp, summary["run_dir"]


def _ckplus(tmp, *more):
    return load_experiment(
        ROOT / "configs/experiments/exp001_resnet18_saliency_ckplus.yaml",
        [
            *TINY,
            f"data.root={SHARED / 'ckplus48'}",
            f"data.processed_root={tmp / 'processed'}",
            f"run.output_root={tmp / 'artifacts'}",
            "data.limit_per_class=8",
            "data.name=ck8",
            "data.folds=0",
            *more,
        ],
    )


def test_evaluate_a_ferplus_model_on_ckplus_over_shared_classes(ferplus_run, capsys):
    tmp, run_dir = ferplus_run
    code = main(
        [
            "-q",
            "evaluate",
            "--run-dir",
            run_dir,
            "--data",
            str(ROOT / "configs/data/ckplus.yaml"),
            f"data.root={SHARED / 'ckplus48'}",
            f"data.processed_root={tmp / 'processed'}",
            "data.limit_per_class=8",
            "data.name=ck8",
            "data.folds=0",
        ]
    )
    out = capsys.readouterr().out
    assert (
        code == 0
        and "over the shared classes happiness, surprise, sadness, anger, disgust, fear, contempt" in out
    )
    report = next((tmp / "artifacts" / "reports").rglob("cross_ck8/test_summary.json"))
    summary = json.loads(report.read_text())
    assert summary["cross_dataset"] and summary["dataset"] == "ck8" and summary["trained_on"] == "ferplus"
    assert summary["class_names"] == summary["shared_classes"] and summary["model_only_classes"] == [
        "neutral"
    ]
    assert summary["n"] > 0 and summary["n_left_out"] == 0 and 0.0 <= summary["accuracy"] <= 1.0
    assert not (report.parent.parent / "test_summary.json").exists()  # the run's own results are not touched


def test_init_from_replaces_the_head_when_classes_differ(ferplus_run, tmp_path):
    _, run_dir = ferplus_run
    summary = fit(_ckplus(tmp_path, f"model.init_from={run_dir}"))
    assert summary["init_from"]["head"] == "replaced" and summary["init_from"]["source_classes"] == list(
        FERPLUS_CLASSES
    )
    again = fit(_ckplus(tmp_path, f"model.init_from={summary['run_dir']}/best.pt"))
    assert again["init_from"]["head"] == "kept"
    with pytest.raises(UserError, match="model.init_from"):
        fit(_ckplus(tmp_path, f"model.init_from={run_dir}", "model.depth=34"))
    with pytest.raises(UserError, match="checkpoint not found"):
        fit(_ckplus(tmp_path, f"model.init_from={tmp_path / 'nope.pt'}"))


def test_cv_runs_every_fold_and_reports_mean_and_std(tmp_path, capsys):
    code = main(
        [
            "-q",
            "cv",
            "--config",
            str(ROOT / "configs/experiments/exp001_resnet18_saliency_ckplus.yaml"),
            *TINY,
            f"data.root={SHARED / 'ckplus48'}",
            f"data.processed_root={tmp_path / 'processed'}",
            f"run.output_root={tmp_path / 'artifacts'}",
            "data.limit_per_class=9",
            "data.name=ck9",
            "data.folds=3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "3 of 3 folds: test accuracy" in out
    summary = json.loads(next((tmp_path / "artifacts" / "reports").rglob("cv_summary.json")).read_text())
    assert summary["folds"] == 3 and [r["fold"] for r in summary["per_fold"]] == [0, 1, 2]
    assert summary["test_images"] == 63  # every image tested once
    assert set(summary["test_accuracy"]) == {"mean", "std"} and summary["grouped_by_subject"]
    for r in summary["per_fold"]:
        fold_report = (
            tmp_path / "artifacts" / "reports" / summary["cv_dir"].split("/runs/")[1] / f"fold{r['fold']}"
        )
        assert json.loads((fold_report / "test_summary.json").read_text())["n"] == r["test"]
    assert (
        main(
            [
                "-q",
                "cv",
                "--config",
                str(ROOT / "configs/experiments/exp001_resnet18_saliency_ckplus.yaml"),
                "data.folds=0",
                f"data.root={SHARED / 'ckplus48'}",
            ]
        )
        == 2
    )


def test_cv_without_a_validation_fold_trains_on_it_and_keeps_the_last_epoch(tmp_path):
    """data.fold_val=false: fold k+1 joins the training set, val is empty and best.pt is the last epoch."""
    from xai_lab.crossval import cross_validate
    from xai_lab.data.dataset import load_dataset

    def experiment(*extra):
        return load_experiment(
            ROOT / "configs/experiments/exp001_resnet18_saliency_ckplus.yaml",
            [*TINY, "train.epochs=2", f"data.root={SHARED / 'ckplus48'}", f"data.processed_root={tmp_path / 'p'}",
             f"run.output_root={tmp_path / 'a'}", "data.limit_per_class=9", "data.name=ck9", "data.folds=3",
             "data.fold=0", *extra],
        )

    with_val, merged = load_dataset(experiment().data), load_dataset(experiment("data.fold_val=false").data)
    assert len(merged.splits["val"]) == 0 and merged.splits["test"].paths == with_val.splits["test"].paths
    assert sorted(merged.splits["train"].paths) == sorted(with_val.splits["train"].paths + with_val.splits["val"].paths)
    summary = cross_validate(experiment("data.fold_val=false"), folds=[1])
    row = summary["per_fold"][0]
    assert row["val"] == 0 and row["train"] + row["test"] == 63 and row["best_epoch"] == 2
    fold_dir = next((tmp_path / "a" / "runs").rglob("fold1"))
    log = [json.loads(line) for line in (fold_dir / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(row["val_macro_f1"] != row["val_macro_f1"] for row in log)  # NaN: nothing scored
