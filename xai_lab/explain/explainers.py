"""Attribution methods behind one registry and one call shape.

Every explainer maps a float batch ``x`` [B, C, H, W] (values in [0, 1], on the model's
device) and target classes [B] to maps [B, H, W] on the input grid, float32, higher
meaning more important for the target::

    fn(model, x, target, layer=None, **params) -> maps

``layer`` is the module that class-activation methods (``gradcam``, ``guided_gradcam``,
``gradcam_pp``) read; ``None`` means the model's ``target_layer`` (the last residual block of
a :class:`~xai_lab.models.FaceNet`). ``params`` are the method's own keywords (defaults
below; the ``explain.<method>`` sections of the config set them). Explainers compute only:
drawing lives in :mod:`xai_lab.explain.drawing` and scoring in :mod:`xai_lab.explain.metrics`.
Every hook an explainer registers is removed before it returns, also when it raises.
:func:`normalise_maps` scales maps to [0, 1] one by one, for drawing and for class means.

Gradient methods come from Captum; Grad-CAM++ is not in Captum and is written here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import (
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)

from xai_lab.errors import UserError

Explainer = Callable[..., torch.Tensor]
EXPLAINERS: dict[str, Explainer] = {}
LAYER_METHODS: set[str] = set()  # methods that read a layer's activations (their maps have its grid)


def register(name: str, uses_layer: bool = False) -> Callable[[Explainer], Explainer]:
    """Add an explainer to the registry under ``name``."""

    def deco(fn: Explainer) -> Explainer:
        EXPLAINERS[name] = fn
        if uses_layer:
            LAYER_METHODS.add(name)
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


def resolve_layer(model: nn.Module, name: str = "") -> tuple[nn.Module, str]:
    """The module called ``name`` in ``model`` (dotted, e.g. ``backbone.layer3``) and its name.

    ``""`` means the model's default ``target_layer``. An unknown name is a UserError listing
    the residual stages that would be valid.
    """
    if not name:
        module = _target_layer(model, None)
        found = next((n for n, m in model.named_modules() if m is module), "target_layer")
        return module, found
    try:
        return model.get_submodule(name), name
    except AttributeError:
        stages = [n for n, _ in model.named_modules() if n.count(".") <= 1 and "layer" in n]
        raise UserError(f"config key 'explain.layer': no module '{name}' in the model; e.g. {', '.join(stages)} "
                        "(empty: the last residual block)") from None


def _upsample(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, 1, h, w] layer map -> [B, H, W] on the input grid (bilinear)."""
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].float()


@register("saliency")
def saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
    """|d logit_target / d x|, the largest over channels (Simonyan et al. 2014, arXiv:1312.6034)."""
    grads = Saliency(model).attribute(x, target=target, abs=True)
    return grads.amax(dim=1).float()


@register("smoothgrad")
def smoothgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, samples: int = 16, noise: float = 0.15,
               samples_per_pass: int = 8, **_: object) -> torch.Tensor:
    """SmoothGrad: the saliency map averaged over ``samples`` noisy copies of the image, noise
    N(0, ``noise``^2) on [0, 1] inputs, i.e. ``noise`` times the input range (Smilkov et al. 2017,
    arXiv:1706.03825; Captum's NoiseTunnel). ``samples_per_pass`` copies of the batch go through
    the model at once."""
    tunnel = NoiseTunnel(Saliency(model))
    grads = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=noise, target=target, abs=True,
                             nt_samples_batch_size=max(1, min(samples, samples_per_pass)))
    return grads.amax(dim=1).float()


@register("integrated_gradients")
def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int = 32,
                         baseline: float = 0.0, steps_per_pass: int = 16, **_: object) -> torch.Tensor:
    """Integrated Gradients from a constant ``baseline`` image (0: black), summed over channels
    and signed: the map sums to f(x) - f(baseline) of the target logit (completeness;
    Sundararajan et al. 2017, arXiv:1703.01365). Gauss-Legendre rule with ``steps`` points;
    ``steps_per_pass`` of them go through the model at once."""
    ig = IntegratedGradients(model)
    attr = ig.attribute(x, baselines=float(baseline), target=target, n_steps=steps,
                        internal_batch_size=len(x) * max(1, min(steps, steps_per_pass)))
    return attr.sum(dim=1).float()


