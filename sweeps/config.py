"""Sweep YAML files into strict, typed dataclasses (the same checks as experiment configs).

A sweep names one base experiment per dataset, a search space over dotted experiment keys,
the search and the scheduler, the resources of each trial and of the fan-out, and where
results go. The full reference is in docs/sweeps.md; in short::

    name: quickstart
    experiments:
      - config: configs/experiments/exp000_resnet18_saliency_synthfaces.yaml
        overrides: [data.synthfaces.n_per_class=60]
    space:
      model.depth: {type: categorical, choices: [18, 34]}
      train.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}
      train.sampler: {type: categorical, choices: [none, class_balanced]}
      train.class_weighted_loss: {type: categorical, choices: [false, true], when: {train.sampler: none}}
    search: {num_samples: 8, max_concurrent: 2, seed: 0}
    scheduler: {type: asha, max_epochs: 4, grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1, gpu: auto}
    fanout: {top_k: 2, cpu: 1, gpu: 0}

Every space key must be an experiment key, and every value it can take (bounds, choices)
must pass the experiment's own checks: a sweep never starts a trial with a bad config.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from xai_lab.config import (
    SECTIONS,
    SMOKE_PER_CLASS,
    ExperimentConfig,
    ModelConfig,
    StoreConfig,
    apply_overrides,
    build_dataclass,
    from_dict,
    read_yaml,
    set_key,
    to_dict,
)
from xai_lab.errors import UserError
from xai_lab.experiment import load_experiment, resolve

Scalar = Union[bool, int, float, str]  # noqa: UP007 - read by get_type_hints on 3.10


@dataclass
class ExperimentRef:
    """One base experiment (one dataset) of the sweep, with overrides of its own."""

    config: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class ParamSpec:
    """One dimension of the search space.

    ``type`` float/int take ``low``, ``high``, ``log`` (and ``step`` for int); categorical
    takes ``choices``. ``when`` makes the parameter exist only when earlier parameters
    have the given values (a value or a list of values each).
    """

    type: Literal["float", "int", "categorical"] = "float"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = field(default=1, metadata={"min": 1})
    choices: list[Scalar] = field(default_factory=list)
    when: dict[str, Any] = field(default_factory=dict)  # {earlier categorical key: value or [values]}


@dataclass
class SearchConfig:
    """Optuna TPE (multivariate, seeded); the base config is the first trial."""

    num_samples: int = field(default=16, metadata={"min": 1})
    max_concurrent: int = field(default=2, metadata={"min": 1})
    seed: int = 0
    multivariate: bool = True
    n_startup_trials: int = field(default=5, metadata={"min": 0})
    evaluate_base_first: bool = True
    # Ranks the trials. Only val_macro_f1/max: the fan-out evaluates best.pt, which fit selects on it.
    metric: str = "val_macro_f1"
    mode: Literal["max", "min"] = "max"
    # The Optuna study's database: "" is SQLite in the sweep folder (optuna.db); any SQLAlchemy URL
    # (postgresql://user:pass@host/db) for a study several drivers or a dashboard share.
    storage: str = ""


@dataclass
class SchedulerConfig:
    """ASHA (stops weak trials at rungs) or FIFO (every trial runs ``max_epochs``)."""

    type: Literal["asha", "fifo"] = "asha"
    max_epochs: int = field(default=10, metadata={"min": 1})  # sets train.epochs of every trial
    grace_period: int = field(default=1, metadata={"min": 1})
    reduction_factor: float = field(default=2.0, metadata={"min": 1.01})


@dataclass
class ResourcesConfig:
    """Per trial: CPUs and GPUs (fractions pack trials on a GPU); ``auto`` uses what Ray sees.

    GPU ``auto`` packs each trial by its own depth and input size (see
    :func:`sweeps.resources.packing_fraction` and docs/sweeps.md).
    """

    cpu: float | Literal["auto"] = 1.0
    gpu: float | Literal["auto"] = "auto"


@dataclass
class FanoutConfig:
    """Evaluate, plots and explain on the top-k trials of each dataset, as Ray tasks."""

    top_k: int = field(default=3, metadata={"min": 0})
    cpu: float = field(default=1.0, metadata={"min": 0.0})
    gpu: float | Literal["auto"] = "auto"  # auto: 0.25 of a GPU when Ray sees GPUs (tasks share one), else 0
    methods: list[str] = field(default_factory=list)  # explainers; empty: every registered one
    split: Literal["train", "val", "test"] = "test"
    num_each: int = field(default=8, metadata={"min": 1})
    maps_per_class: int = field(default=32, metadata={"min": 1})  # images averaged per class mean map
    eval_max_images: int = field(default=0, metadata={"min": 0})  # 0: the whole split


@dataclass
class SweepConfig:
    """A whole sweep, checked."""

    name: str = ""
    experiments: list[ExperimentRef] = field(default_factory=list)
    space: dict[str, ParamSpec] = field(default_factory=dict)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)
    max_failures: int = field(
        default=1, metadata={"min": 0}
    )  # retries of a raising trial, from its checkpoint
    # Epochs between a trial's checkpoints besides the ones always taken: at ASHA's rungs (where a
    # trial may be stopped) and at its last epoch (the fan-out's best.pt). 0: only those.
    checkpoint_every: int = field(default=0, metadata={"min": 0})
    storage: str = "ray_results"  # a folder (local or NFS) or a URI (s3://bucket/prefix)
    store: StoreConfig = field(default_factory=StoreConfig)  # the run store the driver records the sweep in


SMOKE_SWEEP = [
    "search.num_samples=2",
    "search.max_concurrent=2",
    "scheduler.max_epochs=1",
    "scheduler.grace_period=1",
    "fanout.top_k=1",
    "fanout.num_each=2",
    "fanout.maps_per_class=4",
    "fanout.eval_max_images=64",
]

# The metric and mode fit selects a run's best.pt on (xai_lab.train.fit): the only ranking whose best trial's
# checkpoint is the epoch the ranking saw.
CHECKPOINT_METRIC, CHECKPOINT_MODE = "val_macro_f1", "max"

# --smoke narrows these space keys to the cheapest trial (see smoke_space): together they set a trial's
# compute per image (trial_work). train.batch_size is left alone: on a dozen images per class an epoch
# passes over the training images once whatever the batch.
SMOKE_MODEL_KEYS = ("model.name", "model.depth", "model.stem", "model.input_size", "model.width")
# ... and pins these to the smoke value: one epoch, a dozen images per class, no compilation.
SMOKE_PINNED = {"train.epochs": 1, "train.compile": False, "data.limit_per_class": SMOKE_PER_CLASS,
                "data.synthfaces.n_per_class": SMOKE_PER_CLASS}


def load_sweep(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False
) -> SweepConfig:
    """Read and check a sweep YAML.

    Args:
        path: the sweep YAML.
        overrides: dotted ``key=value`` strings on the sweep (``search.num_samples=4``).
        smoke: make it tiny (two trials of one epoch on a dozen images per class).

    Returns:
        The checked :class:`SweepConfig`; experiment paths are resolved, the name defaults to the file stem.
        With ``smoke`` the sweep as written (and overridden) is checked whole first, then narrowed: a key the
        smoke settings replace (``search.num_samples: 0``) is refused as the real run would refuse it.
    """
    if smoke:
        _load_sweep(path, overrides, smoke=False)
    return _load_sweep(path, overrides, smoke)


def _load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...], smoke: bool) -> SweepConfig:
    path = Path(path)
    raw = read_yaml(path)
    keys = ", ".join(f.name for f in dataclasses.fields(SweepConfig))
    if raw is None or raw == {}:
        raise UserError(f"{path} is empty: a sweep names its experiments, space, search, ... (keys: {keys})")
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping with keys: {keys}; got a {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    raw["experiments"] = [{"config": e} if isinstance(e, str) else e for e in raw.get("experiments") or []]
    space = raw.pop("space", None) or {}
    if not isinstance(space, dict):
        raise UserError(f"{path}: 'space' must be a mapping of experiment keys to parameter specs")
    if smoke:
        apply_overrides(raw, SMOKE_SWEEP)
    apply_overrides(raw, list(overrides))
    cfg: SweepConfig = build_dataclass(SweepConfig, raw, "")
    cfg.space = {str(key): _param_spec(str(key), spec) for key, spec in space.items()}
    cfg.name = cfg.name or path.stem
    if not cfg.experiments:
        raise UserError(
            f"{path}: 'experiments' must name at least one base experiment (configs/experiments/*.yaml)"
        )
    for ref in cfg.experiments:
        ref.config = str(_find_file(ref.config, path))
        if smoke:  # the single-run smoke settings, except keys the space samples
            from xai_lab.experiment import smoke_overrides

            extra = [o for o in smoke_overrides(ref.config) if o.split("=", 1)[0] not in cfg.space]
            ref.overrides = [*ref.overrides, *extra]
    _check_name(cfg.name)
    _check_resources(cfg)
    _check_scheduler(cfg.scheduler)
    _check_metric(cfg.search)
    _check_storage(cfg.search)
    if smoke:  # the full space is checked first: its errors name its own values
        full = base_experiments(cfg)
        check_space(cfg.space, full)
        smoke_space(cfg, full)
    bases = base_experiments(cfg)
    check_space(cfg.space, bases)
    if cfg.search.evaluate_base_first:
        for base in bases.values():
            base_point(cfg.space, base)
    return cfg


def _param_spec(key: str, raw: Any) -> ParamSpec:
    """One space entry; ``when`` is a free mapping, checked later against the parameters above it."""
    if not isinstance(raw, dict):
        raise UserError(f"sweep key 'space.{key}' must be a mapping (type, low/high/log or choices, when)")
    raw = dict(raw)
    when = raw.pop("when", None) or {}
    if not isinstance(when, dict):
        raise UserError(f"sweep key 'space.{key}.when' must map earlier parameters to values")
    kind = raw.get("type", "float")
    if kind in ("float", "int") and ("low" not in raw or "high" not in raw):
        raise UserError(f"sweep key 'space.{key}': a {kind} parameter needs low and high")
    spec: ParamSpec = build_dataclass(ParamSpec, raw, f"space.{key}")
    spec.when = {str(k): v for k, v in when.items()}
    return spec


def _find_file(ref: str, sweep: Path) -> Path:
    if not ref:
        raise UserError(f"{sweep}: every entry of 'experiments' needs 'config: <experiment YAML>'")
    for c in [Path(ref)] + [parent / ref for parent in sweep.resolve().parents]:
        if c.is_file():
            return c
    raise UserError(f"experiment file not found: {ref} (named in {sweep} 'experiments')")


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"sweep key 'name' must be a plain folder name, got {name!r}")


def _check_scheduler(scheduler: SchedulerConfig) -> None:
    if scheduler.type == "asha" and scheduler.grace_period > scheduler.max_epochs:
        raise UserError(
            f"sweep key 'scheduler.grace_period' ({scheduler.grace_period}) must be <= scheduler.max_epochs "
            f"({scheduler.max_epochs}): ASHA cannot stop a trial before it has run its grace period"
        )


def _check_metric(search: SearchConfig) -> None:
    """The ranking must be the one best.pt is chosen by: the fan-out reports each trial's best.pt."""
    why = (f"the fan-out evaluates each trial's best.pt, which is its epoch with the best {CHECKPOINT_METRIC} "
           "(xai_lab.train.fit)")
    if search.metric != CHECKPOINT_METRIC:
        raise UserError(f"sweep key 'search.metric' must be {CHECKPOINT_METRIC}, got {search.metric!r}: {why}")
    if search.mode != CHECKPOINT_MODE:
        raise UserError(f"sweep key 'search.mode' must be {CHECKPOINT_MODE} for search.metric {CHECKPOINT_METRIC}, "
                        f"got {search.mode!r}: {why}")


