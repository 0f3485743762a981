"""``explain``: attribution galleries and explanation metrics for a run's best checkpoint.

For each method (``explain.methods``, with its ``explain.<method>`` parameters), on the
``explain.split`` split:

- galleries, explained for the predicted class, drawn into
  ``xai/<method>/<gallery>/sampleNN.png`` (``per_class/<class>_NN.png``): ``high_conf`` and
  ``low_conf`` (the ``num_each`` most and least confident images), ``misclassified`` (the
  ``num_each`` most confident mistakes), ``per_class`` (the ``per_class`` most confident images
  of each true class); ``xai/<method>/selection.csv`` lists the images shown;
- ``xai/comparison_<gallery>.png``: rows are images, columns are methods;
- ``xai/<method>/class_means.{npz,png}``: each true class's mean map over its first
  ``explain.class_means`` images (maps scaled to [0, 1] one by one, explained for the true class
  with the method's parameters and ``explain.layer``); the npz also records the method, layer,
  grid and parameters (:class:`ClassMeans`);
- metrics (:mod:`xai_lab.explain.metrics`) on ``explain.metrics.num_images`` images drawn
  at random (seeded), explained for the predicted class: deletion and insertion AUC, the
  cascading model-parameter randomization test and, when the data has ground-truth masks,
  the pointing game and mask IoU; each beside two baselines: the same metric for random maps, and
  for the same method's maps on the fully randomized model (``randomized_model_baseline``; a method
  whose maps localise as well with nothing learned shows the image, not the model:
  ``beats_randomized_model`` and ``randomized_model_verdict`` say whether it does better).
  ``xai/metrics.json`` holds one entry per method (entries of methods not recomputed are
  kept), ``xai/metrics.md`` reads them out (with a verdict on the randomization test) and
  ``xai/metric_curves.png`` draws the deletion, insertion and randomization curves;
  ``test_summary.json``, when ``evaluate`` wrote one, gets an ``explanations`` summary.

Every map is computed once, in batches on the device: the (image, target) pairs that the
galleries, class means and metrics need (:func:`plan_requests`) are explained together.
Which images (:mod:`.selection`), the class means (:mod:`.class_means`) and the scoring with its
verdicts (:mod:`.scoring`) live beside this module. :func:`explain_model` does all this for a model
already loaded (:func:`xai_lab.report.report_model` evaluates, plots and explains one);
:func:`explain_run` loads a run's ``best.pt`` first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from xai_lab.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from xai_lab.config import ExperimentConfig, ExplainConfig
from xai_lab.errors import UserError
from xai_lab.explain.class_means import ClassMeans, class_means
from xai_lab.explain.drawing import (
    draw_class_means,
    draw_comparison,
    draw_explanation,
    draw_metric_curves,
    draw_region_shares,
)
from xai_lab.explain.explainers import EXPLAINERS, LAYER_METHODS, resolve_layer
from xai_lab.explain.scoring import (
    Explainer,
    Regions,
    Scoring,
    explanation_summary,
    log_entry,
    metrics_markdown,
    randomized_model_verdict,
)
from xai_lab.explain.selection import (
    ExplainRequests,
    class_mean_indices,
    plan_requests,
    scored_indices,
    select_galleries,
)

log = logging.getLogger(__name__)


class ExplainResult(dict):
    """What :func:`explain_model` returns: ``{method: [written PNG paths]}``, plus

    Attributes:
        metrics: the ``xai/metrics.json`` entries of the methods just computed.
        summary: the ``explanations`` summary (also added to ``test_summary.json``).
        report_dir: where ``xai/`` was written.
    """

    def __init__(self, written: dict[str, list[Path]], metrics: dict, summary: dict, report_dir: Path):
        super().__init__(written)
        self.metrics, self.summary, self.report_dir = metrics, summary, report_dir


def check_methods(methods: list[str]) -> list[str]:
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise UserError(f"unknown explanation method '{unknown[0]}'; valid: {', '.join(EXPLAINERS)}")
    if not methods:
        raise UserError(f"no explanation method given; valid: {', '.join(EXPLAINERS)}")
    return methods


def method_params(ec: ExplainConfig, method: str) -> dict:
    """The ``explain.<method>`` parameters of ``method`` as keywords ({} for a method without any)."""
    section = getattr(ec, method, None) if method in EXPLAINERS else None
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else {}


def cam_grid(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> list[int]:
    """[h, w] of ``layer``'s output for one image: the grid the Grad-CAM family upsamples from."""
    shapes: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            model(image)
    finally:
        handle.remove()
    return list(shapes[-1][-2:])


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --- the verb ----------------------------------------------------------------------------------

