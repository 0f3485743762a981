"""The run store: every run, cross-validation, evaluation, explanation and sweep trial in one MLflow tracking store.

Each record is built from the folders the verbs write (a run folder, its report folder, a cv folder, a sweep's
results folder), so the same code records a run as it finishes and a run made while the store was off
(``xai-lab runs --sync PATH``). A record is found again by its key (tag ``xai_lab.id``: ``run:<exp>/<id>``,
``cv:<exp>/cv-<id>``, ``sweep:<name>``, ``trial:<sweep>/<dataset>/<trial>``), so recording twice adds nothing
twice: params are written once, epochs after the last one recorded, a report's scores and files when the files
changed (tag ``xai_lab.files``).

What a record holds:

* params: the resolved config, flattened (``model.depth``, ``train.lr``, ...; ``store.*`` left out);
* metrics: the per-epoch curves (step = epoch), ``best_val_macro_f1``, test accuracy and macro-F1, and per
  explainer its scores beside both baselines (``gradcam.pointing_game``, ``gradcam.pointing_game.random_maps``,
  ``gradcam.pointing_game.randomized_model``, ``gradcam.share_mouth``; :func:`xai_lab.scores.report_scores`);
* tags: ``xai_lab.kind`` (train, cv, cv_fold, sweep, trial), ``xai_lab.dataset``, ``xai_lab.experiment``,
  ``xai_lab.status``, ``xai_lab.run_dir``, ``xai_lab.report_dir``, the sweep, trial id and Optuna study of a
  trial, and ``mlflow.source.git.commit`` when the code is a git checkout;
* artifacts (``store.artifacts``): config.yaml, train_summary.json and the report folder (figures, JSON, tables).

Single runs and cross-validations go into the MLflow experiment named after the experiment (``run.name``),
a cross-validation's folds as children of its run; a sweep into ``sweep/<name>``: the sweep's own run and one
run per trial beside it, the experiment tagged with its Optuna studies. Only the process that ran the work
writes (a verb, or a sweep's driver after its trials and reports): trials never write, so any number
finishing at once cannot race for the store.

The store never costs a result: :func:`record` turns any failure into one warning line.

``client`` holds the connection (:class:`Store`, :func:`open_store`, :func:`record`, :func:`search`),
``records`` what is written (``record_*``, :func:`sync`).
"""

from xai_lab.store.client import ENV, Store, open_store, record, resolve_uri, search, shown
from xai_lab.store.records import (
                                   config_params,
                                   record_cross,
                                   record_cv,
                                   record_report,
                                   record_sweep,
                                   record_training,
                                   sync,
)

__all__ = ["ENV", "Store", "config_params", "open_store", "record", "record_cross", "record_cv", "record_report",
           "record_sweep", "record_training", "resolve_uri", "search", "shown", "sync"]
