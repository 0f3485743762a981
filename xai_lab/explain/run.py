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
:func:`explain_model` does all this for a model already loaded (:func:`xai_lab.report.report_model`
evaluates, plots and explains one); :func:`explain_run` loads a run's ``best.pt`` first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from xai_lab.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from xai_lab.config import ExperimentConfig, ExplainConfig, ExplainMetricsConfig
from xai_lab.errors import UserError
from xai_lab.explain import metrics as M
from xai_lab.explain.drawing import draw_class_means, draw_comparison, draw_explanation, draw_metric_curves
from xai_lab.explain.explainers import EXPLAINERS, LAYER_METHODS, explain_batched, normalise_maps, resolve_layer

log = logging.getLogger(__name__)

METRIC_KEYS = ("deletion_auc", "insertion_auc", "randomization_spearman", "pointing_game", "mask_iou")


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


# --- which images ------------------------------------------------------------------------------


def select_confident(probs: np.ndarray, num_each: int) -> dict[str, np.ndarray]:
    """Indices of the ``num_each`` most (descending) and least (ascending) confident predictions."""
    conf = probs.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    n = min(num_each, len(conf))
    return {"high_conf": order[:n].copy(), "low_conf": order[::-1][:n].copy()}


def select_misclassified(probs: np.ndarray, labels: np.ndarray, num_each: int) -> np.ndarray:
    """Indices of the ``num_each`` most confident wrong predictions (most confident first)."""
    conf = probs.max(axis=1)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    return wrong[np.argsort(-conf[wrong], kind="stable")][:num_each]


def select_per_class(probs: np.ndarray, labels: np.ndarray, per_class: int, num_classes: int) -> list[np.ndarray]:
    """For each true class, the indices of its ``per_class`` most confidently predicted images."""
    conf = probs.max(axis=1)
    out = []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        out.append(idx[np.argsort(-conf[idx], kind="stable")][:per_class])
    return out