def _check_storage(search: SearchConfig) -> None:
    """``search.storage``: empty (SQLite in the sweep folder) or a SQLAlchemy database URL."""
    if not search.storage:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(search.storage)
    except ArgumentError:
        raise UserError(
            f"sweep key 'search.storage' must be a SQLAlchemy database URL (sqlite:///path/optuna.db, "
            f"postgresql://user:password@host/db) or empty for SQLite in the sweep folder; got {search.storage!r}"
        ) from None


def _check_resources(cfg: SweepConfig) -> None:
    for key in ("cpu", "gpu"):
        value = getattr(cfg.resources, key)
        if value != "auto" and value < 0:
            raise UserError(f"sweep key 'resources.{key}' must be >= 0 or auto, got {value!r}")
        if key == "gpu" and value != "auto" and value > 1 and value != int(value):
            raise UserError(f"sweep key 'resources.gpu' above 1 must be a whole number, got {value!r}")
    gpu = cfg.fanout.gpu
    if gpu != "auto" and (gpu < 0 or (gpu > 1 and gpu != int(gpu))):
        raise UserError(f"sweep key 'fanout.gpu' must be auto, a fraction in [0, 1] or a whole number, got {gpu!r}")


# ---------------------------------------------------------------------------------------------
# Base experiments and trial configs.
# ---------------------------------------------------------------------------------------------


