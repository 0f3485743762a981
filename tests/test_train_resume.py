"""``xai-lab train --resume RUN_DIR``: a stopped run, resumed in place, ends as the uninterrupted run does.

Run A trains 3 epochs in one go. Run B trains the same config and is stopped after epoch 2 by
fit's callback (the real loop really stops; its last.pt is of epoch 2); then a row of an epoch
after the checkpoint and a torn line are appended to its train_log.jsonl, as a kill after logging
could leave them, and B is resumed through the CLI. Augmentation, mixup, CutMix and the weight
EMA are on, so the restored generator (batch order, augmentation, mixing draws) and EMA count
are covered. On the CPU, with the same thread count, the training is deterministic: the weights
must be bit-for-bit equal, not merely close.
"""

import json
import shutil

import pytest
import torch

from xai_lab.checkpoint import load_checkpoint, save_checkpoint
from xai_lab.cli import main
from xai_lab.experiment import load_experiment
from xai_lab.train import fit, trim_train_log

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
TINY = [
    "data.synthfaces.n_per_class=6", "model.name=resnet8", "model.input_size=32", "data.image_size=32",
    "train.epochs=3", "train.batch_size=8", "train.checkpoint_every=1", "train.mixup=0.2", "train.cutmix=1.0",
    "train.ema_decay=0.9", "augment.strength=1", "run.progress=false", "run.device=cpu", "run.tensorboard=false",
]
TIMING = ("epoch_seconds", "images_per_second", "val_seconds")


def log_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(module_workdir):
    """A (uninterrupted), B (stopped after epoch 2, log damaged, resumed by the CLI), C (B before the resume)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # light on a shared machine; the same count for every run keeps them bitwise equal
    try:
        a = fit(load_experiment(EXP, TINY))
        stopped = fit(load_experiment(EXP, TINY), callback=lambda metrics, saved: metrics["epoch"] == 2)
        assert stopped["epochs_run"] == 2 and load_checkpoint(f"{stopped['run_dir']}/last.pt")["epoch"] == 2
        b = module_workdir / stopped["run_dir"]
        c = b.parent / "stopped-copy"
        shutil.copytree(b, c)
        row = dict(log_rows(b)[-1], epoch=3)
        with open(b / "train_log.jsonl", "a") as f:  # an epoch logged after the checkpoint, then a torn line
            f.write(json.dumps(row) + "\n" + '{"epoch": 4, "train_loss": 0.12')
        rc = main(["train", "--resume", str(b)])
        yield {"a": module_workdir / a["run_dir"], "b": b, "c": c, "rc": rc, "a_summary": a}
    finally:
        torch.set_num_threads(threads)


def test_resumed_run_ends_with_the_uninterrupted_runs_weights(runs):
    assert runs["rc"] == 0
    a, b = load_checkpoint(runs["a"] / "last.pt"), load_checkpoint(runs["b"] / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in ("model", "model_raw"):  # the EMA's weights and the raw ones
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert int(a["ema"]["n_averaged"]) == int(b["ema"]["n_averaged"])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    best_a, best_b = load_checkpoint(runs["a"] / "best.pt"), load_checkpoint(runs["b"] / "best.pt")
    assert best_a["epoch"] == best_b["epoch"] and "rng" not in best_a
    assert all(torch.equal(best_a["model"][n], best_b["model"][n]) for n in best_a["model"])


def test_resumed_log_has_each_epoch_once_and_the_same_metrics(runs):
    rows_a, rows_b = log_rows(runs["a"]), log_rows(runs["b"])
    assert [r["epoch"] for r in rows_b] == [1, 2, 3]

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]

    assert strip(rows_b) == strip(rows_a)
    summary_b = json.loads((runs["b"] / "train_summary.json").read_text())
    assert summary_b["best_epoch"] == runs["a_summary"]["best_epoch"]
    assert summary_b["best_val_macro_f1"] == runs["a_summary"]["best_val_macro_f1"]
    assert summary_b["final"]["epoch"] == 3 and summary_b["epochs_run"] == 1


def test_checkpoint_without_rng_still_resumes_with_fresh_draws(runs):
    """A last.pt from before the generator's state was saved: the old reseeding, still one more epoch."""
    c = runs["c"]
    state = load_checkpoint(c / "last.pt")
    del state["rng"]
    save_checkpoint(c / "last.pt", state)
    cfg = load_experiment(EXP, TINY)
    summary = fit(cfg, run_dir=c, resume_from=c / "last.pt")
    assert summary["epochs_run"] == 1 and [r["epoch"] for r in log_rows(c)] == [1, 2, 3]
    # Fresh draws for epoch 3: not the uninterrupted run's weights (what the rng in last.pt is for).
    a_model, c_model = load_checkpoint(runs["a"] / "last.pt")["model"], load_checkpoint(c / "last.pt")["model"]
    assert not all(torch.equal(a_model[n], c_model[n]) for n in a_model)


def test_trim_train_log_keeps_rows_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    assert trim_train_log(tmp_path, 2) == 2
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert trim_train_log(tmp_path, 2) == 0 and trim_train_log(tmp_path / "none", 1) == 0
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(Exception, match="line 2"):
        trim_train_log(tmp_path, 2)


def test_a_fresh_fit_in_a_folder_with_an_old_log_starts_the_log_afresh(tmp_path):
    """A cv fold stopped before its first checkpoint is trained again from the start in its folder: the rows it
    had logged (and a torn line) are dropped, not followed by the new run's."""
    run_dir = tmp_path / "fold0"
    run_dir.mkdir()
    (run_dir / "train_log.jsonl").write_text('{"epoch": 1, "train_loss": 9}\n{"epoch": 2, "train_loss": 9}\n{"ep')
    fit(load_experiment(EXP, [*TINY, "train.epochs=1"]), run_dir=run_dir)
    rows = log_rows(run_dir)
    assert [r["epoch"] for r in rows] == [1] and rows[0]["train_loss"] != 9


def test_resume_refusals_exit_2_with_one_line(runs, capsys):
    def refused(argv, *needles):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        for needle in needles:
            assert needle in err, err
        return err

    work = runs["a"].parents[3]
    a_log = (runs["a"] / "train_log.jsonl").read_text()
    refused(["train", "--resume", str(work / "no-such-run")], "not found", "no-such-run")
    empty = work / "empty-run"
    empty.mkdir()
    shutil.copy(runs["a"] / "config.yaml", empty / "config.yaml")
    refused(["train", "--resume", str(empty)], "no last.pt", "empty-run")
    (empty / "last.pt").write_bytes(b"not a checkpoint")
    refused(["train", "--resume", str(empty)], "cannot read checkpoint", "last.pt")
    refused(["train", "--resume", str(runs["a"])], "already finished", str(runs["a"].resolve()))
    refused(["train", "--resume", str(runs["a"].parent / "latest")], "already finished")  # B, now finished
    refused(["train", "--resume", str(runs["c"]), "train.lr=0.1"], "train.lr")
    refused(["train", "--resume", str(runs["c"]), "--smoke"], "--smoke")
    refused(["train"], "the following arguments are required: --config", "--resume")
    refused(["train", "--config", EXP, "--resume", str(runs["c"])], "not allowed with argument")
    assert (runs["a"] / "train_log.jsonl").read_text() == a_log
