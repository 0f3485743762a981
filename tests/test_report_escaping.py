"""Names from the user's folders and YAML reach the sweep report as text, never as markup.

Class names are folder names of the user's dataset and the dataset name, sweep name, trial ids,
config values and error messages come from YAML or from the run: any of them may hold HTML or shell
metacharacters. The results folder the report reads is made by the project's own code on a tiny
folder dataset whose class folders carry such names: ``fit`` trains a run, the fan-out's
``report_trial`` evaluates, plots and explains it (every gallery, per class too), the leaderboard and
comparison writers write their files; then ``build_report`` renders the page and headless Chromium
opens it. About 30 s on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import make_folder_dataset
from report_browser import Elements, body_data, dump_dom, screenshot

CLASSES = ["<img src=x onerror=alert(1)>", "$(touch pwned);", "&lt;i&gt;sad", "100% #1?"]
DATASET = "ds\"'><svg onload=alert(2)>"
SWEEP = "esc<svg onload=alert(3)>"
TRIAL = "x'\"><i onmouseover=alert(4)>"
FAILED_TRIAL = "y&amp;<b>"
CONFIG_VALUE = "<svg onload=alert(5)>"
ERROR = "RuntimeError: <img src=y onerror=alert(6)> & $(rm -rf ~)"

# Every element the report's templates write; anything else was injected.
TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "h1", "em", "p", "nav", "a", "main", "h2", "h3",
    "h4", "h5", "div", "span", "b", "code", "small", "table", "thead", "tbody", "tr", "th", "td", "ul", "li",
    "img", "figure", "figcaption", "details", "summary", "section", "footer", "script",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A sweep results folder (leaderboard, sweep.yaml, reports/, comparison) for one reported trial and one
    that failed in training."""
    from sweeps.compare import write_comparison
    from sweeps.config import load_sweep, sweep_to_dict
    from sweeps.fanout import ReportJob, report_trial
    from sweeps.leaderboard import write_leaderboard
    from xai_lab.data.dataset import load_dataset
    from xai_lab.experiment import load_experiment
    from xai_lab.scores import report_scores
    from xai_lab.train import fit

    work = tmp_path_factory.mktemp("escaping")
    make_folder_dataset(work / "raw", CLASSES, 12, seed=3, size=32)
    (work / "exp.yaml").write_text(
        f"run: {{name: {json.dumps(CONFIG_VALUE)}, seed: 0, device: cpu, progress: false}}\n"
        f"data: {{source: folder, root: {work / 'raw'}, processed_root: {work / 'processed'},\n"
        f"       name: {json.dumps(DATASET)}, image_size: 32}}\n"
        "model: {depth: 8, input_size: 32}\n"
        "train: {epochs: 1, batch_size: 16, lr: 0.01, eval_batch_size: 64}\n"
        "explain: {methods: [saliency], num_each: 2, per_class: 1,\n"
        "          selection: [high_conf, low_conf, misclassified, per_class],\n"
        "          metrics: {num_images: 6, steps: 3, randomization_images: 2}}\n"
    )
    (work / "sweep.yaml").write_text(yaml.safe_dump({
        "name": SWEEP, "experiments": ["exp.yaml"],
        "space": {"run.name": {"type": "categorical", "choices": [CONFIG_VALUE]}},
    }))
    cfg = load_experiment(work / "exp.yaml")
    dataset = load_dataset(cfg.data)
    assert dataset.class_names == sorted(CLASSES) and dataset.name == DATASET
    summary = fit(cfg, dataset=dataset, run_dir=work / "run")

    results = work / "results"
    report = results / "reports" / DATASET / TRIAL
    job = ReportJob(dataset=DATASET, trial_id=TRIAL, checkpoint=str(work / "run"), methods=["saliency"],
                    split="test", num_each=2, maps_per_class=2, eval_max_images=0)
    for rel, data in report_trial(job, dataset).items():
        (report / rel).parent.mkdir(parents=True, exist_ok=True)
        (report / rel).write_bytes(data)
    sweep = load_sweep(work / "sweep.yaml")
    (results / "sweep.yaml").write_text(yaml.safe_dump(sweep_to_dict(sweep), sort_keys=False))

    import pandas as pd

    common = {"dataset": DATASET, "base": False, "run.name": CONFIG_VALUE, "failures": 0, "trial_dir": "",
              "checkpoint": ""}
    board = pd.DataFrame([
        {**common, "rank": 1, "trial_id": TRIAL, "status": "completed", "score": summary["best_val_macro_f1"],
         "best_val_macro_f1": summary["best_val_macro_f1"], "best_epoch": summary["best_epoch"],
         "epochs_run": summary["epochs_run"], "wall_seconds": summary["wall_seconds"],
         "images_per_second": summary["images_per_second"], "error": "", "report": "ok",
         **report_scores(report)},
        {**common, "rank": 2, "trial_id": FAILED_TRIAL, "status": "error", "score": float("nan"),
         "best_epoch": 0, "epochs_run": 0, "wall_seconds": 1.0, "images_per_second": float("nan"),
         "error": ERROR, "report": ""},
    ])
    write_leaderboard([board], results / "leaderboard.csv")
    assert write_comparison(results) is not None
    return results


