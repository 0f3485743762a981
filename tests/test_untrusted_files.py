"""Checkpoints are data, not code: a ``.pt``/``.pth`` whose pickle would call a function when loaded is refused
with one line and exit 2 wherever xai-lab reads one (evaluate, explain, train --resume, model.init_from,
model.pretrained, torchvision's cached ImageNet weights), and the call never happens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from xai_lab.cli import main

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
FAST = ["model.stem=imagenet", "run.device=cpu", "run.progress=false"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if the loader runs code from the pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def run_dir(module_workdir):
    assert main(["-q", "train", "--config", EXP, "--smoke", "train.epochs=2", "train.checkpoint_every=1", *FAST]) == 0
    run = (module_workdir / "artifacts/runs/exp000_resnet18_saliency_synthfaces/latest").resolve()
    return run


def poisoned(path: Path, marker: Path, like: Path | None = None) -> Path:
    """``path`` written as a checkpoint (the keys of ``like``, if given) with a payload inside."""
    state = dict(torch.load(like, map_location="cpu", weights_only=True)) if like else {}
    state["model"] = {"weight": Payload(marker)}
    state.setdefault("config", {})
    torch.save(state, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The control: the same file loaded the unsafe way does create the marker."""
    marker = tmp_path / "ran"
    path = poisoned(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def refused(capsys, argv: list[str], path: Path, marker: Path) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "refusing" in err and str(path) in err and "nothing in it was run" in err, err
    assert not marker.exists()


def test_evaluate_and_explain_refuse_a_poisoned_best_pt(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tb"))
    marker = tmp_path / "ran"
    poisoned(copy / "best.pt", marker, like=run_dir / "best.pt")
    refused(capsys, ["evaluate", "--run-dir", str(copy), "--out", str(tmp_path / "r1")], copy / "best.pt", marker)
    refused(capsys, ["explain", "--run-dir", str(copy), "--out", str(tmp_path / "r2")], copy / "best.pt", marker)
    # compare (and a sweep's fan-out) load trained runs through the same loader
    refused(capsys, ["compare", "--runs", str(copy), "--out", str(tmp_path / "c")], copy / "best.pt", marker)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "c").exists()


def test_resume_refuses_a_poisoned_last_pt(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tb"))
    # a run stopped after epoch 1 of 2: resumable but for the payload
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    marker = tmp_path / "ran"
    state["model"] = {"weight": Payload(marker)}
    state["epoch"] = 1
    torch.save(state, copy / "last.pt")
    (copy / "train_summary.json").unlink()
    refused(capsys, ["train", "--resume", str(copy)], copy / "last.pt", marker)


def test_init_from_and_pretrained_weights_refuse_a_payload(run_dir, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "ran"
    evil = poisoned(tmp_path / "evil.pt", marker, like=run_dir / "best.pt")
    refused(capsys, ["train", "--config", EXP, "--smoke", *FAST, f"model.init_from={evil}"], evil, marker)
    weights = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": Payload(marker)}, weights)
    refused(capsys, ["train", "--config", EXP, "--smoke", *FAST, f"model.pretrained={weights}"], weights, marker)
    # torchvision's cache: the file xai-lab reads for model.pretrained=true
    from xai_lab.models import pretrained_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = pretrained_file(18)
    cached.parent.mkdir(parents=True)
    shutil.copyfile(weights, cached)
    refused(capsys, ["train", "--config", EXP, "--smoke", *FAST, "model.pretrained=true"], cached, marker)
