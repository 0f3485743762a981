"""``explain``: attribution galleries and explanation metrics for a run's best checkpoint.

For each method (``explain.methods``, with its ``explain.<method>`` parameters), on the
``explain.split`` split:

- galleries, explained for the predicted class, drawn into
  ``xai/<method>/<gallery>/sampleNN.png`` (``per_class/<class>_NN.png``): ``high_conf`` and
  ``low_conf`` (the ``num_each`` most and least confident images), ``misclassified`` (the
  ``num_each`` most confident mistakes), ``per_class`` (the ``per_class`` most confident images
  of each true class); ``xai/<method>/selection.csv`` lists the images shown;
- ``xai/comparison_<gallery>.png``: rows are images, columns are methods;
- ``xai/<method>/class_means.{npz,png}``: each true class's mean map (maps scaled to [0, 1]
  one by one, explained for the true class);
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

Every map is computed once, in batches on the device: the images and targets that the
galleries, class means and metrics need are explained together.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from xai_lab.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from xai_lab.config import ExplainConfig
from xai_lab.errors import UserError
from xai_lab.explain import metrics as M
from xai_lab.explain.drawing import draw_class_means, draw_comparison, draw_explanation, draw_metric_curves
from xai_lab.explain.explainers import EXPLAINERS, LAYER_METHODS, explain_batched, resolve_layer

log = logging.getLogger(__name__)

METRIC_KEYS = ("deletion_auc", "insertion_auc", "randomization_spearman", "pointing_game", "mask_iou")


class ExplainResult(dict):
    """What :func:`explain_run` returns: ``{method: [written PNG paths]}``, plus

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


