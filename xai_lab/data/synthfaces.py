"""synthfaces: the project's own procedurally drawn facial-expression dataset.

Small grayscale faces (48x48 by default) in the seven classes of FER-2013, drawn
from scratch by this module: no image or model from elsewhere goes into them, so
the dataset is covered by the project's MIT licence like the rest of the code.
It is the default dataset of the demo and the tests, and, because the code
knows exactly which pixels carry the expression, it is the ground truth against
which explanation maps (saliency, Grad-CAM, ...) are scored.

Subjects
    ``n_per_class`` synthetic subjects (ids ``"s0000"``, ``"s0001"``, ...), each
    shown once in every class, as in CK+. A subject has its own face shape
    (face ellipse width and height, eye spacing and size, brow and mouth
    position, hairline, skin, hair and brow tone) and a slight resting bias of
    mouth curve, brow slant and eye openness.

Expression cues
    The classes differ ONLY in these cues:

    ========  =================================  =========================  ========  ===================
    class     mouth                              brows                      eyes      other
    ========  =================================  =========================  ========  ===================
    angry     closed, narrow, slight frown       inner ends down (V), low   narrowed
    disgust   snarl: one side of the upper lip   inner ends a little down,  narrowed  nose wrinkles and
              raised over the teeth, frown       low                                  nasolabial folds
    fear      wide, stretched open, teeth        inner ends up, raised      wide
    happy     wide smile, open, teeth            level                      narrowed
    neutral   closed straight line               level                      normal
    sad       closed, frown                      inner ends up              a little
                                                                            narrowed
    surprise  round open "O"                     raised high, arched        wide
    ========  =================================  =========================  ========  ===================

    Class means of the cue values (``_CUE_MEANS``; lengths in pixels of the
    48-px reference frame, scaled with ``size``): positive ``mouth_curve``
    lifts the mouth corners, ``mouth_open`` is the half-height of the opening,
    ``mouth_width`` the half-width, positive ``brow_angle`` lifts the inner
    brow ends, ``brow_height`` raises the whole brow, ``eye_open`` multiplies
    the subject's eye height, ``teeth`` is the fraction of the opening filled
    by the upper teeth, ``lip_raise`` and ``wrinkle`` are the disgust cues.

    ========  =====  ====  =====  =====  =====  ======  ====  ====  =======
    class     curve  open  width  teeth  raise  angle   high  eye   wrinkle
    ========  =====  ====  =====  =====  =====  ======  ====  ====  =======
    angry     -0.8   0     4.2    0      0      -2.6    -1.3  0.55  0
    disgust   -1.0   0.2   5.0    0.6    1.7    -1.3    -1.0  0.55  1
    fear      -0.7   1.4   7.3    0.55   0      +2.0    +2.0  1.6   0
    happy     +2.6   1.0   7.5    0.6    0      0       +0.2  0.75  0
    neutral   0      0     5.5    0      0      0       0     1.0   0
    sad       -2.2   0     5.0    0      0      +2.2    +0.2  0.8   0
    surprise  0      3.0   3.3    0      0      0       +3.2  1.6   0
    ========  =====  ====  =====  =====  =====  ======  ====  ====  =======

    Each image draws an expression intensity ``k`` in [0.55, 1.15] (``min_intensity``
    raises the floor for an easier set) and sets
    every cue to ``neutral + k * (class mean - neutral)`` plus Gaussian jitter
    (and the subject's resting bias), so weak expressions drift towards
    neutral and neighbouring classes (angry/disgust, fear/surprise,
    sad/neutral) overlap a little: a good CNN gets most, not all, right.

Nuisance variation (independent of the class)
    face position (shift of up to about 4 px), scale (0.86-1.12), in-plane
    rotation (+-14 degrees), gaze direction, background (grey level and
    linear gradient, random lines and blobs), brightness and contrast,
    Gaussian pixel noise, and, in about a fifth of the images, an occluder
    (a "hand" or a bar) over part of the face, sometimes over part of a cue.

Mask
    ``masks[i]`` marks the pixels of the parts that carry the expression:
    mouth (lips and opening), brows, eyes and, when drawn, the disgust wrinkle
    lines. It is rendered with the same geometric transform as the face, kept
    where a part covers at least a quarter of a pixel, dilated by about 1 px
    at 48 px (``round(size / 48)`` px) and cleared where the occluder covers
    the pixel. Occluders never hide more than half of it, so no mask is empty.

Drawing
    Every part is a polygon in face coordinates, mapped through the face's
    affine transform and filled with PIL at 4x the output resolution; the
    canvas is then averaged over 4x4 blocks (a box filter), which
    anti-aliases the edges. Everything is deterministic given
    ``(n_per_class, label_noise, seed, size, min_intensity)``: subject ``i`` is drawn from
    its own stream ``numpy.random.default_rng([seed, 0x5F, i])`` (so a larger
    ``n_per_class`` adds subjects and keeps the others' pixels), and label
    noise from the separate stream ``default_rng([seed, 0x4C, 0])``, so
    changing ``label_noise`` changes labels only, never pixels.

Images are ordered subject-major: image ``7 * s + c`` is subject ``s`` in
class ``CLASSES[c]``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from xai_lab.atomic import atomic_dir

__all__ = ["CLASSES", "SynthFaces", "generate", "write_folder"]

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

_REF = 48.0  # reference frame: all lengths below are pixels of a 48x48 image
_SUPERSAMPLE = 4
_STREAM_DRAW = 0x5F  # per-subject drawing streams: default_rng([seed, _STREAM_DRAW, subject])
_STREAM_LABELS = 0x4C  # label-noise stream: default_rng([seed, _STREAM_LABELS, 0])
_FACE_CENTER = (24.0, 24.5)
_P_OCCLUDED = 0.2
MIN_INTENSITY, MAX_INTENSITY = 0.55, 1.15  # expression intensity range (min_intensity raises the floor)
_MAX_OCCLUDED_FRACTION = 0.5
_N_LINES, _N_BLOBS = 5, 3

# Expression cue means per class; "neutral" is the origin the intensity scales from.
_CUE_NAMES = (
    "mouth_curve", "mouth_open", "mouth_width", "teeth", "lip_raise",
    "brow_angle", "brow_height", "brow_arch", "eye_open", "wrinkle",
)  # fmt: skip
_CUE_MEANS: dict[str, tuple[float, ...]] = {
    #            curve  open  width teeth raise  angle height arch  eye  wrinkle
    "angry":    (-0.8,  0.0,  4.2,  0.0,  0.0,  -2.6,  -1.3,  0.2, 0.55, 0.0),
    "disgust":  (-1.0,  0.2,  5.0,  0.6,  1.7,  -1.3,  -1.0,  0.3, 0.55, 1.0),
    "fear":     (-0.7,  1.4,  7.3,  0.55, 0.0,   2.0,   2.0,  0.3, 1.6,  0.0),
    "happy":    (2.6,   1.0,  7.5,  0.6,  0.0,   0.0,   0.2,  0.5, 0.75, 0.0),
    "neutral":  (0.0,   0.0,  5.5,  0.0,  0.0,   0.0,   0.0,  0.5, 1.0,  0.0),
    "sad":      (-2.2,  0.0,  5.0,  0.0,  0.0,   2.2,   0.2,  0.3, 0.8,  0.0),
    "surprise": (0.0,   3.0,  3.3,  0.0,  0.0,   0.0,   3.2,  1.4, 1.6,  0.0),
}  # fmt: skip
# Per-sample Gaussian jitter of each cue (same order as _CUE_NAMES).
_CUE_JITTER = (0.45, 0.3, 0.5, 0.1, 0.3, 0.5, 0.5, 0.2, 0.1, 0.08)


@dataclass(frozen=True)
class SynthFaces:
    """A generated synthfaces dataset (see the module docstring).

    Attributes:
        images: uint8 ``[N, size, size]`` grayscale faces.
        masks: bool ``[N, size, size]``, True on the expression-carrying parts.
        labels: int64 ``[N]`` training labels (index into :data:`CLASSES`),
            possibly flipped by label noise.
        clean_labels: int64 ``[N]`` the class each face was drawn as.
        subjects: ``N`` subject ids such as ``"s0007"``.
        cues: one row per image with the drawn expression cues, the
            subject's face shape and the nuisance values.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    clean_labels: np.ndarray
    subjects: list[str]
    cues: pd.DataFrame

    @property
    def label_flipped(self) -> np.ndarray:
        """Bool ``[N]``: where label noise replaced the clean label."""
        return self.labels != self.clean_labels

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- arguments


