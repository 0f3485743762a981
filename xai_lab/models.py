"""ResNets from torchvision behind a small registry, wrapped for face images.

:class:`FaceNet` takes images as floats in [0, 1] at their stored size (48 px for FER data),
resizes the batch on the device to ``model.input_size`` and normalises it, then runs the
ResNet. Explanations are therefore computed on the stored image grid.

Grayscale: a 1-channel model's first convolution is the 3-channel one with its weights
summed over the colour axis. For a gray image (R = G = B) this gives exactly the output the
RGB network gives on the gray image repeated three times, so ImageNet weights keep their
meaning, at a third of the first layer's input cost and memory.

Stems: ``imagenet`` is torchvision's 7x7 stride-2 conv + max-pool (a 48 px input leaves a
2x2 map in the last block); ``small`` is a 3x3 stride-1 conv and no max-pool (48 px leaves
6x6, so Grad-CAM still has a spatial map). The small stem's conv is freshly initialised
even with pretrained weights (its shape differs from the 7x7 one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from xai_lab.config import ModelConfig
from xai_lab.errors import UserError

# ImageNet statistics, and their channel mean for gray images.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)

MODELS: dict[int, tuple[Callable[..., tvm.ResNet], tvm.WeightsEnum]] = {
    18: (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    34: (tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1),
    50: (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
}


def list_models() -> list[str]:
    return [f"resnet{d}" for d in MODELS]


class FaceNet(nn.Module):
    """Resize to ``input_size`` + normalise + ResNet. Input: float [B, C, H, W] in [0, 1]."""

    def __init__(self, backbone: tvm.ResNet, input_size: int, channels: int):
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)

    @property
    def target_layer(self) -> nn.Module:
        """The last residual block: the default layer for Grad-CAM."""
        return self.backbone.layer4[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean) / self.std)


def pretrained_file(depth: int) -> Path:
    """Where torchvision looks for the cached ImageNet weights of ``resnet{depth}``."""
    weights = MODELS[depth][1]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_pretrained(cfg: ModelConfig, fn: Callable[..., tvm.ResNet], weights: tvm.WeightsEnum) -> tvm.ResNet:
    if isinstance(cfg.pretrained, str):
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise UserError(f"pretrained weights file not found: {path} (config key model.pretrained)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to unpickle is the file's fault
            raise UserError(f"cannot read pretrained weights {path}: {e}".splitlines()[0]) from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        net = fn(weights=None)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{path} does not hold resnet{cfg.depth} weights: {str(e).splitlines()[0]}") from None
        return net
    cached = pretrained_file(cfg.depth)
    if not cached.is_file():
        raise UserError(
            f"ImageNet weights for resnet{cfg.depth} are not cached: download {weights.url} to {cached} "
            f"(or set model.pretrained to a .pth path, or model.pretrained=false)"
        )
    return fn(weights=weights)  # torchvision finds the cached file and checks nothing online


def build_model(cfg: ModelConfig, num_classes: int, channels: int = 1) -> FaceNet:
    """A :class:`FaceNet` for ``cfg`` with a fresh ``num_classes`` head.

    Args:
        cfg: depth, pretrained (bool or .pth path), input size and stem.
        num_classes: outputs of the new linear head.
        channels: 1 for grayscale input, 3 for RGB.
    """
    if cfg.depth not in MODELS:
        raise UserError(f"model.depth must be one of {', '.join(map(str, MODELS))}, got {cfg.depth}")
    fn, weights = MODELS[cfg.depth]
    net = _load_pretrained(cfg, fn, weights) if cfg.pretrained else fn(weights=None)

    if cfg.stem == "small":
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    elif channels == 1:
        rgb = net.conv1.weight.data
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if cfg.pretrained:
            net.conv1.weight.data.copy_(rgb.sum(dim=1, keepdim=True))
        else:
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return FaceNet(net, cfg.input_size, channels)


def cam_grid_size(cfg: ModelConfig) -> int:
    """Side of the last block's feature map for ``cfg.input_size`` (the Grad-CAM resolution)."""
    size = cfg.input_size
    if cfg.stem == "imagenet":
        size = (size + 2 * 3 - 7) // 2 + 1  # conv1, stride 2
        size = (size + 2 * 1 - 3) // 2 + 1  # max-pool, stride 2
    for _ in range(3):  # layer2..layer4 halve the map (3x3 stride-2 convs, padding 1)
        size = (size + 2 - 3) // 2 + 1
    return size
