"""A report folder's scores as flat names: test accuracy and macro-F1, and per explainer its metrics beside
both baselines and its share of the map in each face region. One reading for the leaderboard, the comparison
and the run store (:mod:`xai_lab.store`)."""

from __future__ import annotations

import json
from pathlib import Path

# The explanation metrics a report shows per method (xai/metrics.json), beside test accuracy.
LEADERBOARD_METRICS = ("deletion_auc", "insertion_auc", "randomization_spearman", "pointing_game", "mask_iou")


def report_scores(report_dir: Path) -> dict[str, float]:
    """Test accuracy and macro-F1 (``test_summary.json``) and, per method, the explanation metrics
    (``xai/metrics.json``) of one trial's report, as leaderboard columns (``gradcam:deletion_auc``, ...),
    each beside its baselines (``gradcam:deletion_auc:random_maps``, ``...:randomized_model``)."""
    out: dict[str, float] = {}
    summary = report_dir / "test_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        out.update(test_accuracy=s.get("accuracy"), test_macro_f1=s.get("macro_f1"))
    metrics = report_dir / "xai" / "metrics.json"
    if metrics.is_file():
        for method, entry in json.loads(metrics.read_text()).items():
            if not isinstance(entry, dict):
                continue
            baselines = {"random_maps": entry.get("random_baseline") or {},
                         "randomized_model": entry.get("randomized_model_baseline") or {}}
            shares = ((entry.get("regions") or {}).get("scored") or {}).get("share") or {}
            for region, share in shares.items():  # where on the face: the share of the mass in each region
                out[f"{method}:share_{region}"] = share
            for key in LEADERBOARD_METRICS:
                if isinstance(entry.get(key), (int, float)):
                    out[f"{method}:{key}"] = entry[key]
                    for name, values in baselines.items():
                        if isinstance(values.get(key), (int, float)):
                            out[f"{method}:{key}:{name}"] = values[key]
    return out
