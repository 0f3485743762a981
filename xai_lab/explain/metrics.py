"""Scores of attribution maps: faithfulness, sanity and localisation, batched on the device.

Every function takes maps [B, H, W] (higher: more important) beside the images they
explain and returns one number per image (a tensor [B]); averaging is the caller's.

- :func:`deletion_insertion`: deletion and insertion AUC (Petsiuk et al. 2018, RISE,
  arXiv:1806.07421). Pixels are removed (deletion: set to black) or revealed (insertion:
  starting from a blurred copy) in the map's order, and the softmax probability of the
  target class is followed. A faithful map makes deletion fall fast (low AUC) and insertion
  rise fast (high AUC).
- :func:`cascading_randomization` and :func:`spearman`: the model-parameter randomization
  test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", arXiv:1810.03292). The
  layers are re-initialised from the logits down, one stage more at a time, and each stage's
  maps are compared with the trained model's by Spearman rank correlation of their absolute
  values. A map that explains the model must change: a correlation that stays high means
  the method shows the image (edges), not what the model learned.
- :func:`pointing_game` (Zhang et al. 2016, arXiv:1608.00507) and :func:`mask_iou`: does
  the map point at the ground-truth mask of the parts that carry the expression (synthfaces)?
- :func:`random_maps` and :func:`randomized_copy`: the two references of every score: maps of
  uniform noise, and the same method's maps on the fully randomized model (what the method shows
  of the image alone, with nothing learned).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

# RISE's insertion substrate: a Gaussian blur with an 11-px kernel and sigma 5 (Petsiuk et al. 2018).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0


def random_maps(n: int, height: int, width: int, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, H, W] maps of independent uniform noise (the reference every metric is read against)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, height, width, generator=gen).to(device)


def pixel_ranks(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[B, H*W] rank of each pixel in its map (0: most important); ties are broken at random (seeded)."""
    flat = maps.flatten(1).float()
    gen = torch.Generator().manual_seed(seed)
    perm = torch.rand(flat.shape, generator=gen).argsort(dim=1).to(flat.device)  # one tie order per map
    order = perm.gather(1, flat.gather(1, perm).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order).contiguous())
    return ranks


