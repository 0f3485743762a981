"""The report's headline sentence is computed from the trials' reports, never written by hand."""

from __future__ import annotations

import json

import pandas as pd

from sweeps.report import headline, lead_method


def _report(dest, dataset, trial, accuracy, metrics):
    folder = dest / "reports" / dataset / trial
    (folder / "xai").mkdir(parents=True)
    (folder / "test_summary.json").write_text(json.dumps({"accuracy": accuracy, "n": 210}))
    (folder / "xai" / "metrics.json").write_text(json.dumps(metrics))


def _method(pg, ins, pg_rmod, beats):
    return {"pointing_game": pg, "insertion_auc": ins, "beats_randomized_model": beats,
            "randomized_model_verdict": "points at the expression parts because of what the model learned",
            "randomized_model_baseline": {"pointing_game": pg_rmod, "insertion_auc": 0.5}}


def test_lead_method_prefers_one_that_beats_the_randomized_model():
    entries = {"saliency": _method(0.95, 0.7, 0.9, False), "guided_gradcam": _method(0.9, 0.8, 0.3, True)}
    assert lead_method(entries) == "guided_gradcam"
    assert lead_method({}) is None


def test_headline_compares_the_noisy_copy_with_the_clean_one(tmp_path):
    _report(tmp_path, "clean", "a", 0.93, {"guided_gradcam": _method(0.94, 0.83, 0.33, True)})
    _report(tmp_path, "noisy", "b", 0.55, {"guided_gradcam": _method(0.80, 0.64, 0.28, True)})
    chosen = pd.DataFrame({"dataset": ["noisy", "clean"], "trial_id": ["b", "a"], "report": ["ok", "ok"]})
    text = headline(tmp_path, chosen)
    assert text == ("noisy is visibly worse than clean: test accuracy 0.55 against 0.93; guided_gradcam's "
                    "explanations are worse (pointing game 0.80 against 0.94, insertion AUC 0.64 against 0.83).")


def test_headline_of_one_dataset_and_of_none(tmp_path):
    _report(tmp_path, "clean", "a", 0.93, {"guided_gradcam": _method(0.94, 0.83, 0.33, True)})
    one = pd.DataFrame({"dataset": ["clean"], "trial_id": ["a"], "report": ["ok"]})
    assert headline(tmp_path, one) == ("The best clean model reaches test accuracy 0.93 on 210 images; guided_gradcam "
                                       "points at the expression parts because of what the model learned.")
    failed = pd.DataFrame({"dataset": ["clean"], "trial_id": ["a"], "report": ["failed: x"]})
    assert headline(tmp_path, failed) == "No trial has a report yet."
