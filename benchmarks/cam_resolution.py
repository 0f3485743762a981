"""Resolution study: how ``model.input_size`` and ``model.stem`` change where Grad-CAM points.

At 48 px a standard ResNet's last block is 2x2 (imagenet stem), so Grad-CAM can only name a
quadrant; resizing the input to 112 px (4x4) or using the small stem (6x6 at 48 px, 14x14 at
112 px) gives it a finer grid. For each ``size:stem`` pair this trains a ResNet18 on synthfaces
with plain ``fit`` (one after the other), then scores Grad-CAM and Grad-CAM++ on the last block
and, as a free extra, on ``layer3`` (a finer grid) against the ground-truth masks: pointing
game and mask IoU beside random maps. Writes ``<out>/results.csv``,
``<out>/cam_resolution.png`` (the scores per configuration) and ``<out>/cam_examples.png``
(the same test faces under each configuration's Grad-CAM).

    python benchmarks/cam_resolution.py                               # CPU-sized defaults
    python benchmarks/cam_resolution.py --configs 48:imagenet,112:imagenet,48:small,112:small --epochs 20
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from xai_lab.atomic import atomic_write_with  # noqa: E402
from xai_lab.config import ExplainConfig, ExplainMetricsConfig  # noqa: E402
from xai_lab.experiment import load_experiment
from xai_lab.explain.drawing import draw_comparison  # noqa: E402
from xai_lab.explain.study import study_row  # noqa: E402
from xai_lab.plots import save_figure  # noqa: E402

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
METHODS = ["gradcam", "gradcam_pp"]


def explain_section(layer: str, num_images: int) -> ExplainConfig:
    return ExplainConfig(methods=list(METHODS), num_each=4, selection=["high_conf"], class_means=4, layer=layer,
                         metrics=ExplainMetricsConfig(num_images=num_images, steps=8, randomization_images=4))


def example_maps(run_dir: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Grad-CAM (last block) of ``images`` for their true class under the run's best model."""
    from xai_lab.checkpoint import model_from_checkpoint
    from xai_lab.explain.explainers import explain_batched

    model, *_ = model_from_checkpoint(Path(run_dir) / "best.pt", "cpu")
    x = torch.from_numpy(images).float().div(255)
    return explain_batched("gradcam", model, x, torch.from_numpy(labels)).numpy()


def plot_scores(table: pd.DataFrame, path: Path) -> None:
    """Pointing game and mask IoU per configuration and layer, random maps as the dashed line."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    labels = [f"{r.input_size}px {r.stem}\n{r.layer} ({r.cam_grid})" for r in table.itertuples()]
    xs = np.arange(len(table))
    for ax, key in zip(axes, ["pointing_game", "mask_iou"], strict=True):
        for j, method in enumerate(METHODS):
            ax.bar(xs + (j - 0.5) * 0.38, table[f"{method}.{key}"], width=0.38, label=method)
        ax.plot(xs, table[f"random.{key}"], "k--", marker="_", ms=20, label="random maps")
        ax.set_xticks(xs, labels, fontsize=7)
        ax.set_title(f"{key} on synthfaces masks (test)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=EXP, help="the experiment (synthfaces)")
    p.add_argument("--configs", default="48:imagenet,112:imagenet,48:small", help="size:stem pairs, in this order")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--num-images", type=int, default=64, help="test images scored")
    p.add_argument("--reuse", action="append", default=[], metavar="SIZE:STEM=RUN_DIR",
                   help="explain this finished run of the same settings instead of training (repeatable)")
    p.add_argument("--out", default="artifacts/studies/cam_resolution")
    p.add_argument("overrides", nargs="*", help="more dotted overrides for every run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    rows, examples = [], {}
    reuse = dict(item.split("=", 1) for item in args.reuse)
    for pair in args.configs.split(","):
        size, stem = pair.split(":")
        cfg = load_experiment(args.config, [
            f"data.synthfaces.n_per_class={args.n_per_class}", f"train.epochs={args.epochs}",
            f"model.input_size={size}", f"model.stem={stem}", "run.progress=false",
            f"run.name=cam_{size}_{stem}", f"run.output_root={out}", *args.overrides])
        vary = {"input_size": int(size), "stem": stem}
        row = study_row(cfg, explain_section("", args.num_images), {**vary, "layer": "layer4"},
                        report_root=out / "reports", run_dir=reuse.get(pair))
        rows.append(row)
        # the same model, Grad-CAM one stage earlier (no training)
        from xai_lab.data.dataset import load_dataset
        from xai_lab.explain.run import explain_run
        from xai_lab.explain.study import with_clean_labels

        data = with_clean_labels(load_dataset(cfg.data), cfg.data)
        l3 = explain_run(row["run_dir"], out / "reports" / f"{cfg.run.name}_layer3", dataset=data,
                         explain_config=explain_section("backbone.layer3", args.num_images))
        row3 = {**{k: v for k, v in row.items() if "." not in k}, "layer": "layer3", "report_dir": str(l3.report_dir)}
        for method, entry in l3.metrics.items():
            row3["cam_grid"] = "x".join(map(str, entry["cam_grid"]))
            for key in ("pointing_game", "mask_iou", "deletion_auc", "insertion_auc", "randomization_spearman"):
                row3[f"{method}.{key}"], row3[f"random.{key}"] = entry[key], entry["random_baseline"][key]
        rows.append(row3)
        test = data.splits["test"]
        pick = np.array([np.flatnonzero(test.labels == k)[0] for k in range(len(data.class_names))])
        examples[f"{size}px {stem} ({row['cam_grid']})"] = example_maps(row["run_dir"], test.images[pick],
                                                                        test.labels[pick])
        table = pd.DataFrame(rows)
        atomic_write_with(out / "results.csv", lambda path, t=table: t.to_csv(path, index=False))
        plot_scores(table, out / "cam_resolution.png")
        draw_comparison(test.images[pick], examples, [data.class_names[k] for k in test.labels[pick]],
                        out / "cam_examples.png", "Grad-CAM (last block, true class) per input size and stem")
    print(f"{out / 'results.csv'}\n{out / 'cam_resolution.png'}\n{out / 'cam_examples.png'}")
    return table


if __name__ == "__main__":
    main()