def base_experiments(cfg: SweepConfig) -> dict[str, ExperimentConfig]:
    """The resolved base experiment of each dataset, keyed by dataset name (``data.name``).

    ``train.epochs`` is set to ``scheduler.max_epochs`` so that every trial runs to the same horizon.
    """
    bases: dict[str, ExperimentConfig] = {}
    for ref in cfg.experiments:
        exp = load_experiment(ref.config, [*ref.overrides, f"train.epochs={cfg.scheduler.max_epochs}"])
        exp.run.progress = False
        if exp.data.fold >= 0 and not exp.data.fold_val:
            raise UserError(
                f"sweep '{cfg.name}': data.fold_val=false leaves the trials of {ref.config} no validation split, "
                f"and a sweep ranks them on {CHECKPOINT_METRIC}; override it with data.fold_val=true"
            )
        if exp.data.name in bases:
            raise UserError(
                f"two experiments of sweep '{cfg.name}' use dataset '{exp.data.name}'; "
                "a sweep compares datasets: give each experiment its own"
            )
        bases[exp.data.name] = exp
    return bases


def asha_rung_epochs(scheduler: SchedulerConfig) -> list[int]:
    """The epochs at which ASHA may stop a trial (its rungs, as Ray's ASHAScheduler places them,
    rounded up to whole epochs) and ``max_epochs``; FIFO: ``[max_epochs]``."""
    top = scheduler.max_epochs
    if scheduler.type != "asha":
        return [top]
    grace, rf = min(scheduler.grace_period, top), scheduler.reduction_factor
    n = int(math.log(top / grace) / math.log(rf) + 1)
    return sorted({math.ceil(grace * rf**k) for k in range(n)} | {top})


