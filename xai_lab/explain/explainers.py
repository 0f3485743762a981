"""Attribution methods behind one registry and one call shape.

Every explainer maps a float batch ``x`` [B, C, H, W] (values in [0, 1], on the model's
device) and target classes [B] to maps [B, H, W] on the input grid, float32, higher
meaning more important. Explainers compute only: drawing lives in
:mod:`xai_lab.explain.drawing`. Gradient methods come from Captum.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from captum.attr import LayerAttribution, LayerGradCam, Saliency

Explainer = Callable[..., torch.Tensor]
EXPLAINERS: dict[str, Explainer] = {}


def register(name: str) -> Callable[[Explainer], Explainer]:
    def deco(fn: Explainer) -> Explainer:
        EXPLAINERS[name] = fn
        return fn

    return deco


def list_explainers() -> list[str]:
    return list(EXPLAINERS)


def _target_layer(model: nn.Module, layer: nn.Module | None) -> nn.Module:
    if layer is not None:
        return layer
    if hasattr(model, "target_layer"):
        return model.target_layer
    raise ValueError("pass layer=... for a model without a target_layer attribute")


@register("saliency")
def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
    """|d logit_target / d x|, the largest over channels (Simonyan et al. 2014, arXiv:1312.6034)."""
    grads = Saliency(model).attribute(x, target=target, abs=True)
    return grads.amax(dim=1).float()


@register("gradcam")
def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None,
            **_: object) -> torch.Tensor:
    """Grad-CAM on ``layer`` (default: the last residual block), ReLU'd and upsampled bilinearly
    to the input grid (Selvaraju et al. 2017, arXiv:1610.02391)."""
    cam = LayerGradCam(model, _target_layer(model, layer)).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].float()


def explain_batched(
    name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 64, **params: object
) -> torch.Tensor:
    """Run explainer ``name`` over ``x`` in chunks of ``batch_size``; returns [N, H, W] on x's device."""
    if name not in EXPLAINERS:
        raise KeyError(name)
    fn = EXPLAINERS[name]
    maps = [
        fn(model, x[i : i + batch_size].detach().requires_grad_(True), target[i : i + batch_size], **params).detach()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(maps) if maps else x.new_zeros((0, *x.shape[-2:]))
