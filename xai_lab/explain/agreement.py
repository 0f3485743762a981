"""The same faces explained by two models: where a difference in the maps comes from.

Two datasets' class means differ for two reasons: the models differ, or the faces do (CK+'s posed,
aligned faces against FER2013's faces in the wild). :func:`cross_explanations` holds the faces fixed:
on one dataset's test faces of the emotions two models share, each model explains each face for its
true emotion with the same method, and the two maps are compared face by face: Spearman rank
correlation of the absolute attributions, and the overlap (IoU) of their top 20% pixels. Where the
faces have landmarks, each model's region shares (:mod:`xai_lab.explain.regions`) go beside them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from xai_lab.explain import metrics as M

TOP_FRACTION = 0.2


def top_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float = TOP_FRACTION, seed: int = 0) -> torch.Tensor:
    """IoU of the ``fraction`` highest pixels of each pair of maps (absolute values; ties broken at random,
    seeded): [B, H, W] x2 -> [B]."""
    k = max(1, round(fraction * a[0].numel()))
    ta = M.pixel_ranks(a.abs(), seed) < k
    tb = M.pixel_ranks(b.abs(), seed) < k
    inter = (ta & tb).sum(1).float()
    return inter / (ta | tb).sum(1).float().clamp(min=1)


def pick_faces(labels: np.ndarray, keep: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the images whose label is in ``keep`` (bool per class), drawn at random (seeded), sorted."""
    idx = np.flatnonzero(keep[labels])
    return np.sort(np.random.default_rng(seed).permutation(idx)[:n])


def explain_faces(run, method: str, params: dict, layer: str, images: np.ndarray, targets: np.ndarray,
                  batch_size: int) -> torch.Tensor:
    """``run``'s maps of uint8 ``images`` for ``targets`` (its own class indices), on its device."""
    from xai_lab.explain.explainers import resolve_layer
    from xai_lab.explain.scoring import Explainer

    _, layer_name = resolve_layer(run.model, layer)
    x = torch.as_tensor(images, device=run.device).float().div_(255)
    t = torch.as_tensor(targets, device=run.device)
    return Explainer(method, params, layer_name, batch_size)(run.model, x, t)


def cross_explanations(runs: dict, datasets: dict, method: str, params: dict, layer: str, *, n_faces: int = 64,
                       batch_size: int = 64, seed: int = 0) -> pd.DataFrame:
    """For every ordered pair (faces of dataset D, another model A) that shares classes: D's own model and A
    explain the same ``n_faces`` test faces of D (of the shared emotions, for the true emotion).

    Args:
        runs: ``{name: LoadedRun}``, one model per dataset name.
        datasets: ``{name: prepared Dataset}`` with the same names.

    Returns:
        One row per pair: ``faces_of``, ``model``, ``method``, ``n`` (faces compared), ``n_blank`` (faces left
        out because a map was all zero), ``classes``, ``spearman`` and ``top20_iou`` (means over the faces, with
        their 95% bootstrap intervals ``*_low``, ``*_high``), and with landmarks ``share_<region>`` (model A) and
        ``own_share_<region>`` (D's model), over every picked face.
    """
    from xai_lab.data.emotions import shared_classes
    from xai_lab.explain.regions import REGIONS, landmark_region_masks, region_shares
    from xai_lab.explain.scoring import paired_interval

    rows = []
    for faces_of, data in datasets.items():
        own = runs[faces_of]
        test = data.splits["test"]
        for name, other in runs.items():
            if name == faces_of:
                continue
            shared = shared_classes(other.class_names, data.class_names)
            if not shared.emotions:
                continue
            keep = np.zeros(len(data.class_names), bool)
            keep[shared.data_idx] = True
            idx = pick_faces(test.labels, keep, n_faces, seed)
            if not len(idx):
                continue
            to_other = dict(zip(shared.data_idx, shared.model_idx, strict=True))
            labels = test.labels[idx]
            own_maps = explain_faces(own, method, params, layer, test.images[idx], labels, batch_size)
            other_maps = explain_faces(other, method, params, layer, test.images[idx],
                                       np.array([to_other[k] for k in labels]), batch_size)
            own_maps, other_maps = own_maps.float().cpu(), other_maps.float().cpu()
            # a map without any attribution (Grad-CAM's ReLU can leave none) has no ranking to compare
            ranked = ((own_maps.abs().flatten(1).amax(1) > 0) & (other_maps.abs().flatten(1).amax(1) > 0)).numpy()
            rho = M.spearman(own_maps.abs(), other_maps.abs()).numpy()[ranked]
            iou = top_overlap(own_maps, other_maps, seed=seed).numpy()[ranked]
            row = {"faces_of": faces_of, "model": name, "method": method, "n": int(ranked.sum()),
                   "n_blank": int((~ranked).sum()), "classes": " ".join(shared.emotions)}
            for key, values in (("spearman", rho), ("top20_iou", iou)):
                mean, low, high = paired_interval(values, np.zeros_like(values), seed)
                row.update({key: mean, f"{key}_low": low, f"{key}_high": high})
            if test.landmarks is not None:
                regions = landmark_region_masks(test.landmarks[idx], test.images.shape[-1])
                for prefix, maps in (("share", other_maps), ("own_share", own_maps)):
                    row.update({f"{prefix}_{r}": v for r, v in zip(REGIONS, region_shares(maps.numpy(),
                                                                                           regions).mean(0),
                                                                   strict=True)})
            rows.append(row)
    return pd.DataFrame(rows)
