"""The leaderboard's status of a trial (completed, early_stopped, pruned, error) without Ray: the rule on
a trial's last result, and the ``early_stopped`` flag that ``fit`` gives its callback (the trainable reports
it as is) against what ``fit`` really does."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from sweeps.config import SchedulerConfig
from sweeps.fanout import select_top
from sweeps.leaderboard import trial_status
from xai_lab.checkpoint import CheckpointPolicy
from xai_lab.experiment import load_experiment
from xai_lab.train import fit

ASHA = SchedulerConfig(type="asha", max_epochs=10, grace_period=2, reduction_factor=2)
FIFO = SchedulerConfig(type="fifo", max_epochs=10)


@pytest.mark.parametrize(
    "tune_status, epochs, last, scheduler, expected",
    [
        ("TERMINATED", 10, {"epoch": 10, "early_stopped": False}, ASHA, "completed"),
        ("TERMINATED", 10, {"epoch": 10}, FIFO, "completed"),
        ("TERMINATED", 6, {"epoch": 6, "early_stopped": True}, ASHA, "early_stopped"),  # fit stopped on patience
        ("TERMINATED", 4, {"epoch": 4, "early_stopped": False}, ASHA, "pruned"),  # ASHA stopped it at a rung
        ("TERMINATED", 4, {"epoch": 4}, ASHA, "pruned"),  # a result without the flag (an older sweep)
        ("TERMINATED", 6, {"epoch": 6, "early_stopped": True}, FIFO, "early_stopped"),
        ("TERMINATED", 6, {"epoch": 6}, FIFO, "early_stopped"),  # FIFO never stops a trial: fit did
        ("TERMINATED", 10, {"epoch": 10, "early_stopped": False}, ASHA, "completed"),
        ("ERROR", 3, {"epoch": 3}, ASHA, "error"),
        ("ERROR", 0, None, FIFO, "error"),
        ("RUNNING", 3, {"epoch": 3}, ASHA, "running"),  # an interrupted sweep
        ("PENDING", 0, None, ASHA, "pending"),
    ],
)
def test_trial_status(tune_status, epochs, last, scheduler, expected):
    assert trial_status(tune_status, epochs, last, scheduler) == expected


def test_early_stopped_trials_are_reported_like_completed_and_pruned_ones():
    board = pd.DataFrame({
        "dataset": ["a"] * 6,
        "rank": [1, 2, 3, 4, 5, 6],
        "status": ["early_stopped", "error", "running", "pruned", "completed", "early_stopped"],
        "checkpoint": ["/c1", "", "/c3", "/c4", "/c5", ""],
    })
    assert list(select_top(board, 3)["rank"]) == [1, 4, 5]  # finished, with a checkpoint


EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
# lr 0: val macro-F1 stops improving at once (BatchNorm statistics still move, so not always at epoch 1)
STALL = ["data.synthfaces.n_per_class=6", "model.name=resnet8", "model.input_size=32", "data.image_size=32",
         "train.batch_size=8", "train.lr=0", "train.warmup_epochs=0", "augment.strength=0", "run.progress=false",
         "run.device=cpu", "run.tensorboard=false"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same count for every run keeps them bitwise equal
    yield
    torch.set_num_threads(threads)


def test_early_stopped_flags_the_epoch_where_fit_stops(in_tmp):
    """A real fit that stops itself on patience: the flag is true exactly at its last epoch, whose checkpoint
    is the slim final one under a trial's policy."""
    cfg = load_experiment(EXP, STALL + ["train.epochs=8", "train.early_stopping_patience=1"])
    seen: list[tuple[bool, bool]] = []
    summary = fit(cfg, callback=lambda metrics, saved: seen.append((metrics["early_stopped"], saved.slim)),
                  checkpoint=CheckpointPolicy(slim_from=cfg.train.epochs))
    assert summary["epochs_run"] < cfg.train.epochs
    assert seen == [(False, False)] * (summary["epochs_run"] - 1) + [(True, True)]
    assert summary["best_epoch"] == summary["epochs_run"] - 1


def test_patience_running_out_at_the_last_epoch_is_a_completed_run(in_tmp):
    cfg = load_experiment(EXP, STALL + ["train.epochs=2", "train.early_stopping_patience=1"])
    flags: list[bool] = []
    summary = fit(cfg, callback=lambda metrics, _: flags.append(metrics["early_stopped"]))
    assert summary["epochs_run"] == 2 and flags == [False, False]


def test_a_resumed_run_flags_the_same_epoch(in_tmp, one_thread):
    """Resumed from its epoch-1 checkpoint, a run knows its best epoch so far (from last.pt)."""
    overrides = STALL + ["train.epochs=8", "train.early_stopping_patience=2", "train.checkpoint_every=1"]
    whole: list[bool] = []
    fit(load_experiment(EXP, overrides), callback=lambda metrics, _: whole.append(metrics["early_stopped"]))
    parts: list[bool] = []

    def stop_after_one(metrics, _):
        parts.append(metrics["early_stopped"])
        return True

    run = fit(load_experiment(EXP, overrides), callback=stop_after_one)["run_dir"]
    fit(load_experiment(EXP, overrides), run_dir=run, resume_from=f"{run}/last.pt",
        callback=lambda metrics, _: parts.append(metrics["early_stopped"]))
    assert parts == whole and whole[-1] and not any(whole[:-1])
