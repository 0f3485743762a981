"""Images as real folders hold them: every mode Pillow opens decodes to what a viewer shows (EXIF orientation
applied, 16-bit intensities scaled over their range, transparency on white), a float image and a header claiming
billions of pixels are refused in one line naming the file, and dataset.json records what was converted."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xai_lab.cli import main
from xai_lab.data.decode import decode_file

S = 48


def face() -> np.ndarray:
    """A gray test card a viewer tells apart from its rotations: a gradient, a bright block at the top left."""
    g = np.tile(np.linspace(30, 200, S).astype(np.uint8), (S, 1))
    g[4:16, 4:20] = 250
    return g


def save(folder: Path, name: str, im: Image.Image, **kw) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    im.save(folder / name, **kw)
    return name


def decoded(folder: Path, name: str) -> tuple[np.ndarray, str]:
    rel, row, why = decode_file(folder, name, S, 1)
    assert why is None, why
    return row.image[0].astype(int), row.converted


def write_modes(folder: Path) -> dict[str, tuple[np.ndarray, int, str]]:
    """One file per mode; for each, the gray image a viewer shows, the tolerance, and the conversion noted."""
    g = face()
    rgb = np.stack([g] * 3, axis=-1)
    alpha = np.full((S, S), 255, np.uint8)
    alpha[30:, 30:] = 0  # a transparent corner: white on screen, whatever the pixels under it hold
    on_white = g.copy()
    on_white[30:, 30:] = 255
    under = g.copy()
    under[30:, 30:] = 0
    cases = {}

    def add(name, im, expected, tol, note="", **kw):
        cases[save(folder, name, im, **kw)] = (expected, tol, note)

    add("gray.png", Image.fromarray(g, "L"), g, 0)
    add("rgb.png", Image.fromarray(rgb, "RGB"), g, 1)
    add("rgba.png", Image.fromarray(np.dstack([np.stack([under] * 3, -1), alpha]), "RGBA"), on_white, 1,
        "transparency composited on white")
    add("la.png", Image.fromarray(np.dstack([under, alpha]), "LA"), on_white, 0, "transparency composited on white")
    add("palette.png", Image.fromarray(g, "L").convert("P"), g, 0)
    bits = (g > 127).astype(np.uint8) * 255
    add("bilevel.png", Image.fromarray(bits, "L").convert("1"), bits, 0)
    add("cmyk.jpg", Image.fromarray(rgb, "RGB").convert("CMYK"), g, 4, "CMYK converted to RGB", quality=98)
    add("progressive.jpg", Image.fromarray(g, "L"), g, 4, progressive=True, quality=98)
    add("deep.png", Image.fromarray(g.astype(np.uint16) * 257), g, 0, "16-bit scaled to 8-bit")
    # EXIF orientation 6: the viewer turns the stored pixels 90 degrees clockwise to show the face upright
    exif = Image.Exif()
    exif[0x0112] = 6
    add("rotated.jpg", Image.fromarray(np.rot90(g, 1).copy(), "L"), g, 4, "EXIF orientation 6 applied",
        exif=exif.tobytes(), quality=98)
    return cases


def test_every_mode_decodes_to_what_a_viewer_shows(tmp_path):
    folder = tmp_path / "modes"
    for name, (expected, tol, note) in write_modes(folder).items():
        got, converted = decoded(folder, name)
        assert np.abs(got - expected.astype(int)).max() <= tol, name
        assert note in converted, (name, converted)


def test_sixteen_bit_intensities_are_scaled_not_clipped(tmp_path):
    """A 12-bit scanner image in a 16-bit PNG is dark, not white: 4095 of 65535 is about 16 of 255."""
    values = np.linspace(0, 4095, S * S).reshape(S, S).astype(np.uint16)
    save(tmp_path, "scan.png", Image.fromarray(values))
    got, _ = decoded(tmp_path, "scan.png")
    assert got.max() == 16 and got.min() == 0 and abs(got.mean() - 8) < 1


def huge_png(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims ``width`` x ``height`` pixels."""
    raw = io.BytesIO()
    Image.new("L", (4, 4)).save(raw, "PNG")
    data = bytearray(raw.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _experiment(tmp_path: Path, root: Path, *extra: str) -> str:
    exp = tmp_path / "exp.yaml"
    data = {"source": "folder", "root": str(root), "name": "modes", "processed_root": str(tmp_path / "processed"),
            "landmarks": False}
    exp.write_text("run: {progress: false}\ndata: " + json.dumps(data) + "\n")
    return str(exp)


def test_prepare_records_the_conversions_and_refuses_what_it_cannot_show(tmp_path, capsys):
    root = tmp_path / "raw"
    cases = write_modes(root / "happy")
    for name in list(cases)[:6]:
        (root / "sad").mkdir(parents=True, exist_ok=True)
        (root / "sad" / name).write_bytes((root / "happy" / name).read_bytes())
    exp = _experiment(tmp_path, root)
    assert main(["-q", "prepare", "--config", exp]) == 0
    info = json.loads((tmp_path / "processed" / "modes" / "dataset.json").read_text())
    assert sum(info["conversions"]["modes"].values()) == 16 and info["conversions"]["modes"]["I;16"] == 1
    assert info["conversions"]["converted"] == {"transparency composited on white": 4, "CMYK converted to RGB": 1,
                                                "16-bit scaled to 8-bit": 1, "EXIF orientation 6 applied": 1}
    metadata = (tmp_path / "processed" / "modes" / "metadata.csv").read_text()
    assert "converted" in metadata.splitlines()[0]

    # refused, each in one line naming the file, and fast: the huge header is read, its pixels never are
    capsys.readouterr()
    (root / "sad" / "float.tif").write_bytes(b"")
    Image.fromarray(face().astype(np.float32)).save(root / "sad" / "float.tif")
    (root / "sad" / "bomb.png").write_bytes(huge_png(100_000, 100_000))
    t0 = time.monotonic()
    assert main(["-q", "prepare", "--config", exp]) == 2
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - t0 < 30 and len(err.splitlines()) == 1, err
    assert "sad/bomb.png: not a readable image (its header claims more than 50,000,000 pixels" in err
    assert "sad/float.tif" in err
    assert "mode F" in err


@pytest.mark.parametrize("size", [(8_000, 8_000), (30_000, 30_000), (100_000, 100_000)])
def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, size):
    """Below Pillow's own limit, at it, and far beyond: refused from the header, in well under a second."""
    (tmp_path / "x.png").write_bytes(huge_png(*size))
    t0 = time.monotonic()
    rel, row, why = decode_file(tmp_path, "x.png", S, 1)
    assert row is None and "header claims" in why and time.monotonic() - t0 < 1