def trial_config(base: dict, params: dict[str, Any]) -> ExperimentConfig:
    """The experiment of one trial: the base (as a dict) with the sampled dotted ``params`` set."""
    values = copy.deepcopy(base)
    for key, value in params.items():
        set_key(values, key.split("."), value, f"sweep key 'space.{key}'")
    return resolve(from_dict(values))


def lookup(values: dict, key: str) -> Any:
    """The value at dotted ``key`` in a nested dict."""
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------
# The space.
# ---------------------------------------------------------------------------------------------


def check_space(space: dict[str, ParamSpec], bases: dict[str, ExperimentConfig]) -> None:
    """Check every parameter: its key exists, its values pass the experiment checks, its conditions
    refer to earlier categorical parameters and their choices."""
    seen: dict[str, ParamSpec] = {}
    for key, spec in space.items():
        where = f"sweep key 'space.{key}'"
        section = key.split(".")[0]
        if section not in SECTIONS or "." not in key:
            raise UserError(
                f"{where}: '{key}' is not an experiment key (section.key, sections: {', '.join(SECTIONS)})"
            )
        if spec.type == "categorical":
            if not spec.choices:
                raise UserError(f"{where}: a categorical parameter needs 'choices'")
            values = list(spec.choices)
        else:
            if not spec.low < spec.high:
                raise UserError(
                    f"{where}: a {spec.type} parameter needs low < high, got low={spec.low}, high={spec.high}"
                )
            if spec.log and spec.low <= 0:
                raise UserError(f"{where}: a log-scale parameter needs low > 0, got {spec.low}")
            if spec.type == "int" and not (float(spec.low).is_integer() and float(spec.high).is_integer()):
                raise UserError(f"{where}: an int parameter needs whole low and high")
            if spec.type == "int":
                spec.low, spec.high = int(spec.low), int(spec.high)
            else:
                spec.low, spec.high = float(spec.low), float(spec.high)
            values = [spec.low, spec.high]
        for name, base in bases.items():
            base_dict = to_dict(base)
            try:
                lookup(base_dict, key)
            except (KeyError, TypeError):
                raise UserError(f"{where}: '{key}' is not an experiment key") from None
            for value in values:
                try:
                    trial_config(base_dict, {key: value})
                except UserError as e:
                    raise UserError(f"{where}: the value {value!r} fails for {name}: {e}") from None
        for cond_key, cond_values in spec.when.items():
            if cond_key not in seen:
                raise UserError(
                    f"{where}: 'when' names '{cond_key}', which must be a parameter listed above it"
                )
            parent = seen[cond_key]
            if parent.type != "categorical":
                raise UserError(
                    f"{where}: 'when' can only test categorical parameters; '{cond_key}' is {parent.type}"
                )
            for v in _as_list(cond_values):
                if v not in parent.choices:
                    raise UserError(
                        f"{where}: 'when: {{{cond_key}: {v!r}}}' is not one of its choices {parent.choices}"
                    )
        seen[key] = spec


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def is_active(spec: ParamSpec, chosen: dict[str, Any]) -> bool:
    """Whether a conditional parameter exists given the values chosen so far."""
    return all(k in chosen and chosen[k] in _as_list(v) for k, v in spec.when.items())


