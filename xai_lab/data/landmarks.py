"""Facial landmarks: dlib's 68 points on every face of a prepared dataset, found once and cached.

Each face is upscaled to :data:`UPSCALE` px (dlib's HOG detector looks for faces of 80 px and more) and
searched by the HOG face detector. Where it finds a face, the 68-point shape predictor is fitted in the
box it returns (``detected``); where it finds none, the predictor is fitted in the median box of the
faces it did find in the same dataset (or the whole crop when it found none): ``fitted``. Crops made
by a face detector already (CK+48, FER2013) frame faces alike, so a fit from the median box mostly
looks right; a blank image gets a template face. The audit reports the detected fraction per split and
class, with a gallery of fits (:mod:`xai_lab.data.audit`).

The model is dlib's ``shape_predictor_68_face_landmarks.dat`` as shipped by the PyPI package
``face-recognition-models``, so nothing is downloaded at run time. It was trained on the iBUG 300-W
faces, whose terms restrict commercial use. Points follow the iBUG 300-W numbering: jaw 0-16, brows
17-26, nose 27-35, eyes 36-47, mouth 48-67.

Cached beside the decoded images (``cache/<key>/landmarks.npy``: float32 [N, 68, 2], x and y in the
cached image's pixel coordinates, pixel centres at +0.5; ``landmark_source.npy``: uint8 [N], 1 detected,
0 fitted).
"""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from xai_lab.atomic import atomic_write_with
from xai_lab.errors import UserError

UPSCALE = 192  # px the faces are resized to for dlib
N_POINTS = 68
DETECTED, FITTED = 1, 0
SOURCE_NAMES = {DETECTED: "detected", FITTED: "fitted"}
LANDMARKS_FILE, SOURCE_FILE = "landmarks.npy", "landmark_source.npy"
_CHUNK = 512  # faces per worker task


def predictor_path() -> Path:
    """The 68-point model file of the ``face-recognition-models`` package (found without importing it: its
    ``__init__`` needs ``pkg_resources``, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if path is None or not path.is_file():
        raise UserError("facial landmarks need the PyPI packages dlib-bin and face-recognition-models "
                        "(pip install -r requirements.txt)")
    return path


_models = None


def _load_models():
    global _models
    if _models is None:
        try:
            import dlib
        except ImportError:
            raise UserError("facial landmarks need the PyPI package dlib-bin (pip install -r requirements.txt)") \
                from None
        _models = (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path())))
    return _models


def _gray_upscaled(image: np.ndarray) -> np.ndarray:
    """uint8 [C, S, S] -> uint8 [UPSCALE, UPSCALE] gray (bicubic)."""
    gray = image[0] if image.shape[0] == 1 else np.round(image.astype(np.float32).mean(0)).astype(np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(gray)).resize((UPSCALE, UPSCALE), Image.BICUBIC))


def _detect(images: np.ndarray) -> np.ndarray:
    """The largest face box the HOG detector finds in each image, [N, 4] (left, top, right, bottom in the
    upscaled image), NaN where it finds none."""
    _, detector, _ = _load_models()
    boxes = np.full((len(images), 4), np.nan, np.float32)
    for i, image in enumerate(images):
        found = detector(_gray_upscaled(image), 0)
        if len(found):
            r = max(found, key=lambda r: r.width() * r.height())
            boxes[i] = (r.left(), r.top(), r.right(), r.bottom())
    return boxes


def _fit(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The 68 points fitted in each box, [N, 68, 2] in the upscaled image's pixel indices."""
    dlib, _, predictor = _load_models()
    points = np.zeros((len(images), N_POINTS, 2), np.float32)
    for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = predictor(_gray_upscaled(image), rect)
        points[i] = [(p.x, p.y) for p in shape.parts()]
    return points


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK)]


def _map(fn, images: np.ndarray, *extra: np.ndarray, workers: int) -> np.ndarray:
    parts = _chunks(len(images))
    if workers <= 1 or len(parts) == 1:
        return np.concatenate([fn(images[s], *(e[s] for e in extra)) for s in parts])
    with ProcessPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(fn, *([images[s] for s in parts], *([e[s] for s in parts]
                                                                                  for e in extra)))))


