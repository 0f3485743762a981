"""Sweep overhead: the wall time of a sweep of N short trials against the trials' own compute.

A trial's own compute is what any runner would have to spend: its epochs' training and
validation seconds, as ``fit`` measures them. Everything else is overhead, split into

* ``ray_start_s``: starting the local Ray (0 when one was already running);
* ``dataset_s``: preparing/loading the dataset and putting it into the object store (once);
* ``in_trial_overhead_s``: inside the trials but not compute (model build, data to the device,
  checkpoints written and handed to Tune, reports), summed over trials;
* ``outside_trial_s``: the rest of the Tune run's wall time times its concurrency (actor
  start-up and imports, Tune's scheduling, experiment snapshots, loggers).

``overhead_fraction`` is ``1 - compute / (concurrency x total wall)``: the share of the machine's
trial slots not spent on trial compute. Prints one JSON line.

    python benchmarks/sweep_overhead.py                        # 8 trials x 3 epochs, one at a time
    python benchmarks/sweep_overhead.py --trials 16 --epochs 10 --n-per-class 1000   # ~30 s trials on a GPU
    python benchmarks/sweep_overhead.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from identical_trials import TrialSpec, run_identical_trials, write_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=1, help="trials in flight at once")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-per-class", type=int, default=60, help="synthfaces images per class (7 classes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny: checks that it runs, not how fast")
    args = p.parse_args(argv)
    if args.smoke:
        args.trials, args.concurrent, args.epochs, args.n_per_class, args.batch_size = 2, 1, 1, 8, 16
    for name in ("trials", "concurrent", "epochs", "n_per_class", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    from sweeps.driver import start_ray

    t0 = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=max(2, args.concurrent), include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
    start_ray(None, False, quiet=True)
    ray_start = time.perf_counter() - t0
    gpu = "auto" if args.device != "cpu" else 0.0
    spec = TrialSpec(n_trials=args.trials, concurrent=args.concurrent, epochs=args.epochs,
                     n_per_class=args.n_per_class, batch_size=args.batch_size, cpu=1.0, gpu=gpu,
                     device=args.device)
    with tempfile.TemporaryDirectory(prefix="xai-overhead-") as tmp:
        from sweeps.config import base_experiments, load_sweep
        from xai_lab.data.dataset import load_dataset


        t1 = time.perf_counter()
        cfg = load_sweep(write_sweep(Path(tmp), "overhead", spec))
        dataset = ray.put(load_dataset(next(iter(base_experiments(cfg).values())).data))
        dataset_s = time.perf_counter() - t1
        out = run_identical_trials(Path(tmp), "overhead", spec, dataset=dataset)
    if started_here:
        ray.shutdown()
    trials = out["trials"]
    compute = sum(t["compute_s"] for t in trials)
    in_trial = sum(t["time_total_s"] - t["compute_s"] for t in trials)
    total_wall = ray_start + dataset_s + out["wall_s"]
    result = {
        "benchmark": "sweep_overhead",
        "trials": len(trials),
        "trials_ok": sum(t["status"] == "ok" for t in trials),
        "concurrent": args.concurrent,
        "total_wall_s": round(total_wall, 2),
        "tune_wall_s": round(out["wall_s"], 2),
        "trial_compute_s": round(compute, 2),
        "mean_trial_compute_s": round(compute / max(1, len(trials)), 2),
        "overhead_fraction": round(1 - compute / (args.concurrent * total_wall), 3),
        "tune_overhead_fraction": round(1 - compute / (args.concurrent * out["wall_s"]), 3),
        "ray_start_s": round(ray_start, 2),
        "dataset_s": round(dataset_s, 2),
        "in_trial_overhead_s": round(in_trial, 2),
        "outside_trial_s": round(args.concurrent * out["wall_s"] - sum(t["time_total_s"] for t in trials), 2),
        "checkpoint_mb_per_trial": round(sum(t["checkpoint_mb"] for t in trials) / max(1, len(trials)), 2),
        "resources_per_trial": out["resources"],
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu"
                   else f"cpu ({platform.machine()}, {os.cpu_count()} cores)"),
        "settings": {"epochs": args.epochs, "n_per_class": args.n_per_class, "batch_size": args.batch_size,
                     "depth": spec.depth, "input_size": spec.input_size, "smoke": args.smoke,
                     "torch": torch.__version__, "ray": ray.__version__},
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
