"""An experiment ready to run: the YAML (:mod:`xai_lab.config`) resolved against the registries.

:mod:`xai_lab.config` reads and checks the keys; it knows no data source and no model. Here the
registries fill in what a config leaves to them and refuse what they do not know: the data source
(:mod:`xai_lab.data.sources`) gives the default dataset root and name, the model registry
(:mod:`xai_lab.models`) checks ``model.name`` and turns ``model.depth`` into it. Imports flow one way:
verbs -> this module -> data and models -> config.
"""

from __future__ import annotations

from pathlib import Path

from xai_lab.config import (
    SMOKE_OVERRIDES,
    SMOKE_PER_CLASS,
    DataConfig,
    ExperimentConfig,
    _from_dict,
    check_data,
    read_experiment,
)
from xai_lab.data.sources import default_name, default_root, list_sources
from xai_lab.errors import UserError
from xai_lab.models import resolve_model_config


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load an experiment YAML, its section files and ``overrides`` into a checked, resolved config
    (derived names and paths filled in): :func:`xai_lab.config.read_experiment`, then :func:`resolve`."""
    return resolve(read_experiment(path, overrides))


def check_source(data: DataConfig, prefix: str = "data") -> None:
    """``data.source`` names a registered source."""
    if data.source not in list_sources():
        raise UserError(f"config key '{prefix}.source' must be one of {', '.join(list_sources())}; "
                        f"got {data.source!r}")


def build_data_config(values: dict, prefix: str = "data") -> DataConfig:
    """A checked, resolved :class:`DataConfig` from a dict (a data YAML's content, or values in code)."""
    if not isinstance(values, dict):
        raise UserError(f"config '{prefix}' must be a mapping, got {values!r}")
    data = _from_dict(DataConfig, values, prefix)
    check_data(data)
    check_source(data, prefix)
    if not data.root:
        data.root = default_root(data)
    if not data.name:
        data.name = default_name(data)
    return data


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """Fill in derived values (run name, dataset name and root, model name and depth) so that the saved
    config is explicit."""
    check_source(cfg.data)
    if not cfg.data.root:
        cfg.data.root = default_root(cfg.data)
    if not cfg.data.name:
        cfg.data.name = default_name(cfg.data)
    resolve_model_config(cfg.model)
    if not cfg.run.name:
        cfg.run.name = "experiment"
    return cfg


def smoke_overrides(config_path: str | Path) -> list[str]:
    """The overrides ``--smoke`` adds to an experiment: one short epoch on a dozen images per class."""
    cfg = load_experiment(config_path)
    if cfg.data.source == "synthfaces":
        return [f"data.synthfaces.n_per_class={SMOKE_PER_CLASS}", *SMOKE_OVERRIDES]
    # A smoke run prepares its own small copy instead of replacing the full one.
    return [f"data.limit_per_class={SMOKE_PER_CLASS}", f"data.name={cfg.data.name}_limit{SMOKE_PER_CLASS}",
            *SMOKE_OVERRIDES]
