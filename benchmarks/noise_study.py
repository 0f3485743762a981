"""Noise study: how accuracy and every explanation metric change as synthfaces labels get noisier.

Trains one ResNet per ``label_noise`` level with plain ``fit`` (sequentially), scores the test
split against the clean labels, explains it with an explain YAML, and writes
``<out>/results.csv`` (one row per level) and ``<out>/noise_study.png`` (accuracy and each
metric against the noise level, random-map baselines dashed). The sweep
``configs/sweeps/noise_study.yaml`` asks the same question through Ray Tune.

    python benchmarks/noise_study.py                                   # CPU-sized defaults
    python benchmarks/noise_study.py --noise 0,0.1,0.2,0.3,0.4,0.5,0.6 --n-per-class 300 --epochs 20
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from xai_lab.atomic import atomic_write_with
from xai_lab.config import ExplainConfig, build_dataclass, read_yaml
from xai_lab.experiment import load_experiment
from xai_lab.explain.study import plot_against, study_row

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=EXP, help="the experiment (synthfaces)")
    p.add_argument("--explain", default="configs/explain/study.yaml", help="explain YAML: methods and metrics")
    p.add_argument("--noise", default="0,0.3,0.6", help="comma-separated label_noise levels")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--reuse", action="append", default=[], metavar="NOISE=RUN_DIR",
                   help="explain this finished run of the same settings instead of training (repeatable)")
    p.add_argument("--out", default="artifacts/studies/noise_study")
    p.add_argument("overrides", nargs="*", help="more dotted overrides for every run")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    explain = build_dataclass(ExplainConfig, read_yaml(args.explain) or {}, "explain")
    rows = []
    reuse = {float(k): v for k, v in (item.split("=", 1) for item in args.reuse)}
    for noise in [float(v) for v in args.noise.split(",")]:
        cfg = load_experiment(args.config, [
            f"data.synthfaces.n_per_class={args.n_per_class}", f"data.synthfaces.label_noise={noise}",
            f"train.epochs={args.epochs}", "run.progress=false", f"run.name=noise_study_{noise:g}",
            f"run.output_root={out}", *args.overrides])
        rows.append(study_row(cfg, explain, {"label_noise": noise}, report_root=out / "reports",
                              run_dir=reuse.get(noise)))
        table = pd.DataFrame(rows)
        atomic_write_with(out / "results.csv", lambda path, t=table: t.to_csv(path, index=False))
        plot_against(table, "label_noise", out / "noise_study.png",
                     f"synthfaces, {args.n_per_class}/class, {args.epochs} epochs: test scored on clean labels")
    print(f"{out / 'results.csv'}\n{out / 'noise_study.png'}")
    return table


if __name__ == "__main__":
    main()
