"""Sweeps on a real local Ray (module-scoped, 2 CPUs, 127.0.0.1): trials, retries, leaderboard,
TensorBoard, fan-out, comparison, the HTML report in headless Chromium, and resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: stay on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
from conftest import make_folder_dataset, write_tiny_experiment  # noqa: E402
from ray import tune  # noqa: E402

from sweeps.config import load_sweep  # noqa: E402
from sweeps.driver import run_sweep  # noqa: E402
from sweeps.trainable import train_trial  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def make_flaky(marker: Path):
    """The real trainable, but the first trial to claim ``marker`` stops after epoch 1 and raises (once)."""

    def flaky_trial(config: dict, **kwargs) -> None:
        _flaky(marker, config, **kwargs)

    return flaky_trial


def _flaky(marker: Path, config: dict, **kwargs) -> None:
    if tune.get_checkpoint() is None:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, tune.get_context().get_trial_id().encode())
            os.close(fd)
            train_trial({**config, "train.epochs": 1}, **kwargs)
            raise RuntimeError("injected fault after epoch 1")
    train_trial(config, **kwargs)


SWEEP = """name: {name}
experiments: [tinya.yaml, tinyb.yaml]
space:
  train.sampler: {{type: categorical, choices: [none, class_balanced]}}
  train.class_weighted_loss: {{type: categorical, choices: [false, true], when: {{train.sampler: none}}}}
  train.lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
search: {{num_samples: {n}, max_concurrent: 2, seed: 0}}
scheduler: {{type: {scheduler}, max_epochs: 2, grace_period: 1}}
resources: {{cpu: 1, gpu: auto}}
fanout: {{top_k: 2, cpu: 1, num_each: 2, maps_per_class: 4, methods: []}}
max_failures: 1
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    make_folder_dataset(root / "data" / "raw" / "tinya", ["happy", "sad", "angry"], 14, seed=1)
    make_folder_dataset(root / "data" / "raw" / "tinyb", ["happy", "sad", "fear"], 14, seed=2)
    write_tiny_experiment(root, "tinya", "data/raw/tinya")
    write_tiny_experiment(root, "tinyb", "data/raw/tinyb")
    return root


@pytest.fixture(scope="module")
def sweep(ray_local, workdir):
    """One FIFO sweep over two datasets (3 trials each); one trial fails once after epoch 1."""
    cwd = os.getcwd()
    os.chdir(workdir)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        (workdir / "main.yaml").write_text(SWEEP.format(name="main", n=3, scheduler="fifo"))
        cfg = load_sweep("main.yaml")
        t0 = time.time()
        outcome = run_sweep(cfg, trainable=make_flaky(workdir / "fault"), verbose=0, progress=False)
        print(f"sweep took {time.time() - t0:.0f}s")
    finally:
        os.chdir(cwd)
    return outcome


def test_leaderboard_has_every_trial_base_first_and_the_retry(sweep, workdir):
    assert not sweep.interrupted
    board = pd.read_csv(sweep.leaderboard)
    assert sorted(board["dataset"].unique()) == ["tinya", "tinyb"]
    assert len(board) == 6 and set(board["status"]) == {"completed"}
    for _, rows in board.groupby("dataset"):
        assert list(rows["rank"]) == [1, 2, 3]
        base = rows[rows["base"]]
        assert len(base) == 1 and base.iloc[0]["train.lr"] == pytest.approx(0.002)
        assert base.iloc[0]["train.sampler"] == "none"
    balanced = board[board["train.sampler"] == "class_balanced"]
    assert balanced["train.class_weighted_loss"].isna().all()  # not sampled under a balanced sampler
    for col in [
        "best_val_macro_f1",
        "final_val_accuracy",
        "epochs_run",
        "wall_seconds",
        "trial_dir",
        "report",
    ]:
        assert col in board
    # the injected fault: that trial was retried from its epoch-1 checkpoint and finished both epochs
    faulty = (workdir / "fault").read_text()
    row = board[board["trial_id"] == faulty].iloc[0]
    assert row["failures"] == 1 and row["status"] == "completed" and row["epochs_run"] == 2
    progress = pd.read_csv(Path(row["trial_dir"]) / "progress.csv")
    assert list(progress["epoch"]) == [1, 2]  # epoch 1 was not trained again
    assert not progress["early_stopped"].any()  # each epoch says whether fit stopped on patience (off here)


