"""What TensorBoard shows of a sweep (``tensorboard --logdir ray_results/<sweep>``).

- One run per trial, named ``<dataset>/<trial id>``: the trial's folder. The same id is in the
  terminal table, ``leaderboard.csv`` and the report.
- The project's own scalars, written by :func:`xai_lab.train.fit` under grouped tags
  (``loss/train``, ``macro_f1/val``, ``speed/images_per_second``, ...; :data:`xai_lab.train.TB_TAGS`).
  Ray Tune's own TensorBoard logger (its ``ray/tune/*`` bookkeeping scalars) is off.
- An HParams table with one row per trial, named by its trial id: the dataset, every parameter the
  space samples (the value the trial used, also where a ``when`` left it to the base), the settings
  that differ between the datasets, and the final and best metrics. The columns are declared once, at
  the sweep's root (:func:`write_experiment`); each trial writes its row's values
  (:func:`write_trial_hparams`) into its own run, beside its scalars.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from xai_lab.config import flatten

# The metrics columns of the HParams table: the last value of each scalar tag in a trial's run.
HPARAM_METRICS = {
    "macro_f1/best_val": "best val macro-F1",
    "macro_f1/val": "final val macro-F1",
    "accuracy/val": "final val accuracy",
    "loss/val": "final val loss",
    "loss/train": "final train loss",
}
DATASET = "dataset"
# Settings that differ between datasets by construction, or say nothing about the model: not HParams columns.
NOT_SHOWN = ("run.", "data.root", "data.name", "data.processed_root")


def hparam_value(value: Any) -> bool | float | str:
    """A config value as an HParams value: booleans, numbers and strings as they are, anything else as text."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    return str(value)


def differing_keys(bases: dict[str, dict[str, Any]]) -> list[str]:
    """The dotted keys (sorted) whose values differ between the base experiments (flattened dicts)."""
    keys = sorted({k for flat in bases.values() for k in flat})
    return [k for k in keys if len({repr(flat.get(k)) for flat in bases.values()}) > 1]


def hparam_columns(space: dict[str, Any], bases: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, list]]:
    """The HParams columns of a sweep: the dataset, every space key, and the settings that differ between the
    base experiments (``bases``: ``{dataset: to_dict(base)}``).

    Returns:
        ``(keys, columns)``: the dotted keys each trial fills in, and ``{column: its values}`` for
        :func:`write_experiment` (a categorical's choices; ``[]`` for a numeric range).
    """
    flat = {name: flatten(values) for name, values in bases.items()}
    differing = [k for k in differing_keys(flat) if k not in space and not k.startswith(NOT_SHOWN)]
    columns: dict[str, list] = {DATASET: list(bases)}
    for key, spec in space.items():
        columns[key] = list(spec.choices) if spec.type == "categorical" else []
    for key in differing:
        values = list(dict.fromkeys(flat[name].get(key) for name in bases))
        columns[key] = [] if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) else values
    return [*space, *differing], columns


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=meta)])


def _value_type(values: list[Any]) -> int:
    kinds = {type(hparam_value(v)) for v in values}
    if kinds == {bool}:
        return api_pb2.DATA_TYPE_BOOL
    if kinds == {float}:
        return api_pb2.DATA_TYPE_FLOAT64
    return api_pb2.DATA_TYPE_STRING


def experiment_summary(columns: dict[str, list[Any]], shown: int | None = None) -> Summary:
    """The HParams experiment: one column per hparam (``{name: its possible values, [] if a range}``) and
    :data:`HPARAM_METRICS`.

    TensorBoard's HParams view shows five hparam columns until the user ticks more, the ones marked
    ``differs`` first (then by name): the first ``shown`` columns (default all; the dataset and the sampled
    keys) are marked, so they are the ones shown whenever there are at most five of them.
    """
    infos = []
    for i, (name, values) in enumerate(columns.items()):
        info = api_pb2.HParamInfo(name=name, type=_value_type(values) if values else api_pb2.DATA_TYPE_FLOAT64,
                                  differs=shown is None or i < shown)
        if values and info.type != api_pb2.DATA_TYPE_FLOAT64:
            for v in values:
                v = hparam_value(v)
                if isinstance(v, bool):
                    info.domain_discrete.values.add().bool_value = v
                else:
                    info.domain_discrete.values.add().string_value = str(v)
        infos.append(info)
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=shown)
               for tag, shown in HPARAM_METRICS.items()]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(
        experiment=experiment, version=metadata.PLUGIN_DATA_VERSION))


def session_start_summary(values: dict[str, Any], name: str = "") -> Summary:
    """One trial's row: its hparam values; ``name`` (the trial id) is what the row's "Trial ID" column shows."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time(), group_name=name)
    for name, value in values.items():
        v = hparam_value(value)
        if isinstance(v, bool):
            info.hparams[name].bool_value = v
        elif isinstance(v, float):
            info.hparams[name].number_value = v
        else:
            info.hparams[name].string_value = v
    return _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
        session_start_info=info, version=metadata.PLUGIN_DATA_VERSION))


def _write(folder: Path, summary: Summary) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        writer.file_writer.add_summary(summary)
    finally:
        writer.close()


def write_experiment(results: Path, columns: dict[str, list[Any]], shown: int | None = None) -> None:
    """Declare the HParams columns at the sweep's root (its own small events file)."""
    _write(results, experiment_summary(columns, shown))


def write_trial_hparams(trial_dir: Path, values: dict[str, Any], name: str = "") -> None:
    """Write a trial's HParams row (``name``: its trial id) into its run (the folder its scalars go to)."""
    _write(trial_dir, session_start_summary(values, name))