def base_point(space: dict[str, ParamSpec], base: ExperimentConfig) -> dict[str, Any]:
    """The base experiment as a point of the space (its active parameters only).

    Raises:
        UserError: a base value outside the space (the base config is evaluated first).
    """
    values = to_dict(base)
    point: dict[str, Any] = {}
    for key, spec in space.items():
        if not is_active(spec, point):
            continue
        value = lookup(values, key)
        inside = (value in spec.choices) if spec.type == "categorical" else (spec.low <= value <= spec.high)
        if not inside:
            rng = spec.choices if spec.type == "categorical" else f"[{spec.low}, {spec.high}]"
            raise UserError(
                f"the base value {key}={value!r} of {base.run.name} lies outside sweep key "
                f"'space.{key}' {rng}; widen the space or set search.evaluate_base_first=false"
            )
        point[key] = value
    return point


def trial_work(model: ModelConfig) -> float:
    """A trial's compute per image against ResNet18 with the ImageNet stem at 48 px (= 1): --smoke's cost rule.

    :func:`xai_lab.models.work_per_image` (the model's FLOPs per image at 48 px times ``(input_size / 48)^2``),
    times 16 for the ``small`` stem of resnet18/34/50 (a 3x3 stride-1 conv without max-pool: the body runs on
    maps 4x wider and 4x taller than after the ImageNet stem's 7x7/2 conv and max-pool), times
    ``(width / 16)^2`` for a CIFAR-style ResNet's ``model.width`` (every conv's channels scale with it).
    """
    from xai_lab.models import get_spec, resolve_model_config, work_per_image

    model = resolve_model_config(dataclasses.replace(model))
    family = get_spec(model.name).family
    work = work_per_image(model)
    if family == "torchvision" and model.stem == "small":
        work *= 16
    if family == "cifar" and model.width:
        work *= (model.width / 16) ** 2
    return work