def find_landmarks(images: np.ndarray, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """dlib's 68 points on every face of ``images`` (uint8 [N, C, S, S]).

    Returns:
        ``(points, source)``: float32 [N, 68, 2] (x, y in the images' pixel coordinates, pixel centres at
        +0.5) and uint8 [N] (:data:`DETECTED` or :data:`FITTED`).
    """
    n, size = len(images), images.shape[-1]
    if n == 0:
        return np.zeros((0, N_POINTS, 2), np.float32), np.zeros(0, np.uint8)
    workers = workers or min(os.cpu_count() or 1, 8)
    boxes = _map(_detect, images, workers=workers)
    found = ~np.isnan(boxes[:, 0])
    fallback = np.median(boxes[found], 0) if found.any() else np.array([0, 0, UPSCALE - 1, UPSCALE - 1], np.float32)
    boxes[~found] = fallback
    points = _map(_fit, images, boxes, workers=workers)
    points = (points + 0.5) * (size / UPSCALE)  # pixel indices at UPSCALE -> continuous coordinates at size
    return points.astype(np.float32), found.astype(np.uint8)


def cache_landmarks(cache: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The landmarks of a prepared cache folder: read from ``cache`` when there, else found and written
    (atomically, each file on its own)."""
    points_file, source_file = cache / LANDMARKS_FILE, cache / SOURCE_FILE
    if points_file.is_file() and source_file.is_file():
        return load_landmarks(cache)
    points, source = find_landmarks(np.asarray(images))

    def save(array: np.ndarray):
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
                np.save(f, array)
        return write

    atomic_write_with(source_file, save(source))
    atomic_write_with(points_file, save(points))
    return points, source


def load_landmarks(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(points, source)`` of a cache folder, or None when it has none."""
    points_file, source_file = cache / LANDMARKS_FILE, cache / SOURCE_FILE
    if not (points_file.is_file() and source_file.is_file()):
        return None
    return np.load(points_file, mmap_mode="r"), np.load(source_file, mmap_mode="r")


def draw_landmark_gallery(images: np.ndarray, points: np.ndarray, source: np.ndarray, path: Path,
                          per_kind: int = 12, seed: int = 0) -> str | None:
    """``landmarks.png``: up to ``per_kind`` faces whose landmarks were detected and as many fitted from the
    crop (drawn at random, seeded), each with its 68 points and its regions; returns the file name (None
    when there is no face to draw)."""
    import matplotlib.pyplot as plt

    from xai_lab.explain.regions import landmark_regions
    from xai_lab.plots import save_figure

    rng = np.random.default_rng(seed)
    rows = []
    for kind in (True, False):
        idx = np.flatnonzero(np.asarray(source, bool) == kind)
        rows.append(np.sort(rng.permutation(idx)[:per_kind]))
    shown = [(i, kind) for idx, kind in zip(rows, ("detected", "fitted"), strict=True) for i in idx]
    if not shown:
        return None
    cols = min(12, len(shown))
    n_rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(1.25 * cols, 1.45 * n_rows), squeeze=False)
    size = images.shape[-1]
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (i, kind) in zip(axes.flat, shown, strict=False):
        face = images[i]
        ax.imshow(face[0] if face.shape[0] == 1 else face.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255,
                  extent=(0, size, size, 0))
        ax.imshow(landmark_regions(points[i], size), cmap="tab10", vmin=0, vmax=9, alpha=0.3, extent=(0, size, size, 0))
        ax.plot(points[i, :, 0], points[i, :, 1], ".", color="red", ms=1.5)
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(kind, fontsize=7, color="black" if kind == "detected" else "darkred")
    fig.suptitle("facial landmarks (dlib, 68 points) and the regions drawn from them", fontsize=8)
    save_figure(fig, path, dpi=110)
    return path.name
