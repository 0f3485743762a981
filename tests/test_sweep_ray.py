"""Sweeps on a real local Ray (module-scoped, 2 CPUs, 127.0.0.1): trials, retries, leaderboard,
TensorBoard, fan-out, comparison, the HTML report in headless Chromium, and resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: stay on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
from conftest import make_folder_dataset, write_tiny_experiment  # noqa: E402
from ray import tune  # noqa: E402
from report_browser import Elements, body_data, dump_dom, screenshot  # noqa: E402

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


def _hparams(folder: Path, tag: str):
    """The HParams plugin data under ``tag`` in the events of ``folder`` (one TensorBoard run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    meta = acc.summary_metadata.get(tag)
    assert meta is not None and meta.plugin_data.plugin_name == "hparams", (folder, tag)
    return plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content), acc


def test_tensorboard_runs_scalars_and_hparams(sweep):
    """Runs named <dataset>/<trial id>; the project's grouped scalars only; one HParams row per trial with the
    dataset and every space key, under columns declared once at the sweep's root, all shown."""
    board = pd.read_csv(sweep.leaderboard)
    space = ("train.sampler", "train.class_weighted_loss", "train.lr")
    for _, row in board.iterrows():
        trial_dir = Path(row["trial_dir"])
        assert trial_dir.relative_to(sweep.paths.results).as_posix() == f"{row['dataset']}/{row['trial_id']}"
        data, acc = _hparams(trial_dir, "_hparams_/session_start_info")
        values = data.session_start_info.hparams
        assert values["dataset"].string_value == row["dataset"]
        assert data.session_start_info.group_name == row["trial_id"]  # the HParams table's "Trial ID" column
        assert set(space) <= set(values)  # also the conditional one, where the sampler left it to the base
        assert values["train.lr"].number_value == pytest.approx(row["train.lr"])
        assert values["train.sampler"].string_value == row["train.sampler"]
        tags = acc.Tags()["scalars"]
        assert {"loss/train", "loss/val", "accuracy/val", "macro_f1/val", "macro_f1/best_val", "train/lr",
                "speed/images_per_second", "time/epoch_seconds"} <= set(tags), tags
        assert not [t for t in tags if t.startswith("ray/") or "/" not in t], tags
        assert len(acc.Scalars("macro_f1/val")) == row["epochs_run"]
    experiment, _ = _hparams(sweep.paths.results, "_hparams_/experiment")
    infos = {h.name: h for h in experiment.experiment.hparam_infos}
    # TensorBoard shows five hparam columns by default, those marked "differs" first: the dataset and the space
    assert {"dataset", *space} <= set(infos) and all(infos[k].differs for k in ("dataset", *space))
    assert [v.string_value for v in infos["dataset"].domain_discrete.values] == ["tinya", "tinyb"]
    assert {m.name.tag for m in experiment.experiment.metric_infos} >= {"macro_f1/best_val", "macro_f1/val"}


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


def test_transfer_matrix_of_the_best_trials(sweep):
    """Each dataset's best model on both test splits: the cross cells over the two shared classes, each beside
    the target dataset's own model on the same faces, and the sentence that states the gap."""
    results = sweep.paths.results
    table = pd.read_csv(results / "transfer.csv", keep_default_na=False)
    assert [(r.trained_on, r.tested_on) for r in table.itertuples()] == [
        ("tinya", "tinya"), ("tinya", "tinyb"), ("tinyb", "tinya"), ("tinyb", "tinyb")]
    best = pd.read_csv(results / "comparison.csv", dtype={"trial_id": str}).set_index("dataset")["trial_id"]
    support = {}  # test images per class of each dataset, from its best trial's report
    for d in ("tinya", "tinyb"):
        folder = results / "reports" / d / best[d]
        summary = json.loads((folder / "test_summary.json").read_text())
        support[d] = {k: v["support"] for k, v in summary["per_class"].items()}
        diagonal = table[(table.trained_on == d) & (table.tested_on == d)].iloc[0]
        assert diagonal.n == summary["n"] and diagonal.accuracy == pytest.approx(summary["accuracy"])
        assert diagonal.n_classes == 3 and diagonal.gap == ""
    for row in table[~table.in_domain].itertuples():
        assert row.classes == "happiness sadness" and row.note == ""
        assert row.n == support[row.tested_on]["happy"] + support[row.tested_on]["sad"]  # the shared faces only
        assert float(row.gap) == pytest.approx(float(row.in_domain_accuracy) - float(row.accuracy))
    assert (results / "transfer.png").stat().st_size > 5000
    assert json.loads((results / "transfer.json").read_text())["sentence"].startswith("In-domain test accuracy")


def chromium_check(index: Path, shot: Path) -> tuple[Elements, dict]:
    """Open ``index`` in headless Chromium: the DOM once loaded (parsed), the body's data attributes
    (how many images, how many did not load: naturalWidth 0) and a screenshot."""
    dom = dump_dom(index)
    screenshot(index, shot)
    return Elements(dom), body_data(dom)


# The blocks of each reported trial's section (data-section), one each (the sweep's reports all have them).
TRIAL_SECTIONS = ("test-metrics", "confusion-matrix", "explanation-metrics", "metric-curves", "metrics-md",
                  "methods-compared")


