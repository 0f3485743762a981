"""Training on tiny synthfaces sets, on the CPU: learning, determinism, checkpoints."""

import json

import numpy as np
import pytest
import torch

from xai_lab.checkpoint import CheckpointPolicy, load_checkpoint, model_from_checkpoint
from xai_lab.config import TrainConfig, load_saved
from xai_lab.data.dataset import load_dataset
from xai_lab.evaluate import evaluate_run
from xai_lab.experiment import load_experiment
from xai_lab.train import fit, lr_factor

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
TINY = [
    "data.synthfaces.n_per_class=60", "model.stem=imagenet", "train.batch_size=32", "train.lr=0.003",
    "augment.strength=0", "run.progress=false", "run.device=cpu",
]
# A smaller model and set, for the tests of when checkpoints are written.
SMALL = [
    "data.synthfaces.n_per_class=6", "model.name=resnet8", "model.input_size=32", "data.image_size=32",
    "train.batch_size=8", "run.progress=false", "run.device=cpu", "run.tensorboard=false",
]


@pytest.fixture(scope="module")
def trained(module_workdir):
    """One short run shared by the tests below (2,352 training images: about 15 s on 2 CPU cores)."""
    cfg = load_experiment(EXP, TINY + ["train.epochs=8"])
    return cfg, fit(cfg), module_workdir


def test_training_beats_chance_clearly(trained):
    cfg, summary, _ = trained
    assert summary["best_val_macro_f1"] > 0.3  # chance is 1/7
    log = [json.loads(line) for line in open(f"{summary['run_dir']}/train_log.jsonl")]
    assert [r["epoch"] for r in log] == list(range(1, 9))
    assert set(log[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr",
                           "epoch_seconds", "images_per_second", "val_seconds"}
    assert log[-1]["train_loss"] < log[0]["train_loss"]


def test_run_folder_holds_config_checkpoints_and_tensorboard(trained):
    cfg, summary, work = trained
    run = work / summary["run_dir"]
    assert {"config.yaml", "best.pt", "last.pt", "train_log.jsonl", "tb", "train_summary.json"} <= {
        p.name for p in run.iterdir()}
    assert load_saved(run / "config.yaml") == cfg
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run.parent / "latest").resolve() == run.resolve()


def test_checkpoint_round_trip_gives_the_same_predictions(trained):
    cfg, summary, work = trained
    run = work / summary["run_dir"]
    state = load_checkpoint(run / "best.pt")
    assert state["epoch"] == summary["best_epoch"] and state["class_names"][0] == "angry"
    model, cfg2, names, _ = model_from_checkpoint(run / "best.pt")
    assert cfg2 == cfg and len(names) == 7
    data = load_dataset(cfg.data).splits["test"]
    x = torch.from_numpy(data.images[:16].copy()).float() / 255
    with torch.no_grad():
        a = model(x)
        b = model_from_checkpoint(run / "best.pt")[0](x)
    assert torch.equal(a, b)
    s = evaluate_run(run, work / "report", dataset=load_dataset(cfg.data))
    assert s["accuracy"] > 0.3 and s["n"] == len(data)


def test_same_seed_same_metrics_on_cpu(in_tmp):
    logs = []
    for _ in range(2):
        cfg = load_experiment(EXP, TINY + ["train.epochs=2", "data.synthfaces.n_per_class=12"])
        run = fit(cfg)["run_dir"]
        timing = ("epoch_seconds", "images_per_second", "val_seconds")
        logs.append([{k: v for k, v in json.loads(line).items() if k not in timing}
                     for line in open(f"{run}/train_log.jsonl")])
    assert logs[0] == logs[1]
    cfg = load_experiment(EXP, TINY + ["train.epochs=2", "data.synthfaces.n_per_class=12", "run.seed=1"])
    other = [json.loads(line)["train_loss"] for line in open(f"{fit(cfg)['run_dir']}/train_log.jsonl")]
    assert other != [r["train_loss"] for r in logs[0]]


def test_resume_continues_from_last_checkpoint(in_tmp):
    cfg = load_experiment(EXP, TINY + ["train.epochs=2", "data.synthfaces.n_per_class=12"])
    first = fit(cfg)
    cfg.train.epochs = 3
    resumed = fit(cfg, resume_from=f"{first['run_dir']}/last.pt")
    log = [json.loads(line)["epoch"] for line in open(f"{resumed['run_dir']}/train_log.jsonl")]
    assert log == [3] and resumed["epochs_run"] == 1


