"""Typed, strict experiment configs: YAML files into dataclasses, plus dotted overrides.

An experiment YAML names one YAML per section (or gives the section inline)::

    run: {name: exp000_resnet18_saliency_synthfaces, seed: 0}
    data: configs/data/synthfaces.yaml
    model: configs/model/resnet18.yaml
    train: configs/train/default.yaml
    augment: configs/augment/default.yaml
    explain: configs/explain/saliency.yaml

Values come from the dataclass defaults, then the section files, then the dotted
overrides given on the command line (``train.epochs=3 model.depth=34``). Every key is
checked against the dataclass: an unknown key or a value of the wrong type raises
:class:`~xai_lab.errors.UserError` naming the key and the valid ones. The resolved
config (every value, defaults included) is saved as ``config.yaml`` beside each result.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from xai_lab.atomic import atomic_write_text
from xai_lab.errors import UserError

# ---------------------------------------------------------------------------------------------
# The sections. Field metadata: ``min``/``max`` bound numbers; ``help`` documents the key.
# ---------------------------------------------------------------------------------------------


def _bounded(default: Any, lo: float | None = None, hi: float | None = None, **kw: Any) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi, **kw})


@dataclass
class RunConfig:
    """Where and how a run happens."""

    name: str = ""  # experiment name; defaults to the experiment file's stem
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    output_root: str = "artifacts"  # runs go to <output_root>/runs, reports to <output_root>/reports
    progress: bool = True  # tqdm bars on stderr
    tensorboard: bool = True  # fit's TensorBoard scalars (tb/ in the run; a sweep trial: its own folder)


@dataclass
class SplitConfig:
    """Fractions of the stratified train/val/test split (they must sum to 1)."""

    train: float = _bounded(0.7, 0.0, 1.0)
    val: float = _bounded(0.15, 0.0, 1.0)
    test: float = _bounded(0.15, 0.0, 1.0)


@dataclass
class SynthFacesConfig:
    """Knobs of the embedded synthfaces dataset (ignored by other sources)."""

    n_per_class: int = _bounded(300, 1)
    label_noise: float = _bounded(0.0, 0.0, 0.99)
    seed: int = 0
    min_intensity: float = _bounded(0.55, 0.05, 1.15)  # weakest expression drawn; higher: classes further apart


@dataclass
class FerPlusConfig:
    """How FER+ crowd votes become labels (``source: ferplus`` only); see docs/datasets.md."""

    # majority: Barsoum et al. (2016): single votes dropped, the top emotion needs > half the votes left,
    #   images whose winner is unknown/NF (or with no majority) are left out;
    # plurality: the most-voted emotion, ties and unknown/NF winners left out;
    # probability: soft targets (the vote distribution, trained with soft cross-entropy).
    label_mode: Literal["majority", "plurality", "probability"] = "majority"


@dataclass
class AuditConfig:
    """Thresholds of the data audit (``xai-lab audit``, also run by ``prepare``)."""

    near_duplicate_distance: int = _bounded(6, 0, 64)  # candidates: pHashes (64 bits) at most this far apart
    near_duplicate_pixel_delta: float = _bounded(6.0, 0.0, 255.0)  # confirmed: mean |gray difference| <= this
    brightness_delta: float = _bounded(25.0, 0.0, 255.0)  # flag a class whose mean brightness is this far off
    split_shift_effect: float = _bounded(0.33, 0.0, 1.0)  # split shift: |Cliff's delta| or total variation >= this
    split_shift_alpha: float = _bounded(0.01, 0.0, 1.0)  # ... and Bonferroni-corrected p (Mann-Whitney U, chi2) < this
    max_examples: int = _bounded(20, 0)  # examples listed per finding in audit.json / audit.md


@dataclass
class DataConfig:
    """Which dataset, where it is, and how it is split and decoded."""

    source: str = "synthfaces"  # a registered source (xai_lab.data.sources): synthfaces, folder, ckplus, ...
    root: str = ""  # raw dataset folder; synthfaces defaults to data/raw/<name>
    layout: Literal["auto", "folders", "csv"] = "auto"  # fer2013/ferplus: image folders or the original CSVs
    name: str = ""  # processed folder name under processed_root; derived when empty
    processed_root: str = "data/processed"
    image_size: int = _bounded(48, 8)  # images are decoded (and resized if needed) to this size
    channels: Literal[1, 3] = 1  # 1: grayscale (FER data), 3: RGB
    split: SplitConfig = field(default_factory=SplitConfig)
    split_seed: int = 0  # fixed apart from run.seed, so that runs with other seeds share a split
    subject_pattern: str = ""  # regex on the file name whose first group is the subject; "": the file stem
    group_by_subject: bool = False  # no subject in two splits (CK+)
    folds: int = _bounded(0, 0, 100)  # k-fold cross-validation (>= 3; 0: off); prepare writes every fold
    fold: int = _bounded(-1, -1, 99)  # -1: the holdout split above; 0..folds-1: fold k is the test set
    fold_val: bool = True  # with a fold: fold k+1 validates (picks best.pt); false: it trains too, best.pt = last epoch
    on_bad_image: Literal["error", "skip"] = "error"  # skip: leave it out and record it
    on_bad_row: Literal["error", "skip"] = "error"  # malformed CSV / label.csv rows: stop, or skip and record
    dedup: Literal["keep", "drop_conflicts", "drop_cross_split", "drop_all"] = "keep"  # exact duplicates
    limit_per_class: int = _bounded(0, 0)  # 0: all images; >0 keeps the first k per class (smoke runs)
    landmarks: bool = True  # dlib's 68 points on every face of a dataset without masks, found once at prepare
    synthfaces: SynthFacesConfig = field(default_factory=SynthFacesConfig)
    ferplus: FerPlusConfig = field(default_factory=FerPlusConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)


@dataclass
class ModelConfig:
    """A ResNet from the registry in :mod:`xai_lab.models` (``xai-lab`` lists them in the README)."""

    name: str = ""  # a registered model (resnet18/34/50, resnet8/14/20/32/44/56); "": from depth, else resnet18
    depth: int = _bounded(0, 0)  # shorthand for name (depth 20 is resnet20); 0: taken from name
    pretrained: bool | str = False  # true: torchvision ImageNet weights (resnet18/34/50); or a path to a .pth
    input_size: int = _bounded(48, 16)  # batches are resized to this on the device
    stem: Literal["auto", "imagenet", "small"] = "auto"  # torchvision ResNets; auto: imagenet (CIFAR ones: 3x3)
    width: int = _bounded(0, 0)  # CIFAR-style ResNets: channels of the first stage; 0: 16 (He et al.)
    init_from: str = ""  # a run folder or checkpoint to start from; a new head if the classes differ


# Keys that say the same thing two ways: setting one (an override, a sampled sweep value) clears the other,
# which resolve() then derives again.
ALIASES = {"model.depth": ("model.name", ""), "model.name": ("model.depth", 0)}


@dataclass
class TrainConfig:
    """Optimisation; see :func:`xai_lab.train.fit`."""

    epochs: int = _bounded(10, 1)
    batch_size: int = _bounded(128, 1)
    eval_batch_size: int = _bounded(512, 1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = _bounded(1e-3, 0.0)
    weight_decay: float = _bounded(0.05, 0.0)
    momentum: float = _bounded(0.9, 0.0, 1.0)  # sgd only
    scheduler: Literal["cosine", "step", "onecycle", "none"] = "cosine"  # onecycle: lr/25 -> lr -> lr/1e4
    warmup_epochs: float = _bounded(1.0, 0.0)  # a linear ramp to lr; onecycle: a cosine rise from lr/25
    step_size: int = _bounded(10, 1)  # step scheduler: epochs between decays
    gamma: float = _bounded(0.1, 0.0, 1.0)  # step scheduler: decay factor
    sampler: Literal["none", "class_balanced", "sqrt_balanced"] = "none"
    class_weighted_loss: bool = False
    label_smoothing: float = _bounded(0.0, 0.0, 0.99)
    early_stopping_patience: int = _bounded(0, 0)  # epochs without a better val macro-F1; 0: off
    amp: bool = True  # bf16 autocast on CUDA and on a CPU with bf16 units (AMX, AVX512-BF16); else fp32
    channels_last: bool = True  # NHWC model and batches (CUDA and CPU)
    compile: bool = False  # torch.compile the model
    cudnn_benchmark: bool = True  # on CUDA: let cuDNN time its convolution algorithms once per shape
    checkpoint_every: int = _bounded(1, 1)  # epochs between last.pt/best.pt writes (the last epoch always)
    mixup: float = _bounded(0.0, 0.0)  # mixup's Beta(a, a) for the mixing weight; 0: off
    cutmix: float = _bounded(0.0, 0.0)  # CutMix's Beta(a, a) for the kept area; 0: off
    mix_prob: float = _bounded(1.0, 0.0, 1.0)  # probability that a batch is mixed (mixup or cutmix on)
    ema_decay: float = _bounded(0.0, 0.0, 0.99999)  # per-step EMA of the weights, validated and saved; 0: off
    ema_warmup: bool = True  # EMA decay min(ema_decay, (1 + n) / (10 + n)) at update n
    tta_flip: bool = False  # validation and evaluate average the softmax over each image and its mirror


@dataclass
class AugmentConfig:
    """On-device batch augmentation. ``strength`` scales every magnitude below; 0 is the identity.

    The other keys are the magnitudes at strength 1.
    """

    strength: float = _bounded(0.5, 0.0, 1.0)
    rotation_deg: float = _bounded(15.0, 0.0, 180.0)
    translate: float = _bounded(0.1, 0.0, 0.5)  # fraction of the image size
    scale: float = _bounded(0.15, 0.0, 0.9)  # zoom in/out by up to this fraction (the crop)
    flip: float = _bounded(0.5, 0.0, 1.0)  # probability of a horizontal flip
    brightness: float = _bounded(0.3, 0.0, 1.0)
    contrast: float = _bounded(0.3, 0.0, 1.0)
    erase_prob: float = _bounded(0.5, 0.0, 1.0)  # probability of random erasing
    erase_area: float = _bounded(0.15, 0.0, 0.9)  # largest erased fraction of the image


@dataclass
class SmoothGradParams:
    """``explain.smoothgrad``: see :func:`xai_lab.explain.explainers.smoothgrad`."""

    samples: int = _bounded(16, 1)  # noisy copies averaged
    noise: float = _bounded(0.15, 0.0)  # noise std as a fraction of the input range [0, 1]
    samples_per_pass: int = _bounded(8, 1)  # copies of the batch per forward pass (memory)


@dataclass
class IntegratedGradientsParams:
    """``explain.integrated_gradients``: see :func:`xai_lab.explain.explainers.integrated_gradients`."""

    steps: int = _bounded(32, 1)  # points on the path from the baseline to the image
    baseline: float = _bounded(0.0, 0.0, 1.0)  # the constant baseline image (0: black)
    steps_per_pass: int = _bounded(16, 1)  # path points per forward pass (memory)


@dataclass
class OcclusionParams:
    """``explain.occlusion``: see :func:`xai_lab.explain.explainers.occlusion`."""

    window: int = _bounded(8, 1)  # side of the occluding square, in stored-image pixels
    stride: int = _bounded(4, 1)
    baseline: float = _bounded(0.0, 0.0, 1.0)  # what the square is filled with (0: black)
    windows_per_pass: int = _bounded(16, 1)  # square positions per forward pass (memory)


@dataclass
class ExplainMetricsConfig:
    """``explain.metrics``: how the maps are scored (see :mod:`xai_lab.explain.metrics`)."""

    enabled: bool = True
    num_images: int = _bounded(32, 1)  # images of the split scored (a seeded random draw)
    steps: int = _bounded(16, 2)  # points on the deletion and insertion curves (+1)
    randomization_images: int = _bounded(8, 1)  # of those, how many go through the randomization cascade
    randomization_threshold: float = _bounded(0.5, -1.0, 1.0)  # a method fails when rho stays >= this
    pointing_tolerance: int = _bounded(0, 0)  # px the mask is grown by for the pointing game
    randomized_margin: float = _bounded(0.25, 0.0, 1.0)  # pointing-game lead needed over the randomized model
    seed: int = 0  # image draw, tie-breaking, random maps and randomized weights


Selection = Literal["high_conf", "low_conf", "misclassified", "per_class"]


@dataclass
class ExplainConfig:
    """Which explanations to compute, on which images, with which parameters, and how they are scored.

    Galleries are explained for the predicted class; class mean maps for the true class.
    """

    methods: list[str] = field(default_factory=lambda: ["saliency"])
    split: Literal["train", "val", "test"] = "test"
    num_each: int = _bounded(8, 1)  # images per gallery (high_conf, low_conf, misclassified)
    selection: list[Selection] = field(default_factory=lambda: ["high_conf", "low_conf", "misclassified"])
    per_class: int = _bounded(2, 1)  # images of each class in the per_class gallery
    class_means: int = _bounded(16, 0)  # images of each class averaged into its mean map; 0: all of the split
    compare_rows: int = _bounded(6, 1)  # images per comparison grid (one grid per gallery)
    batch_size: int = _bounded(64, 1)
    layer: str = ""  # Grad-CAM family's layer (dotted module name, e.g. backbone.layer3); "": the last block
    smoothgrad: SmoothGradParams = field(default_factory=SmoothGradParams)
    integrated_gradients: IntegratedGradientsParams = field(default_factory=IntegratedGradientsParams)
    occlusion: OcclusionParams = field(default_factory=OcclusionParams)
    metrics: ExplainMetricsConfig = field(default_factory=ExplainMetricsConfig)


@dataclass
class StoreConfig:
    """Where runs are recorded (:mod:`xai_lab.store`, MLflow tracking); see docs/store.md."""

    # "": $XAI_LAB_STORE, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder;
    # postgresql://user@host/db, http://mlflow-server:5000, ...; none: record nothing
    uri: str = ""
    artifacts: bool = True  # copy the reports' figures and JSON into the store (false: their paths only)


@dataclass
class ExperimentConfig:
    """One experiment: every section, fully resolved."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))