@register("gradcam", uses_layer=True)
def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None,
            **_: object) -> torch.Tensor:
    """Grad-CAM on ``layer`` (default: the last residual block), ReLU'd and upsampled bilinearly
    to the input grid (Selvaraju et al. 2017, arXiv:1610.02391)."""
    cam = LayerGradCam(model, _target_layer(model, layer)).attribute(x, target=target, relu_attributions=True)
    return _upsample(cam, x)


@register("guided_gradcam", uses_layer=True)
def guided_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None,
                   **_: object) -> torch.Tensor:
    """Guided Grad-CAM: guided backpropagation times the (bilinearly upsampled) Grad-CAM map,
    absolute value, largest over channels (Selvaraju et al. 2017, arXiv:1610.02391; guided
    backpropagation: Springenberg et al. 2015, arXiv:1412.6806)."""
    explainer = GuidedGradCam(model, _target_layer(model, layer))
    with warnings.catch_warnings():  # Captum announces the ReLU hooks it adds (and removes) on every call
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attr = explainer.attribute(x, target=target, interpolate_mode="bilinear")
    return attr.abs().amax(dim=1).float()


@register("occlusion")
def occlusion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, window: int = 8, stride: int = 4,
              baseline: float = 0.0, windows_per_pass: int = 16, **_: object) -> torch.Tensor:
    """Occlusion: the drop of the target logit when a ``window`` x ``window`` patch is replaced by
    ``baseline``, averaged over the patches covering each pixel (Zeiler and Fergus 2014,
    arXiv:1311.2901; Captum's Occlusion). ``windows_per_pass`` patch positions of the whole
    batch go through the model at once."""
    c = x.shape[1]
    attr = Occlusion(model).attribute(x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                      baselines=float(baseline), target=target,
                                      perturbations_per_eval=max(1, windows_per_pass))
    return attr.mean(dim=1).float()


@register("gradcam_pp", uses_layer=True)
def gradcam_pp(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None,
               **_: object) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018, arXiv:1710.11063), upsampled bilinearly.

    With the class score S = exp(Y) of the paper (eq. 17-19), the higher derivatives of a
    piecewise-linear network reduce to powers of g = dY/dA, and for activation map A^k::

        alpha_ij^k = g_ij^2 / (2 g_ij^2 + sum_ab A_ab^k g_ij^3)   (0 where g_ij = 0)
        w^k = sum_ij alpha_ij^k relu(g_ij^k)
        map = relu(sum_k w^k A^k)

    (the common factor exp(Y) of dS/dA is dropped: it scales each image's map only).
    """
    module = _target_layer(model, layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        handle.remove()
    acts = captured[-1]
    (g,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), acts)
    acts, g = acts.detach().float(), g.float()
    g2 = g * g
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * g
    alpha = torch.where((g != 0) & (denom != 0), g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(g))
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    return _upsample(cam, x)


def explain_batched(
    name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 64, **params: object
) -> torch.Tensor:
    """Run explainer ``name`` over ``x`` in chunks of ``batch_size``; returns [N, H, W] on x's device.

    ``params`` go to the explainer (``layer=`` and the method's own keywords).
    """
    if name not in EXPLAINERS:
        raise KeyError(name)
    fn = EXPLAINERS[name]
    with torch.enable_grad():
        maps = [
            fn(model, x[i : i + batch_size].detach().requires_grad_(True), target[i : i + batch_size],
               **params).detach()
            for i in range(0, len(x), batch_size)
        ]
    return torch.cat(maps) if maps else x.new_zeros((0, *x.shape[-2:]))


MapsT = TypeVar("MapsT", np.ndarray, torch.Tensor)


def normalise_maps(maps: MapsT) -> MapsT:
    """Scale each map (the last two dimensions) to [0, 1] by its own minimum and maximum.

    A constant map becomes zeros. Tensors stay tensors (same device and dtype); anything else
    comes back as a float32 numpy array.
    """
    if isinstance(maps, torch.Tensor):
        lo, hi = maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)
        span = hi - lo
        return (maps - lo) / torch.where(span > 0, span, torch.ones_like(span))
    m = np.asarray(maps, dtype=np.float32)
    lo, hi = m.min(axis=(-2, -1), keepdims=True), m.max(axis=(-2, -1), keepdims=True)
    span = hi - lo
    return (m - lo) / np.where(span > 0, span, np.float32(1))