def _check_args(n_per_class: int, label_noise: float, seed: int, size: int, min_intensity: float) -> None:
    def is_int(x: object) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not is_int(n_per_class) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float, np.floating)):
        raise ValueError(f"label_noise must be a number in [0, 1), got {label_noise!r}")
    if not 0.0 <= float(label_noise) < 1.0:
        raise ValueError(f"label_noise must be in [0, 1), got {label_noise!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not is_int(size) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    if not 0.0 < float(min_intensity) <= MAX_INTENSITY:
        raise ValueError(f"min_intensity must be in (0, {MAX_INTENSITY}], got {min_intensity!r}")


# --------------------------------------------------------------------------- sampling


def _draw_subject(rng: np.random.Generator) -> dict[str, float]:
    """Face shape and tones of one subject, plus its resting expression bias."""
    skin = rng.uniform(0.45, 0.82)
    face_w = rng.uniform(13.2, 15.5)
    return {
        "face_w": face_w,  # half-width of the face ellipse
        "face_h": rng.uniform(17.0, 19.5),  # half-height
        "eye_dx": face_w * rng.uniform(0.41, 0.46),  # eye centre distance from the midline
        "eye_y": rng.uniform(-4.6, -3.4),  # eye centre height (down is positive)
        "eye_w": rng.uniform(2.5, 3.1),  # eye half-width
        "eye_h": rng.uniform(1.35, 1.7),  # eye half-height at eye_open = 1
        "brow_gap": rng.uniform(3.9, 4.6),  # neutral brow height above the eye centre
        "brow_thick": rng.uniform(0.55, 0.8),  # brow half-thickness
        "mouth_y": rng.uniform(9.0, 10.6),
        "hairline": rng.uniform(-17.0, -15.0),
        "skin": skin,
        "hair": float(np.clip(skin - rng.uniform(0.22, 0.45), 0.03, 1.0)),
        "brow_tone": rng.uniform(0.2, 0.45),  # brow grey as a fraction of skin
        "rest_curve": rng.normal(0.0, 0.25),
        "rest_brow": rng.normal(0.0, 0.25),
        "rest_eye": rng.normal(1.0, 0.06),
    }


def _draw_cues(rng: np.random.Generator, cls: str, subject: dict[str, float],
               min_intensity: float = MIN_INTENSITY) -> dict[str, float]:
    """Expression cues of one image: neutral + intensity * (class - neutral) + jitter."""
    neutral = np.array(_CUE_MEANS["neutral"])
    mean = np.array(_CUE_MEANS[cls])
    intensity = rng.uniform(min_intensity, MAX_INTENSITY)
    values = neutral + intensity * (mean - neutral) + rng.normal(0.0, 1.0, len(_CUE_NAMES)) * _CUE_JITTER
    cues = dict(zip(_CUE_NAMES, values.tolist(), strict=True))
    cues["mouth_curve"] += subject["rest_curve"]
    cues["brow_angle"] += subject["rest_brow"]
    cues["eye_open"] *= subject["rest_eye"]
    # keep the cues physical; a wrinkle or lip raise too faint to see is not drawn at all
    cues["mouth_open"] = cues["mouth_open"] if cues["mouth_open"] > 0.25 else 0.0
    cues["lip_raise"] = cues["lip_raise"] if cues["lip_raise"] > 0.5 else 0.0
    shows_teeth = cues["mouth_open"] > 0.0 or cues["lip_raise"] > 0.0
    cues["teeth"] = float(np.clip(cues["teeth"], 0.0, 0.8)) if shows_teeth else 0.0
    cues["mouth_width"] = float(np.clip(cues["mouth_width"], 2.6, 9.0))
    cues["brow_height"] = float(np.clip(cues["brow_height"], -2.0, 3.8))
    cues["brow_arch"] = float(np.clip(cues["brow_arch"], 0.0, 2.0))
    cues["eye_open"] = float(np.clip(cues["eye_open"], 0.35, 2.0))
    cues["wrinkle"] = float(np.clip(cues["wrinkle"], 0.0, 1.0)) if cues["wrinkle"] > 0.3 else 0.0
    cues["lip_raise_side"] = float(rng.choice([-1.0, 1.0]))
    return {"intensity": intensity, **cues}


def _draw_nuisance(rng: np.random.Generator) -> tuple[dict[str, float | str], dict]:
    """Class-independent variation of one image.

    Returns the scalars recorded in the cue table, and the scene geometry: background
    ``lines`` and ``blobs`` (arrays, one row each) and the ``occluder`` parameters.
    """
    scalars: dict[str, float | str] = {
        "shift_x": rng.uniform(-4.0, 4.0),
        "shift_y": rng.uniform(-3.5, 3.5),
        "scale": rng.uniform(0.86, 1.12),
        "rotation": rng.uniform(-14.0, 14.0),  # degrees, counter-clockwise on screen
        "gaze_x": rng.uniform(-0.7, 0.7),
        "gaze_y": rng.uniform(-0.3, 0.3),
        "background": rng.uniform(0.1, 0.9),
        "bg_gradient": rng.uniform(-0.35, 0.35),
        "bg_gradient_angle": rng.uniform(0.0, 2 * np.pi),
        "brightness": rng.uniform(-0.12, 0.12),
        "contrast": rng.uniform(0.65, 1.25),
        "noise": rng.uniform(0.005, 0.045),
    }
    n_lines, n_blobs = int(rng.integers(0, _N_LINES + 1)), int(rng.integers(0, _N_BLOBS + 1))
    scalars["clutter_lines"], scalars["clutter_blobs"] = n_lines, n_blobs
    scene = {
        # always drawn in full so that every image consumes the same random numbers
        "lines": rng.uniform([-5, -5, -5, -5, 0.4, 0.0], [53, 53, 53, 53, 1.6, 1.0], (_N_LINES, 6))[:n_lines],
        "blobs": rng.uniform([0, 0, 2, 2, 0, 0.0], [48, 48, 9, 9, np.pi, 1.0], (_N_BLOBS, 6))[:n_blobs],
    }
    occluder = {
        "kind": rng.choice(["hand", "bar"]),
        "angle": rng.uniform(0, 2 * np.pi),  # where around the face it sits
        "radius": rng.uniform(0.55, 1.05),  # how far out, in face radii
        "tilt": rng.uniform(0, np.pi),
        "length": rng.uniform(14.0, 40.0),
        "width": rng.uniform(2.5, 6.0),
        "palm": rng.uniform(4.5, 6.5),
        "tone": rng.uniform(0.0, 1.0),
    }
    occluded = rng.random() < _P_OCCLUDED
    scalars["occluder"] = str(occluder["kind"]) if occluded else "none"
    scene["occluder"] = occluder
    return scalars, scene


# --------------------------------------------------------------------------- shapes


@functools.cache
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    circle.flags.writeable = False
    return circle


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    return _unit_circle(n) * [rx, ry] + [cx, cy]


def _stroke(centerline: np.ndarray, half_width: np.ndarray | float) -> np.ndarray:
    """Polygon of a thick polyline: the centreline offset to both sides along its normals."""
    tangent = np.empty_like(centerline)
    tangent[1:-1] = centerline[2:] - centerline[:-2]
    tangent[0], tangent[-1] = centerline[1] - centerline[0], centerline[-1] - centerline[-2]
    tangent /= np.sqrt((tangent**2).sum(axis=1, keepdims=True)) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * np.reshape(half_width, (-1, 1))
    return np.concatenate([centerline + normal, (centerline - normal)[::-1]])


def _rotated_rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [length / 2, width / 2]
    return corners @ np.array([[c, s], [-s, c]]) + [cx, cy]


class _Painter:
    """Fills polygons on a supersampled float canvas and, for cue parts, on the mask layer.

    Points are in face coordinates (48-px units, origin at the face centre, y down)
    unless ``frame="image"`` (48-px units, origin at the top-left corner).
    """

    def __init__(self, size: int, background: np.ndarray, face: dict):
        self.res = size * _SUPERSAMPLE
        self.px = size / _REF * _SUPERSAMPLE  # supersampled pixels per 48-px unit
        self.canvas = Image.fromarray(background.astype(np.float32))
        self.cue_layer = Image.new("F", (self.res, self.res), 0.0)
        self._draw = ImageDraw.Draw(self.canvas)
        self._draw_cue = ImageDraw.Draw(self.cue_layer)
        angle = np.deg2rad(face["rotation"])
        c, s = np.cos(angle), np.sin(angle)
        # screen rotation by +angle (counter-clockwise as seen, with y pointing down)
        self._linear = face["scale"] * np.array([[c, s], [-s, c]])
        self._offset = np.array([face["face_cx"], face["face_cy"]])

    def to_pixels(self, points: np.ndarray, frame: str = "face") -> list[float]:
        if frame == "face":
            points = points @ self._linear.T + self._offset
        # PIL puts pixel centres on integers; supersampled pixel k spans [k, k + 1) / px in 48-px units
        return (points * self.px - 0.5).ravel().tolist()

    def fill(self, points: np.ndarray, value: float, frame: str = "face", cue: bool = False) -> None:
        xy = self.to_pixels(points, frame)
        self._draw.polygon(xy, fill=float(value))
        if cue:
            self._draw_cue.polygon(xy, fill=1.0)


# --------------------------------------------------------------------------- face parts


def _background(face: dict, size: int) -> np.ndarray:
    """Grey level plus a linear gradient, in supersampled pixels."""
    res = size * _SUPERSAMPLE
    ramp = (np.arange(res, dtype=np.float32) + 0.5) / res - 0.5
    a = face["bg_gradient_angle"]
    cos, sin = face["bg_gradient"] * np.cos(a), face["bg_gradient"] * np.sin(a)
    return (face["background"] + cos * ramp)[None, :] + (sin * ramp)[:, None]


def _draw_clutter(p: _Painter, scene: dict) -> None:
    """Random lines and blobs on the background (image frame)."""
    for x0, y0, x1, y1, half_width, tone in scene["lines"]:
        line = np.array([[x0, y0], [x1, y1]])
        p.fill(_stroke(line, half_width), tone, frame="image")
    for cx, cy, rx, ry, angle, tone in scene["blobs"]:
        blob = _ellipse(0.0, 0.0, rx, ry)
        c, s = np.cos(angle), np.sin(angle)
        p.fill(blob @ np.array([[c, s], [-s, c]]) + [cx, cy], tone, frame="image")


def _draw_head(p: _Painter, f: dict) -> None:
    """Hair behind the head, neck, face ellipse with a darker rim, and the fringe."""
    w, h, skin = f["face_w"], f["face_h"], f["skin"]
    p.fill(_ellipse(0.0, -2.5, w * 1.12, h * 0.98), f["hair"])
    p.fill(np.array([[-6.5, 10.0], [6.5, 10.0], [8.0, 40.0], [-8.0, 40.0]]), skin * 0.8)
    p.fill(_ellipse(0.0, 0.0, w, h, 40), skin * 0.82)
    p.fill(_ellipse(0.0, -0.4, w * 0.93, h * 0.95, 40), skin)
    u = np.linspace(-w, w, 25)
    top = -h * np.sqrt(np.clip(1.0 - (u / w) ** 2, 0.0, 1.0))
    hairline = np.maximum(f["hairline"] + 0.035 * u**2, top)
    p.fill(np.concatenate([np.stack([u, hairline], 1), np.stack([u, top - 0.6], 1)[::-1]]), f["hair"])


def _draw_nose(p: _Painter, f: dict) -> None:
    """A shaded bridge and two nostrils (not an expression cue)."""
    skin, y = f["skin"], f["mouth_y"] - 5.0
    p.fill(_stroke(np.array([[0.9, y - 5.5], [1.3, y - 0.8]]), 0.35), skin * 0.85)
    for side in (-1.0, 1.0):
        p.fill(_ellipse(side * 1.3, y + 0.2, 0.8, 0.5, 12), skin * 0.5)


def _draw_wrinkles(p: _Painter, f: dict) -> None:
    """Disgust: nose-bridge wrinkles and deep nasolabial folds, darker with ``wrinkle``."""
    if f["wrinkle"] <= 0.0:
        return
    tone = f["skin"] * (1.0 - 0.5 * f["wrinkle"])
    nose_y, mouth_y, w = f["mouth_y"] - 5.0, f["mouth_y"], f["mouth_width"]
    for side in (-1.0, 1.0):
        for k in range(2):
            y = f["eye_y"] + 2.0 + 1.4 * k
            line = np.array([[side * 0.6, y - 0.3], [side * 2.6, y + 0.6]])
            p.fill(_stroke(line, 0.32), tone, cue=True)
        t = np.linspace(0.0, 1.0, 8)[:, None]
        a, b = np.array([side * 2.8, nose_y - 0.5]), np.array([side * (w + 1.6), mouth_y + 0.8])
        bend = np.array([side * 1.2, -0.4]) * np.sin(np.pi * t)
        p.fill(_stroke(a + (b - a) * t + bend, 0.35), tone, cue=True)


def _draw_eyes(p: _Painter, f: dict) -> None:
    """Lash line, white, iris clipped to the opening, and an upper lid line."""
    ew = f["eye_w"]
    eh = f["eye_h"] * f["eye_open"]
    skin = f["skin"]
    for side in (-1.0, 1.0):
        cx, cy = side * f["eye_dx"], f["eye_y"]
        p.fill(_ellipse(cx, cy, ew + 0.45, eh + 0.45, 24), skin * 0.3, cue=True)
        p.fill(_ellipse(cx, cy, ew, eh, 24), max(skin + 0.15, 0.85))
        iris = _ellipse(cx + f["gaze_x"], cy + f["gaze_y"], 1.25, 1.25, 16)
        du = np.clip((iris[:, 0] - cx) / ew, -1.0, 1.0)
        half = eh * np.sqrt(1.0 - du**2)
        iris[:, 1] = np.clip(iris[:, 1], cy - half, cy + half)
        p.fill(iris, 0.08)
        u = np.linspace(-ew - 0.3, ew + 0.3, 11)
        lid = np.stack([cx + u, cy - (eh + 0.45) * np.sqrt(np.clip(1 - (u / (ew + 0.45)) ** 2, 0, 1))], 1)
        p.fill(_stroke(lid, 0.35), skin * 0.25, cue=True)


def _draw_brows(p: _Painter, f: dict) -> None:
    """Brows from the inner to the outer end: lifted by brow_height, inner end by brow_angle."""
    tone = f["skin"] * f["brow_tone"]
    base = f["eye_y"] - f["brow_gap"] - f["brow_height"]
    t = np.linspace(0.0, 1.0, 9)  # 0 = inner end, 1 = outer end
    half_width = f["brow_thick"] * (1.0 - 0.35 * t)
    for side in (-1.0, 1.0):
        x = side * (f["eye_dx"] - 3.4 + 6.8 * t)
        y = base - f["brow_angle"] * (1.0 - t) - f["brow_arch"] * np.sin(np.pi * t) + 0.6 * t**2
        p.fill(_stroke(np.stack([x, y], 1), half_width), tone, cue=True)


def _draw_mouth(p: _Painter, f: dict) -> None:
    """Lips around an opening; upper teeth show in the opening, a raised lip lifts one side."""
    w, my = f["mouth_width"], f["mouth_y"]
    t = np.linspace(-1.0, 1.0, 25)
    x = t * w
    center = my - f["mouth_curve"] * (t**2 - 1.0 / 3.0)
    arc = np.sqrt(1.0 - t**2)
    raise_ = f["lip_raise"] * np.exp(-(((t - 0.4 * f["lip_raise_side"]) / 0.35) ** 2)) * arc
    top = center - f["mouth_open"] * arc - raise_  # upper edge of the opening
    bottom = center + f["mouth_open"] * arc  # lower edge
    lip = 0.5 + 0.45 * arc  # lip thickness, thinner towards the corners
    lips = np.concatenate([np.stack([x, top - lip * 0.9], 1), np.stack([x, bottom + lip * 1.1], 1)[::-1]])
    p.fill(lips, f["skin"] * 0.55, cue=True)
    if (bottom - top).max() > 0.3:
        p.fill(np.concatenate([np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]]), 0.07)
        if f["teeth"] > 0.0:
            teeth = np.minimum(top + f["teeth"] * (bottom - top) + 0.6 * raise_, bottom)
            p.fill(np.concatenate([np.stack([x, top], 1), np.stack([x, teeth], 1)[::-1]]), 0.9)