# ---------------------------------------------------------------------------------------------
# Strict conversion from plain dicts.
# ---------------------------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return names.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return _from_dict(tp, value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return value
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _convert(value, arm, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if not ok.get(tp, False):
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}")
    return float(value) if tp is float else value


def _from_dict(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"'{prefix}'" if prefix else "an experiment"
            raise UserError(
                f"unknown config key '{full}'{hint}; valid keys in {where}: {', '.join(fields)}"
            )
        converted = _convert(value, hints[key], full)
        meta = fields[key].metadata
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and converted < lo) or (hi is not None and converted > hi):
                bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise UserError(f"config key '{full}' must be in {bounds}, got {converted!r}")
        kwargs[key] = converted
    return cls(**kwargs)


def build_dataclass(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``values`` with the same strict checks (for other config files)."""
    if not isinstance(values, dict):
        raise UserError(f"config '{prefix or cls.__name__}' must be a mapping, got {values!r}")
    return _from_dict(cls, values, prefix)


def from_dict(values: dict) -> ExperimentConfig:
    """Build a checked :class:`ExperimentConfig` from a nested dict (e.g. a saved config.yaml)."""
    cfg = _from_dict(ExperimentConfig, values, "")
    _check(cfg)
    return cfg


def to_dict(cfg: ExperimentConfig) -> dict:
    """The config as plain nested dicts, ready for YAML."""
    return dataclasses.asdict(cfg)


def _check(cfg: ExperimentConfig) -> None:
    """Cross-key rules that a single type cannot express."""
    s = cfg.data.split
    if abs(s.train + s.val + s.test - 1.0) > 1e-6:
        raise UserError(
            f"config keys 'data.split.train/val/test' must sum to 1, got {s.train}+{s.val}+{s.test}"
        )
    if s.train <= 0 or s.val <= 0:
        raise UserError("config keys 'data.split.train' and 'data.split.val' must be > 0")
    if cfg.data.source != "synthfaces" and not cfg.data.root:
        raise UserError(f"config key 'data.root' must name the dataset folder for source '{cfg.data.source}'")
    check_data(cfg.data)


def check_data(data: DataConfig) -> None:
    """Cross-key rules of the data section alone (also used for ``evaluate --data``)."""
    if data.folds and data.folds < 3:
        raise UserError(f"config key 'data.folds' must be 0 (off) or at least 3, got {data.folds}")
    if data.fold >= 0 and not data.folds:
        raise UserError(
            f"config key 'data.fold' is {data.fold} but data.folds is 0; "
            "set data.folds (e.g. 10) or data.fold=-1 (the holdout split)"
        )
    if data.folds and data.fold >= data.folds:
        raise UserError(
            f"config key 'data.fold' must be in [-1, {data.folds - 1}] for data.folds={data.folds}, "
            f"got {data.fold}"
        )


# ---------------------------------------------------------------------------------------------
# YAML files and overrides.
# ---------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning a missing file or a syntax error into one UserError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"invalid YAML in {path}{where}: {getattr(e, 'problem', e)}") from None


def _find_section_file(ref: str, experiment: Path) -> Path:
    """A section path is relative to the working directory, else to a folder above the experiment."""
    candidates = [Path(ref)] + [parent / ref for parent in experiment.resolve().parents]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"config file not found: {ref} (named in {experiment})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.epochs=3'`` -> ``(['train', 'epochs'], 3)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' must look like section.key=value (e.g. train.epochs=3)")
    try:
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_key(values: dict, path: list[str], value: Any, what: str = "") -> None:
    """Set dotted ``path`` in the nested dict ``values`` (in place), clearing its alias (:data:`ALIASES`).

    ``what`` names the setting in the error raised when a parent of ``path`` is not a section.
    """
    node = values
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise UserError(f"{what or '.'.join(path)}: '{where}' is not a section")
        node = child
    node[path[-1]] = value
    alias = ALIASES.get(".".join(path))
    if alias is not None:
        alias_key, cleared = alias
        node[alias_key.rsplit(".", 1)[1]] = cleared


def apply_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Set each dotted override in the nested dict ``values`` (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        set_key(values, path, value, f"override '{text}'")
    return values


# explain --smoke: tiny galleries, a few scored images, cheap method settings
SMOKE_EXPLAIN = ["explain.num_each=2", "explain.per_class=1", "explain.class_means=2", "explain.compare_rows=2",
                 "explain.metrics.num_images=8", "explain.metrics.steps=4", "explain.metrics.randomization_images=2",
                 "explain.smoothgrad.samples=4", "explain.integrated_gradients.steps=8", "explain.occlusion.window=16",
                 "explain.occlusion.stride=16"]
# --smoke: one short epoch on a dozen images per class, explained cheaply (xai_lab.experiment.smoke_overrides; a
# sweep's --smoke gives them to every trial, so its fan-out explains with the cheap settings too)
SMOKE_OVERRIDES = ["train.epochs=1", "train.batch_size=16", *SMOKE_EXPLAIN]
SMOKE_PER_CLASS = 12
SMOKE_EVAL_IMAGES = 64
# The overrides train --resume takes: none changes what the run computes on the same kind of device
# (on another kind, e.g. cpu -> cuda, the run continues with fresh random draws and other rounding).
RESUME_OVERRIDES = ("run.device", "run.progress", "run.tensorboard", "store.uri", "store.artifacts")
# The overrides evaluate, plots and explain take on a trained run (key prefixes): none changes the model.
TRAINED_RUN_OVERRIDES = ("run.", "explain.", "data.", "store.", "train.eval_batch_size", "train.amp")


def read_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML, its section files and ``overrides`` into a checked config.

    Args:
        path: the experiment YAML (its sections are file paths or inline mappings).
        overrides: dotted ``key=value`` strings applied last.

    Returns:
        The :class:`ExperimentConfig` as written, not yet resolved against the registries of data
        sources and models (:func:`xai_lab.experiment.load_experiment` does both).
    """
    path = Path(path)
    top = read_yaml(path)
    if top is None or top == {}:
        raise UserError(f"{path} is empty: an experiment names its sections ({', '.join(SECTIONS)})")
    if not isinstance(top, dict):
        raise UserError(f"{path} must be a mapping of sections ({', '.join(SECTIONS)}); "
                        f"got a {type(top).__name__}")
    values: dict[str, Any] = {}
    own = _own_overrides(top, path)
    for section, ref in top.items():
        if section not in SECTIONS:
            raise UserError(f"unknown config section '{section}' in {path}; valid sections: {', '.join(SECTIONS)}, "
                            "overrides")
        if isinstance(ref, str):
            content = read_yaml(_find_section_file(ref, path)) or {}
            where = ref
        else:
            content, where = ref or {}, f"{path}:{section}"
        if not isinstance(content, dict):
            raise UserError(f"config section '{section}' ({where}) must be a mapping")
        values[section] = content
    apply_overrides(values, [*own, *overrides])
    values.setdefault("run", {}).setdefault("name", path.stem)
    return from_dict(values)


def _own_overrides(top: dict, path: Path) -> list[str]:
    """Pop an experiment's ``overrides:`` list (``key=value`` strings, as on the command line, applied after its
    sections and before the command line's): a section file with a key or two changed, without a copy of it."""
    own = top.pop("overrides", None) or []
    if not isinstance(own, list) or not all(isinstance(o, str) for o in own):
        raise UserError(f"'overrides' in {path} must be a list of key=value strings, e.g. [data.fold_val=false]")
    return own


def read_data_section(path: str | Path) -> dict:
    """The data section of a data YAML (``configs/data/*.yaml``) or of an experiment YAML, as a dict."""
    path = Path(path)
    top = read_yaml(path) or {}
    if not isinstance(top, dict):
        raise UserError(f"{path} must be a mapping of data keys (source, root, ...)")
    if "data" in top and set(top) <= {*SECTIONS, "overrides"}:  # an experiment: follow its data section
        own = [o for o in _own_overrides(top, path) if o.startswith("data.")]
        ref = top["data"]
        top = (read_yaml(_find_section_file(ref, path)) or {}) if isinstance(ref, str) else (ref or {})
        if not isinstance(top, dict):
            raise UserError(f"the data section of {path} must be a mapping")
        top = apply_overrides({"data": dict(top)}, own)["data"]
    return top


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_saved(path: str | Path) -> ExperimentConfig:
    """Load a resolved ``config.yaml`` written by :func:`save_config` (strictly checked too)."""
    values = read_yaml(path)
    if not isinstance(values, dict):
        raise UserError(f"{path} is not a saved xai-lab config")
    return from_dict(values)
