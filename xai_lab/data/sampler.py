"""Which training images an epoch visits, drawn on the device in one call.

* ``none``: a permutation of the training set (each image once).
* ``class_balanced``: N draws with replacement, each class equally likely (weight 1/n_c per image).
* ``sqrt_balanced``: N draws with replacement, class c drawn in proportion to sqrt(n_c), a middle
  ground that keeps some of the natural frequencies (weight 1/sqrt(n_c) per image).
"""

from __future__ import annotations

import torch


def sample_weights(labels: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor | None:
    """Per-image sampling weights for ``mode`` (None for ``none``)."""
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    per_class = {"class_balanced": 1.0 / counts, "sqrt_balanced": counts.rsqrt()}[mode]
    return per_class[labels]


def epoch_indices(weights: torch.Tensor | None, n: int, generator: torch.Generator) -> torch.Tensor:
    """The image order of one epoch: a permutation, or ``n`` weighted draws with replacement."""
    device = generator.device
    if weights is None:
        return torch.randperm(n, generator=generator, device=device)
    return torch.multinomial(weights, n, replacement=True, generator=generator)