def select_galleries(probs: np.ndarray, labels: np.ndarray, ec: ExplainConfig,
                     class_names: list[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{gallery: (indices, file names)}`` for the galleries in ``ec.selection``."""
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    confident = select_confident(probs, ec.num_each)
    for group in ec.selection:
        if group in confident or group == "misclassified":
            idx = confident[group] if group in confident else select_misclassified(probs, labels, ec.num_each)
            out[group] = (idx, [f"sample{r:02d}.png" for r in range(len(idx))])
        else:
            per = select_per_class(probs, labels, ec.per_class, len(class_names))
            names = [f"{class_names[k]}_{r:02d}.png" for k, idx in enumerate(per) for r in range(len(idx))]
            out[group] = (np.concatenate(per).astype(np.int64), names)
    return out


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


# --- scoring -----------------------------------------------------------------------------------


class _Explainer:
    """One method bound to its parameters and layer (looked up by name, so it follows model copies)."""

    def __init__(self, method: str, params: dict, layer_name: str, batch_size: int):
        self.method, self.params, self.layer_name, self.batch_size = method, params, layer_name, batch_size

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kw = dict(self.params)
        if self.method in LAYER_METHODS:
            kw["layer"] = model.get_submodule(self.layer_name)
        return explain_batched(self.method, model, x, target, self.batch_size, **kw)


def map_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               masks: torch.Tensor | None, mc, batch_size: int) -> tuple[dict, dict]:
    """Faithfulness to ``model`` (deletion, insertion) and, with masks, localisation (pointing game,
    mask IoU) of ``maps``, the explanations of ``x`` for ``target``: (means, mean curves)."""
    di = M.deletion_insertion(model, x, target, maps, mc.steps, batch_size, mc.seed)
    out = {
        "deletion_auc": float(di["deletion_auc"].mean()),
        "insertion_auc": float(di["insertion_auc"].mean()),
    }
    if masks is not None:
        out["pointing_game"] = float(M.pointing_game(maps, masks, mc.pointing_tolerance, mc.seed).mean())
        out["mask_iou"] = float(M.mask_iou(maps, masks, mc.seed).mean())
    return out, {"deletion": di["deletion"].mean(0).tolist(), "insertion": di["insertion"].mean(0).tolist()}


def score_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               masks: torch.Tensor | None, explain, mc, batch_size: int) -> tuple[dict, dict]:
    """Every metric of ``maps`` (:func:`map_scores` and the randomization test): (means, curves).

    ``explain(model, x, target)`` recomputes maps on a randomized model; ``explain=None`` scores
    random maps against random maps (the randomization reference).
    """
    out, curves = map_scores(model, x, target, maps, masks, mc, batch_size)
    n_r = min(mc.randomization_images, len(x))
    if explain is None:
        other = M.random_maps(n_r, *maps.shape[-2:], seed=mc.seed + 1, device=maps.device)
        rand = {"all layers": M.spearman(maps[:n_r].abs(), other)}
    else:
        rand = M.randomization_test(lambda m: explain(m, x[:n_r], target[:n_r]), model, maps[:n_r], mc.seed)
    out["randomization_spearman"] = float(list(rand.values())[-1].mean())
    curves["randomization"] = {name: float(rho.mean()) for name, rho in rand.items()}
    return out, curves


def randomized_model_verdict(entry: dict, margin: float) -> tuple[bool, str]:
    """Whether the method's maps are the trained model's doing, judged against the same method on the
    fully randomized model: (passed, one sentence).

    With masks: the pointing game beats the randomized model's by ``margin`` and insertion AUC beats
    both baselines. Without masks: insertion AUC beats both baselines.
    """
    rnd, rmod = entry["random_baseline"], entry["randomized_model_baseline"]
    ins, ins_rnd, ins_rmod = entry["insertion_auc"], rnd["insertion_auc"], rmod["insertion_auc"]
    insertion_ok = ins > max(ins_rnd, ins_rmod)
    insertion = f"insertion AUC {ins:.2f} against {ins_rnd:.2f} (random maps) and {ins_rmod:.2f} (randomized model)"
    if "pointing_game" not in entry:
        if insertion_ok:
            return True, f"is faithful to the trained model beyond both baselines ({insertion})"
        return False, f"is no more faithful than a baseline ({insertion})"
    pg, pg_rmod = entry["pointing_game"], rmod["pointing_game"]
    pointing = f"pointing game {pg:.2f} against {pg_rmod:.2f} on the randomized model"
    if pg >= pg_rmod + margin and insertion_ok:
        return True, f"points at the expression parts because of what the model learned ({pointing}; {insertion})"
    if pg < pg_rmod + margin:
        return False, (f"points at the masks nearly as well (or better) with nothing learned ({pointing}, "
                       f"a margin under {margin:.2f}): the image, not the model, explains its localisation")
    return False, f"localises, but its pixel order is no more faithful than a baseline's ({insertion})"


def randomization_verdict(rho: float, threshold: float) -> str:
    if rho >= threshold:
        return (f"FAILS the randomization test: its maps barely change when the model's weights are randomized "
                f"(Spearman {rho:.2f} >= {threshold:.2f}); they show the image more than what the model learned")
    return f"passes the randomization test (Spearman {rho:.2f} < {threshold:.2f} once every layer is randomized)"


def metrics_markdown(entries: dict) -> str:
    """``xai/metrics.md``: every method's metrics beside both baselines, and the verdicts."""
    keys = [k for k in METRIC_KEYS if any(k in e for e in entries.values())]
    arrows = {"deletion_auc": "lower is better", "insertion_auc": "higher is better",
              "randomization_spearman": "lower is better", "pointing_game": "higher is better",
              "mask_iou": "higher is better"}
    lines = ["# Explanation metrics", "",
             "Each cell: the method's value, then in brackets the same metric for random maps and for the "
             "same method on the fully randomized model (the maps scored against the trained model).", "",
             "| method | " + " | ".join(f"{k} ({arrows[k]})" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for method, e in entries.items():
        cells = []
        for k in keys:
            if k not in e:
                cells.append("")
                continue
            rmod = e.get("randomized_model_baseline", {}).get(k)
            cells.append(f"{e[k]:.3f} ({e['random_baseline'][k]:.3f}" + (f" / {rmod:.3f})" if rmod is not None
                                                                          else ")"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    for method, e in entries.items():
        lines.append(f"- **{method}** {e['randomization_verdict']}.")
        if "randomized_model_verdict" in e:
            lines.append(f"- **{method}** {e['randomized_model_verdict']}.")
    first = next(iter(entries.values()))
    lines += ["", f"Split `{first['split']}`, {first['n_images']} images ({first['n_randomization_images']} in the "
              f"randomization cascade), explained for the predicted class. Target layer of the Grad-CAM family: "
              f"`{first['target_layer']}` (grid {first['cam_grid'][0]}x{first['cam_grid'][1]}).", ""]
    return "\n".join(lines)


def explanation_summary(entries: dict) -> dict:
    """The ``explanations`` block of ``test_summary.json``: the headline numbers of every method."""
    first = next(iter(entries.values()))
    return {
        "split": first["split"],
        "n_images": first["n_images"],
        "target_layer": first["target_layer"],
        "cam_grid": first["cam_grid"],
        "methods": {m: {**{k: e[k] for k in METRIC_KEYS if k in e}, "randomization_passed": e["randomization_passed"],
                        "randomized_model_baseline": e.get("randomized_model_baseline", {}),
                        "beats_randomized_model": e.get("beats_randomized_model")}
                    for m, e in entries.items()},
        "random_baseline": {k: v for k, v in first["random_baseline"].items()},
    }


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --- which (image, target) pairs are explained ------------------------------------------------


def scored_indices(n: int, mc: ExplainMetricsConfig) -> np.ndarray:
    """The images the metrics score: ``mc.num_images`` of ``n`` drawn at random (seeded), sorted; none when off."""
    rng = np.random.default_rng(mc.seed)
    return np.sort(rng.permutation(n)[: mc.num_images]) if mc.enabled else np.zeros(0, np.int64)


def class_mean_indices(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """The images averaged into the class means: the first ``per_class`` of each true class (0: all), class by class."""
    per = [np.flatnonzero(labels == k)[: per_class or None] for k in range(num_classes)]
    return np.concatenate(per).astype(np.int64)


@dataclass(frozen=True)
class ExplainRequests:
    """The (image, target class) pairs that a set of outputs asks for, each distinct pair explained once.

    Attributes:
        index, target: the distinct pairs (image indices into the split, the classes explained), sorted.
        rows: ``{output: the positions in index/target of the pairs it asked for, in its order}``.
    """

    index: np.ndarray
    target: np.ndarray
    rows: dict[str, np.ndarray]

    def targets(self, output: str) -> np.ndarray:
        """The classes ``output`` asked to explain, in its order."""
        return self.target[self.rows[output]]

    def inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct pairs as one batch on the device of uint8 ``images``: float images in [0, 1], targets."""
        dev = images.device
        x = images[torch.as_tensor(self.index, device=dev)].float().div_(255)
        return x, torch.as_tensor(self.target, device=dev)

    def split(self, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        """Maps of the distinct pairs [n, H, W] -> ``{output: its maps, in the order it asked}``."""
        return {name: maps[torch.as_tensor(rows, device=maps.device)] for name, rows in self.rows.items()}


def plan_requests(outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> ExplainRequests:
    """The distinct pairs of ``{output: (image indices, target classes)}`` and where each output's pairs are."""
    asked = [np.stack([np.asarray(i, np.int64).reshape(-1), np.asarray(t, np.int64).reshape(-1)], 1)
             for i, t in outputs.values()]
    pairs, where = np.unique(np.concatenate([np.zeros((0, 2), np.int64), *asked]), axis=0, return_inverse=True)
    rows = np.split(where.reshape(-1), np.cumsum([len(a) for a in asked])[:-1]) if asked else []
    return ExplainRequests(pairs[:, 0].copy(), pairs[:, 1].copy(), dict(zip(outputs, rows, strict=True)))


# --- class means -------------------------------------------------------------------------------


def class_means(maps: torch.Tensor, classes: np.ndarray,
                class_names: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each class's mean of the ``maps`` whose ``classes`` is it, every map scaled to [0, 1] first
    (:func:`normalise_maps`): ``({name: float32 [H, W]}, {name: count})`` for the classes present."""
    scaled = normalise_maps(maps)
    means, counts = {}, {}
    for k, name in enumerate(class_names):
        rows = np.flatnonzero(classes == k)
        if len(rows):
            means[name] = scaled[torch.as_tensor(rows, device=maps.device)].mean(0).cpu().numpy().astype(np.float32)
            counts[name] = len(rows)
    return means, counts


@dataclass
class ClassMeans:
    """``xai/<method>/class_means.npz``: each true class's mean map (:func:`class_means`) and how it was made.

    The maps are those of the first ``explain.class_means`` images of each class of the split,
    explained for their true class with the method's ``explain.<method>`` parameters and, for the
    Grad-CAM family, ``explain.layer``. The npz holds one float32 [H, W] array per class name and,
    under ``__meta__``, the other fields as JSON (an npz written without it loads with defaults).
    """

    maps: dict[str, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)
    method: str = ""
    split: str = ""
    target_layer: str = ""  # the Grad-CAM family's layer, recorded for every method (as in metrics.json)
    uses_layer: bool = False  # whether the method reads target_layer
    cam_grid: list[int] = field(default_factory=list)  # [h, w] of target_layer's output
    params: dict = field(default_factory=dict)  # the method's explain.<method> parameters

    META_KEY: ClassVar[str] = "__meta__"

    def save(self, path: Path) -> None:
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "maps"}
        _save_npz(path, {**self.maps, self.META_KEY: np.array(json.dumps(meta))})

    @classmethod
    def load(cls, path: str | Path) -> ClassMeans:
        with np.load(path) as z:
            maps = {k: z[k] for k in z.files if k != cls.META_KEY}
            meta = json.loads(str(z[cls.META_KEY])) if cls.META_KEY in z.files else {}
        return cls(maps, **meta)

    def title(self) -> str:
        """The method, and for the Grad-CAM family the layer and its grid (the class-means figure's title)."""
        if not self.uses_layer:
            return self.method
        return f"{self.method} on {self.target_layer} ({'x'.join(map(str, self.cam_grid))})"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **arrays)

    atomic_write_with(path, write)


# --- scoring every method on the same images ---------------------------------------------------


class _Scoring:
    """The metrics of each method on one set of scored images, beside the two baselines (made once)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, preds: np.ndarray, masks: np.ndarray | None,
                 scored: np.ndarray, ec: ExplainConfig):
        dev = images.device
        self.model, self.mc, self.batch_size, self.n = model, ec.metrics, ec.batch_size, len(scored)
        self.x = images[torch.as_tensor(scored, device=dev)].float().div_(255)
        self.t = torch.as_tensor(preds[scored], device=dev)
        self.masks = None if masks is None else torch.as_tensor(np.ascontiguousarray(masks[scored]), device=dev)
        self.random_baseline: dict | None = None
        self.random_curves: dict | None = None
        self.randomized: nn.Module | None = None

    def score(self, explainer: _Explainer, maps: torch.Tensor) -> tuple[dict, dict]:
        """One method's ``maps`` of the scored images: its metrics with the randomization test and both
        baselines, and its curves."""
        mc, model, bs = self.mc, self.model, self.batch_size
        entry, curves = score_maps(model, self.x, self.t, maps, self.masks, explainer, mc, bs)
        if self.randomized is None:
            rmaps = M.random_maps(self.n, *maps.shape[-2:], seed=mc.seed, device=maps.device)
            self.random_baseline, self.random_curves = score_maps(model, self.x, self.t, rmaps, self.masks, None, mc,
                                                                  bs)
            self.randomized = M.randomized_copy(model, mc.seed)
        randomized_maps = explainer(self.randomized, self.x, self.t)
        randomized_baseline, _ = map_scores(model, self.x, self.t, randomized_maps, self.masks, mc, bs)
        rho = entry["randomization_spearman"]
        entry.update(randomization_passed=bool(rho < mc.randomization_threshold),
                     randomization_verdict=randomization_verdict(rho, mc.randomization_threshold),
                     randomization_curve=curves["randomization"], random_baseline=dict(self.random_baseline),
                     randomized_model_baseline=randomized_baseline)
        return entry, curves


def _log_entry(method: str, entry: dict) -> None:
    pointing = f" pointing {entry['pointing_game']:.3f} IoU {entry['mask_iou']:.3f}" if "pointing_game" in entry else ""
    log.info("%s: deletion %.3f insertion %.3f randomization rho %.3f%s", method, entry["deletion_auc"],
             entry["insertion_auc"], entry["randomization_spearman"], pointing)
    if not entry["randomization_passed"]:
        log.warning("%s %s", method, entry["randomization_verdict"])


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
    scoring: _Scoring | None
    xai: Path


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
    scoring = _Scoring(model, images, preds, data.masks, scored, ec) if len(scored) else None
    return _Job(model, ec, class_names, data, images, preds, probs.max(1), layer_name, grid, galleries, requests,
                requests.inputs(images), scoring, xai)


def _explain_method(job: _Job, method: str) -> tuple[list[Path], dict[str, np.ndarray], dict | None, dict | None]:
    """One method's maps of every request, drawn and scored: (written gallery PNGs, each gallery's maps,
    its metrics entry, its curves); no entry or curves with the metrics off."""
    t0 = time.perf_counter()
    params = method_params(job.ec, method)
    explainer = _Explainer(method, params, job.layer_name, job.ec.batch_size)
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
        entry, curves = job.scoring.score(explainer, maps[SCORED])
        n, mc = job.scoring.n, job.ec.metrics
        entry.update(split=job.ec.split, n_images=int(n), n_randomization_images=min(mc.randomization_images, n),
                     target="predicted class", target_layer=job.layer_name, uses_layer=method in LAYER_METHODS,
                     cam_grid=job.grid, params=params, seconds_maps=round(seconds_maps, 3),
                     seconds_total=round(time.perf_counter() - t0, 3))
        passed, verdict = randomized_model_verdict(entry, mc.randomized_margin)
        entry.update(beats_randomized_model=passed, randomized_model_verdict=verdict)
        _log_entry(method, entry)
    log.info("%s: %d images -> %s (%.1fs)", method, len(written), job.xai / method, time.perf_counter() - t0)
    return written, gallery_maps, entry, curves


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