SCORED, CLASS_MEANS = "scored", "class_means"  # the requests of the metrics and the class means, beside the galleries


def explain_run(
    run_dir: str | Path,
    report_dir: str | Path | None = None,
    *,
    split: str | None = None,
    num_each: int | None = None,
    methods: list[str] | None = None,
    dataset=None,
    device: str | None = None,
    explain_config: ExplainConfig | None = None,
    metrics: bool | None = None,
) -> ExplainResult:
    """Write explanation galleries and metrics for the run's ``best.pt``: load it, then :func:`explain_model`.

    Args:
        run_dir: the run folder.
        report_dir: where ``xai/`` goes; the run's report folder when None.
        device: overrides ``run.device``.
        split, num_each, methods, dataset, explain_config, metrics: as :func:`explain_model`.
    """
    from xai_lab.evaluate import load_run
    from xai_lab.runs import report_dir_for

    run = load_run(run_dir, device)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(run.run_dir)
    return explain_model(run.model, run.cfg, run.class_names, report_dir, dataset=dataset, split=split,
                         num_each=num_each, methods=methods, explain_config=explain_config, metrics=metrics)


def explain_model(
    model: nn.Module,
    cfg: ExperimentConfig,
    class_names: list[str],
    report_dir: str | Path,
    *,
    dataset=None,
    split: str | None = None,
    num_each: int | None = None,
    methods: list[str] | None = None,
    explain_config: ExplainConfig | None = None,
    metrics: bool | None = None,
) -> ExplainResult:
    """Write explanation galleries, class means and metrics of a loaded ``model`` (on its device, in eval
    mode) into ``report_dir/xai``; the part of :func:`explain_run` after loading.

    Args:
        cfg: the run's config (data, ``train.eval_batch_size``, ``train.amp``, ``explain``).
        dataset: the prepared dataset (loaded from ``cfg.data`` when None).
        split, num_each, methods: override ``explain.*``.
        explain_config: replaces ``cfg.explain`` (before the overrides above).
        metrics: overrides ``explain.metrics.enabled``.

    Returns:
        An :class:`ExplainResult`: ``{method: [written PNG paths]}`` with ``.metrics`` (the
        ``xai/metrics.json`` entries computed) and ``.summary`` (the ``explanations`` block).
    """
    ec = explain_settings(explain_config or cfg.explain, split=split, num_each=num_each, methods=methods,
                          metrics=metrics)
    layer, layer_name = resolve_layer(model, ec.layer)
    data = _split_to_explain(dataset, cfg, ec.split)
    report_dir = Path(report_dir)
    job = _prepare(model, cfg, class_names, data, ec, layer, layer_name, report_dir / "xai")
    written: dict[str, list[Path]] = {}
    entries: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    shown: dict[str, dict[str, np.ndarray]] = {group: {} for group in job.galleries}
    for method in ec.methods:
        written[method], gallery_maps, entry, method_curves = _explain_method(job, method)
        for group, maps in gallery_maps.items():
            shown[group][method] = maps[: ec.compare_rows]
        if entry is not None:
            entries[method], curves[method] = entry, method_curves
    _write_comparisons(job, shown)
    summary = _write_metrics(job, report_dir, entries, curves)
    return ExplainResult(written, entries, summary, report_dir)


def explain_settings(ec: ExplainConfig, *, split: str | None = None, num_each: int | None = None,
                     methods: list[str] | None = None, metrics: bool | None = None) -> ExplainConfig:
    """A copy of ``ec`` with one call's overrides, checked (``ec`` is left as it is)."""
    ec = dataclasses.replace(ec)
    ec.split = split or ec.split
    if num_each is not None and num_each < 1:
        raise UserError(f"the number of images per gallery must be >= 1, got {num_each}")
    ec.num_each = num_each or ec.num_each
    ec.methods = check_methods(list(methods or ec.methods))
    ec.metrics = dataclasses.replace(ec.metrics, enabled=ec.metrics.enabled if metrics is None else metrics)
    return ec


def _split_to_explain(dataset, cfg: ExperimentConfig, split: str):
    from xai_lab.data.dataset import load_dataset

    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    if split not in dataset.splits:
        raise UserError(f"unknown split '{split}'; valid: {', '.join(dataset.splits)}")
    data = dataset.splits[split]
    if len(data) == 0:
        raise UserError(f"the {split} split of {dataset.name} is empty: nothing to explain")
    return data