def smoke_space(cfg: SweepConfig, bases: dict[str, ExperimentConfig]) -> None:
    """``--smoke``: narrow ``cfg.space`` to its cheapest trial and set the base experiments to it (in place).

    The keys of :data:`SMOKE_MODEL_KEYS` that the space samples become one-choice categoricals: of every
    combination of their values (a categorical's choices; an int/float range's low end, its cheapest) that
    every base accepts, the one whose :func:`trial_work` is least (the costliest dataset's, then the sum over
    the datasets; ties go to the choice listed first). The keys of :data:`SMOKE_PINNED` that the space samples
    become their smoke value. Every base experiment gets these values as overrides too, so the base point
    lies inside the narrowed space and a parameter left inactive by its ``when`` costs no more. A ``when``
    keeps the values still possible; a parameter none of whose ``when`` values can occur any more is dropped
    (with the parameters conditioned on it): it is never suggested, and the trial takes the base's value.

    Raises:
        UserError: no combination of the model keys is accepted by every base experiment.
    """
    dicts = {name: to_dict(base) for name, base in bases.items()}
    keys = [k for k in cfg.space if k in SMOKE_MODEL_KEYS]
    options = [list(spec.choices) if spec.type == "categorical" else [spec.low] for spec in map(cfg.space.get, keys)]
    cheapest: dict[str, Any] | None = None
    least: tuple[float, float] | None = None
    for combo in itertools.product(*options):
        params = dict(zip(keys, combo, strict=True))
        try:
            works = [trial_work(trial_config(values, params).model) for values in dicts.values()]
        except UserError:
            continue  # e.g. a CIFAR-style depth with the ImageNet stem
        if least is None or (max(works), sum(works)) < least:
            cheapest, least = params, (max(works), sum(works))
    if cheapest is None:
        raise UserError(f"--smoke: no combination of the values of sweep keys {', '.join(f'space.{k}' for k in keys)} "
                        f"is accepted by every base experiment of sweep '{cfg.name}'")
    pinned = {**cheapest, **{k: v for k, v in SMOKE_PINNED.items() if k in cfg.space}}
    for key, value in pinned.items():
        cfg.space[key] = ParamSpec(type="categorical", choices=[value], when=cfg.space[key].when)
    changed = True
    while changed:  # drop parameters whose conditions can no longer hold, and those conditioned on them
        changed = False
        for key, spec in list(cfg.space.items()):
            when = {}
            for cond, values in spec.when.items():
                parent = cfg.space.get(cond)
                possible = [v for v in _as_list(values) if parent is not None and v in parent.choices]
                when[cond] = values if len(possible) == len(_as_list(values)) else possible
            if any(v == [] for v in when.values()):
                del cfg.space[key]
                changed = True
            else:
                spec.when = when
    for ref in cfg.experiments:
        ref.overrides = [*ref.overrides, *(f"{k}={json.dumps(v)}" for k, v in pinned.items())]


class DefineByRun:
    """The space as an Optuna define-by-run function (picklable, so the searcher state can be saved).

    Parameters are suggested in YAML order; a parameter whose ``when`` does not hold is not
    suggested at all, so TPE sees a conditional space.
    """

    def __init__(self, space: dict[str, ParamSpec]):
        self.space = {k: dataclasses.asdict(v) for k, v in space.items()}

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for key, raw in self.space.items():
            spec = ParamSpec(**raw)
            if not is_active(spec, chosen):
                continue
            if spec.type == "categorical":
                chosen[key] = trial.suggest_categorical(key, list(spec.choices))
            elif spec.type == "int":
                chosen[key] = trial.suggest_int(
                    key, int(spec.low), int(spec.high), step=spec.step, log=spec.log
                )
            else:
                chosen[key] = trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)
        return None


def sweep_to_dict(cfg: SweepConfig) -> dict:
    """The sweep as plain dicts (saved as ``sweep.yaml`` beside the results)."""
    return dataclasses.asdict(cfg)