def test_callback_sees_each_epoch_and_can_stop(in_tmp):
    seen = []

    def callback(metrics, saved):
        seen.append((metrics["epoch"], metrics["early_stopped"], saved.written, saved.last_pt.is_file()))
        assert {"best_val_macro_f1", "val_macro_f1"} <= set(metrics) and saved.run_dir == saved.last_pt.parent
        return metrics["epoch"] == 2

    cfg = load_experiment(EXP, TINY + ["train.epochs=5", "data.synthfaces.n_per_class=12"])
    summary = fit(cfg, callback=callback)
    assert seen == [(1, False, ("last.pt", "best.pt"), True), (2, False, seen[1][2], True)]
    assert seen[1][2] in (("last.pt",), ("last.pt", "best.pt")) and summary["epochs_run"] == 2


def test_checkpoint_policy_rules():
    policy = CheckpointPolicy(every=3, epochs=[1, 4], slim_from=6)
    assert [e for e in range(1, 10) if policy.wants(e)] == [1, 3, 4, 6, 9]
    assert [policy.slim(e, early_stopped=False) for e in (4, 5, 6, 7)] == [False, False, True, True]
    assert policy.slim(2, early_stopped=True)  # a stop on patience ends the run: its checkpoint is final
    single = CheckpointPolicy.for_run(TrainConfig(checkpoint_every=2))
    assert single == CheckpointPolicy(every=2) and [e for e in range(1, 7) if single.wants(e)] == [2, 4, 6]
    assert not single.slim(10, early_stopped=True)  # a single run's checkpoints are all full
    assert not any(CheckpointPolicy(every=0).wants(e) for e in range(1, 10))


def test_policy_epochs_write_full_checkpoints_exactly_then(in_tmp):
    """Checkpoints at epochs {1, 3}: last.pt is written after epochs 1, 3 and 5 (the last), and only then."""
    run, seen = in_tmp / "run", []

    def callback(metrics, saved):
        last = load_checkpoint(run / "last.pt")["epoch"] if (run / "last.pt").is_file() else None
        seen.append((metrics["epoch"], None if saved is None else (saved.epoch, saved.slim, saved.written[0]), last))

    cfg = load_experiment(EXP, SMALL + ["train.epochs=5", "train.checkpoint_every=1"])  # the policy overrides it
    fit(cfg, run_dir=run, callback=callback, checkpoint=CheckpointPolicy(every=0, epochs={1, 3}))
    assert seen == [(1, (1, False, "last.pt"), 1), (2, None, 1), (3, (3, False, "last.pt"), 3), (4, None, 3),
                    (5, (5, False, "last.pt"), 5)]
    assert load_checkpoint(run / "best.pt")["epoch"] == json.loads((run / "train_summary.json").read_text())[
        "best_epoch"]


def test_slim_final_checkpoint_holds_best_pt_but_no_last_pt(in_tmp):
    run, seen = in_tmp / "run", []

    def callback(metrics, saved):
        files = sorted(p.name for p in run.iterdir())
        seen.append((metrics["epoch"], saved is not None and saved.slim, saved and saved.last_pt, files))

    cfg = load_experiment(EXP, SMALL + ["train.epochs=3"])
    summary = fit(cfg, run_dir=run, callback=callback, checkpoint=CheckpointPolicy(every=0, epochs={2}, slim_from=3))
    full = ["best.pt", "config.yaml", "last.pt", "train_log.jsonl"]
    assert seen[0] == (1, False, None, ["config.yaml", "train_log.jsonl"])  # no checkpoint yet
    assert seen[1] == (2, False, run / "last.pt", full)
    assert seen[2] == (3, True, None, ["best.pt", "config.yaml", "train_log.jsonl"])  # last.pt removed
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == summary["best_epoch"] and "optimizer" not in best
    assert not (run / "last.pt").exists() and (run / "train_summary.json").is_file()


def test_lr_schedule_warms_up_then_decays():
    from xai_lab.config import TrainConfig

    tc = TrainConfig(epochs=10, warmup_epochs=1, scheduler="cosine")
    f = [lr_factor(s, 10, tc) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert np.all(np.diff(f[10:]) <= 1e-12) and f[-1] < 0.01
    step = TrainConfig(epochs=10, warmup_epochs=0, scheduler="step", step_size=3, gamma=0.5)
    assert [lr_factor(e * 10, 10, step) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