def _occluder_polygons(f: dict, occ: dict) -> list[tuple[np.ndarray, float]]:
    """Polygons (image frame) and grey levels of a hand or a bar near the face."""
    radius = occ["radius"] * 0.5 * (f["face_w"] + f["face_h"]) * f["scale"]
    cx = f["face_cx"] + radius * np.cos(occ["angle"])
    cy = f["face_cy"] + radius * np.sin(occ["angle"])
    if occ["kind"] == "bar":
        return [(_rotated_rect(cx, cy, occ["length"], occ["width"], occ["tilt"]), occ["tone"])]
    tone = 0.35 + 0.5 * occ["tone"]
    polys = [(_ellipse(cx, cy, occ["palm"], occ["palm"] * 0.85, 20), tone)]
    toward = occ["angle"] + np.pi  # fingers reach towards the face centre
    for k, spread in enumerate(np.linspace(-0.5, 0.5, 4)):
        a = toward + spread
        reach = occ["palm"] + 3.0 + (1.0 if k in (1, 2) else 0.0)
        fx, fy = cx + reach * np.cos(a), cy + reach * np.sin(a)
        polys.append((_rotated_rect(fx, fy, 7.0, 2.0, a), tone * (0.9 if k % 2 else 1.0)))
    return polys


# --------------------------------------------------------------------------- rendering


