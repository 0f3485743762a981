"""Trial packing: the same trial run 1, 2, 4 and 8 at a time through the sweep, sharing one device.

On a GPU each level runs n identical trials at once with ``resources.gpu = 1/n`` (1, 0.5, 0.25,
0.125: Ray packs them onto the one GPU) and reports the aggregate training images/s (the sum of
the trials' own rates while they share the GPU), the end-to-end images/s and the sweep's wall
time, and each trial's peak GPU memory. These figures set the packing rule of
``resources.gpu: auto`` (:func:`sweeps.resources.packing_fraction`, docs/sweeps.md).

Packing is a GPU measurement. Without a GPU the same levels run with CPU fractions
(``resources.cpu = cores/n``, each trial one thread), which measures the sweep machinery's cost of
running trials side by side on shared cores, not GPU packing; the output says so (``mode``).
Prints one JSON line.

    python benchmarks/packing.py                                  # ResNet18 at 48 px, levels 1,2,4,8
    python benchmarks/packing.py --depth 34 --input-size 112 --levels 1,2,4
    python benchmarks/packing.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from identical_trials import TrialSpec, run_identical_trials  # noqa: E402


def _levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"--levels must be whole numbers >= 1 separated by commas, got {text!r}")
    return levels


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=_levels, default=[1, 2, 4, 8], help="trials at once, e.g. 1,2,4,8")
    p.add_argument("--depth", type=int, default=18, choices=[18, 34, 50])
    p.add_argument("--input-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-per-class", type=int, default=None,
                   help="synthfaces images per class (default: 600 on a GPU, 40 on the CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on a GPU, 32 on the CPU")
    p.add_argument("--smoke", action="store_true", help="tiny: checks that it runs, not how fast")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    gpu = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    if args.smoke:
        args.levels, args.epochs, args.n_per_class, args.batch_size = [1, 2], 1, 8, 16
    n_per_class = args.n_per_class or (600 if gpu else 40)
    batch_size = args.batch_size or (128 if gpu else 32)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    total_cpu = ray.cluster_resources().get("CPU", 1.0)

    rows, dataset = [], None
    with tempfile.TemporaryDirectory(prefix="xai-packing-") as tmp:
        for n in args.levels:
            if gpu:
                cpu, gpu_share, device = max(1.0, float(int(total_cpu // n))), 1.0 / n, "cuda"
            else:
                cpu, gpu_share, device = total_cpu / n, 0.0, "cpu"
            spec = TrialSpec(n_trials=n, concurrent=n, epochs=args.epochs, n_per_class=n_per_class,
                             depth=args.depth, input_size=args.input_size, batch_size=batch_size,
                             cpu=round(cpu, 4), gpu=gpu_share, device=device)
            out = run_identical_trials(Path(tmp), f"pack{n}", spec, dataset=dataset)
            dataset = dataset or ray.put(out["dataset"])
            trials = out["trials"]
            rates = [t["images"] / t["train_s"] for t in trials if t["train_s"] > 0]
            rows.append({
                "trials_at_once": n,
                "gpu_fraction": round(gpu_share, 4),
                "cpu_per_trial": round(cpu, 4),
                "trials_ok": sum(t["status"] == "ok" for t in trials),
                "aggregate_img_per_s": round(sum(rates), 1),
                "per_trial_img_per_s": round(sum(rates) / max(1, len(rates)), 1),
                "end_to_end_img_per_s": round(sum(t["images"] for t in trials) / out["wall_s"], 1),
                "sweep_wall_s": round(out["wall_s"], 2),
                "peak_gpu_mem_mb_per_trial": max((t.get("peak_gpu_mem_mb") or 0 for t in trials), default=0)
                if gpu else None,
            })
    if started_here:
        ray.shutdown()
    one = rows[0]["aggregate_img_per_s"] if rows and rows[0]["trials_at_once"] == 1 else None
    for row in rows:
        row["speedup_vs_one"] = round(row["aggregate_img_per_s"] / one, 3) if one else None
    from sweeps.resources import packing_fraction
    from xai_lab.config import ModelConfig

    result = {
        "benchmark": "packing",
        "mode": "gpu-fractions" if gpu else "cpu-fractions",
        "note": ("trials packed on one GPU with resources.gpu = 1/n" if gpu else
                 "packing is a GPU measurement: no GPU here, so n trials shared the CPU cores "
                 "(resources.cpu = cores/n, one thread each); this measures the sweep's cost of running "
                 "trials side by side, not GPU packing. Rerun on a GPU for the packing rule."),
        "levels": rows,
        "auto_gpu_fraction": packing_fraction(ModelConfig(depth=args.depth, input_size=args.input_size)),
        "device": torch.cuda.get_device_name(0) if gpu else f"cpu ({platform.machine()}, {cores} cores)",
        "settings": {"depth": args.depth, "input_size": args.input_size, "epochs": args.epochs,
                     "n_per_class": n_per_class, "batch_size": batch_size, "smoke": args.smoke,
                     "torch": torch.__version__, "ray": ray.__version__},
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
