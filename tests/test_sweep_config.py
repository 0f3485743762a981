"""Sweep YAML checks, the Optuna define-by-run space, the CLI's bad input and cluster.yaml (no Ray run)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, write_tiny_experiment

from sweeps.config import DefineByRun, base_experiments, base_point, load_sweep
from xai_lab.config import ModelConfig
from xai_lab.errors import UserError

SHIPPED = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def skip_without_its_experiments(path: Path) -> None:
    """Skip a shipped sweep whose base experiments are not in this checkout yet."""
    raw = yaml.safe_load(path.read_text())
    refs = [e if isinstance(e, str) else e["config"] for e in raw["experiments"]]
    missing = [r for r in refs if not (ROOT / r).is_file()]
    if missing:
        pytest.skip(f"{path.name} names experiments that land with the real-datasets issue: {missing}")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweeps_load(in_tmp, path):
    skip_without_its_experiments(path)
    cfg = load_sweep(Path("configs/sweeps") / path.name)
    assert cfg.name == path.stem
    # a search, or (noise_study) a study whose knob is the datasets: the base config once each
    assert (cfg.space and cfg.search.num_samples >= 2) or (not cfg.space and cfg.search.num_samples == 1)
    for base in base_experiments(cfg).values():
        base_point(cfg.space, base)  # the base config lies inside the space: it is evaluated first
    # requests any cluster can hold: auto resolves to what Ray has (sweeps.resources)
    assert cfg.resources.gpu == "auto" and cfg.fanout.gpu == "auto"


def test_quickstart_smoke_is_tiny(in_tmp):
    cfg = load_sweep("configs/sweeps/quickstart.yaml", smoke=True)
    assert cfg.search.num_samples == 2 and cfg.scheduler.max_epochs == 1 and cfg.fanout.top_k == 1
    assert all("data.synthfaces.n_per_class=12" in e.overrides for e in cfg.experiments)


def _sweep(tmp: Path, space: str, extra: str = "") -> Path:
    (tmp / "data").mkdir(exist_ok=True)
    write_tiny_experiment(tmp, "tiny", "data/raw/tiny")
    path = tmp / "s.yaml"
    path.write_text(f"name: s\nexperiments: [tiny.yaml]\nspace:\n{space}\n{extra}")
    return path


SPACE = """  train.sampler: {type: categorical, choices: [none, class_balanced]}
  train.class_weighted_loss: {type: categorical, choices: [false, true], when: {train.sampler: none}}
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.depth: {type: categorical, choices: [18, 34]}
  train.batch_size: {type: int, low: 8, high: 32, step: 8}"""


@pytest.mark.parametrize(
    "space, extra, pattern",
    [
        ("  train.lrr: {type: float, low: 0.1, high: 1}", "", r"space.train.lrr.*not an experiment key"),
        (
            "  model.depth: {type: categorical, choices: [18, 101]}",
            "",
            r"value 101 fails.*model.depth.*18, 20, 32, 34",
        ),
        ("  train.lr: {type: float, low: 0, high: 1, log: true}", "", r"log-scale parameter needs low > 0"),
        ("  train.lr: {type: float, low: 1}", "", r"needs low and high"),
        ("  train.lr: {type: floaty, low: 0.1, high: 1}", "", r"space.train.lr.type"),
        (
            "  train.class_weighted_loss: {type: categorical, choices: [true], when: {train.sampler: none}}",
            "",
            r"'when' names 'train.sampler', which must be a parameter listed above it",
        ),
        ("  train.lr: {type: float, low: 0.01, high: 0.1}", "", r"base value train.lr=0.002.*outside"),
        (
            SPACE,
            "search: {num_sample: 3}",
            r"unknown config key 'search.num_sample' \(did you mean 'num_samples'",
        ),
        (SPACE, "resources: {gpu: 1.5}", r"resources.gpu"),
        (SPACE, "scheduler: {type: hyperband}", r"scheduler.type' must be one of 'asha', 'fifo'"),
        ("  train.lr: {type: float, low: 0.001, high: 0.01, bogus: 1}", "",
         r"unknown config key 'space.train.lr.bogus'; valid keys in 'space.train.lr': type, low"),
        ("  train.lr: {type: float, low: abc, high: 0.01}", "", r"'space.train.lr.low' must be a number, got 'abc'"),
        ("  train.lr: {type: float, low: 0.001, high: 0.01, log: maybe}", "",
         r"'space.train.lr.log' must be true or false"),
        ("  train.lr: {type: float, low: 0.01, high: 0.001}", "",
         r"space.train.lr': a float parameter needs low < high, got low=0.01, high=0.001"),
        ("  train.batch_size: {type: int, low: 32, high: 8}", "",
         r"space.train.batch_size': an? int parameter needs low < high"),
        ("  train.lr: {type: float, low: -0.1, high: 0.01, log: true}", "",
         r"space.train.lr': a log-scale parameter needs low > 0, got -0.1"),
        ("  train.sampler: {type: categorical, choices: []}", "",
         r"space.train.sampler': a categorical parameter needs 'choices'"),
        (
            "  train.sampler: {type: categorical, choices: [none]}\n"
            "  train.class_weighted_loss: {type: categorical, choices: [false, true], when: {train.nothere: none}}",
            "",
            r"space.train.class_weighted_loss': 'when' names 'train.nothere', which must be a parameter listed above",
        ),
        (SPACE, "search: {num_samples: 0}", r"'search.num_samples' must be in \[1, inf\], got 0"),
        (SPACE, "search: {max_concurrent: 0}", r"'search.max_concurrent' must be in \[1, inf\], got 0"),
        (SPACE, "scheduler: {type: pbt}", r"'scheduler.type' must be one of 'asha', 'fifo', got 'pbt'"),
        (SPACE, "scheduler: {type: asha, max_epochs: 3, grace_period: 5}",
         r"'scheduler.grace_period' \(5\) must be <= scheduler.max_epochs \(3\)"),
        (SPACE, "resources: {cpu: -1}", r"'resources.cpu' must be >= 0 or auto, got -1"),
        # the fan-out evaluates best.pt, fit's best val macro-F1 epoch: the ranking must be the same
        (SPACE, "search: {metric: val_loss, mode: min}",
         r"'search.metric' must be val_macro_f1, got 'val_loss': .*best.pt.*best val_macro_f1"),
        (SPACE, "search: {metric: val_accuracy}", r"'search.metric' must be val_macro_f1, got 'val_accuracy'"),
        (SPACE, "search: {mode: min}",
         r"'search.mode' must be max for search.metric val_macro_f1, got 'min': .*best.pt"),
    ],
)
def test_bad_sweeps_name_the_key(tmp_path, monkeypatch, space, extra, pattern):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=pattern):
        load_sweep(_sweep(tmp_path, space, extra))


@pytest.mark.parametrize(
    ("extra", "overrides", "pattern"),
    [
        ("search: {num_samples: 0}", [], r"'search.num_samples' must be in \[1, inf\], got 0"),
        ("scheduler: {max_epochs: 0}", [], r"'scheduler.max_epochs' must be in \[1, inf\], got 0"),
        ("fanout: {num_each: 0}", [], r"'fanout.num_each' must be in \[1, inf\], got 0"),
        ("", ["search.max_concurrent=0"], r"'search.max_concurrent' must be in \[1, inf\], got 0"),
    ],
)
def test_smoke_checks_the_sweep_as_written_before_narrowing_it(tmp_path, monkeypatch, extra, overrides, pattern):
    """--smoke replaces these keys with tiny values; a value the real run refuses is refused under --smoke too."""
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path, SPACE, extra)
    with pytest.raises(UserError, match=pattern):
        load_sweep(path, overrides, smoke=True)
    with pytest.raises(UserError, match=pattern):
        load_sweep(path, overrides)


def test_smoke_checks_a_base_experiments_own_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path, SPACE)
    path.write_text(path.read_text().replace(
        "experiments: [tiny.yaml]", "experiments: [{config: tiny.yaml, overrides: [train.batch_size=0]}]"))
    with pytest.raises(UserError, match=r"'train.batch_size' must be in \[1, inf\], got 0"):
        load_sweep(path, smoke=True)


def test_a_sweep_refuses_an_experiment_without_a_validation_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path, SPACE)
    path.write_text(path.read_text().replace(
        "experiments: [tiny.yaml]",
        "experiments: [{config: tiny.yaml, overrides: [data.folds=3, data.fold=0, data.fold_val=false]}]"))
    with pytest.raises(UserError, match=r"data.fold_val=false leaves the trials of tiny.yaml no validation split"):
        base_experiments(load_sweep(path))


def test_space_is_define_by_run_with_conditions_and_base_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_sweep(_sweep(tmp_path, SPACE))
    base = next(iter(base_experiments(cfg).values()))
    point = base_point(cfg.space, base)
    assert point == {
        "train.sampler": "none",
        "train.class_weighted_loss": False,
        "train.lr": 0.002,
        "model.depth": 18,
        "train.batch_size": 16,
    }
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=2),
    )
    study.enqueue_trial(point)
    space = DefineByRun(cfg.space)
    first = study.ask()
    space(first)
    assert first.params == point  # the base config is the first trial
    study.tell(first, 0.5)
    seen_balanced = False
    for i in range(12):
        trial = study.ask()
        space(trial)
        p = trial.params
        assert 1e-4 <= p["train.lr"] <= 1e-2 and p["train.batch_size"] in (8, 16, 24, 32)
        # the conditional parameter exists only without a balanced sampler
        assert ("train.class_weighted_loss" in p) == (p["train.sampler"] == "none")
        seen_balanced |= p["train.sampler"] == "class_balanced"
        study.tell(trial, float(i % 3) / 3)
    assert seen_balanced


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "xai_lab", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    path = _sweep(tmp_path, "  model.depth: {type: categorical, choices: [18, 101]}")
    res = _cli("sweep", "--config", str(path.name), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "space.model.depth" in res.stderr and "Traceback" not in res.stderr
    res = _cli("report", "--sweep", "nowhere", cwd=tmp_path)
    assert res.returncode == 2 and "not a finished sweep" in res.stderr and res.stderr.count("\n") == 1


def test_cli_refuses_to_overwrite_an_earlier_sweep(tmp_path):
    path = _sweep(tmp_path, SPACE)
    earlier = tmp_path / "ray_results" / "s"
    earlier.mkdir(parents=True)
    (earlier / "sweep.yaml").write_text("name: s\n")
    res = _cli("sweep", "--config", path.name, cwd=tmp_path)
    assert res.returncode == 2 and "already holds a sweep; pass --resume" in res.stderr
    assert (earlier / "sweep.yaml").read_text() == "name: s\n"
    res = _cli("sweep", "--config", path.name, "--resume", "name=other", cwd=tmp_path)
    assert res.returncode == 2 and "nothing to resume" in res.stderr


def test_cluster_yaml_validates_offline():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = prepare_config(cfg)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    worker = prepared["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"].startswith("g5")
    assert any("pip install" in c for c in prepared["setup_commands"])


def test_checkpoints_land_where_asha_may_stop_a_trial():
    from sweeps.config import SchedulerConfig, asha_rung_epochs

    assert asha_rung_epochs(SchedulerConfig(type="asha", max_epochs=30, grace_period=5, reduction_factor=3)) == [
        5, 15, 30]
    assert asha_rung_epochs(SchedulerConfig(type="asha", max_epochs=2, grace_period=1, reduction_factor=2)) == [1, 2]
    assert asha_rung_epochs(SchedulerConfig(type="fifo", max_epochs=7)) == [7]


def test_auto_gpu_fraction_packs_small_trials_and_gives_big_ones_a_gpu():
    from sweeps.resources import packing_fraction

    def pack(depth, size):
        return packing_fraction(ModelConfig(depth=depth, input_size=size))

    assert pack(18, 48) == 0.25  # the measured point: four packed do 3x one (DESIGN.md)
    assert pack(18, 112) == 0.5
    assert pack(50, 48) == 0.5
    assert pack(34, 112) == pack(50, 112) == 1.0
    assert pack(20, 48) == pack(56, 32) == 0.25 and pack(56, 64) == 0.5  # CIFAR-style: FLOPs per image


def test_a_space_samples_model_name_or_depth(in_tmp, tmp_path):
    from sweeps.config import trial_config
    from xai_lab.config import to_dict

    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"experiments: [{ROOT / 'configs/experiments/exp003_resnet20_synthfaces_clear.yaml'}]\n"
        "space:\n  model.name: {type: categorical, choices: [resnet20, resnet8, resnet18]}\n")
    cfg = load_sweep(sweep)
    (base,) = base_experiments(cfg).values()
    for name, depth in (("resnet8", 8), ("resnet18", 18)):
        model = trial_config(to_dict(base), {"model.name": name}).model
        assert (model.name, model.depth) == (name, depth)
    model = trial_config(to_dict(base), {"model.depth": 14}).model  # the shorthand replaces the base's name
    assert (model.name, model.depth) == ("resnet14", 14)
    old = "model.name: {type: categorical, choices: [resnet20, resnet8, resnet18]}"
    sweep.write_text(sweep.read_text().replace(old, "model.depth: {type: categorical, choices: [20, 19]}"))
    with pytest.raises(UserError, match=r"space.model.depth.*value 19 fails.*'model.depth' must be one of"):
        load_sweep(sweep)


# --smoke: every shipped sweep runs its cheapest trial, for one epoch on a dozen images per class.

SMOKE_CHECKED = ("model.", "data.", "train.epochs", "train.compile")  # the space keys that set a trial's cost


def _points(space: dict, keys: list[str]) -> list[dict]:
    """Every combination of the values of ``keys``: a categorical's choices, both ends of a range."""
    options = [s.choices if s.type == "categorical" else [s.low, s.high] for s in (space[k] for k in keys)]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*options)]