def test_tensorboard_scalars_and_hparams(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = pd.read_csv(sweep.leaderboard)
    trial_dir = Path(board.iloc[0]["trial_dir"])
    events = list(trial_dir.glob("events.out.tfevents.*"))
    assert events, list(trial_dir.iterdir())
    acc = EventAccumulator(str(trial_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "ray/tune/val_macro_f1" in tags and "ray/tune/train_loss" in tags
    assert len(acc.Scalars("ray/tune/val_macro_f1")) == board.iloc[0]["epochs_run"]
    hparams = acc.summary_metadata.get("_hparams_/session_start_info")
    assert hparams is not None and hparams.plugin_data.plugin_name == "hparams"
    assert b"train.lr" in hparams.plugin_data.content


def test_fanout_reports_in_single_run_layout(sweep):
    board = pd.read_csv(sweep.leaderboard, dtype={"report": str}).fillna({"report": ""})
    reported = board[board["report"] != ""]
    assert len(reported) == 4 and set(reported["report"]) == {"ok"}  # top 2 of each dataset
    # the leaderboard shows each reported trial's test scores and explanation metrics beside its val score
    for col in ["test_accuracy", "test_macro_f1", "saliency:deletion_auc", "saliency:insertion_auc",
                "saliency:randomization_spearman"]:
        assert reported[col].between(-1, 1).all() and board.loc[board["report"] == "", col].isna().all(), col
    for row in reported.itertuples():
        folder = sweep.paths.results / "reports" / row.dataset / row.trial_id
        summary = json.loads((folder / "test_summary.json").read_text())
        assert {"accuracy", "macro_f1", "n", "per_class", "class_names"} <= set(summary)
        for name in [
            "test_confusion_matrix.csv",
            "test_confusion_matrix.png",
            "train_loss.png",
            "val_loss.png",
            "val_accuracy.png",
            "val_macrof1.png",
        ]:
            assert (folder / name).is_file(), name
        for method in ["saliency", "gradcam"]:  # every registered explainer
            assert len(list((folder / "xai" / method / "high_conf").glob("sample*.png"))) == 2
            assert (folder / "xai" / method / "class_means.npz").is_file()


def test_comparison_on_shared_classes(sweep):
    results = sweep.paths.results
    table = pd.read_csv(results / "comparison.csv")
    assert list(table["dataset"]) == ["tinya", "tinyb"]
    # classes meet in the shared emotion vocabulary (happy -> happiness, angry -> anger)
    assert {"f1:happiness", "f1:sadness"} <= set(table.columns)
    assert "f1:anger" not in table and "f1:fear" not in table
    assert set(table["classes_not_shared"]) == {"anger", "fear"}
    info = json.loads((results / "comparison.json").read_text())
    assert info["shared_classes"] == ["happiness", "sadness"]
    for name in ["comparison.png", "comparison_saliency.png", "comparison_gradcam.png"]:
        assert (results / name).stat().st_size > 1000


def chromium_check(index: Path, screenshot: Path) -> dict:
    """Open ``index`` in headless Chromium: the body's data attributes (image counts) and a screenshot."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (make test installs it: apt-get install -y chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    url = index.resolve().as_uri()
    out = {}
    for i, extra in enumerate(
        (
            ["--virtual-time-budget=10000", "--dump-dom"],
            ["--window-size=1400,2600", f"--screenshot={screenshot}"],
        )
    ):
        profile = index.parent / f".chromium-profile-{i}"
        res = subprocess.run(
            [exe, *flags, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        shutil.rmtree(profile, ignore_errors=True)
        assert res.returncode == 0, res.stderr[-2000:]
        if "--dump-dom" in extra:
            import re

            body = re.search(r"<body([^>]*)>", res.stdout)
            assert body, res.stdout[:500]
            out = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    return out


def test_report_opens_in_chromium_with_every_image(sweep, tmp_path):
    from sweeps.report import build_report

    out = tmp_path / "pulled"
    index = build_report(sweep.paths.results, top=1, out=out)
    assert index == out / "index.html"
    # only the top trial per dataset was pulled, with relative links
    assert len(list((out / "reports").glob("*/*"))) == 2
    page = index.read_text()
    assert "file://" not in page and str(sweep.paths.results) not in page
    shot = tmp_path / "report.png"
    attrs = chromium_check(index, shot)
    assert int(attrs["images"]) > 20 and attrs["broken"] == "0", attrs
    assert shot.stat().st_size > 50_000
    shutil.copy(shot, Path("/tmp") / "xai_lab_report_test.png")


def test_a_failed_report_is_recorded_and_costs_the_others_nothing(sweep, workdir):
    """Runs last: breaks one top trial's checkpoint and runs the fan-out again."""
    from sweeps.config import base_experiments
    from sweeps.fanout import run_fanout
    from sweeps.report import build_report
    from xai_lab.data.dataset import load_dataset

    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = load_sweep("main.yaml")
        board = pd.read_csv(sweep.leaderboard)
        victim = board[(board["dataset"] == "tinya") & (board["rank"] == 1)].iloc[0]
        (Path(victim["checkpoint"]) / "best.pt").write_bytes(b"not a checkpoint")
        bases = base_experiments(cfg)
        datasets = {name: load_dataset(b.data) for name, b in bases.items()}
        outcome = run_fanout(cfg, sweep.paths.results, bases, datasets, top_k=2, progress=False)
    finally:
        os.chdir(cwd)
    assert outcome[("tinya", victim["trial_id"])].startswith("failed: UserError: cannot read checkpoint")
    assert sum(v == "ok" for v in outcome.values()) == 3
    board = pd.read_csv(sweep.leaderboard, dtype={"report": str})
    assert board.set_index("trial_id").loc[victim["trial_id"], "report"].startswith("failed")
    assert (sweep.paths.results / "reports" / "tinya" / victim["trial_id"] / "error.txt").is_file()
    page = build_report(sweep.paths.results).read_text()
    assert "report failed" in page and "cannot read checkpoint" in page


def test_resume_after_ctrl_c_keeps_finished_trials(ray_local, workdir):
    """ASHA sweep of one dataset, interrupted by SIGINT once a trial finished, then resumed."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        text = SWEEP.format(name="resumed", n=4, scheduler="asha").replace(
            "[tinya.yaml, tinyb.yaml]", "[tinya.yaml]"
        )
        (workdir / "resumed.yaml").write_text(text.replace("max_concurrent: 2", "max_concurrent: 1"))
        cfg = load_sweep("resumed.yaml", ["fanout.top_k=0"])
        exp = workdir / "ray_results" / "resumed" / "tinya"

        def interrupt_after_first_trial():
            deadline = time.time() + 240
            while time.time() < deadline:
                done = [p for p in exp.glob("*/result.json") if '"done": true' in p.read_text()]
                if done:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                time.sleep(0.2)

        threading.Thread(target=interrupt_after_first_trial, daemon=True).start()
        first = run_sweep(cfg, verbose=0, progress=False)
        assert first.interrupted
        before = pd.read_csv(first.leaderboard)
        kept = before[before["status"].isin(["completed", "early_stopped", "pruned"])]  # finished trials
        assert 1 <= len(kept) < 4
        kept_results = {
            t: (Path(d) / "result.json").read_text()
            for t, d in zip(kept["trial_id"], kept["trial_dir"], strict=True)
        }

        second = run_sweep(
            load_sweep("resumed.yaml", ["fanout.top_k=0"]), resume=True, verbose=0, progress=False
        )
    finally:
        os.chdir(cwd)
    assert not second.interrupted
    after = pd.read_csv(second.leaderboard)
    assert len(after) == 4 and set(after["status"]) <= {"completed", "early_stopped", "pruned"}
    for trial, text in kept_results.items():  # finished trials were kept, not run again
        row = after[after["trial_id"] == trial].iloc[0]
        assert (Path(row["trial_dir"]) / "result.json").read_text() == text
