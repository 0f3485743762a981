"""Whole-batch augmentation on the device, driven by one knob: ``augment.strength`` in [0, 1].

Every magnitude in :class:`~xai_lab.config.AugmentConfig` is the value at strength 1 and is
multiplied by ``strength``; strength 0 returns the batch unchanged. Per image, drawn
independently:

* affine (one ``affine_grid`` + ``grid_sample`` for the whole batch): rotation up to
  ``rotation_deg``, translation up to ``translate`` of the size, zoom in or out by up to
  ``scale`` (the random crop), and a horizontal flip with probability ``flip``;
* brightness (additive, up to ``brightness``) and contrast (multiplicative around the image
  mean, up to ``contrast``);
* random erasing with probability ``erase_prob`` of a rectangle of up to ``erase_area`` of
  the image, filled with noise.

Random numbers come from the ``generator`` passed in, so a seeded run is repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xai_lab.config import AugmentConfig


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a float batch ``x`` [B, C, H, W] with values in [0, 1]; returns a new batch.

    Args:
        x: images on any device, float in [0, 1].
        cfg: the magnitudes and ``strength``.
        generator: a torch.Generator on ``x.device``.
    """
    s = cfg.strength
    if s <= 0:
        return x
    b, dev = x.shape[0], x.device

    # Affine: rotation, zoom, translation, flip in one sampling pass.
    angle = _uniform(b, -1, 1, generator, dev) * math.radians(cfg.rotation_deg * s)
    zoom = 1.0 + _uniform(b, -1, 1, generator, dev) * (cfg.scale * s)
    shift = _uniform(2 * b, -1, 1, generator, dev).view(b, 2) * (2 * cfg.translate * s)
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < cfg.flip * s, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Photometric: contrast around each image's mean, then brightness.
    contrast = 1.0 + _uniform(b, -1, 1, generator, dev) * (cfg.contrast * s)
    bright = _uniform(b, -1, 1, generator, dev) * (cfg.brightness * s)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.view(b, 1, 1, 1).to(x.dtype) + mean + bright.view(b, 1, 1, 1).to(x.dtype)
    x = x.clamp_(0.0, 1.0)

    # Random erasing: a rectangle per image (area and aspect drawn), as a mask over coordinate grids.
    if cfg.erase_prob > 0 and cfg.erase_area > 0:
        h, w = x.shape[-2:]
        area = _uniform(b, 0.02, max(0.02, cfg.erase_area * s), generator, dev)
        aspect = torch.exp(_uniform(b, math.log(0.3), math.log(3.3), generator, dev))
        eh = (area * aspect).sqrt().clamp(max=1.0)
        ew = (area / aspect).sqrt().clamp(max=1.0)
        cy = _uniform(b, 0, 1, generator, dev) * (1 - eh) + eh / 2
        cx = _uniform(b, 0, 1, generator, dev) * (1 - ew) + ew / 2
        on = torch.rand(b, generator=generator, device=dev) < cfg.erase_prob * s
        ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w
        in_y = (ys.view(1, h) - cy.view(b, 1)).abs() < eh.view(b, 1) / 2
        in_x = (xs.view(1, w) - cx.view(b, 1)).abs() < ew.view(b, 1) / 2
        box = (in_y[:, :, None] & in_x[:, None, :] & on.view(b, 1, 1)).unsqueeze(1)
        noise = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype)
        x = torch.where(box, noise, x)
    return x
