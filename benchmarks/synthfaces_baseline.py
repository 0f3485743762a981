"""How hard is synthfaces? A logistic regression on raw pixels, on the same split the models use.

Prints one JSON line with the logistic regression's test accuracy and macro-F1 on the
prepared split of an experiment's dataset; compare with ``xai-lab evaluate`` of a ResNet run
on the same experiment (its ``test_summary.json``).

    python benchmarks/synthfaces_baseline.py                       # exp000's synthfaces
    python benchmarks/synthfaces_baseline.py --run-dir artifacts/runs/exp000_resnet18_saliency_synthfaces/latest
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from xai_lab.data.dataset import load_dataset
from xai_lab.experiment import load_experiment


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/experiments/exp000_resnet18_saliency_synthfaces.yaml")
    p.add_argument("--run-dir", default=None, help="also report this run's test_summary.json")
    p.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the logistic regression")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_experiment(args.config, args.overrides)
    data = load_dataset(cfg.data)
    tr, te = data.splits["train"], data.splits["test"]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=2000))
    clf.fit(tr.images.reshape(len(tr), -1).astype(np.float32), tr.labels)
    pred = clf.predict(te.images.reshape(len(te), -1).astype(np.float32))
    result = {
        "benchmark": "synthfaces_baseline",
        "dataset": data.name,
        "n_train": len(tr),
        "n_test": len(te),
        "logreg_test_accuracy": round(float(accuracy_score(te.labels, pred)), 4),
        "logreg_test_macro_f1": round(float(f1_score(te.labels, pred, average="macro")), 4),
        "chance": round(1 / data.num_classes, 4),
    }
    if args.run_dir:
        from xai_lab.runs import report_dir_for, resolve_run_dir

        summary = json.loads((report_dir_for(resolve_run_dir(args.run_dir)) / "test_summary.json").read_text())
        result.update(resnet_test_accuracy=round(summary["accuracy"], 4), resnet_test_macro_f1=round(
            summary["macro_f1"], 4), resnet_run=str(Path(args.run_dir)))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
