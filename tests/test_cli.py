"""The five single-run verbs end to end with --smoke, the output layout, and bad input -> exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from xai_lab.cli import main

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
FAST = ["model.stem=imagenet", "run.device=cpu", "run.progress=false"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def smoke_run(module_workdir):
    """prepare, train, evaluate, plots, explain with --smoke in a fresh folder."""
    run = "artifacts/runs/exp000_resnet18_saliency_synthfaces/latest"
    codes = [
        main(["prepare", "--config", EXP, "--smoke", *FAST]),
        main(["train", "--config", EXP, "--smoke", *FAST]),
        main(["evaluate", "--run-dir", run, "--smoke"]),
        main(["plots", "--run-dir", run, "--smoke"]),
        main(["explain", "--run-dir", run, "--smoke", "--methods", "saliency,gradcam"]),
    ]
    return module_workdir, codes, (module_workdir / run).resolve()


def test_five_verbs_follow_the_design_layout(smoke_run):
    work, codes, run = smoke_run
    assert codes == [0, 0, 0, 0, 0]
    processed = work / "data/processed/synthfaces_n12_noise0_seed0"
    assert (processed / "metadata.csv").read_text().splitlines()[0].startswith(
        "path,label,label_idx,subject,width,height,sha1")
    assert all((processed / "splits" / f"{s}.csv").is_file() for s in ("train", "val", "test"))
    assert {"config.yaml", "best.pt", "last.pt", "train_log.jsonl", "tb"} <= {p.name for p in run.iterdir()}
    report = work / "artifacts/reports/exp000_resnet18_saliency_synthfaces" / run.name
    for name in ["test_summary.json", "test_confusion_matrix.csv", "test_confusion_matrix.png", "train_loss.png",
                 "val_accuracy.png", "val_loss.png", "val_macrof1.png", "config.yaml"]:
        assert (report / name).is_file(), name
    for method in ("saliency", "gradcam"):
        for group in ("high_conf", "low_conf"):
            assert sorted(p.name for p in (report / "xai" / method / group).iterdir()) == [
                "sample00.png", "sample01.png"]


def test_run_ids_are_unique(smoke_run, capsys):
    work, _, run = smoke_run
    code, out, _ = _run(capsys, "train", "--config", EXP, "--smoke", *FAST, "train.batch_size=8")
    assert code == 0
    runs = [p for p in (work / "artifacts/runs/exp000_resnet18_saliency_synthfaces").iterdir() if p.name != "latest"]
    assert len(runs) == 2 and run in [r.resolve() for r in runs]
    assert (work / "artifacts/runs/exp000_resnet18_saliency_synthfaces/latest").resolve() != run


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["train", "--config", EXP, "train.epoch=3"], "unknown config key 'train.epoch'"),
        (["train", "--config", EXP, "model.depth=101"], "'model.depth' must be one of 8, 14, 18, 20, 32"),
        (["evaluate", "--run-dir", "artifacts/runs/none"], "run folder not found"),
        (["explain", "--run-dir", "RUN", "--methods", "magic"], "unknown explanation method 'magic'"),
        (["evaluate", "--run-dir", "RUN", "model.depth=50"], "cannot change a trained run"),
        (["train"], "the following arguments are required: --config"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(smoke_run, capsys, argv, message):
    _, _, run = smoke_run
    argv = [str(run) if a == "RUN" else a for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_checkpoint_is_exit_2_and_keeps_earlier_results(smoke_run, capsys, tmp_path):
    _, _, run = smoke_run
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "config.yaml").write_text((run / "config.yaml").read_text())
    (broken / "best.pt").write_bytes(b"\x00garbage")
    report = tmp_path / "report"
    report.mkdir()
    (report / "test_summary.json").write_text("{\"kept\": true}")
    code, _, err = _run(capsys, "evaluate", "--run-dir", str(broken), "--out", str(report))
    assert code == 2 and "cannot read checkpoint" in err and len(err.strip().splitlines()) == 1
    assert (report / "test_summary.json").read_text() == "{\"kept\": true}"


def test_plots_before_evaluate_says_what_to_run(smoke_run, capsys, tmp_path):
    _, _, run = smoke_run
    code, _, err = _run(capsys, "plots", "--run-dir", str(run), "--out", str(tmp_path / "empty"))
    assert code == 2 and "run `xai-lab evaluate --run-dir" in err
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())


def test_real_entry_point_prints_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xai_lab", "train", "--config", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"xai-lab train: error: config file not found: {tmp_path / 'x.yaml'}"


def test_explain_writes_metrics_grids_class_means_and_the_summary(smoke_run):
    import json

    work, _, run = smoke_run
    xai = work / "artifacts/reports/exp000_resnet18_saliency_synthfaces" / run.name / "xai"
    metrics = json.loads((xai / "metrics.json").read_text())
    assert set(metrics) == {"saliency", "gradcam"}
    for method, entry in metrics.items():
        keys = ("deletion_auc", "insertion_auc", "randomization_spearman", "pointing_game", "mask_iou")
        assert all(k in entry and k in entry["random_baseline"] for k in keys), method
        # the same method on the fully randomized model, for every faithfulness and localisation metric
        assert set(entry["randomized_model_baseline"]) == {"deletion_auc", "insertion_auc", "pointing_game",
                                                           "mask_iou"}, method
        assert isinstance(entry["beats_randomized_model"], bool) and entry["randomized_model_verdict"]
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["pointing_game"] <= 1
        assert entry["target_layer"] == "backbone.layer4.1" and entry["cam_grid"] == [2, 2]
        assert list(entry["randomization_curve"])[-1] == "backbone.conv1"
        assert (xai / method / "class_means.png").is_file() and (xai / method / "class_means.npz").is_file()
    assert (xai / "comparison_high_conf.png").is_file() and (xai / "metric_curves.png").is_file()
    assert "randomization test" in (xai / "metrics.md").read_text()
    summary = json.loads((xai.parent / "test_summary.json").read_text())
    assert "accuracy" in summary and set(summary["explanations"]["methods"]) == {"saliency", "gradcam"}
    assert summary["explanations"]["cam_grid"] == summary["cam_grid"] == [2, 2]


@pytest.mark.parametrize("argv, message", [
    (["explain.layer=backbone.layer9"], "no module 'backbone.layer9'"),
    (["--explain-config", "nope.yaml"], "config file not found: nope.yaml"),
    (["explain.metrics.steps=1"], "'explain.metrics.steps' must be in [2, inf]"),
    (["explain.selection=[best]"], "'explain.selection[0]' must be one of"),
])
def test_bad_explain_input_is_exit_2_and_keeps_the_metrics(smoke_run, capsys, argv, message):
    work, _, run = smoke_run
    xai = work / "artifacts/reports/exp000_resnet18_saliency_synthfaces" / run.name / "xai"
    before = (xai / "metrics.json").read_text()
    code, _, err = _run(capsys, "explain", "--run-dir", str(run), "--smoke", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert (xai / "metrics.json").read_text() == before