def _galleries_on_disk(out: Path) -> Counter:
    """``(gallery, method)`` of every gallery folder holding a PNG, counted over the pulled reports."""
    return Counter((f"gallery-{g.name}", g.parent.name) for g in out.glob("reports/*/*/xai/*/*")
                   if g.is_dir() and any(g.glob("*.png")))


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
    dom, attrs = chromium_check(index, shot)
    assert int(attrs["images"]) > 20 and attrs["broken"] == "0", attrs
    assert shot.stat().st_size > 50_000

    # every figure in the folder is an <img> of the page, and each loaded (naturalWidth > 0 above)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert sorted(unquote(a["src"]) for a in dom.having("img")) == pngs and int(attrs["images"]) == len(pngs)
    assert not dom.having(data_section="other-figures")  # each has its own place on the page
    # the page's sections, and each trial's blocks
    for section in ("best", "comparison", "transfer", "leaderboard"):
        assert dom.having(id=section), section
    assert dom.having("img", src="transfer.png") and len(dom.having(data_section="comparison-explanations")) == 1
    assert len(dom.having("h2", data_section="dataset")) == 2
    assert len(dom.having("section", **{"class": "trial"})) == 2
    for block in TRIAL_SECTIONS:
        assert len(dom.having(data_section=block)) == 2, block
    assert len(dom.having(data_section="curve")) == 4 * 2
    methods = {p.name for p in out.glob("reports/*/*/xai/*") if p.is_dir()}
    assert {"saliency", "gradcam"} <= methods  # every registered explainer
    for method in methods:
        assert len(dom.having(data_section="method", data_method=method)) == 2, method
    assert len(dom.having(data_section="class-means")) == 2 * len(methods)
    assert len(dom.having(data_section="regions")) == 2 * len(methods)  # where on the face (synthfaces: masks)
    galleries = Counter((a["data-section"], a["data-method"]) for a in dom.having("details")
                        if a.get("data-section", "").startswith("gallery-"))
    assert galleries == _galleries_on_disk(out)
    assert all(galleries[(g, m)] == 2 for g in ("gallery-high_conf", "gallery-low_conf") for m in methods)
    assert "test accuracy" in dom.text and "Explanation metrics" in dom.text  # the headline, metrics.md
    assert "In-domain test accuracy averages" in dom.text  # the headline states the transfer gap


def dies_once_then_reports(marker: Path, calls: Path):
    """The real report task, but the first run to claim ``marker`` (it writes its trial there) kills its worker
    process (as the OOM killer would)."""

    def task(job, dataset):
        from sweeps.fanout import report_trial

        name = f"{job.dataset}/{job.trial_id}"
        with open(calls, "a") as f:
            f.write(f"{name}\n")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return report_trial(job, dataset)
        os.write(fd, name.encode())
        os.close(fd)
        os._exit(1)

    return task


def test_fanout_retries_a_dead_worker_but_not_a_failed_report(sweep, workdir, tmp_path):
    """On a copy of the sweep: one worker dies once (retried, ok); one checkpoint is corrupt (failed, not retried)."""
    from sweeps.config import base_experiments
    from sweeps.fanout import run_fanout
    from sweeps.report import build_report
    from xai_lab.data.dataset import load_dataset

    results = tmp_path / "main"
    shutil.copytree(sweep.paths.results, results, ignore=shutil.ignore_patterns("reports", "*.lock"))
    board = pd.read_csv(results / "leaderboard.csv", dtype={"report": str})
    victim = board[(board["dataset"] == "tinya") & (board["rank"] == 1)].index[0]
    broken = tmp_path / "broken_checkpoint"
    shutil.copytree(board.loc[victim, "checkpoint"], broken)
    (broken / "best.pt").write_bytes(b"not a checkpoint")
    board.loc[victim, "checkpoint"] = str(broken)
    board.to_csv(results / "leaderboard.csv", index=False)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = load_sweep("main.yaml")
        bases = base_experiments(cfg)
        datasets = {name: load_dataset(b.data) for name, b in bases.items()}
        task = dies_once_then_reports(tmp_path / "died", tmp_path / "calls.txt")
        outcome = run_fanout(cfg, results, bases, datasets, top_k=2, progress=False, task=task)
    finally:
        os.chdir(cwd)
    trial = board.loc[victim, "trial_id"]
    assert outcome.pop(("tinya", trial)).startswith("failed: UserError: cannot read checkpoint")
    assert list(outcome.values()) == ["ok"] * 3  # the task whose worker died ran again and ended ok
    calls = (tmp_path / "calls.txt").read_text().split()
    assert (tmp_path / "died").exists() and len(calls) == 5  # 4 tasks, one of them twice
    died = (tmp_path / "died").read_text()  # the task whose worker died (two run at once: not always calls[0])
    assert calls.count(died) == 2
    victim_calls = calls.count(f"tinya/{trial}")  # a deterministic error is not retried
    assert victim_calls == 1 + (died == f"tinya/{trial}")
    board = pd.read_csv(results / "leaderboard.csv", dtype={"report": str})
    assert board.set_index("trial_id").loc[trial, "report"].startswith("failed")
    assert (results / "reports" / "tinya" / trial / "error.txt").is_file()
    page = build_report(results).read_text()
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
