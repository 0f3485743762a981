"""Run N identical synthfaces trials through the real sweep machinery and read back what each did.

Shared by ``packing.py`` and ``sweep_overhead.py``: a sweep YAML is written into a scratch
folder (no search space, so every trial is the same base experiment; a FIFO scheduler, so every
trial runs all its epochs), checked by :func:`sweeps.config.load_sweep`, and run with
:func:`sweeps.driver.run_tuner` (``tune.with_parameters``, the resources rule, checkpoints,
Tune's loggers: exactly what ``xai-lab sweep`` does, without the fan-out). The data (generated
and prepared) lives in the scratch folder too, never in the project's ``data/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "configs" / "experiments" / "exp000_resnet18_saliency_synthfaces.yaml"


@dataclass
class TrialSpec:
    """The one trial every run repeats, and how the sweep runs it."""

    n_trials: int = 4
    concurrent: int = 1
    epochs: int = 2
    n_per_class: int = 40  # synthfaces images per class (7 classes; 70% train)
    depth: int = 18
    input_size: int = 48
    batch_size: int = 32
    cpu: float | str = 1.0  # resources.cpu per trial
    gpu: float | str = 0.0  # resources.gpu per trial
    device: str = "auto"


def write_sweep(scratch: Path, name: str, spec: TrialSpec) -> Path:
    """The sweep YAML of ``spec`` in ``scratch``; returns its path."""
    overrides = [
        f"data.synthfaces.n_per_class={spec.n_per_class}",
        f"data.root={scratch / 'raw' / 'synthfaces'}",
        f"data.processed_root={scratch / 'processed'}",
        f"model.depth={spec.depth}",
        f"model.input_size={spec.input_size}",
        "model.stem=imagenet",
        f"train.batch_size={spec.batch_size}",
        "train.warmup_epochs=0",
        f"run.device={spec.device}",
    ]
    sweep = {
        "name": name,
        "experiments": [{"config": str(EXPERIMENT), "overrides": overrides}],
        "search": {"num_samples": spec.n_trials, "max_concurrent": spec.concurrent, "seed": 0},
        "scheduler": {"type": "fifo", "max_epochs": spec.epochs},
        "resources": {"cpu": spec.cpu, "gpu": spec.gpu},
        "fanout": {"top_k": 0},
        "max_failures": 0,
        "storage": str(scratch / "ray_results"),
    }
    path = scratch / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def run_identical_trials(scratch: Path, name: str, spec: TrialSpec, dataset=None) -> dict:
    """Run ``spec`` once on the connected Ray.

    Args:
        scratch: a scratch folder (the sweep's storage and data go there).
        name: the sweep's name (one folder per call).
        dataset: the prepared dataset, or an object-store reference to it (loaded when None).

    Returns:
        ``wall_s`` (the Tune run), ``resources`` (per trial), ``trials`` (per trial: status,
        ``compute_s`` = its epochs' training + validation seconds, ``images``, ``time_total_s``
        as Tune measured it inside the trial, ``checkpoint_mb``) and the dataset (for reuse).
    """
    from sweeps.config import base_experiments, load_sweep
    from sweeps.driver import run_tuner, sweep_paths
    from sweeps.resources import trial_resources
    from xai_lab.data.dataset import load_dataset

    cfg = load_sweep(write_sweep(scratch, name, spec))
    (name_, base), = base_experiments(cfg).items()
    if dataset is None:
        dataset = load_dataset(base.data)
    t0 = time.perf_counter()
    grid = run_tuner(cfg, sweep_paths(cfg), name_, base, dataset, resume=False, verbose=0)
    wall = time.perf_counter() - t0
    trials = []
    for result in grid:
        df = result.metrics_dataframe
        ckpt_mb = 0.0
        if result.checkpoint is not None and "://" not in str(result.checkpoint.path):
            ckpt_mb = sum(p.stat().st_size for p in Path(result.checkpoint.path).rglob("*") if p.is_file()) / 2**20
        epochs = 0 if df is None else len(df)
        val = df["val_seconds"].sum() if df is not None and "val_seconds" in df else 0.0
        trials.append({
            "status": "error" if result.error else "ok",
            "epochs": epochs,
            "compute_s": float(df["epoch_seconds"].sum() + val) if epochs else 0.0,
            "train_s": float(df["epoch_seconds"].sum()) if epochs else 0.0,
            "images": int((df["images_per_second"] * df["epoch_seconds"]).sum().round()) if epochs else 0,
            "time_total_s": float(df["time_total_s"].iloc[-1]) if epochs else 0.0,
            "checkpoint_mb": round(ckpt_mb, 2),
            "peak_gpu_mem_mb": float(df["gpu_mem_peak_mb"].max()) if epochs and "gpu_mem_peak_mb" in df else None,
        })
    return {"wall_s": wall, "resources": trial_resources(cfg, base.model), "trials": trials, "dataset": dataset}