# --- the verb ----------------------------------------------------------------------------------


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
    """Write explanation galleries and metrics for the run's ``best.pt``.

    Args:
        run_dir: the run folder.
        report_dir: where ``xai/`` goes; the run's report folder when None.
        split, num_each, methods: override ``explain.*`` of the run's config.
        dataset: the prepared dataset (loaded from the run's config when None).
        device: overrides ``run.device``.
        explain_config: replaces the run's ``explain`` section (before the overrides above).
        metrics: overrides ``explain.metrics.enabled``.

    Returns:
        An :class:`ExplainResult`: ``{method: [written PNG paths]}`` with ``.metrics`` (the
        ``xai/metrics.json`` entries computed) and ``.summary`` (the ``explanations`` block).
    """
    from xai_lab.checkpoint import model_from_checkpoint
    from xai_lab.data.dataset import load_dataset
    from xai_lab.device import resolve_device, to_device
    from xai_lab.evaluate import predict_logits
    from xai_lab.runs import report_dir_for, resolve_run_dir

    run_dir = resolve_run_dir(run_dir)
    report_dir = Path(report_dir) if report_dir is not None else report_dir_for(run_dir)
    model, cfg, class_names, _ = model_from_checkpoint(run_dir / "best.pt", "cpu")
    ec = dataclasses.replace(explain_config or cfg.explain)
    ec.split = split or ec.split
    if num_each is not None and num_each < 1:
        raise UserError(f"the number of images per gallery must be >= 1, got {num_each}")
    ec.num_each = num_each or ec.num_each
    ec.methods = check_methods(list(methods or ec.methods))
    mc = dataclasses.replace(ec.metrics, enabled=ec.metrics.enabled if metrics is None else metrics)
    layer, layer_name = resolve_layer(model, ec.layer)
    dev = resolve_device(device or cfg.run.device)
    model.to(dev)
    if dataset is None:
        dataset = load_dataset(cfg.data, progress=cfg.run.progress)
    if ec.split not in dataset.splits:
        raise UserError(f"unknown split '{ec.split}'; valid: {', '.join(dataset.splits)}")
    data = dataset.splits[ec.split]
    if len(data) == 0:
        raise UserError(f"the {ec.split} split of {dataset.name} is empty: nothing to explain")

    images = to_device(data.images, dev)
    probs = predict_logits(model, images, cfg.train.eval_batch_size, cfg.train.amp).softmax(1).cpu().numpy()
    preds, conf = probs.argmax(1), probs.max(1)
    grid = cam_grid(model, layer, images[:1].float().div(255))

    # every (image, target) pair any output needs, explained once per method
    galleries = select_galleries(probs, data.labels, ec, class_names)
    per_class_mean = [np.flatnonzero(data.labels == k)[: ec.class_means or None] for k in range(len(class_names))]
    rng = np.random.default_rng(mc.seed)
    scored = np.sort(rng.permutation(len(data))[: mc.num_images]) if mc.enabled else np.zeros(0, np.int64)
    req_idx = np.concatenate([*(g[0] for g in galleries.values()), scored, *per_class_mean]).astype(np.int64)
    req_tgt = np.concatenate([*(preds[g[0]] for g in galleries.values()), preds[scored],
                              *(data.labels[i] for i in per_class_mean)]).astype(np.int64)
    pairs, where = np.unique(req_idx * len(class_names) + req_tgt, return_inverse=True)
    x_all = images[torch.as_tensor(pairs // len(class_names), device=dev)].float().div_(255)
    t_all = torch.as_tensor(pairs % len(class_names), device=dev)
    bounds = np.cumsum([0, *(len(g[0]) for g in galleries.values()), len(scored), *map(len, per_class_mean)])

    masks = None
    if mc.enabled and data.masks is not None:
        masks = torch.as_tensor(np.ascontiguousarray(data.masks[scored]), device=dev)

    written: dict[str, list[Path]] = {}
    entries: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    compare: dict[str, dict[str, np.ndarray]] = {g: {} for g in galleries}
    random_baseline = random_curves = randomized = None
    xai = report_dir / "xai"
    for method in ec.methods:
        t0 = time.perf_counter()
        params = method_params(ec, method)
        explainer = _Explainer(method, params, layer_name, ec.batch_size)
        maps_all = explainer(model, x_all, t_all)
        maps_req = maps_all[torch.as_tensor(where, device=dev)]
        seconds_maps = time.perf_counter() - t0
        maps_np = maps_req.cpu().numpy()

        # galleries
        written[method] = []
        rows = []
        for gi, (group, (idx, files)) in enumerate(galleries.items()):
            gmaps = maps_np[bounds[gi] : bounds[gi + 1]]
            compare[group][method] = gmaps[: ec.compare_rows]
            for rank, (i, fname) in enumerate(zip(idx, files, strict=True)):
                true, guess = class_names[data.labels[i]], class_names[preds[i]]
                path = xai / method / group / fname
                draw_explanation(data.images[i], gmaps[rank], f"true: {true} | pred: {guess} ({conf[i]:.2f})", path,
                                 method)
                written[method].append(path)
                rows.append({"group": group, "file": f"{group}/{fname}", "path": data.paths[i], "true": true,
                             "pred": guess, "confidence": float(conf[i])})
        table = pd.DataFrame(rows, columns=["group", "file", "path", "true", "pred", "confidence"])
        atomic_write_with(xai / method / "selection.csv", lambda p, t=table: t.to_csv(p, index=False))

        # class means (explained for the true class)
        first = len(galleries) + 1
        means, counts = {}, {}
        for k, name in enumerate(class_names):
            cm = maps_req[bounds[first + k] : bounds[first + k + 1]]
            if len(cm):
                lo, hi = cm.amin(dim=(1, 2), keepdim=True), cm.amax(dim=(1, 2), keepdim=True)
                means[name] = ((cm - lo) / (hi - lo).clamp(min=1e-12)).mean(0).cpu().numpy().astype(np.float32)
                counts[name] = len(cm)
        _save_npz(xai / method / "class_means.npz", means)
        draw_class_means(means, counts, xai / method / "class_means.png", method)

        # metrics
        if mc.enabled and len(scored):
            sl = slice(bounds[len(galleries)], bounds[len(galleries) + 1])
            x_s = images[torch.as_tensor(scored, device=dev)].float().div_(255)
            t_s = torch.as_tensor(preds[scored], device=dev)
            entry, curves[method] = score_maps(model, x_s, t_s, maps_req[sl], masks, explainer, mc, ec.batch_size)
            if random_baseline is None:
                rmaps = M.random_maps(len(scored), *maps_req.shape[-2:], seed=mc.seed, device=dev)
                random_baseline, random_curves = score_maps(model, x_s, t_s, rmaps, masks, None, mc, ec.batch_size)
                randomized = M.randomized_copy(model, mc.seed)
            randomized_baseline, _ = map_scores(model, x_s, t_s, explainer(randomized, x_s, t_s), masks, mc,
                                                ec.batch_size)
            rho = entry["randomization_spearman"]
            entry.update(
                randomization_passed=bool(rho < mc.randomization_threshold),
                randomization_verdict=randomization_verdict(rho, mc.randomization_threshold),
                randomization_curve=curves[method]["randomization"],
                random_baseline=dict(random_baseline),
                randomized_model_baseline=randomized_baseline,
                split=ec.split, n_images=int(len(scored)), n_randomization_images=min(mc.randomization_images,
                                                                                    len(scored)),
                target="predicted class",
                target_layer=layer_name, uses_layer=method in LAYER_METHODS,
                cam_grid=grid, params=params, seconds_maps=round(seconds_maps, 3),
                seconds_total=round(time.perf_counter() - t0, 3),
            )
            passed, verdict = randomized_model_verdict(entry, mc.randomized_margin)
            entry.update(beats_randomized_model=passed, randomized_model_verdict=verdict)
            entries[method] = entry
            log.info("%s: deletion %.3f insertion %.3f randomization rho %.3f%s", method, entry["deletion_auc"],
                     entry["insertion_auc"], rho,
                     f" pointing {entry['pointing_game']:.3f} IoU {entry['mask_iou']:.3f}" if masks is not None else "")
            if not entry["randomization_passed"]:
                log.warning("%s %s", method, entry["randomization_verdict"])
        log.info("%s: %d images -> %s (%.1fs)", method, len(written[method]), xai / method, time.perf_counter() - t0)

    for group, maps in compare.items():
        idx = galleries[group][0][: ec.compare_rows]
        if len(idx):
            titles = [f"{class_names[data.labels[i]]}/{class_names[preds[i]]} ({conf[i]:.2f})" for i in idx]
            draw_comparison(data.images[idx], maps, titles, xai / f"comparison_{group}.png",
                            f"{group}: true/predicted (confidence)")

    summary: dict = {}
    if entries:
        merged = {**(_read_json(xai / "metrics.json") or {}), **entries}
        atomic_write_json(xai / "metrics.json", merged)
        atomic_write_text(xai / "metrics.md", metrics_markdown(merged))
        draw_metric_curves({**curves, "random": random_curves}, xai / "metric_curves.png")
        summary = explanation_summary(merged)
        test_summary = _read_json(report_dir / "test_summary.json")
        if test_summary is not None:
            atomic_write_json(report_dir / "test_summary.json", {**test_summary, "explanations": summary})
    return ExplainResult(written, entries, summary, report_dir)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez_compressed(f, **arrays)

    atomic_write_with(path, write)