def _downsample(layer: Image.Image) -> np.ndarray:
    """Box filter from the supersampled canvas to the output resolution."""
    return np.asarray(layer.reduce(_SUPERSAMPLE), dtype=np.float32)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a 3x3 cross, ``radius`` times."""
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _render(face: dict, scene: dict, size: int, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw one face.

    Returns the uint8 image, the bool mask and the fraction of the mask the
    occluder hid (-1.0 if the occluder would hide too much and was left out).
    """
    p = _Painter(size, _background(face, size), face)
    _draw_clutter(p, scene)
    _draw_head(p, face)
    _draw_nose(p, face)
    _draw_wrinkles(p, face)
    _draw_eyes(p, face)
    _draw_brows(p, face)
    _draw_mouth(p, face)
    mask = _dilate(_downsample(p.cue_layer) >= 0.25, max(1, round(size / _REF)))
    canvas = p.canvas

    occluded_fraction = 0.0
    if face["occluder"] != "none":
        occ_color = Image.new("F", (p.res, p.res), 0.0)
        occ_cover = Image.new("F", (p.res, p.res), 0.0)
        draw_color, draw_cover = ImageDraw.Draw(occ_color), ImageDraw.Draw(occ_cover)
        for poly, tone in _occluder_polygons(face, scene["occluder"]):
            xy = p.to_pixels(poly, frame="image")
            draw_color.polygon(xy, fill=float(tone))
            draw_cover.polygon(xy, fill=1.0)
        hidden = mask & (_downsample(occ_cover) >= 0.5)
        occluded_fraction = hidden.sum() / mask.sum()
        if occluded_fraction <= _MAX_OCCLUDED_FRACTION:  # never hide most of the expression
            cover = np.asarray(occ_cover)
            blended = np.asarray(canvas) * (1.0 - cover) + np.asarray(occ_color) * cover
            canvas = Image.fromarray(blended.astype(np.float32))
            mask &= ~hidden
        else:
            occluded_fraction = -1.0  # the caller records the occluder as dropped

    image = _downsample(canvas)
    image = (image - 0.5) * face["contrast"] + 0.5 + face["brightness"] + noise * face["noise"]
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8), mask, float(occluded_fraction)


