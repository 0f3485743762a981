from pathlib import Path

import pytest
import yaml

from xai_lab.config import ExperimentConfig, from_dict, load_saved, save_config, to_dict
from xai_lab.errors import UserError
from xai_lab.experiment import load_experiment

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"


def test_experiment_loads_sections_and_derives_names(in_tmp):
    cfg = load_experiment(EXP)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.run.name == "exp000_resnet18_saliency_synthfaces"
    assert cfg.data.source == "synthfaces" and cfg.data.name == "synthfaces"
    assert cfg.data.root == "data/raw/synthfaces"
    assert cfg.model.depth == 18


def test_dotted_overrides_are_typed(in_tmp):
    cfg = load_experiment(EXP, ["train.epochs=3", "model.depth=34", "train.lr=1e-4", "data.split.val=0.2",
                                "data.split.train=0.65", "explain.methods=[saliency,gradcam]"])
    assert cfg.train.epochs == 3 and cfg.model.depth == 34
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.split.val == 0.2
    assert cfg.explain.methods == ["saliency", "gradcam"]


def test_int_is_accepted_for_float_but_not_bool_for_int(in_tmp):
    assert load_experiment(EXP, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(UserError, match="train.epochs"):
        load_experiment(EXP, ["train.epochs=true"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("train.epoch=3", r"unknown config key 'train.epoch' \(did you mean 'epochs'\?\); valid keys in 'train': "
                          r"epochs, batch_size"),
        ("trian.epochs=3", r"unknown config key 'trian'.*valid keys in an experiment: run, data, model"),
        ("train.epochs=three", r"config key 'train.epochs' must be an integer, got 'three'"),
        ("model.depth=101", r"config key 'model.depth' must be one of 8, 14, 18, 20, 32, 34, 44, 50, 56 "
                            r"\(or 0: taken from model.name\), got 101"),
        ("model.stem=tiny", r"'model.stem' must be one of 'auto', 'imagenet', 'small'"),
        ("augment.strength=1.5", r"'augment.strength' must be in \[0.0, 1.0\], got 1.5"),
        ("data.split.test=0.5", r"must sum to 1"),
        ("train.epochs", r"must look like section.key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(in_tmp, override, pattern):
    with pytest.raises(UserError, match=pattern):
        load_experiment(EXP, [override])


def test_pretrained_accepts_bool_or_path(in_tmp):
    assert load_experiment(EXP, ["model.pretrained=true"]).model.pretrained is True
    assert load_experiment(EXP, ["model.pretrained=w/resnet18.pth"]).model.pretrained == "w/resnet18.pth"
    with pytest.raises(UserError, match="model.pretrained"):
        load_experiment(EXP, ["model.pretrained=3"])


def test_unknown_key_in_a_section_file(in_tmp):
    (in_tmp / "train.yaml").write_text("epochs: 2\nlearning_rate: 0.1\n")
    (in_tmp / "exp.yaml").write_text("data: configs/data/synthfaces.yaml\ntrain: train.yaml\n")
    with pytest.raises(UserError, match=r"unknown config key 'train.learning_rate'.*valid keys in 'train'.*\blr\b"):
        load_experiment("exp.yaml")


def test_inline_sections_missing_files_and_bad_yaml(in_tmp):
    (in_tmp / "inline.yaml").write_text("train: {epochs: 2}\nmodel: {depth: 50}\n")
    cfg = load_experiment("inline.yaml")
    assert (cfg.train.epochs, cfg.model.depth, cfg.run.name) == (2, 50, "inline")
    (in_tmp / "missing.yaml").write_text("model: configs/model/nope.yaml\n")
    with pytest.raises(UserError, match="config file not found: configs/model/nope.yaml"):
        load_experiment("missing.yaml")
    (in_tmp / "broken.yaml").write_text("train: {epochs: 2\n")
    with pytest.raises(UserError, match="invalid YAML in broken.yaml"):
        load_experiment("broken.yaml")
    with pytest.raises(UserError, match="unknown config section 'training'"):
        (in_tmp / "sect.yaml").write_text("training: {epochs: 2}\n")
        load_experiment("sect.yaml")


def test_an_experiment_overrides_keys_of_its_section_files(in_tmp):
    from xai_lab.config import read_data_section

    (in_tmp / "exp.yaml").write_text("data: configs/data/ckplus.yaml\ntrain: configs/train/recipe.yaml\n"
                                     "overrides: [data.fold_val=false, train.epochs=7]\n")
    cfg = load_experiment("exp.yaml")
    assert (cfg.data.fold_val, cfg.train.epochs, cfg.train.ema_decay) == (False, 7, 0.99)  # the rest from the files
    assert load_experiment("exp.yaml", ["train.epochs=3"]).train.epochs == 3  # the command line comes last
    assert read_data_section("exp.yaml")["fold_val"] is False  # evaluate --data EXP sees the same data section
    (in_tmp / "bad.yaml").write_text("train: configs/train/recipe.yaml\noverrides: {train.epochs: 7}\n")
    with pytest.raises(UserError, match=r"'overrides' in bad.yaml must be a list of key=value strings"):
        load_experiment("bad.yaml")
    (in_tmp / "bad.yaml").write_text("train: configs/train/recipe.yaml\noverrides: [train.epoch=7]\n")
    with pytest.raises(UserError, match=r"unknown config key 'train.epoch'"):
        load_experiment("bad.yaml")


def test_resolved_config_round_trips(in_tmp):
    cfg = load_experiment(EXP, ["train.epochs=4"])
    save_config(cfg, in_tmp / "out" / "config.yaml")
    again = load_saved(in_tmp / "out" / "config.yaml")
    assert again == cfg
    saved = yaml.safe_load((in_tmp / "out" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 4 and set(saved) == set(to_dict(cfg))
    with pytest.raises(UserError, match="unknown config key 'train.bogus'"):
        from_dict({**saved, "train": {**saved["train"], "bogus": 1}})


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_experiment_loads_strictly(path):
    cfg = load_experiment(path)
    assert cfg.model.name and cfg.model.depth  # the registry resolved the model