@dataclass
class _Job:
    """What every method of one explain call shares: the split, the model's predictions on it, the
    requests (galleries, scored images, class means) and where the files go."""

    model: nn.Module
    ec: ExplainConfig
    class_names: list[str]
    data: Any  # the explained Split
    images: torch.Tensor  # the split's uint8 images, on the model's device
    preds: np.ndarray
    conf: np.ndarray
    layer_name: str
    grid: list[int]
    galleries: dict[str, tuple[np.ndarray, list[str]]]
    requests: ExplainRequests
    inputs: tuple[torch.Tensor, torch.Tensor]  # the requests' images and targets, as one batch
    scoring: Scoring | None
    xai: Path
    scored: np.ndarray  # the scored images (indices into the split)
    mean_regions: Regions | None  # the regions of the class means' images, with scoring on


def _prepare(model: nn.Module, cfg: ExperimentConfig, class_names: list[str], data, ec: ExplainConfig,
             layer: nn.Module, layer_name: str, xai: Path) -> _Job:
    """Predict the split, choose the galleries, the scored images and the class means' images, and plan
    every (image, target) pair they need."""
    from xai_lab.device import to_device
    from xai_lab.evaluate import predict_logits

    images = to_device(data.images, next(model.parameters()).device)
    probs = predict_logits(model, images, cfg.train.eval_batch_size, cfg.train.amp).softmax(1).cpu().numpy()
    preds = probs.argmax(1)
    grid = cam_grid(model, layer, images[:1].float().div(255))
    galleries = select_galleries(probs, data.labels, ec, class_names)
    scored = scored_indices(len(data), ec.metrics)
    means = class_mean_indices(data.labels, len(class_names), ec.class_means)
    requests = plan_requests({**{group: (idx, preds[idx]) for group, (idx, _) in galleries.items()},
                              SCORED: (scored, preds[scored]), CLASS_MEANS: (means, data.labels[means])})
    size = data.images.shape[-1]
    scoring = Scoring(model, images, preds, data.masks, scored, ec, Regions.of(data, scored, size)) if len(
        scored) else None
    mean_regions = Regions.of(data, requests.index[requests.rows[CLASS_MEANS]], size) if scoring else None
    return _Job(model, ec, class_names, data, images, preds, probs.max(1), layer_name, grid, galleries, requests,
                requests.inputs(images), scoring, xai, scored, mean_regions)


def _explain_method(job: _Job, method: str) -> tuple[list[Path], dict[str, np.ndarray], dict | None, dict | None]:
    """One method's maps of every request, drawn and scored: (written gallery PNGs, each gallery's maps,
    its metrics entry, its curves); no entry or curves with the metrics off."""
    t0 = time.perf_counter()
    params = method_params(job.ec, method)
    explainer = Explainer(method, params, job.layer_name, job.ec.batch_size)
    maps = job.requests.split(explainer(job.model, *job.inputs))
    seconds_maps = time.perf_counter() - t0
    gallery_maps = {group: maps[group].cpu().numpy() for group in job.galleries}
    written = _write_galleries(job, method, gallery_maps)
    means, counts = class_means(maps[CLASS_MEANS], job.requests.targets(CLASS_MEANS), job.class_names)
    cm = ClassMeans(means, counts, method=method, split=job.ec.split, target_layer=job.layer_name,
                    uses_layer=method in LAYER_METHODS, cam_grid=job.grid, params=params)
    cm.save(job.xai / method / "class_means.npz")
    draw_class_means(means, counts, job.xai / method / "class_means.png", cm.title())
    entry = curves = None
    if job.scoring is not None:
        entry, curves, faces = job.scoring.score(explainer, maps[SCORED])
        n, mc = job.scoring.n, job.ec.metrics
        entry.update(split=job.ec.split, n_images=int(n), n_randomization_images=min(mc.randomization_images, n),
                     target="predicted class", target_layer=job.layer_name, uses_layer=method in LAYER_METHODS,
                     cam_grid=job.grid, params=params, seconds_maps=round(seconds_maps, 3),
                     seconds_total=round(time.perf_counter() - t0, 3))
        outcome, verdict = randomized_model_verdict(entry, mc.randomized_margin)
        entry.update(beats_randomized_model=outcome == "beats", randomized_model_outcome=outcome,
                     randomized_model_verdict=verdict)
        if faces is not None:
            _write_region_shares(job, method, entry["regions"]["names"], faces)
            _class_regions(job, explainer, maps[CLASS_MEANS], entry, method)
        log_entry(method, entry)
    log.info("%s: %d images -> %s (%.1fs)", method, len(written), job.xai / method, time.perf_counter() - t0)
    return written, gallery_maps, entry, curves


