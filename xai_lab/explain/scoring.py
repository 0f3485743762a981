"""Scoring explanations: the metrics of one method's maps beside two baselines, and the verdicts.

Each method is scored on the same images (:class:`Scoring`) against random maps and against the same
method on the fully randomized model; :func:`randomized_model_verdict` and
:func:`randomization_verdict` turn the numbers into sentences; :func:`metrics_markdown` and
:func:`explanation_summary` write them out.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn

from xai_lab.config import ExplainConfig
from xai_lab.explain import metrics as M
from xai_lab.explain.explainers import LAYER_METHODS, explain_batched

log = logging.getLogger(__name__)

METRIC_KEYS = ("deletion_auc", "insertion_auc", "randomization_spearman", "pointing_game", "mask_iou")


class Explainer:
    """One method bound to its parameters and layer (looked up by name, so it follows model copies)."""

    def __init__(self, method: str, params: dict, layer_name: str, batch_size: int):
        self.method, self.params, self.layer_name, self.batch_size = method, params, layer_name, batch_size

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kw = dict(self.params)
        if self.method in LAYER_METHODS:
            kw["layer"] = model.get_submodule(self.layer_name)
        return explain_batched(self.method, model, x, target, self.batch_size, **kw)


def map_scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               masks: torch.Tensor | None, mc, batch_size: int) -> tuple[dict, dict, dict]:
    """Faithfulness to ``model`` (deletion, insertion) and, with masks, localisation (pointing game,
    mask IoU) of ``maps``, the explanations of ``x`` for ``target``: (means, mean curves, per-image
    values as numpy arrays, for the paired intervals of :func:`paired_interval`).

    The per-image values also hold ``output_range``: how far the model's probability of the target
    moves along each image's deletion and insertion curves (the larger of the two ranges).
    """
    di = M.deletion_insertion(model, x, target, maps, mc.steps, batch_size, mc.seed)
    per_image = {"deletion_auc": di["deletion_auc"], "insertion_auc": di["insertion_auc"]}
    if masks is not None:
        per_image["pointing_game"] = M.pointing_game(maps, masks, mc.pointing_tolerance, mc.seed)
        per_image["mask_iou"] = M.mask_iou(maps, masks, mc.seed)
    spans = [c.amax(1) - c.amin(1) for c in (di["deletion"], di["insertion"])]
    per_image["output_range"] = torch.maximum(*spans)
    per_image = {k: v.float().cpu().numpy() for k, v in per_image.items()}
    out = {k: float(v.mean()) for k, v in per_image.items() if k != "output_range"}
    return out, {"deletion": di["deletion"].mean(0).tolist(), "insertion": di["insertion"].mean(0).tolist()}, per_image


def score_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               masks: torch.Tensor | None, explain, mc, batch_size: int) -> tuple[dict, dict, dict]:
    """Every metric of ``maps`` (:func:`map_scores` and the randomization test): (means, curves, per image).

    ``explain(model, x, target)`` recomputes maps on a randomized model; ``explain=None`` scores
    random maps against random maps (the randomization reference).
    """
    out, curves, per_image = map_scores(model, x, target, maps, masks, mc, batch_size)
    n_r = min(mc.randomization_images, len(x))
    if explain is None:
        other = M.random_maps(n_r, *maps.shape[-2:], seed=mc.seed + 1, device=maps.device)
        rand = {"all layers": M.spearman(maps[:n_r].abs(), other)}
    else:
        rand = M.randomization_test(lambda m: explain(m, x[:n_r], target[:n_r]), model, maps[:n_r], mc.seed)
    out["randomization_spearman"] = float(list(rand.values())[-1].mean())
    curves["randomization"] = {name: float(rho.mean()) for name, rho in rand.items()}
    return out, curves, per_image


# --- verdicts that know their noise ---------------------------------------------------------------

LEVEL = 0.95  # the paired bootstrap intervals' coverage
RESAMPLES = 2000
STILL_OUTPUT = 0.05  # a model whose target probability moves less than this along the curves: no verdict


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> list[float]:
    """``[mean(a - b), low, high]``: the mean paired difference over the same images and its 95% percentile
    bootstrap interval (``scipy.stats.bootstrap`` over the per-image differences, 2000 resamples, seeded).
    With fewer than two images the interval is NaN (nothing can be told)."""
    from scipy.stats import bootstrap

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(d) < 2:
        return [float(d.mean()) if len(d) else float("nan"), float("nan"), float("nan")]
    if np.ptp(d) == 0:  # every image differs by the same amount: the interval is that amount
        return [float(d[0])] * 3
    ci = bootstrap((d,), np.mean, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                   rng=np.random.default_rng(seed)).confidence_interval
    return [float(d.mean()), float(ci.low), float(ci.high)]


def decide(interval: list[float], margin: float = 0.0) -> str:
    """``beats`` when the whole interval lies above ``margin``, ``fails`` when it lies below, else ``cannot tell``."""
    _, low, high = interval
    if low > margin:
        return "beats"
    if high < margin:
        return "fails"
    return "cannot tell"


def comparison_intervals(per_image: dict, random_maps: dict, randomized_model: dict, seed: int) -> dict:
    """The paired intervals a verdict reads: insertion AUC against both baselines and, with masks, the
    pointing game against the randomized model: ``{metric: {baseline: [diff, low, high]}}``."""
    out = {"insertion_auc": {
        "random_maps": paired_interval(per_image["insertion_auc"], random_maps["insertion_auc"], seed),
        "randomized_model": paired_interval(per_image["insertion_auc"], randomized_model["insertion_auc"], seed),
    }}
    if "pointing_game" in per_image:
        out["pointing_game"] = {"randomized_model": paired_interval(per_image["pointing_game"],
                                                                    randomized_model["pointing_game"], seed)}
    return out


def _signed(interval: list[float]) -> str:
    d, lo, hi = interval
    return f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def randomized_model_verdict(entry: dict, margin: float) -> tuple[str, str]:
    """Whether the method's maps are the trained model's doing, judged against random maps and the same
    method on the fully randomized model over the same images: (``beats``, ``fails`` or ``cannot tell``;
    one sentence with the paired 95% intervals).

    Insertion AUC must beat both baselines (each paired interval above 0); with masks the pointing game
    must also lead the randomized model's by more than ``margin`` (its interval above ``margin``). An
    interval that spans the threshold is ``cannot tell``, and so is a model whose output does not move as
    pixels are removed (``output_range`` under :data:`STILL_OUTPUT`: both AUCs then sit at the same value).
    """
    iv = entry["intervals"]
    ins, n = entry["insertion_auc"], entry["n_images"]
    how = f"paired 95% bootstrap intervals over {n} images"
    insertion = (f"insertion AUC {ins:.2f}: {_signed(iv['insertion_auc']['random_maps'])} over random maps, "
                 f"{_signed(iv['insertion_auc']['randomized_model'])} over the randomized model")
    if entry["output_range"] < STILL_OUTPUT:
        return "cannot tell", (f"cannot be judged: the model's output barely moves as pixels are removed (its "
                               f"target probability moves {entry['output_range']:.3f} along the curves; deletion AUC "
                               f"{entry['deletion_auc']:.2f}, insertion AUC {ins:.2f})")
    outcomes = [decide(i) for i in iv["insertion_auc"].values()]
    insertion_outcome = ("beats" if all(o == "beats" for o in outcomes)
                         else "fails" if "fails" in outcomes else "cannot tell")
    if "pointing_game" not in iv:
        if insertion_outcome == "beats":
            return "beats", f"is faithful to the trained model beyond both baselines ({insertion}; {how})"
        if insertion_outcome == "fails":
            return "fails", f"is no more faithful than a baseline ({insertion}; {how})"
        return "cannot tell", f"cannot be told apart from a baseline on these images ({insertion}; {how})"
    pg_iv = iv["pointing_game"]["randomized_model"]
    pg_rmod = entry["randomized_model_baseline"]["pointing_game"]
    pointing = (f"pointing game {entry['pointing_game']:.2f} against {pg_rmod:.2f} on the randomized model, "
                f"lead {_signed(pg_iv)}")
    pointing_outcome = decide(pg_iv, margin)
    if pointing_outcome == "fails":
        return "fails", (f"points at the masks nearly as well (or better) with nothing learned ({pointing}, below "
                         f"a margin of {margin:.2f}; {how}): the image, not the model, explains its localisation")
    if pointing_outcome == "beats" and insertion_outcome == "beats":
        return "beats", (f"points at the expression parts because of what the model learned ({pointing}; "
                         f"{insertion}; {how})")
    if pointing_outcome == "beats" and insertion_outcome == "fails":
        return "fails", f"localises, but its pixel order is no more faithful than a baseline's ({insertion}; {how})"
    return "cannot tell", (f"cannot be told apart from the randomized model on these images (margin "
                           f"{margin:.2f}; {pointing}; {insertion}; {how})")


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
    for method, e in entries.items():
        if "regions" in e:
            lines += regions_markdown(method, e["regions"])
    return "\n".join(lines)


MARKS = {"more": "▲", "less": "▼", "cannot tell": "·"}


def regions_markdown(method: str, regions: dict) -> list[str]:
    """``metrics.md``'s section on where one method's attribution mass falls, beside both baselines."""
    names, s = regions["names"], regions["scored"]
    found = (f"; landmarks detected on {regions['detected_fraction']:.0%} of these faces, fitted from the crop on "
             f"the rest" if regions.get("detected_fraction") is not None else "")
    lines = [f"## {method}: where on the face", "",
             f"Share of the attribution mass (absolute values) in each region, on the {s['n']} scored faces "
             f"(predicted class; regions from {regions['source']}{found}). In brackets: random maps / the same "
             "method on the randomized model. ▲/▼: more/less mass than on the randomized model (paired 95% "
             "bootstrap interval of the difference above/below 0), ·: cannot tell.", "",
             "| region | area | share | share / area | difference from the randomized model |", "|---|---|---|---|---|"]
    for r in names:
        d, lo, hi = s["intervals"][r]["randomized_model"]
        lines.append(f"| {r} | {s['area'][r]:.3f} | {s['share'][r]:.3f} ({s['random_maps'][r]:.3f} / "
                     f"{s['randomized_model'][r]:.3f}) | {s['relative'][r]:.2f} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] "
                     f"{MARKS[s['outcome'][r]]} |")
    by_class = regions.get("by_class") or {}
    if by_class:
        lines += ["", "Per true class (the class means' faces, explained for their true class): share "
                  "(randomized model) and the mark.", "",
                  "| class | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for c, v in by_class.items():
            cells = [f"{v['share'][r]:.2f} ({v['randomized_model'][r]:.2f}) {MARKS[v['outcome'][r]]}" for r in names]
            lines.append(f"| {c} | {v['n']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


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
                        "beats_randomized_model": e.get("beats_randomized_model"),
                        **({"region_shares": e["regions"]["scored"]["share"]} if "regions" in e else {})}
                    for m, e in entries.items()},
        "random_baseline": {k: v for k, v in first["random_baseline"].items()},
    }


# --- where on the face: region shares beside both baselines ---------------------------------------

REGION_OUTCOMES = {"beats": "more", "fails": "less", "cannot tell": "cannot tell"}


def region_summary(names: list[str], shares: np.ndarray, random_shares: np.ndarray,
                   randomized_shares: np.ndarray, areas: np.ndarray, seed: int) -> dict:
    """Region shares of one set of faces ([N, R] each: the method's maps, random maps, the same method on
    the randomized model; ``areas``: each region's share of the pixels): their means, the share relative
    to the area, and per region the paired 95% intervals against both baselines and the outcome against
    the randomized model (``more``, ``less`` or ``cannot tell`` mass there)."""
    out: dict = {"n": int(len(shares)), "share": {}, "relative": {}, "area": {}, "random_maps": {},
                 "randomized_model": {}, "intervals": {}, "outcome": {}}
    for j, name in enumerate(names):
        area = float(areas[:, j].mean()) if len(areas) else float("nan")
        out["share"][name] = float(shares[:, j].mean()) if len(shares) else float("nan")
        out["area"][name] = area
        out["relative"][name] = out["share"][name] / area if area > 0 else float("nan")
        out["random_maps"][name] = float(random_shares[:, j].mean()) if len(shares) else float("nan")
        out["randomized_model"][name] = float(randomized_shares[:, j].mean()) if len(shares) else float("nan")
        vs_rmod = paired_interval(shares[:, j], randomized_shares[:, j], seed)
        out["intervals"][name] = {"random_maps": paired_interval(shares[:, j], random_shares[:, j], seed),
                                  "randomized_model": vs_rmod}
        out["outcome"][name] = REGION_OUTCOMES[decide(vs_rmod)]
    return out


class Regions:
    """The region masks of a set of faces and what they came from: ``masks`` bool [N, R, H, W]."""

    def __init__(self, names: list[str], masks: np.ndarray, source: str, detected: float | None = None):
        self.names, self.masks, self.source, self.detected = list(names), masks, source, detected

    @classmethod
    def of(cls, data, idx: np.ndarray, size: int) -> Regions | None:
        """The regions of the faces ``idx`` of a split: from its landmarks, else its masks; None without either."""
        from xai_lab.explain.regions import MASK_REGIONS, REGIONS, landmark_region_masks, mask_regions

        if data.landmarks is not None:
            detected = float(np.asarray(data.landmark_source)[idx].mean()) if len(idx) else None
            return cls(list(REGIONS), landmark_region_masks(np.asarray(data.landmarks)[idx], size), "landmarks",
                       detected)
        if data.masks is not None:
            return cls(list(MASK_REGIONS), mask_regions(np.asarray(data.masks)[idx]), "masks")
        return None

    def shares(self, maps: torch.Tensor | np.ndarray) -> np.ndarray:
        from xai_lab.explain.regions import region_shares

        return region_shares(maps.detach().float().cpu().numpy() if torch.is_tensor(maps) else maps, self.masks)

    def areas(self) -> np.ndarray:
        from xai_lab.explain.regions import region_areas

        return region_areas(self.masks)


class Scoring:
    """The metrics of each method on one set of scored images, beside the two baselines (made once)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, preds: np.ndarray, masks: np.ndarray | None,
                 scored: np.ndarray, ec: ExplainConfig, regions: Regions | None = None):
        dev = images.device
        self.model, self.mc, self.batch_size, self.n = model, ec.metrics, ec.batch_size, len(scored)
        self.x = images[torch.as_tensor(scored, device=dev)].float().div_(255)
        self.t = torch.as_tensor(preds[scored], device=dev)
        self.masks = None if masks is None else torch.as_tensor(np.ascontiguousarray(masks[scored]), device=dev)
        self.random_baseline: dict | None = None
        self.random_curves: dict | None = None
        self.random_per_image: dict | None = None
        self.random_maps: torch.Tensor | None = None
        self.regions = regions
        self.randomized: nn.Module | None = None

    def score(self, explainer: Explainer, maps: torch.Tensor) -> tuple[dict, dict, dict | None]:
        """One method's ``maps`` of the scored images: its metrics with the randomization test and both
        baselines, its curves, and with regions each face's region shares (``share``, ``randomized_model``,
        ``area``: [N, R] each; None without regions)."""
        mc, model, bs = self.mc, self.model, self.batch_size
        entry, curves, per_image = score_maps(model, self.x, self.t, maps, self.masks, explainer, mc, bs)
        if self.randomized is None:
            rmaps = self.random_maps = M.random_maps(self.n, *maps.shape[-2:], seed=mc.seed, device=maps.device)
            self.random_baseline, self.random_curves, self.random_per_image = score_maps(
                model, self.x, self.t, rmaps, self.masks, None, mc, bs)
            self.randomized = M.randomized_copy(model, mc.seed)
        randomized_maps = explainer(self.randomized, self.x, self.t)
        randomized_baseline, _, randomized_per_image = map_scores(model, self.x, self.t, randomized_maps, self.masks,
                                                                  mc, bs)
        rho = entry["randomization_spearman"]
        entry.update(randomization_passed=bool(rho < mc.randomization_threshold),
                     randomization_verdict=randomization_verdict(rho, mc.randomization_threshold),
                     randomization_curve=curves["randomization"], random_baseline=dict(self.random_baseline),
                     randomized_model_baseline=randomized_baseline,
                     output_range=float(per_image["output_range"].mean()),
                     intervals=comparison_intervals(per_image, self.random_per_image, randomized_per_image, mc.seed))
        faces = None
        if self.regions is not None:
            r = self.regions
            faces = {"share": r.shares(maps), "randomized_model": r.shares(randomized_maps), "area": r.areas()}
            scored = region_summary(r.names, faces["share"], r.shares(self.random_maps), faces["randomized_model"],
                                    faces["area"], mc.seed)
            entry["regions"] = {"names": r.names, "source": r.source, "detected_fraction": r.detected,
                                "scored": scored}
        return entry, curves, faces

    def class_regions(self, explainer: Explainer, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                      classes: np.ndarray, class_names: list[str], regions: Regions) -> dict:
        """Region shares per class of the class-mean faces (``x``, explained for their true class ``target``):
        ``{class: region_summary}``, beside random maps and the same method on the randomized model (the one
        :meth:`score` made: call it first)."""
        randomized_maps = explainer(self.randomized, x, target)
        random_maps = M.random_maps(len(x), *maps.shape[-2:], seed=self.mc.seed + 2, device=maps.device)
        shares, rnd, rmod = regions.shares(maps), regions.shares(random_maps), regions.shares(randomized_maps)
        areas = regions.areas()
        out = {}
        for k, name in enumerate(class_names):
            rows = np.flatnonzero(classes == k)
            if len(rows):
                out[name] = region_summary(regions.names, shares[rows], rnd[rows], rmod[rows], areas[rows],
                                           self.mc.seed)
        return out


def log_entry(method: str, entry: dict) -> None:
    pointing = f" pointing {entry['pointing_game']:.3f} IoU {entry['mask_iou']:.3f}" if "pointing_game" in entry else ""
    log.info("%s: deletion %.3f insertion %.3f randomization rho %.3f%s", method, entry["deletion_auc"],
             entry["insertion_auc"], entry["randomization_spearman"], pointing)
    if not entry["randomization_passed"]:
        log.warning("%s %s", method, entry["randomization_verdict"])
