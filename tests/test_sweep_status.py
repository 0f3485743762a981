"""The leaderboard's status of a trial (completed, early_stopped, pruned, error) without Ray: the rule on
a trial's last result, and the trainable's ``early_stopped`` flag against what ``fit`` really does."""

from __future__ import annotations

import pandas as pd
import pytest

from sweeps.config import SchedulerConfig
from sweeps.fanout import select_top
from sweeps.leaderboard import trial_status
from sweeps.trainable import PatienceWatch
from xai_lab.config import load_experiment
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


def test_patience_watch_is_fits_rule():
    rows = [{"epoch": e, "val_macro_f1": f} for e, f in enumerate([0.2, 0.5, 0.5, 0.4, 0.6, 0.6, 0.6], 1)]
    watch = PatienceWatch(patience=2, max_epochs=10)
    # best epochs 1, 2, 2 (a tie does not move it), 2, 5, 5, 5: out of patience at epochs 4 and 7
    assert [watch.update(r) for r in rows] == [False, False, False, True, False, False, True]
    assert [PatienceWatch(0, 10).update(r) for r in rows] == [False] * 7  # 0: off
    at_max = PatienceWatch(patience=2, max_epochs=4)
    assert [at_max.update(r) for r in rows[:4]] == [False] * 4  # at max_epochs the trial completed
    # a trial resumed from its epoch-3 checkpoint sees its first epochs through train_log.jsonl
    resumed = PatienceWatch(patience=2, max_epochs=10, rows=rows[:3])
    assert [resumed.update(r) for r in rows[3:]] == [True, False, False, True]


def test_patience_watch_flags_the_epoch_where_fit_stops(in_tmp):
    """A real fit that stops itself on patience: the flag is true exactly at its last epoch."""
    cfg = load_experiment(
        "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml",
        ["data.synthfaces.n_per_class=12", "model.stem=imagenet", "train.batch_size=16", "train.lr=0",
         "train.warmup_epochs=0", "augment.strength=0", "run.progress=false", "run.device=cpu",
         "train.epochs=8", "train.early_stopping_patience=1"],
    )
    watch = PatienceWatch(cfg.train.early_stopping_patience, cfg.train.epochs)
    flags: list[bool] = []
    summary = fit(cfg, callback=lambda metrics, _: flags.append(watch.update(metrics)))
    assert summary["epochs_run"] < cfg.train.epochs  # lr 0: val macro-F1 stops improving at once
    assert flags == [False] * (summary["epochs_run"] - 1) + [True]
    assert watch.best_epoch == summary["best_epoch"]
