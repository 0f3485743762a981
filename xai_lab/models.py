"""ResNets behind one registry, wrapped for face images.

The registry (:data:`MODELS`, :func:`list_models`, :func:`create_model`) is the one list of
models: ``model.name`` is checked against it, and every per-model fact (family, depth,
ImageNet weights, the Grad-CAM target layer, the CAM grid at an input size, the relative
work per image that packs sweep trials on a GPU) lives in its :class:`ModelSpec`.

Two families:

* ``resnet18``, ``resnet34``, ``resnet50``: torchvision's ImageNet ResNets (He et al. 2016,
  arXiv:1512.03385), with ImageNet weights through torchvision's weights API. Stems:
  ``imagenet`` is torchvision's 7x7 stride-2 conv + max-pool (a 48 px input leaves a 2x2 map in
  the last block); ``small`` is a 3x3 stride-1 conv and no max-pool (48 px leaves 6x6, so
  Grad-CAM still has a spatial map). The small stem's conv is freshly initialised even with
  pretrained weights (its shape differs from the 7x7 one).
* ``resnet8``, ``resnet14``, ``resnet20``, ``resnet32``, ``resnet44``, ``resnet56``: the CIFAR
  ResNets of the same paper (section 4.2): 6n+2 weighted layers, a 3x3 stem with no max-pool,
  three stages of n basic blocks with 16, 32 and 64 channels (``model.width`` sets the first
  stage's; the others double it), global average pooling and the linear head. Shortcuts are
  identities, or a 1x1 convolution + batch norm where the shape changes (the paper's option B).
  They suit 32-64 px faces: at 48 px the last stage still has a 12x12 map (a fine CAM grid),
  and ResNet-20 costs about as much per image as ResNet18 with the ImageNet stem.

:class:`FaceNet` takes images as floats in [0, 1] at their stored size (48 px for FER data),
resizes the batch on the device to ``model.input_size`` and normalises it, then runs the
ResNet. Explanations are therefore computed on the stored image grid.

Grayscale: a 1-channel torchvision model's first convolution is the 3-channel one with its
weights summed over the colour axis. For a gray image (R = G = B) this gives exactly the output
the RGB network gives on the gray image repeated three times, so ImageNet weights keep their
meaning, at a third of the first layer's input cost and memory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
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


def _halve(size: int, kernel: int = 3, padding: int = 1) -> int:
    """Output side of a stride-2 layer."""
    return (size + 2 * padding - kernel) // 2 + 1


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model.

    Attributes:
        name: the registry key (``model.name``).
        family: ``torchvision`` (ImageNet ResNets) or ``cifar`` (He et al.'s CIFAR ResNets).
        depth: weighted layers (``model.depth``, a shorthand for the name).
        build: ``(cfg, num_classes, channels) -> backbone`` (a module with ``.fc``).
        target_layer: dotted name (inside :class:`FaceNet`) of the default Grad-CAM layer.
        work: compute per image relative to ResNet18 (ImageNet stem) at 48 px.
        weights: torchvision's ImageNet weights, when the family has them.
    """

    name: str
    family: str
    depth: int
    build: Callable[[ModelConfig, int, int], nn.Module]
    target_layer: str
    work: float
    weights: tvm.WeightsEnum | None = None

    def cam_grid(self, input_size: int, stem: str) -> int:
        """Side of the target layer's map for a square input of ``input_size`` px."""
        size = input_size
        if self.family == "torchvision":
            if stem != "small":
                size = _halve(_halve(size, 7, 3))  # conv1 7x7/2, then the 3x3/2 max-pool
            halvings = 3  # layer2..layer4
        else:
            halvings = 2  # layer2, layer3
        for _ in range(halvings):
            size = _halve(size)
        return size


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry under ``spec.name``."""
    MODELS[spec.name] = spec
    return spec


def list_models(family: str | None = None) -> list[str]:
    """Registered model names (of one ``family`` when given), in registration order."""
    return [n for n, s in MODELS.items() if family is None or s.family == family]


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; an unknown name is a UserError listing the valid ones."""
    if name not in MODELS:
        raise UserError(f"config key 'model.name' must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Fill ``name`` from ``depth`` (or ``depth`` from ``name``) and check the family's keys, in place.

    ``model.depth`` is a shorthand for ``model.name``: every registered depth belongs to one model.
    """
    by_depth = {s.depth: s.name for s in MODELS.values()}
    if cfg.depth and cfg.depth not in by_depth:
        raise UserError(f"config key 'model.depth' must be one of {', '.join(map(str, sorted(by_depth)))} "
                        f"(or 0: taken from model.name), got {cfg.depth}")
    if not cfg.name:
        cfg.name = by_depth[cfg.depth] if cfg.depth else "resnet18"
    spec = get_spec(cfg.name)
    if cfg.depth and cfg.depth != spec.depth:
        raise UserError(f"config keys 'model.name' ({cfg.name}) and 'model.depth' ({cfg.depth}) disagree; "
                        "set one of them")
    cfg.depth = spec.depth
    if spec.family == "cifar":
        if cfg.stem == "imagenet":
            raise UserError(f"config key 'model.stem' must be auto or small for {cfg.name} (a CIFAR-style "
                            "ResNet has a 3x3 stem and no max-pool), got 'imagenet'")
        if cfg.pretrained:
            raise UserError(f"config key 'model.pretrained' must be false for {cfg.name}: ImageNet weights "
                            f"exist for {', '.join(list_models('torchvision'))} only")
    elif cfg.width and cfg.width != 64:
        raise UserError(f"config key 'model.width' is for the CIFAR-style ResNets ({', '.join(list_models('cifar'))}); "
                        f"{cfg.name} has 64 (leave it 0), got {cfg.width}")
    return cfg


# --- torchvision's ImageNet ResNets --------------------------------------------------------------


def pretrained_file(depth: int) -> Path:
    """Where torchvision looks for the cached ImageNet weights of ``resnet{depth}``."""
    weights = get_spec(f"resnet{depth}").weights
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _load_pretrained(cfg: ModelConfig, spec: ModelSpec, fn: Callable[..., tvm.ResNet]) -> tvm.ResNet:
    """ImageNet weights from ``model.pretrained`` (a file) or torchvision's cache, read as tensors only: the
    cached file is read here rather than by torchvision, whose loader would unpickle anything in it."""
    from xai_lab.safe_load import load_weights

    if isinstance(cfg.pretrained, str):
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise UserError(f"pretrained weights file not found: {path} (config key model.pretrained)")
    else:
        path = pretrained_file(spec.depth)
        if not path.is_file():
            raise UserError(
                f"ImageNet weights for {spec.name} are not cached: download {spec.weights.url} to {path} "
                f"(or set model.pretrained to a .pth path, or model.pretrained=false)"
            )
    state = load_weights(path, "pretrained weights")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    net = fn(weights=None)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path} does not hold {spec.name} weights: {str(e).splitlines()[0]}") from None
    return net


def _torchvision_builder(fn: Callable[..., tvm.ResNet]) -> Callable[[ModelConfig, int, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, channels: int) -> nn.Module:
        spec = get_spec(cfg.name)
        net = _load_pretrained(cfg, spec, fn) if cfg.pretrained else fn(weights=None)
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
        return net

    return build


for _depth, _fn, _weights, _work in (
    (18, tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 1.0),
    (34, tvm.resnet34, tvm.ResNet34_Weights.IMAGENET1K_V1, 2.0),
    (50, tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, 2.3),
):
    register_model(ModelSpec(f"resnet{_depth}", "torchvision", _depth, _torchvision_builder(_fn),
                             "backbone.layer4", _work, _weights))


# --- the CIFAR ResNets (He et al. 2016, section 4.2) -------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers around a shortcut (identity, or 1x1 conv + BN on a shape change)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): 3x3 stem, stages of ``width``, 2 x ``width`` and 4 x ``width`` channels, each of n
    basic blocks (the second and third start with stride 2), global average pooling, linear head."""

    def __init__(self, depth: int, num_classes: int, channels: int = 1, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(width, width, n, 1)
        self.layer2 = self._stage(width, 2 * width, n, 2)
        self.layer3 = self._stage(2 * width, 4 * width, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(*(BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                               for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build_cifar(cfg: ModelConfig, num_classes: int, channels: int) -> nn.Module:
    return CifarResNet(cfg.depth, num_classes, channels, cfg.width or 16)


for _depth in (8, 14, 20, 32, 44, 56):
    # work: FLOPs per image at 48 px against ResNet18 with the ImageNet stem (~84 MFLOPs); ResNet-20 ~92.
    register_model(ModelSpec(f"resnet{_depth}", "cifar", _depth, _build_cifar, "backbone.layer3",
                             round(1.1 * (_depth - 2) / 18, 2)))


# --- the face wrapper ---------------------------------------------------------------------------


class FaceNet(nn.Module):
    """Resize to ``input_size`` + normalise + ResNet. Input: float [B, C, H, W] in [0, 1]."""

    def __init__(self, backbone: nn.Module, input_size: int, channels: int, target_layer: str = "backbone.layer4"):
        super().__init__()
        self.backbone = backbone
        self.input_size = input_size
        self.target_layer_name = target_layer
        mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, channels, 1, 1), persistent=False)

    @property
    def target_layer(self) -> nn.Module:
        """The last residual block: the default layer for Grad-CAM."""
        return self.get_submodule(self.target_layer_name)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone((x - self.mean) / self.std)


def create_model(name: str, num_classes: int, in_chans: int = 1, *, input_size: int = 48,
                 pretrained: bool | str = False, stem: str = "auto", width: int = 0) -> FaceNet:
    """A :class:`FaceNet` around registered model ``name`` with a fresh ``num_classes`` head.

    Args:
        name: a registered name (:func:`list_models`), e.g. ``resnet18`` or ``resnet20``.
        num_classes: outputs of the linear head.
        in_chans: 1 for grayscale input, 3 for RGB.
        input_size: batches are resized to this side inside the model.
        pretrained: torchvision ResNets only: True for the cached ImageNet weights, or a .pth path.
        stem: torchvision ResNets: ``imagenet`` (``auto``) or ``small``; CIFAR ResNets: ``auto``/``small``.
        width: CIFAR ResNets: channels of the first stage (0: 16, as in the paper).
    """
    cfg = resolve_model_config(ModelConfig(name=name, pretrained=pretrained, input_size=input_size, stem=stem,
                                           width=width))
    spec = get_spec(cfg.name)
    return FaceNet(spec.build(cfg, num_classes, in_chans), cfg.input_size, in_chans, spec.target_layer)


def build_model(cfg: ModelConfig, num_classes: int, channels: int = 1) -> FaceNet:
    """:func:`create_model` from a ``model`` config section (``name`` or its ``depth`` shorthand)."""
    cfg = resolve_model_config(dataclasses.replace(cfg))
    return create_model(cfg.name, num_classes, channels, input_size=cfg.input_size, pretrained=cfg.pretrained,
                        stem=cfg.stem, width=cfg.width)


def cam_grid_size(cfg: ModelConfig) -> int:
    """Side of the default Grad-CAM layer's map at ``cfg.input_size`` (the explanation grid)."""
    cfg = resolve_model_config(dataclasses.replace(cfg))
    return get_spec(cfg.name).cam_grid(cfg.input_size, cfg.stem)


def work_per_image(cfg: ModelConfig) -> float:
    """Compute per image relative to ResNet18 (ImageNet stem) at 48 px: the packing rule's input."""
    cfg = resolve_model_config(dataclasses.replace(cfg))
    return get_spec(cfg.name).work * (cfg.input_size / 48) ** 2
