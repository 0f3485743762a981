"""One way to report on a trained model: evaluate, plots and explain, into one report folder.

:func:`report_model` runs the steps on a run whose ``best.pt`` is already loaded
(:func:`xai_lab.evaluate.load_run`), so a caller loads each model once: cross-validation
(:func:`xai_lab.crossval.cross_validate`, each fold evaluated), the studies
(:func:`xai_lab.explain.study.study_row`, evaluated and explained) and the sweep's fan-out
(``sweeps.fanout.report_trial``, every step).

The report folder then holds what the single-run verbs write there: ``test_summary.json``,
``test_confusion_matrix.csv`` and ``config.yaml`` (:func:`xai_lab.evaluate.evaluate_model`), the
training curves and ``test_confusion_matrix.png`` (:func:`xai_lab.plots.plot_run`) and ``xai/``
(:func:`xai_lab.explain.run.explain_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xai_lab.config import ExplainConfig
from xai_lab.evaluate import LoadedRun, evaluate_model
from xai_lab.explain.run import ExplainResult, explain_model


@dataclass
class Report:
    """What :func:`report_model` wrote.

    Attributes:
        report_dir: the report folder.
        summary: the evaluation (``test_summary.json`` as evaluate wrote it, before any ``explanations``).
        plots: the PNGs of the plots step ([] when skipped).
        explanations: the explain step's result (None when skipped).
    """

    report_dir: Path
    summary: dict
    plots: list[Path]
    explanations: ExplainResult | None


def report_model(
    run: LoadedRun,
    report_dir: str | Path,
    *,
    dataset=None,
    split: str = "test",
    max_images: int | None = None,
    plots: bool = True,
    explain: bool | ExplainConfig = True,
) -> Report:
    """Evaluate a loaded run's model on ``split``, plot its curves and confusion matrix, and explain it.

    Args:
        run: the run, its model on the device to use (:func:`xai_lab.evaluate.load_run`).
        report_dir: where the files go.
        dataset: the prepared dataset (loaded once from the run's config when None).
        split, max_images: what the evaluation scores (``max_images``: the first n images of the split).
        plots: draw the plots (:func:`xai_lab.plots.plot_run`: the run folder's ``train_log.jsonl``).
        explain: False: no explanations; True: as the run's ``explain`` section says; an
            :class:`~xai_lab.config.ExplainConfig`: that one instead (its ``split`` is explained).
    """
    report_dir = Path(report_dir)
    if dataset is None:
        from xai_lab.data.dataset import load_dataset

        dataset = load_dataset(run.cfg.data, progress=run.cfg.run.progress)
    summary = evaluate_model(run.model, run.cfg, run.class_names, report_dir, dataset=dataset, split=split,
                             max_images=max_images, checkpoint=run.checkpoint, epoch=run.epoch)
    written: list[Path] = []
    if plots:
        from xai_lab.plots import plot_run

        written = plot_run(run.run_dir, report_dir)
    explanations = None
    if explain is not False:
        explain_config = run.cfg.explain if explain is True else explain
        explanations = explain_model(run.model, run.cfg, run.class_names, report_dir, dataset=dataset,
                                     explain_config=explain_config)
    return Report(report_dir, summary, written, explanations)