# --------------------------------------------------------------------------- public API


def generate(n_per_class: int, label_noise: float = 0.0, seed: int = 0, size: int = 48,
             min_intensity: float = MIN_INTENSITY) -> SynthFaces:
    """Draw the synthfaces dataset: ``n_per_class`` subjects, each in all seven classes.

    Args:
        n_per_class: number of subjects, i.e. images per class (>= 1).
        label_noise: probability in [0, 1) that an image's label is replaced by a
            uniformly drawn *different* class (``clean_labels`` keeps the truth).
        seed: non-negative integer seed; the result is a pure function of the arguments.
        size: side of the square images in pixels (>= 32); the face scales with it.
        min_intensity: the weakest expression drawn (intensities are uniform in
            [min_intensity, 1.15]); raising it from 0.55 separates the classes more (an
            easier set: the same random draws, so the same subjects, poses and nuisances).

    Returns:
        A :class:`SynthFaces` with ``7 * n_per_class`` images in subject-major order.

    Raises:
        ValueError: for an argument out of range; the message names it.
    """
    _check_args(n_per_class, label_noise, seed, size, min_intensity)
    n_classes = len(CLASSES)
    n = n_per_class * n_classes
    images = np.empty((n, size, size), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    rows: list[dict] = []
    subjects: list[str] = []
    for s in range(n_per_class):
        rng = np.random.default_rng([seed, _STREAM_DRAW, s])
        subject = _draw_subject(rng)
        subject_id = f"s{s:04d}"
        for c, cls in enumerate(CLASSES):
            cues = _draw_cues(rng, cls, subject, min_intensity)
            nuisance, scene = _draw_nuisance(rng)
            noise = rng.standard_normal((size, size), dtype=np.float32)
            face = {**subject, **cues, **nuisance}
            face["face_cx"] = _FACE_CENTER[0] + face["shift_x"]
            face["face_cy"] = _FACE_CENTER[1] + face["shift_y"]
            i = s * n_classes + c
            images[i], masks[i], hidden = _render(face, scene, size, noise)
            if hidden < 0:
                face["occluder"], hidden = "none", 0.0
            face["occluded_fraction"] = hidden
            rows.append(face)
            subjects.append(subject_id)

    clean = np.tile(np.arange(n_classes, dtype=np.int64), n_per_class)
    noise_rng = np.random.default_rng([seed, _STREAM_LABELS, 0])
    # both draws happen for every label_noise, so a larger label_noise flips a superset
    flip = noise_rng.random(n) < label_noise
    offset = noise_rng.integers(1, n_classes, n)
    labels = np.where(flip, (clean + offset) % n_classes, clean).astype(np.int64)

    cues = pd.DataFrame(rows)
    cues.insert(0, "subject", subjects)
    cues.insert(1, "class", [CLASSES[k] for k in clean])
    return SynthFaces(images, masks, labels, clean, subjects, cues)


def write_folder(data: SynthFaces, root: str | Path) -> None:
    """Write ``data`` as an ImageFolder-style dataset under ``root``.

    Layout: ``<root>/<label>/<subject>_<clean class>.png`` (one file per image,
    filed under its possibly noisy label), its mask beside it as
    ``<same stem>.mask.png`` (0/255), and ``<root>/labels.csv`` with columns
    ``file`` (posix path relative to root), ``label``, ``clean_label`` (class
    names), ``label_flipped`` (0/1), ``subject``, then the cue columns.

    The files go into a temporary sibling directory that is renamed to ``root``
    at the end, so an interrupted write never leaves a half dataset.

    Raises:
        FileExistsError: if ``root`` already exists.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"refusing to overwrite existing dataset folder: {root}")
    with atomic_dir(root) as tmp:
        for name in CLASSES:
            (tmp / name).mkdir()
        files = []
        for i in range(len(data.labels)):
            rel = f"{CLASSES[data.labels[i]]}/{data.subjects[i]}_{CLASSES[data.clean_labels[i]]}"
            Image.fromarray(data.images[i]).save(tmp / f"{rel}.png")
            Image.fromarray(data.masks[i].astype(np.uint8) * 255).save(tmp / f"{rel}.mask.png")
            files.append(f"{rel}.png")
        table = pd.DataFrame(
            {
                "file": files,
                "label": [CLASSES[k] for k in data.labels],
                "clean_label": [CLASSES[k] for k in data.clean_labels],
                "label_flipped": (data.labels != data.clean_labels).astype(int),
                "subject": list(data.subjects),
            }
        )
        extra = data.cues.drop(columns=[c for c in ("subject", "class") if c in data.cues.columns])
        table = pd.concat([table, extra.reset_index(drop=True)], axis=1)
        table.to_csv(tmp / "labels.csv", index=False)
        if root.exists():  # appeared while we were writing
            raise FileExistsError(f"refusing to overwrite existing dataset folder: {root}")
        os.rename(tmp, root)
