"""The recommended FER recipe, one command: train and test it on full FER2013 and on FER+.

Trains the recipe below through the project's own :func:`xai_lab.train.fit` on each dataset,
then scores the run's ``best.pt`` on the dataset's test split with
:func:`xai_lab.evaluate.evaluate_run`, so the figures are the ones ``xai-lab evaluate --run-dir
<run>`` reports (flip TTA included, from the run's ``train.tta_flip``). Prints one JSON line per
dataset as it finishes (``dataset``, ``test_accuracy``, ``test_macro_f1``, ``train_seconds``,
``epochs``, ``images_per_second``, ``device``, ``config``, ``settings``, ...), then one summary line
``{"benchmark": "fer_recipe", "results": [...], ...}``.

    python benchmarks/fer_recipe.py                                  # FER2013 and FER+, ~8 min on one H100/H200
    python benchmarks/fer_recipe.py --datasets ferplus --ferplus-root /data/ferplus
    python benchmarks/fer_recipe.py --epochs 60 train.lr=0.05        # dotted overrides go on top of the recipe
    python benchmarks/fer_recipe.py --smoke                          # ~20 s on a CPU: the samples in ../shared

Data (docs/datasets.md): FER2013 as the Kaggle image folders ``data/raw/fer2013/{train,test}/<class>/*.jpg``
(``test/``, PublicTest + PrivateTest, 7,178 images, is the test set; val is 1/8 of ``train/``, carved
by configs/data/fer2013.yaml), FER+ as ``data/raw/ferplus/FER2013{Train,Valid,Test}/`` with majority
labels (Barsoum et al. 2016) and its own train/valid/test. A missing folder is one line on stderr and
exit code 2. Each dataset is prepared once into ``data/processed/`` (the audit is left out here: run
``xai-lab audit``); runs and reports go to ``artifacts/{runs,reports}/fer_recipe_<dataset>/``.

The recipe (:data:`RECIPE`, on top of configs/experiments/exp010_resnet18_fer2013.yaml and
exp020_resnet18_ferplus.yaml): torchvision ResNet18 with the small stem at 48 px; on-GPU
augmentation at strength 0.6; SGD + Nesterov (momentum 0.9, lr 0.1, weight decay 5e-4, batch 256)
on the one-cycle schedule (a quarter of the epochs rising); label smoothing 0.1; mixup (0.2) or
CutMix (1.0) on half of the batches; an EMA of the weights (0.999: ~1,000 steps, ~10 epochs here),
which is validated and saved; flip TTA at validation and test; bf16 autocast and channels_last
(the defaults on CUDA); no early stopping, no class weighting; ``last.pt`` written once, at the end.
The same run by hand: ``xai-lab train --config configs/experiments/exp010_resnet18_fer2013.yaml``
followed by the overrides in :data:`RECIPE` (printed in ``settings.recipe``).

Epochs, the arithmetic (110 by default). FER2013 has 28,709 training images, of which 7/8 (25,120)
are trained on: 98 steps of 256 per epoch. The reference: a plain 30-epoch ResNet18 (small stem,
48 px, on-GPU augmentation, flip TTA) trained in about 40 s on one H200, 30 x 25.1k = 753k images,
i.e. about 18,800 img/s (21,500 if counted on all 28.7k; the design's figure for ResNet18 at 48 px,
bs 128, is 18,000). Taking the lower one, and ~10% more per step for the EMA and the mixing, plus
~0.15 s of validation (3,589 images, twice with flip TTA) per epoch: 25.1k / 17k + 0.15 = ~1.6 s an
epoch, so 110 epochs are ~180 s. FER+ with majority labels trains on about as many images
(roughly 25k of its 28.7k; the rest have no majority, or it is "unknown" / "not a face"): another
~180 s. Both: ~6 min of training (~7 min if the recipe costs 25% more per step than the reference;
an H100 SXM has the H200's compute). The first run also decodes both datasets (~72k small images,
8 threads: well under a minute); later runs reuse ``data/processed/``. Total: under 10 minutes.

Targets (one H100-class GPU): FER2013 test accuracy >= 0.735, FER+ >= 0.88. Not measured here
(the development machine has no GPU): see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from xai_lab.config import ExperimentConfig, parse_override
from xai_lab.data.dataset import Dataset, load_dataset
from xai_lab.data.prepare import config_sha1, prepare, processed_dir
from xai_lab.device import resolve_device
from xai_lab.errors import UserError
from xai_lab.evaluate import evaluate_run
from xai_lab.experiment import load_experiment
from xai_lab.train import fit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

EPOCHS = 110

# The recipe, every key that matters, as dotted overrides (the ones ``xai-lab train`` takes).
# train.epochs, train.warmup_epochs and train.checkpoint_every follow --epochs (see recipe()).
RECIPE = [
    "model.name=resnet18",            # torchvision resnet18, from scratch
    "model.pretrained=false",
    "model.stem=small",               # 3x3/1 first conv, no max-pool: the 48 px face keeps its resolution
    "model.input_size=48",
    "augment.strength=0.6",           # on-GPU affine + flip + brightness/contrast + erasing, whole batches
    "train.batch_size=256",
    "train.optimizer=sgd",            # Nesterov momentum (xai_lab.train.make_optimizer)
    "train.momentum=0.9",
    "train.lr=0.1",
    "train.weight_decay=5e-4",        # not on biases and BatchNorm weights
    "train.scheduler=onecycle",       # lr/25 -> lr (cosine rise) -> lr/1e4 (cosine fall)
    "train.label_smoothing=0.1",
    "train.mixup=0.2",                # Beta(0.2, 0.2)
    "train.cutmix=1.0",               # Beta(1, 1) box area
    "train.mix_prob=0.5",             # half the batches mixed, each by mixup or CutMix
    "train.ema_decay=0.999",          # EMA of the weights (and BN statistics): validated, saved, tested
    "train.ema_warmup=true",
    "train.tta_flip=true",            # validation and test average each image with its mirror
    "train.amp=true",                 # bf16 autocast on CUDA
    "train.channels_last=true",       # on CUDA
    "train.sampler=none",
    "train.class_weighted_loss=false",
    "train.early_stopping_patience=0",  # one-cycle gains most in its last, low-lr epochs
    "run.device=auto",
]

DATASETS = {
    "fer2013": {
        "experiment": "configs/experiments/exp010_resnet18_fer2013.yaml",
        "root": "data/raw/fer2013",
        "smoke_root": SHARED / "fer2013-sample",
        "flag": "--fer2013-root",
        "overrides": ["data.layout=folders"],
        "target_test_accuracy": 0.735,
        "get": "the Kaggle image folders of FER2013 (kaggle.com/datasets/msambare/fer2013: train/ and test/ "
               "with one folder per class) go there; see docs/datasets.md",
    },
    "ferplus": {
        "experiment": "configs/experiments/exp020_resnet18_ferplus.yaml",
        "root": "data/raw/ferplus",
        "smoke_root": SHARED / "ferplus-sample",
        "flag": "--ferplus-root",
        "overrides": ["data.ferplus.label_mode=majority"],
        "target_test_accuracy": 0.88,
        "get": "FER+ (github.com/microsoft/FERPlus: its data/FER2013{Train,Valid,Test}/label.csv, with the PNGs "
               "rendered there from fer2013.csv by its src/generate_training_data.py) goes there; see "
               "docs/datasets.md",
    },
}

# --smoke: the same code, tiny: 8 images per class and split of ../shared/datasets/{fer2013,ferplus}-sample,
# one epoch of small batches at 16 px, everything written under a temporary folder that is removed.
SMOKE = [
    "train.batch_size=16",
    "train.eval_batch_size=64",
    "data.limit_per_class=8",         # the fewest that leave one val image per class when val is carved
    "model.input_size=16",            # resized inside the model, as at 48: the same code, a ninth of the CPU
    "run.progress=false",
    "run.tensorboard=false",
]


def recipe(epochs: int) -> list[str]:
    """:data:`RECIPE` with the keys that follow the epoch count."""
    return [*RECIPE, f"train.epochs={epochs}", f"train.warmup_epochs={epochs / 4:g}",
            f"train.checkpoint_every={epochs}"]  # last.pt/best.pt once, at the end (best kept on the device)


def check_root(name: str, root: Path) -> None:
    """One line naming the folder and where the data comes from, when ``root`` cannot be the dataset."""
    spec = DATASETS[name]
    if not root.is_dir():
        raise UserError(f"{name} dataset folder not found: {root} ({spec['flag']}); {spec['get']}")
    if name == "fer2013" and not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise UserError(f"{name}: {root} holds no train/ and test/ folders ({spec['flag']}); {spec['get']}")
    if name == "ferplus" and not ((root / "FER2013Train").is_dir() or (root / "fer2013new.csv").is_file()):
        raise UserError(f"{name}: {root} holds no FER2013Train/ (nor fer2013new.csv) ({spec['flag']}); "
                        f"{spec['get']}")


def load_prepared(cfg: ExperimentConfig) -> Dataset:
    """The dataset of ``cfg``, prepared first (without the audit: ``xai-lab audit`` does that) if needed."""
    out = processed_dir(cfg.data)
    try:
        info = json.loads((out / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError):
        info = None
    cache_ok = info is not None and (out / "cache" / str(info.get("cache_key")) / "images.npy").is_file()
    if info is None or info.get("config_sha1") != config_sha1(cfg.data) or not cache_ok:
        prepare(cfg.data, progress=cfg.run.progress, audit=False)
    return load_dataset(cfg.data, progress=cfg.run.progress)


def config_summary(cfg: ExperimentConfig) -> dict:
    t, m = cfg.train, cfg.model
    return {
        "model": m.name, "stem": m.stem, "input_size": m.input_size, "augment_strength": cfg.augment.strength,
        "optimizer": f"{t.optimizer} (nesterov)" if t.optimizer == "sgd" else t.optimizer, "lr": t.lr,
        "momentum": t.momentum, "weight_decay": t.weight_decay, "batch_size": t.batch_size,
        "scheduler": t.scheduler, "epochs": t.epochs, "warmup_epochs": t.warmup_epochs,
        "label_smoothing": t.label_smoothing, "mixup": t.mixup, "cutmix": t.cutmix, "mix_prob": t.mix_prob,
        "ema_decay": t.ema_decay, "tta_flip": t.tta_flip, "amp_bf16": t.amp, "channels_last": t.channels_last,
        "data_source": cfg.data.source, "data_root": cfg.data.root, "label_mode": (
            cfg.data.ferplus.label_mode if cfg.data.source == "ferplus" else None),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def run(argv: list[str] | None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="fer2013,ferplus", help="which, comma-separated: fer2013, ferplus")
    p.add_argument("--fer2013-root", default=None, help="Kaggle image folders (default data/raw/fer2013)")
    p.add_argument("--ferplus-root", default=None, help="FER+ folders (default data/raw/ferplus)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"default {EPOCHS} (see the docstring's arithmetic)")
    p.add_argument("--output-root", default="artifacts", help="runs and reports go under it")
    p.add_argument("--smoke", action="store_true", help="tiny, on the samples in ../shared: checks that it runs")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides applied after the recipe")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown or not names:
        raise UserError(f"--datasets must name some of {', '.join(DATASETS)}, got {args.datasets!r}")
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    for text in args.overrides:
        parse_override(text)  # a malformed one is one line, before anything runs
    epochs = 1 if args.smoke else args.epochs
    roots = {"fer2013": args.fer2013_root, "ferplus": args.ferplus_root}
    for name in names:
        given = roots[name]
        roots[name] = Path(given) if given else (DATASETS[name]["smoke_root"] if args.smoke
                                                 else Path(DATASETS[name]["root"]))
        check_root(name, roots[name])

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="xai-fer-recipe-")) if args.smoke else None
    try:
        output_root = str(tmp) if tmp else args.output_root
        # Every dataset is checked and prepared before any training: bad data stops the script at once.
        configs, datasets, prepare_s = {}, {}, {}
        for name in names:
            spec = DATASETS[name]
            overrides = [*recipe(epochs), *spec["overrides"], f"data.root={roots[name]}",
                         f"run.name=fer_recipe_{name}", f"run.output_root={output_root}"]
            if tmp:
                overrides += [*SMOKE, f"data.processed_root={tmp / 'processed'}"]
            cfg = load_experiment(ROOT / spec["experiment"], [*overrides, *args.overrides])
            t0 = time.perf_counter()
            configs[name], datasets[name] = cfg, load_prepared(cfg)
            prepare_s[name] = time.perf_counter() - t0
        device = resolve_device(configs[names[0]].run.device)
        if device.type == "cpu" and not args.smoke:
            print(f"fer_recipe: warning: no GPU; {epochs} epochs on the CPU take hours", file=sys.stderr)

        rows = []
        for name in names:
            cfg, data = configs[name], datasets[name]
            summary = fit(cfg, dataset=data)
            t0 = time.perf_counter()
            test = evaluate_run(summary["run_dir"], dataset=data, split="test")
            eval_s = time.perf_counter() - t0
            row = {
                "benchmark": "fer_recipe",
                "dataset": name,
                "test_accuracy": round(test["accuracy"], 4),
                "test_macro_f1": round(test["macro_f1"], 4),
                "train_seconds": round(summary["train_seconds"], 2),
                "epochs": summary["epochs_run"],
                "images_per_second": round(summary["images_per_second"], 1),
                "device": device_name(device),
                "target_test_accuracy": DATASETS[name]["target_test_accuracy"],
                "n_train": len(data.splits["train"]), "n_val": len(data.splits["val"]), "n_test": test["n"],
                "classes": data.class_names,
                "best_epoch": summary["best_epoch"],
                "best_val_macro_f1": round(summary["best_val_macro_f1"], 4),
                "fit_wall_seconds": round(summary["wall_seconds"], 2),
                "prepare_seconds": round(prepare_s[name], 2),
                "eval_seconds": round(eval_s, 2),
                "gpu_mem_peak_mb": round(summary["final"].get("gpu_mem_peak_mb", 0.0), 1),
                "run_dir": None if tmp else summary["run_dir"],
                "config": config_summary(cfg),
                "settings": {"smoke": args.smoke, "torch": torch.__version__},
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "fer_recipe",
        "results": rows,
        "device": device_name(device),
        "wall_seconds": round(time.perf_counter() - t_start, 2),
        "settings": {"smoke": args.smoke, "datasets": names, "epochs": epochs, "recipe": recipe(epochs),
                     "smoke_overrides": SMOKE if args.smoke else [], "extra_overrides": list(args.overrides),
                     "roots": {n: str(roots[n]) for n in names}, "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> dict:
    """Run it; bad input (a missing folder, a config key) is one line on stderr and exit code 2, as in the CLI."""
    try:
        result = run(argv)
    except UserError as e:
        print(f"fer_recipe: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    main()