def _cost_keys(space: dict) -> list[str]:
    return [k for k in space if k.startswith(SMOKE_CHECKED)]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_smoke_runs_the_cheapest_trial_of_every_shipped_sweep(in_tmp, path):
    from sweeps.config import trial_config, trial_work
    from xai_lab.config import to_dict
    from xai_lab.models import work_per_image

    skip_without_its_experiments(path)
    full = load_sweep(Path("configs/sweeps") / path.name)
    smoke = load_sweep(Path("configs/sweeps") / path.name, smoke=True)
    assert smoke.search.num_samples <= 2 and smoke.scheduler.max_epochs == 1
    for key in _cost_keys(smoke.space):
        assert len(smoke.space[key].choices) == 1, key  # narrowed to one value
    full_bases, smoke_bases = base_experiments(full).values(), base_experiments(smoke).values()
    for full_base, base in zip(full_bases, smoke_bases, strict=True):
        least = float("inf")  # the cheapest trial the full space can produce
        for point in _points(full.space, _cost_keys(full.space)):
            try:
                least = min(least, trial_work(trial_config(to_dict(full_base), point).model))
            except UserError:
                continue  # a combination the experiment refuses
        for point in _points(smoke.space, _cost_keys(smoke.space)):
            trial = trial_config(to_dict(base), point)  # every point of the smoke space is a valid trial
            assert work_per_image(trial.model) <= 1.2  # ResNet18 (ImageNet stem) at 48 px is 1
            # the cheapest of the full space; at most the FER bases' own ResNet18 with the small stem at 48 px
            assert trial_work(trial.model) == pytest.approx(least) and trial_work(trial.model) <= 16
            assert trial.train.epochs == 1 and not trial.train.compile
            data = trial.data
            per_class = data.synthfaces.n_per_class if data.source == "synthfaces" else data.limit_per_class
            assert 0 < per_class <= 12, (data.source, per_class)
        base_point(smoke.space, base)  # the base (evaluated first) lies inside the narrowed space