@torch.no_grad()
def _target_probability(model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = [model(x[i : i + batch_size]).float().softmax(1).gather(1, target[i : i + batch_size, None])[:, 0]
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def deletion_insertion(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, steps: int = 16,
    batch_size: int = 64, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion curves and their areas (Petsiuk et al. 2018, arXiv:1806.07421).

    Args:
        model: the classifier (eval mode), taking ``x``-like batches.
        x: images [B, C, H, W] in [0, 1]; target: classes [B]; maps: [B, H, W].
        steps: the curves have ``steps + 1`` points, at 0, 1/steps, ..., 1 of the pixels.
        batch_size: images per forward pass.

    Returns:
        ``deletion_auc`` and ``insertion_auc`` [B] (trapezoid rule over the fraction of pixels,
        so both lie in [0, 1]), and the curves ``deletion`` and ``insertion`` [B, steps + 1].
    """
    b, _, h, w = x.shape
    ranks = pixel_ranks(maps, seed).view(b, 1, h, w)
    black = torch.zeros_like(x)
    blurred = gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    deletion, insertion = [], []
    for k in range(steps + 1):
        shown = ranks < round(k * h * w / steps)  # the k/steps most important pixels
        both = torch.cat([torch.where(shown, black, x), torch.where(shown, x, blurred)])
        p = _target_probability(model, both, target.repeat(2), batch_size)
        deletion.append(p[:b])
        insertion.append(p[b:])
    curves = {"deletion": torch.stack(deletion, 1), "insertion": torch.stack(insertion, 1)}
    return {
        "deletion_auc": torch.trapezoid(curves["deletion"], dx=1.0 / steps, dim=1),
        "insertion_auc": torch.trapezoid(curves["insertion"], dx=1.0 / steps, dim=1),
        **curves,
    }


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) along dim 1 with ties given their average rank, batched: [B, N] -> [B, N] float."""
    b, n = values.shape
    sorted_vals, order = values.sort(dim=1)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    group = new_group.long().cumsum(1) - 1 + torch.arange(b, device=values.device)[:, None] * n
    positions = torch.arange(n, device=values.device, dtype=torch.float64).expand(b, n).flatten()
    sums = torch.zeros(b * n, dtype=torch.float64, device=values.device).index_add_(0, group.flatten(), positions)
    counts = torch.zeros(b * n, dtype=torch.float64, device=values.device).index_add_(
        0, group.flatten(), torch.ones_like(positions))
    mean_rank = (sums / counts.clamp(min=1))[group.flatten()].view(b, n)
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps ``a[i]``, ``b[i]`` ([B, ...] -> [B]).

    Ties get their average rank (as scipy.stats.spearmanr); a constant map correlates 0.
    """
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp(min=1e-300), torch.zeros_like(denom)).float()


def randomization_stages(model: nn.Module) -> list[str]:
    """Names of the modules re-initialised one after another, from the logits down.

    For a :class:`~xai_lab.models.FaceNet` these are the ResNet's children that hold
    parameters, last first: ``backbone.fc``, ``backbone.layer4``, ..., ``backbone.conv1``.
    """
    root, prefix = (model.backbone, "backbone.") if hasattr(model, "backbone") else (model, "")
    return [prefix + name for name, child in reversed(list(root.named_children()))
            if any(True for _ in child.parameters())]


@torch.no_grad()
def reinitialise(module: nn.Module, gen: torch.Generator) -> None:
    """Fresh random weights for every layer in ``module`` (seeded by ``gen``, drawn on the CPU).

    Convolutions and linear layers get He-normal weights and zero biases; normalisation
    layers become the identity (weight 1, bias 0, running mean 0 and variance 1).
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_parameters()
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            w = torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in)
            m.weight.copy_(w.to(m.weight.device, m.weight.dtype))
            if m.bias is not None:
                m.bias.zero_()


def cascading_randomization(model: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(stage name, model)``: a copy of ``model`` with one more stage re-initialised each time,
    from the top (logits) down (Adebayo et al. 2018, arXiv:1810.03292). ``model`` itself is untouched;
    the same copy is yielded each time, so use it before asking for the next stage."""
    randomized = copy.deepcopy(model).eval()
    gen = torch.Generator().manual_seed(seed)
    for name in randomization_stages(randomized):
        reinitialise(randomized.get_submodule(name), gen)
        yield name, randomized


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every stage re-initialised: the cascade's last stage, the same weights.

    The maps a method draws on it are the baseline that tells what a method shows of the image
    alone: a barely trained network's gradients already light up high-contrast parts.
    """
    *_, (_, randomized) = cascading_randomization(model, seed)
    return randomized


def randomization_test(
    explain: Callable[[nn.Module], torch.Tensor], model: nn.Module, trained_maps: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Spearman correlation of |maps| between the trained model and each cascading-randomized model.

    Args:
        explain: ``explain(model) -> maps [B, H, W]`` for the images and targets under test.
        model: the trained model. trained_maps: ``explain(model)``.

    Returns:
        ``{stage name: rho [B]}`` in cascade order (the last entry: every stage randomized).
    """
    return {name: spearman(trained_maps.abs(), explain(randomized).abs())
            for name, randomized in cascading_randomization(model, seed)}


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0, seed: int = 0) -> torch.Tensor:
    """1.0 where the map's maximum falls on the mask (grown by ``tolerance`` px), else 0.0: [B].

    A map whose maximum is a plateau (a coarse Grad-CAM grid upsampled) points at one of its
    pixels drawn at random (seeded), not at the plateau's first pixel.
    """
    m = masks.reshape(maps.shape).float()[:, None]
    if tolerance > 0:
        m = F.max_pool2d(m, 2 * tolerance + 1, stride=1, padding=tolerance)
    peak = (pixel_ranks(maps, seed) == 0).float().argmax(dim=1, keepdim=True)
    return m.flatten(1).gather(1, peak)[:, 0]


def mask_iou(maps: torch.Tensor, masks: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """IoU between each mask and the same number of the map's top pixels: [B].

    Taking as many pixels as the mask holds needs no threshold, and makes the IoU equal to
    the share of the map's top pixels on the mask scaled to [0, 1] (a perfect map scores 1).
    """
    truth = masks.reshape(len(maps), -1).bool()
    top = pixel_ranks(maps, seed) < truth.sum(1, keepdim=True)
    inter = (top & truth).sum(1).float()
    union = (top | truth).sum(1).float()
    return inter / union.clamp(min=1)
