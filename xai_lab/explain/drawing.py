"""Drawing attribution maps: one PNG per image with the face, the map and an overlay."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xai_lab.explain.explainers import normalise_maps  # noqa: E402
from xai_lab.plots import save_figure  # noqa: E402


def face_to_display(image: np.ndarray) -> np.ndarray:
    """uint8 [C, H, W] -> [H, W] (gray) or [H, W, 3] floats in [0, 1]."""
    img = np.asarray(image, dtype=np.float32) / 255.0
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def draw_explanation(image: np.ndarray, attribution: np.ndarray, title: str, path: Path,
                     method: str = "") -> None:
    """Save ``[face | map | overlay]`` titled ``title`` to ``path``."""
    face = face_to_display(image)
    heat = normalise_maps(attribution)
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


def draw_comparison(images: np.ndarray, maps: dict[str, np.ndarray], row_titles: list[str], path: Path,
                    title: str = "") -> None:
    """A grid: one row per image (the face, then each method's overlay), one column per method.

    Args:
        images: uint8 [N, C, H, W]; maps: ``{method: [N, H, W]}`` (each map scaled by its own range).
        row_titles: one label per image (e.g. ``true/pred (conf)``).
    """
    n, methods = len(images), list(maps)
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(1.5 * (1 + len(methods)), 1.6 * n + 0.4), squeeze=False)
    for r in range(n):
        face = face_to_display(images[r])
        cmap = "gray" if face.ndim == 2 else None
        axes[r, 0].imshow(face, cmap=cmap, vmin=0, vmax=1)
        axes[r, 0].set_title(row_titles[r], fontsize=6)
        for c, method in enumerate(methods, start=1):
            axes[r, c].imshow(face, cmap=cmap, vmin=0, vmax=1)
            axes[r, c].imshow(normalise_maps(maps[method][r]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                axes[r, c].set_title(method, fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=100)


def draw_class_means(means: dict[str, np.ndarray], counts: dict[str, int], path: Path, method: str = "") -> None:
    """One panel per class: the mean of its images' maps (each scaled to [0, 1] first)."""
    names = list(means)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(1.6 * max(1, len(names)), 2.0), squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        ax.imshow(means[name], cmap="inferno", vmin=0, vmax=max(float(means[name].max()), 1e-6))
        ax.set_title(f"{name} (n={counts[name]})", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"{method}: mean map per true class" if method else "mean map per true class", fontsize=9)
    save_figure(fig, path, dpi=100)


def draw_metric_curves(curves: dict[str, dict], path: Path) -> None:
    """Deletion and insertion curves and the randomization cascade of each method.

    Args:
        curves: ``{method: {"deletion": [...], "insertion": [...], "randomization": {stage: rho}}}``;
            an entry named ``random`` (random maps) is drawn dashed, as the reference.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    stages = max((list(c["randomization"]) for c in curves.values()), key=len, default=[])
    for method, c in curves.items():
        style = {"ls": "--", "color": "gray", "lw": 1.5} if method == "random" else {"lw": 1.5, "marker": "o", "ms": 2}
        xs = np.linspace(0, 1, len(c["deletion"]))
        axes[0].plot(xs, c["deletion"], label=method, **style)
        axes[1].plot(xs, c["insertion"], label=method, **style)
        rho = c["randomization"]
        if method == "random":
            axes[2].axhline(next(iter(rho.values())), label=method, ls="--", color="gray")
        else:
            axes[2].plot([stages.index(s) for s in rho], list(rho.values()), label=method, **style)
    axes[0].set(title="deletion (lower area: more faithful)", xlabel="fraction of pixels removed",
                ylabel="p(target)")
    axes[1].set(title="insertion (higher area: more faithful)", xlabel="fraction of pixels revealed",
                ylabel="p(target)")
    axes[2].set(title="cascading randomization (lower: passes)", ylabel="Spearman vs trained maps")
    axes[2].set_xticks(range(len(stages)), [s.split(".")[-1] for s in stages], rotation=45, ha="right", fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def draw_region_shares(by_class: dict[str, dict], regions: list[str], path: Path, title: str) -> None:
    """Classes x regions: the share of the attribution mass in each region (colour and top number), and
    below it the same method's share on the randomized model; ▲/▼ mark a share credibly above/below it
    (paired 95% interval), · one that cannot be told apart."""
    classes = list(by_class)
    share = np.array([[by_class[c]["share"][r] for r in regions] for c in classes]) if classes else np.zeros((0, 0))
    fig, ax = plt.subplots(figsize=(1.25 * len(regions) + 1.6, 0.55 * max(1, len(classes)) + 1.3))
    ax.imshow(share, cmap="viridis", vmin=0, vmax=max(float(share.max()) if share.size else 1.0, 1e-6),
              aspect="auto")
    marks = {"more": "▲", "less": "▼", "cannot tell": "·"}
    for i, c in enumerate(classes):
        for j, r in enumerate(regions):
            v, rm = by_class[c]["share"][r], by_class[c]["randomized_model"][r]
            light = v < 0.6 * (share.max() or 1)
            ax.text(j, i, f"{v:.0%} {marks[by_class[c]['outcome'][r]]}\n{rm:.0%}", ha="center", va="center",
                    fontsize=7, color="white" if light else "black")
    area = {r: float(np.mean([by_class[c]["area"][r] for c in classes])) if classes else 0.0 for r in regions}
    ax.set_xticks(range(len(regions)), [f"{r.replace('_', ' ')}\n(area {area[r]:.0%})" for r in regions], fontsize=8)
    ax.set_yticks(range(len(classes)), [f"{c} (n={by_class[c]['n']})" for c in classes], fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
