"""Drawing attribution maps: one PNG per image with the face, the map and an overlay."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xai_lab.plots import save_figure  # noqa: E402


def normalise_map(m: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] by its own range (a constant map becomes zeros)."""
    m = np.asarray(m, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def face_to_display(image: np.ndarray) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W] (gray) or [H, W, 3] floats in [0, 1]."""
    img = np.asarray(image, dtype=np.float32) / 255.0
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def draw_explanation(image: np.ndarray, attribution: np.ndarray, title: str, path: Path,
                     method: str = "") -> None:
    """Save ``[face | map | overlay]`` titled ``title`` to ``path``."""
    face = face_to_display(image)
    heat = normalise_map(attribution)
    fig, axes = plt.subplots(1, 3, figsize=(6.0, 2.35))
    cmap = "gray" if face.ndim == 2 else None
    axes[0].imshow(face, cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(heat, cmap="inferno", vmin=0, vmax=1)
    axes[1].set_title(method or "attribution", fontsize=8)
    axes[2].imshow(face, cmap=cmap, vmin=0, vmax=1)
    axes[2].imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[2].set_title("overlay", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=100)
