"""Face regions in the input's grid, and the share of an explanation's mass in each.

From dlib's 68 landmarks (:mod:`xai_lab.data.landmarks`; iBUG 300-W numbering) every face is cut into
:data:`REGIONS`, one label per pixel:

- ``brows``: each brow's five points as a band, 0.15 interocular distances above and below them;
- ``eyes``: each eye's six points, widened by 30% and heightened by 80% about the eye's centre (a 48 px
  eye is a slit of about 5 x 2 px);
- ``nose``: the bridge and the nostrils' outline (points 27-35), widened by 20%;
- ``mouth``: the outer lip contour (48-59), enlarged by 15% about its centre;
- ``rest_of_face``: the rest of the face outline: the jaw (0-16) closed over the forehead (the brows
  raised by 0.6 interocular distances);
- ``outside``: every other pixel.

Where two regions overlap the first of mouth, eyes, brows, nose wins. Synthfaces has its own masks of
the parts that carry the expression; :func:`mask_regions` maps them onto the same names (the mask as
``expression_parts``, the rest as ``outside``), so both run through :func:`region_shares`.

A pixel belongs to a polygon when its centre (x + 0.5, y + 0.5) lies inside (``matplotlib.path``).
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as Polygon

REGIONS = ("brows", "eyes", "nose", "mouth", "rest_of_face", "outside")
MASK_REGIONS = ("expression_parts", "outside")  # synthfaces
_PRIORITY = ("mouth", "eyes", "brows", "nose")  # who wins where two regions overlap

_JAW, _BROWS, _NOSE = np.arange(0, 17), (np.arange(17, 22), np.arange(22, 27)), np.arange(27, 36)
_EYES, _MOUTH = (np.arange(36, 42), np.arange(42, 48)), np.arange(48, 60)


def _scaled(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    c = points.mean(0)
    return c + (points - c) * np.array([sx, sy], np.float32)


def _hull_order(points: np.ndarray) -> np.ndarray:
    """The points in angular order about their centre (a simple polygon for convex-ish outlines)."""
    c = points.mean(0)
    return points[np.argsort(np.arctan2(points[:, 1] - c[1], points[:, 0] - c[0]))]


def region_polygons(points: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The polygons of each landmark region of one face (``points``: [68, 2], x and y in pixels)."""
    eye_centres = [points[e].mean(0) for e in _EYES]
    iod = float(np.linalg.norm(eye_centres[1] - eye_centres[0])) or 1.0
    up = np.array([0.0, 0.15 * iod], np.float32)
    brows = [np.concatenate([points[b] - up, points[b][::-1] + up]) for b in _BROWS]
    forehead = np.concatenate([points[b] for b in _BROWS])[::-1] - np.array([0.0, 0.6 * iod], np.float32)
    return {
        "brows": brows,
        "eyes": [_hull_order(_scaled(points[e], 1.3, 1.8)) for e in _EYES],
        "nose": [_hull_order(_scaled(points[_NOSE], 1.2, 1.0))],
        "mouth": [_scaled(points[_MOUTH], 1.15, 1.15)],
        "rest_of_face": [np.concatenate([points[_JAW], forehead])],
    }


def _inside(polygons: list[np.ndarray], centres: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    hit = np.zeros(len(centres), bool)
    for poly in polygons:
        hit |= Polygon(poly).contains_points(centres)
    return hit.reshape(shape)


def landmark_regions(points: np.ndarray, size: int) -> np.ndarray:
    """Region labels of one face: int8 [size, size], index into :data:`REGIONS` (every pixel has one)."""
    ys, xs = np.mgrid[0:size, 0:size]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
    polys = region_polygons(np.asarray(points, np.float32))
    labels = np.full((size, size), REGIONS.index("outside"), np.int8)
    face = _inside(polys["rest_of_face"], centres, (size, size))
    labels[face] = REGIONS.index("rest_of_face")
    for name in reversed(_PRIORITY):  # the first of _PRIORITY is drawn last and wins
        labels[_inside(polys[name], centres, (size, size))] = REGIONS.index(name)
    return labels


def landmark_region_masks(points: np.ndarray, size: int) -> np.ndarray:
    """One-hot region masks of many faces: bool [N, len(REGIONS), size, size] from points [N, 68, 2]."""
    labels = np.stack([landmark_regions(p, size) for p in points]) if len(points) else np.zeros((0, size, size))
    return labels[:, None] == np.arange(len(REGIONS))[None, :, None, None]


def mask_regions(masks: np.ndarray) -> np.ndarray:
    """Synthfaces' masks (bool [N, 1, S, S] or [N, S, S]) as region masks bool [N, 2, S, S] (:data:`MASK_REGIONS`)."""
    m = np.asarray(masks, bool).reshape(len(masks), *np.asarray(masks).shape[-2:])
    return np.stack([m, ~m], 1)


def region_shares(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """The share of each map's attribution mass in each region: float [N, R], rows sum to 1.

    ``maps`` [N, H, W] are taken as magnitudes (absolute values); a map with no mass at all gives each
    region its share of the area (the uniform map's answer).
    """
    mass = np.abs(np.asarray(maps, np.float64)).reshape(len(maps), 1, -1)
    r = np.asarray(regions, bool).reshape(len(regions), regions.shape[1], -1)
    shares = (mass * r).sum(-1)
    total = shares.sum(1, keepdims=True)
    area = region_areas(regions)
    return np.where(total > 0, shares / np.where(total > 0, total, 1), area)


def region_areas(regions: np.ndarray) -> np.ndarray:
    """Each region's share of the image's pixels: float [N, R]."""
    r = np.asarray(regions, bool)
    return r.reshape(len(r), r.shape[1], -1).mean(-1)
