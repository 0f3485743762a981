"""Decoding images to the uint8 arrays that ``prepare`` caches: from files or from pixel arrays.

Every decoded image is a :class:`Decoded`: the array ``[C, S, S]``, an optional mask, the
original width, height and PIL mode, and the SHA-1 of the stored bytes (the file's bytes,
or for CSV rows the raw pixel bytes), which the audit uses for exact duplicates.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

MASK_SUFFIX = ".mask.png"  # a ground-truth mask sits beside its image as <stem>.mask.png


class BadImage(Exception):
    """A file that cannot be decoded as an image (the message says why)."""


class Decoded(NamedTuple):
    """One decoded image and what the manifest and the audit record about it."""

    image: np.ndarray  # uint8 [C, S, S]
    mask: np.ndarray | None  # bool [S, S]
    width: int
    height: int
    sha1: str
    mode: str  # the original PIL mode (L, RGB, ...)


def fit_image(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image as uint8 ``[channels, size, size]``.

    Non-square images are resized on the short side and centre-cropped (as torchvision's
    Resize + CenterCrop).
    """
    im = im.convert("L" if channels == 1 else "RGB")
    width, height = im.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        w, h = max(size, round(width * scale)), max(size, round(height * scale))
        im = im.resize((w, h), Image.Resampling.BILINEAR)
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def decode_image(path: Path, size: int, channels: int) -> tuple[np.ndarray, int, int]:
    """Decode an image file to uint8 ``[channels, size, size]``; also returns its original width, height."""
    arr, width, height, _ = _decode_with_mode(path, size, channels)
    return arr, width, height


def _decode_with_mode(path: Path, size: int, channels: int) -> tuple[np.ndarray, int, int, str]:
    try:
        with Image.open(path) as im:
            im.load()
            width, height, mode = im.size[0], im.size[1], im.mode
            arr = fit_image(im, size, channels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    return arr, width, height, mode


def decode_pixels(pixels: np.ndarray, size: int, channels: int) -> Decoded:
    """A grayscale uint8 ``[H, W]`` array (a CSV row) as a :class:`Decoded`; sha1 of the raw pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    arr = fit_image(Image.fromarray(pixels, mode="L"), size, channels)
    h, w = pixels.shape
    return Decoded(arr, None, w, h, hashlib.sha1(pixels.tobytes()).hexdigest(), "L")


def decode_file(root: Path, rel: str, size: int, channels: int) -> tuple[str, Decoded | None, str | None]:
    """Decode ``root/rel`` (and its mask, if any): ``(rel, Decoded, None)`` or ``(rel, None, why)``."""
    path = root / rel
    try:
        raw = path.read_bytes()
    except OSError as e:
        return rel, None, f"cannot read: {e.strerror}"
    try:
        arr, w, h, mode = _decode_with_mode(path, size, channels)
    except BadImage as e:
        return rel, None, f"not a readable image ({e})"
    mask_path = path.with_name(path.name[: -len(path.suffix)] + MASK_SUFFIX)
    mask = None
    if mask_path.is_file():
        try:
            mask = decode_image(mask_path, size, 1)[0][0] > 127
        except BadImage as e:
            return rel, None, f"unreadable mask {mask_path.name} ({e})"
    return rel, Decoded(arr, mask, w, h, hashlib.sha1(raw).hexdigest(), mode), None


def decode_files(root: Path, paths: list[str], size: int, channels: int, progress: bool = False):
    """Decode many files in threads. Returns ``({rel: Decoded}, [(rel, why), ...])``."""
    from tqdm.auto import tqdm

    decoded, bad = {}, []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: decode_file(root, p, size, channels), paths, chunksize=64)
        for rel, row, err in tqdm(
            results, total=len(paths), desc="decode", disable=not progress, leave=False
        ):
            if err is None:
                decoded[rel] = row
            else:
                bad.append((rel, err))
    return decoded, bad