def _write_region_shares(job: _Job, method: str, names: list[str], shares: dict[str, np.ndarray]) -> None:
    """``xai/<method>/region_shares.csv``: per scored face, its share of the mass in each region, beside the same
    method on the randomized model and the region's area, and whether its landmarks were detected."""
    idx = job.scored
    data, names_of = job.data, job.class_names
    table = pd.DataFrame({
        "path": [data.paths[i] for i in idx],
        "true": [names_of[data.labels[i]] for i in idx],
        "pred": [names_of[job.preds[i]] for i in idx],
        "landmarks": (["detected" if s else "fitted" for s in np.asarray(data.landmark_source)[idx]]
                      if data.landmarks is not None else ["none"] * len(idx)),
        **{f"{kind}_{r}": shares[kind][:, j] for kind in ("share", "randomized_model", "area")
           for j, r in enumerate(names)},
    })
    atomic_write_with(job.xai / method / "region_shares.csv", lambda p: table.to_csv(p, index=False))


def _class_regions(job: _Job, explainer: Explainer, maps: torch.Tensor, entry: dict, method: str) -> None:
    """Region shares per class on the class means' faces (beside both baselines) into ``entry["regions"]``,
    drawn as ``xai/<method>/regions.png``."""
    rows, regions = job.requests.rows[CLASS_MEANS], job.mean_regions
    if regions is None or not len(rows):
        return
    x, target = job.inputs[0][torch.as_tensor(rows, device=job.inputs[0].device)], job.inputs[1][
        torch.as_tensor(rows, device=job.inputs[1].device)]
    classes = job.requests.targets(CLASS_MEANS)
    by_class = job.scoring.class_regions(explainer, x, target, maps, classes, job.class_names, regions)
    entry["regions"]["by_class"] = by_class
    entry["regions"]["detected_fraction_class_means"] = regions.detected
    draw_region_shares(by_class, regions.names, job.xai / method / "regions.png",
                       f"{method}: share of the attribution mass per region (true class; below: randomized model)")


def _write_galleries(job: _Job, method: str, maps: dict[str, np.ndarray]) -> list[Path]:
    """Draw every gallery image with its map (``xai/<method>/<gallery>/``) and list them in ``selection.csv``."""
    names, data = job.class_names, job.data
    written, rows = [], []
    for group, (idx, files) in job.galleries.items():
        for i, fname, attribution in zip(idx, files, maps[group], strict=True):
            true, guess = names[data.labels[i]], names[job.preds[i]]
            path = job.xai / method / group / fname
            draw_explanation(data.images[i], attribution, f"true: {true} | pred: {guess} ({job.conf[i]:.2f})", path,
                             method)
            written.append(path)
            rows.append({"group": group, "file": f"{group}/{fname}", "path": data.paths[i], "true": true,
                         "pred": guess, "confidence": float(job.conf[i])})
    table = pd.DataFrame(rows, columns=["group", "file", "path", "true", "pred", "confidence"])
    atomic_write_with(job.xai / method / "selection.csv", lambda p: table.to_csv(p, index=False))
    return written


def _write_comparisons(job: _Job, shown: dict[str, dict[str, np.ndarray]]) -> None:
    """``xai/comparison_<gallery>.png``: the first ``explain.compare_rows`` images of each gallery, every method."""
    names, labels = job.class_names, job.data.labels
    for group, maps in shown.items():
        idx = job.galleries[group][0][: job.ec.compare_rows]
        if len(idx):
            titles = [f"{names[labels[i]]}/{names[job.preds[i]]} ({job.conf[i]:.2f})" for i in idx]
            draw_comparison(job.data.images[idx], maps, titles, job.xai / f"comparison_{group}.png",
                            f"{group}: true/predicted (confidence)")


def _write_metrics(job: _Job, report_dir: Path, entries: dict[str, dict], curves: dict[str, dict]) -> dict:
    """``xai/metrics.json`` (merged with the entries of methods not recomputed), ``metrics.md``,
    ``metric_curves.png`` and ``test_summary.json``'s ``explanations``; returns that summary ({} without metrics)."""
    if not entries:
        return {}
    merged = {**(_read_json(job.xai / "metrics.json") or {}), **entries}
    atomic_write_json(job.xai / "metrics.json", merged)
    atomic_write_text(job.xai / "metrics.md", metrics_markdown(merged))
    draw_metric_curves({**curves, "random": job.scoring.random_curves}, job.xai / "metric_curves.png")
    summary = explanation_summary(merged)
    test_summary = _read_json(report_dir / "test_summary.json")
    if test_summary is not None:
        atomic_write_json(report_dir / "test_summary.json", {**test_summary, "explanations": summary})
    return summary
