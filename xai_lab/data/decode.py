"""Decoding images to the uint8 arrays that ``prepare`` caches: from files or from pixel arrays.

Every decoded image is a :class:`Decoded`: the array ``[C, S, S]``, an optional mask, the
original width, height and PIL mode, what was converted to show it as a person sees it, and the
SHA-1 of the stored bytes (the file's bytes, or for CSV rows the raw pixel bytes), which the
audit uses for exact duplicates.

Files decode to what a viewer shows (:func:`visible`): EXIF orientation applied; 16-bit
intensities scaled to 8 bits over their whole range (not clipped at 255); transparency
composited on white (:data:`BACKGROUND`); palette, 1-bit, CMYK, LA, ... converted by Pillow.
32-bit float images, and headers claiming more than :data:`MAX_PIXELS` pixels, are refused
before their pixels are read.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

MASK_SUFFIX = ".mask.png"  # a ground-truth mask sits beside its image as <stem>.mask.png
MAX_PIXELS = 50_000_000  # a header claiming more is refused before decoding (8,000 x 6,250; no face crop is this big)
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a viewer on a white page shows them
ORIENTATION = 0x0112  # the EXIF tag
# Pillow warns about an image of 89-179 million pixels and refuses a bigger one; MAX_PIXELS refuses both first
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
    converted: str = ""  # what was done to show it as a viewer does ("; "-separated), beyond a plain L/RGB conversion


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
    arr, width, height, _, _ = _decode_with_mode(path, size, channels)
    return arr, width, height


def visible(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """``im`` as a viewer shows it, in a mode :func:`fit_image` converts plainly (L, RGB, or what Pillow converts
    without loss of meaning), and what was done to it.

    Raises:
        BadImage: 32-bit float pixels, or 32-bit integers beyond the 16-bit range (no scale a viewer agrees on).
    """
    notes = []
    orientation = im.getexif().get(ORIENTATION, 1)
    if orientation not in (1, 0, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"EXIF orientation {orientation} applied")
    if im.mode == "F":
        raise BadImage("32-bit float pixels (mode F): save it as 8- or 16-bit")
    if im.mode.startswith("I"):  # I;16, I;16B, ... and I (32-bit; 16-bit PNGs open as either)
        arr = np.asarray(im.convert("I") if im.mode != "I" else im, dtype=np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise BadImage(f"32-bit integer pixels beyond the 16-bit range (mode {im.mode})")
        if im.mode.startswith("I;16") or arr.max() > 255:
            arr = (arr * 255 + 32767) // 65535  # 16 bits over the whole range: 65535 is white, not clipped at 255
            notes.append("16-bit scaled to 8-bit")
        return Image.fromarray(arr.astype(np.uint8), mode="L"), notes
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:  # some pixel is not opaque
            base = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
            im = Image.alpha_composite(base, rgba).convert("RGB" if im.mode not in ("LA", "La") else "L")
            notes.append("transparency composited on white")
        else:
            im = rgba.convert("RGB")
    elif im.mode == "CMYK":
        im = im.convert("RGB")
        notes.append("CMYK converted to RGB")
    return im, notes


def _decode_with_mode(path: Path, size: int, channels: int) -> tuple[np.ndarray, int, int, str, str]:
    try:
        with Image.open(path) as im:
            width, height, mode = im.size[0], im.size[1], im.mode
            if width * height > MAX_PIXELS:  # from the header alone: nothing decoded yet
                raise BadImage(f"its header claims {width} x {height} pixels, more than {MAX_PIXELS:,}")
            im.load()
            shown, notes = visible(im)
            arr = fit_image(shown, size, channels)
    except Image.DecompressionBombError as e:  # Pillow's own limit, at open: the header claims even more
        raise BadImage(f"its header claims more than {MAX_PIXELS:,} pixels ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    return arr, width, height, mode, "; ".join(notes)


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
        arr, w, h, mode, converted = _decode_with_mode(path, size, channels)
    except BadImage as e:
        return rel, None, f"not a readable image ({e})"
    mask_path = path.with_name(path.name[: -len(path.suffix)] + MASK_SUFFIX)
    mask = None
    if mask_path.is_file():
        try:
            mask = decode_image(mask_path, size, 1)[0][0] > 127
        except BadImage as e:
            return rel, None, f"unreadable mask {mask_path.name} ({e})"
    return rel, Decoded(arr, mask, w, h, hashlib.sha1(raw).hexdigest(), mode, converted), None


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
