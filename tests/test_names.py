"""Names as people write them: a data root, class folders and files with spaces, accents and non-Latin letters
through prepare, train, evaluate, explain, a sweep and its report (every image of the page loads in Chromium);
a symlink loop inside the dataset folder; FER+ label rows with a vote that is not a number or a missing column."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import SHARED, cli_env, make_folder_dataset
from report_browser import body_data, dump_dom

from xai_lab.cli import main

ROOT_NAME = "Gesichter Ü 表情"
CLASSES = ["fröhlich", "悲しい", "en colère"]
SWEEP = """name: sweep ü 表情
experiments: [{{config: "exp ü.yaml", overrides: ["data.name={name}"]}}]
space:
  train.lr: {{type: float, low: 5.0e-4, high: 5.0e-3, log: true}}
search: {{num_samples: 2, max_concurrent: 2}}
scheduler: {{type: fifo, max_epochs: 1}}
fanout: {{top_k: 1, num_each: 2, maps_per_class: 4, methods: [saliency]}}
"""


@pytest.mark.slow
def test_unicode_names_and_a_link_loop_through_every_step(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data" / "raw" / ROOT_NAME
    make_folder_dataset(root, CLASSES, 10)
    for png in root.rglob("*.png"):
        png.rename(png.with_name(f"bild é {png.name}"))
    (root / CLASSES[0] / "zurück").symlink_to("..")  # a loop: fröhlich/zurück -> the data root
    (root / CLASSES[1] / "ループ").symlink_to(root / CLASSES[1])  # a link to its own folder
    exp = tmp_path / "exp ü.yaml"
    exp.write_text("run: {seed: 0, device: cpu, progress: false}\n"
                   f"data: {{source: folder, root: 'data/raw/{ROOT_NAME}', name: 'Gesichter Ü', image_size: 48, "
                   "landmarks: false}\n"
                   "model: {depth: 18, stem: imagenet, input_size: 48}\n"
                   "train: {epochs: 1, batch_size: 16, eval_batch_size: 64}\n"
                   "explain: {methods: [saliency], num_each: 2, metrics: {num_images: 4, steps: 4, "
                   "randomization_images: 2}}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "prepare", "--config", exp.name]) == 0
    metadata = pd.read_csv(tmp_path / "data/processed/Gesichter Ü/metadata.csv")
    assert len(metadata) == 30 and sorted(metadata["label"].unique()) == sorted(CLASSES)  # each file once
    assert all(p.split("/")[1].startswith("bild é ") for p in metadata["path"])
    assert main(["-q", "train", "--config", exp.name]) == 0
    run = tmp_path / "artifacts/runs/exp ü/latest"
    assert main(["-q", "evaluate", "--run-dir", str(run)]) == 0
    assert main(["-q", "explain", "--run-dir", str(run)]) == 0
    report = (tmp_path / "artifacts/reports/exp ü").glob("2*")
    summary = json.loads((next(report) / "test_summary.json").read_text())
    assert sorted(summary["per_class"]) == sorted(CLASSES)
    capsys.readouterr()

    (tmp_path / "sweep ü.yaml").write_text(SWEEP.format(name="Gesichter Ü 2"))
    res = subprocess.run([sys.executable, "-m", "xai_lab", "-q", "sweep", "--config", "sweep ü.yaml"], cwd=tmp_path,
                         env=cli_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    results = tmp_path / "ray_results" / "sweep ü 表情"
    board = pd.read_csv(results / "leaderboard.csv")
    assert set(board["dataset"]) == {"Gesichter Ü 2"} and (board["report"] == "ok").sum() == 1
    attrs = body_data(dump_dom(results / "index.html"))
    assert int(attrs["images"]) > 5 and attrs["broken"] == "0", attrs


def _ferplus_copy(tmp_path: Path) -> Path:
    src = SHARED / "ferplus-sample"
    raw = tmp_path / "raw"
    for folder in ("FER2013Train", "FER2013Valid"):
        (raw / folder).mkdir(parents=True)
        rows = (src / folder / "label.csv").read_text().splitlines()[:6]
        for row in rows:
            shutil.copy(src / folder / row.split(",")[0], raw / folder)
        (raw / folder / "label.csv").write_text("\n".join(rows) + "\n")
    return raw


def _prepare(tmp_path: Path, raw: Path, *overrides: str) -> subprocess.CompletedProcess:
    exp = tmp_path / "exp.yaml"
    data = {"source": "ferplus", "root": str(raw), "name": "plus", "processed_root": str(tmp_path / "processed"),
            "landmarks": False}
    exp.write_text("run: {progress: false}\ndata: " + json.dumps(data) + "\n")
    return subprocess.run([sys.executable, "-m", "xai_lab", "-q", "prepare", "--config", str(exp), *overrides],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_ferplus_label_rows_with_a_bad_vote_or_a_missing_column(tmp_path):
    raw = _ferplus_copy(tmp_path)
    train = raw / "FER2013Train" / "label.csv"
    rows = list(csv.reader(train.read_text().splitlines()))  # image, "(x, y, w, h)", 10 votes
    rows[2][4] = "two"  # line 3: a vote that is not a number
    rows[4] = rows[4][:-1]  # line 5: the last vote column missing
    with open(train, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    res = _prepare(tmp_path, raw)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "FER2013Train/label.csv line 3: expected 10 whole-number vote counts, got '2,0,two," in lines[0]
    assert "FER2013Train/label.csv line 5" in lines[0] and "11 fields, expected 12" in lines[0]
    res = _prepare(tmp_path, raw, "data.on_bad_row=skip")
    assert res.returncode == 0, res.stderr
    skipped = json.loads((tmp_path / "processed" / "plus" / "dataset.json").read_text())["skipped"]
    assert sorted(s["reason"].split(":")[0] for s in skipped) == ["FER2013Train/label.csv line 3",
                                                                  "FER2013Train/label.csv line 5"]
    assert os.path.exists(tmp_path / "processed" / "plus" / "metadata.csv")