def test_smoke_narrows_a_conditional_space_and_moves_the_base_into_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = (
        "  model.depth: {type: categorical, choices: [34, 18, 50]}\n"
        "  model.stem: {type: categorical, choices: [small, imagenet]}\n"
        "  model.input_size: {type: int, low: 64, high: 112, step: 16}\n"
        "  train.class_weighted_loss: {type: categorical, choices: [false, true], when: {model.stem: small}}\n"
        "  train.label_smoothing: {type: float, low: 0.0, high: 0.2, when: {train.class_weighted_loss: true}}\n"
        "  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, when: {model.stem: [small, imagenet]}}\n"
        "  train.batch_size: {type: categorical, choices: [8, 16]}\n"
        "  train.epochs: {type: int, low: 2, high: 6}"
    )
    path = _sweep(tmp_path, space, "search: {evaluate_base_first: false}")  # the base's 48 px is outside
    cfg = load_sweep(path, smoke=True)
    spaces = {k: (s.type, s.choices, s.when) for k, s in cfg.space.items()}
    assert spaces == {
        "model.depth": ("categorical", [18], {}),
        "model.stem": ("categorical", ["imagenet"], {}),
        "model.input_size": ("categorical", [64], {}),  # the low end of the range
        # class_weighted_loss needed the small stem, label_smoothing needed class_weighted_loss: dropped
        "train.lr": ("float", [], {"model.stem": ["imagenet"]}),
        "train.batch_size": ("categorical", [8, 16], {}),  # no cost on a dozen images per class: kept
        "train.epochs": ("categorical", [1], {}),
    }
    (base,) = base_experiments(cfg).values()
    assert (base.model.name, base.model.stem, base.model.input_size, base.train.epochs) == ("resnet18", "imagenet",
                                                                                            64, 1)
    assert base.data.limit_per_class == 12
    point = base_point(cfg.space, base)
    assert point == {"model.depth": 18, "model.stem": "imagenet", "model.input_size": 64, "train.lr": 0.002,
                     "train.batch_size": 16, "train.epochs": 1}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        DefineByRun(cfg.space)(trial)
        assert set(trial.params) == set(point) and trial.params["model.input_size"] == 64
        study.tell(trial, 0.5)


def test_smoke_skips_combinations_the_experiment_refuses_and_counts_width(in_tmp, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"experiments: [{ROOT / 'configs/experiments/exp003_resnet20_synthfaces_clear.yaml'}]\n"
        "space:\n  model.name: {type: categorical, choices: [resnet20, resnet18, resnet8]}\n"
        "  model.width: {type: categorical, choices: [32, 8]}\n"
        "search: {evaluate_base_first: false}\n")
    cfg = load_sweep(sweep, smoke=True)  # resnet18 refuses width 8 or 32; resnet8 at width 8 is cheapest
    assert {k: s.choices for k, s in cfg.space.items()} == {"model.name": ["resnet8"], "model.width": [8]}
    (base,) = base_experiments(cfg).values()
    assert (base.model.name, base.model.width) == ("resnet8", 8)