def _check_no_injection(page: Elements) -> None:
    assert {t for t, _ in page.tags} <= TAGS, {t for t, _ in page.tags} - TAGS
    handlers = [(t, a) for t, a in page.tags if any(k.startswith("on") for k in a)]
    assert not handlers, handlers
    assert len(page.having("script")) == 1 and not page.having("script")[0]  # the report's own, inline
    for img in page.having("img"):
        assert set(img) == {"src", "alt", "loading"} or "class" in img, img
        assert img["src"].startswith(("reports/", "comparison", "regions_", "transfer")), img


def _check_names_are_text(page: Elements) -> None:
    for name in [*CLASSES, DATASET, SWEEP, TRIAL, FAILED_TRIAL, CONFIG_VALUE, ERROR]:
        assert name in page.text, name
    ids = {a["id"] for _, a in page.tags if "id" in a}
    links = [a["href"] for a in page.having("a") if a.get("href", "").startswith("#")]
    assert links and {h[1:] for h in links} <= ids  # every in-page link finds its target


def test_names_with_html_are_text_on_the_page(results, tmp_path):
    from sweeps.report import build_report

    index = build_report(results)
    source = Elements(index.read_text())
    _check_no_injection(source)
    _check_names_are_text(source)

    dumped = dump_dom(index)  # the page as the browser parsed it, after its script ran
    dom = Elements(dumped)
    _check_no_injection(dom)
    _check_names_are_text(dom)
    pngs = sorted(p.relative_to(results).as_posix() for p in results.rglob("*.png"))
    per_class = [p for p in pngs if "/per_class/" in p]
    assert len(per_class) == len(CLASSES)  # file names made of the class names
    assert len(dom.having("img")) == len(pngs)
    loaded = body_data(dumped)
    assert loaded["images"] == str(len(pngs)) and loaded["broken"] == "0", loaded
    assert not list(Path.cwd().glob("pwned*")) and not list(results.rglob("pwned"))
    assert not dom.having(id="transfer") and "Transfer" not in dom.text  # one dataset: no empty transfer section

    shot = tmp_path / "escaping.png"
    screenshot(index, shot)
    assert shot.stat().st_size > 20_000


def test_figures_draw_names_with_dollars_and_braces_as_written(tmp_path):
    """A class named like a formula is drawn as text: no mathtext error, no mangled title."""
    import matplotlib.pyplot as plt
    import numpy as np

    from xai_lab.plots import plot_confusion

    names = ["$(touch pwned);", "$\\frac{1$", "plain"]
    plot_confusion(np.eye(3), names, tmp_path / "cm.png", title="$x^2$ run")
    assert (tmp_path / "cm.png").stat().st_size > 0
    fig, ax = plt.subplots()
    ax.set_title("$\\frac{1$")  # a broken formula: matplotlib alone raises when drawing it
    from xai_lab.plots import save_figure

    save_figure(fig, tmp_path / "t.png")
    assert (tmp_path / "t.png").is_file()
