"""Plain baselines beside a trained model, on the same split: the majority class and a linear model on pixels.

A model's accuracy means little alone: FER2013's test split is 25% happy faces, so always answering
"happy" scores 0.25. This prints one JSON line with, on the prepared test split of an experiment's
dataset, the majority class of the training split (its accuracy and macro-F1) and a logistic regression
on the raw pixels (standardised, L2-regularised; scikit-learn), and with ``--run-dir`` the run's own
``test_summary.json`` (``xai-lab evaluate``) beside them.

    python benchmarks/baselines.py                                    # exp000's synthfaces
    python benchmarks/baselines.py --config configs/experiments/exp011_resnet20_fer2013_cpu.yaml \\
        --run-dir artifacts/runs/exp011_resnet20_fer2013_cpu/latest
    python benchmarks/baselines.py --smoke                            # seconds, to check that it runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xai_lab.data.dataset import load_dataset
from xai_lab.experiment import load_experiment, smoke_overrides


def _scores(prefix: str, y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> dict:
    return {f"{prefix}_test_accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
            f"{prefix}_test_macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                                             zero_division=0)), 4)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/experiments/exp000_resnet18_saliency_synthfaces.yaml")
    p.add_argument("--run-dir", default=None, help="also report this run's test_summary.json")
    p.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the logistic regression")
    p.add_argument("--smoke", action="store_true", help="a dozen images per class")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_experiment(args.config, [*(smoke_overrides(args.config) if args.smoke else []), *args.overrides])
    data = load_dataset(cfg.data)
    tr, te = data.splits["train"], data.splits["test"]
    labels = list(range(data.num_classes))
    majority = int(np.bincount(tr.labels, minlength=data.num_classes).argmax())
    t0 = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=2000))
    clf.fit(tr.images.reshape(len(tr), -1).astype(np.float32), tr.labels)
    pred = clf.predict(te.images.reshape(len(te), -1).astype(np.float32))
    result = {
        "benchmark": "baselines",
        "dataset": data.name,
        "n_train": len(tr),
        "n_test": len(te),
        "majority_class": data.class_names[majority],
        **_scores("majority", te.labels, np.full(len(te), majority), labels),
        **_scores("logreg", te.labels, pred, labels),
        "logreg_fit_seconds": round(time.perf_counter() - t0, 1),
        "chance": round(1 / data.num_classes, 4),
        "settings": {"config": args.config, "C": args.C, "smoke": args.smoke, "overrides": args.overrides},
    }
    if args.run_dir:
        from xai_lab.runs import report_dir_for, resolve_run_dir

        summary = json.loads((report_dir_for(resolve_run_dir(args.run_dir)) / "test_summary.json").read_text())
        result.update(model_test_accuracy=round(summary["accuracy"], 4), model_test_macro_f1=round(
            summary["macro_f1"], 4), model_run=str(Path(args.run_dir)))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
