import numpy as np
import pytest
import torch

from xai_lab.config import ModelConfig
from xai_lab.data.splits import split_indices
from xai_lab.errors import UserError
from xai_lab.models import build_model, cam_grid_size, create_model, list_models, pretrained_file, resolve_model_config


@pytest.mark.parametrize("name", list_models("torchvision"))
@pytest.mark.parametrize("stem", ["imagenet", "small"])
def test_every_torchvision_model_builds_and_runs(name, stem):
    model = create_model(name, num_classes=7, in_chans=1, input_size=48, stem=stem).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 48, 48))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 44, 56])
def test_cifar_resnets_have_6n_plus_2_layers_and_a_fine_cam_grid(depth):
    """He et al. (2016), section 4.2: 6n+2 weighted layers (3x3 convs + the head; 1x1 shortcuts not counted)."""
    model = create_model(f"resnet{depth}", num_classes=7, in_chans=1, input_size=48).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == depth
    assert [model.backbone.get_submodule(f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3)] == [16, 32, 64]
    feats = {}
    model.target_layer.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    with torch.no_grad():
        out = model(torch.rand(2, 1, 48, 48))
    assert out.shape == (2, 7)
    assert feats["x"].shape[-2:] == (12, 12) == (cam_grid_size(ModelConfig(name=f"resnet{depth}")),) * 2
    assert cam_grid_size(ModelConfig(depth=depth, input_size=32)) == 8


def test_width_multiplies_the_cifar_stages():
    model = create_model("resnet8", 3, width=32)
    assert [model.backbone.get_submodule(f"layer{i}")[0].conv2.out_channels for i in (1, 2, 3)] == [32, 64, 128]


def test_depth_is_a_shorthand_for_the_name_and_both_are_checked():
    assert resolve_model_config(ModelConfig(depth=20)).name == "resnet20"
    assert resolve_model_config(ModelConfig(name="resnet34")).depth == 34
    assert resolve_model_config(ModelConfig()).name == "resnet18"
    with pytest.raises(UserError, match=r"'model.name' must be one of resnet18, .*resnet56, got 'resnet19'"):
        resolve_model_config(ModelConfig(name="resnet19"))
    with pytest.raises(UserError, match=r"'model.depth' must be one of 8, 14, 18, 20"):
        resolve_model_config(ModelConfig(depth=19))
    with pytest.raises(UserError, match="disagree"):
        resolve_model_config(ModelConfig(name="resnet20", depth=18))
    with pytest.raises(UserError, match="'model.stem' must be auto or small for resnet20"):
        resolve_model_config(ModelConfig(name="resnet20", stem="imagenet"))
    with pytest.raises(UserError, match="ImageNet weights exist for resnet18, resnet34, resnet50 only"):
        resolve_model_config(ModelConfig(name="resnet20", pretrained=True))
    with pytest.raises(UserError, match="'model.width' is for the CIFAR-style ResNets"):
        resolve_model_config(ModelConfig(name="resnet18", width=16))


def test_an_override_of_depth_or_name_replaces_the_other(tmp_path):
    from xai_lab.experiment import load_experiment

    exp = tmp_path / "exp.yaml"
    exp.write_text("model: {depth: 18, input_size: 32}\n")
    assert load_experiment(exp, ["model.name=resnet20"]).model.depth == 20
    cfg = load_experiment(exp, ["model.name=resnet20", "model.depth=8"])
    assert (cfg.model.name, cfg.model.depth) == ("resnet8", 8)
    with pytest.raises(UserError, match="must be one of"):
        load_experiment(exp, ["model.name=vgg16"])


@pytest.mark.parametrize("stem, size, grid", [("imagenet", 48, 2), ("small", 48, 6), ("imagenet", 112, 4),
                                              ("small", 112, 14)])
def test_cam_grid_size_matches_the_last_block(stem, size, grid):
    cfg = ModelConfig(depth=18, stem=stem, input_size=size)
    model = build_model(cfg, 7)
    feats = {}
    model.target_layer.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    with torch.no_grad():
        model(torch.rand(1, 1, 48, 48))  # resized to input_size inside the model
    assert feats["x"].shape[-1] == grid == cam_grid_size(cfg)


def test_gray_conv_is_the_summed_rgb_conv(tmp_path):
    """With pretrained weights, the 1-channel model on a gray image equals the RGB model on it repeated."""
    import torchvision

    rgb = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(rgb.state_dict(), path)
    gray_model = build_model(ModelConfig(depth=18, pretrained=str(path)), 1000).eval()
    gray_model.backbone.fc.load_state_dict(rgb.fc.state_dict())
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        ours = gray_model(x)
        theirs = rgb.eval()((x.expand(-1, 3, -1, -1) - gray_model.mean) / gray_model.std)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_missing_pretrained_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"not cached: download https://\S+resnet18\S+\.pth to \S+checkpoints"):
        build_model(ModelConfig(depth=18, pretrained=True), 7)
    assert str(tmp_path) in str(pretrained_file(18))
    with pytest.raises(UserError, match="pretrained weights file not found: nope.pth"):
        build_model(ModelConfig(depth=18, pretrained="nope.pth"), 7)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read pretrained weights"):
        build_model(ModelConfig(depth=18, pretrained=str(bad)), 7)


def test_cached_weights_load_offline(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = pretrained_file(18)
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), target)
    model = build_model(ModelConfig(depth=18, pretrained=True), 7)
    assert model(torch.rand(1, 1, 48, 48)).shape == (1, 7)


def test_stratified_split_is_seeded_disjoint_and_proportional():
    labels = np.repeat(np.arange(4), [100, 60, 30, 10])
    a = split_indices(labels, (0.7, 0.15, 0.15), seed=0)
    b = split_indices(labels, (0.7, 0.15, 0.15), seed=0)
    c = split_indices(labels, (0.7, 0.15, 0.15), seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    together = np.concatenate(list(a.values()))
    assert len(together) == len(labels) == len(np.unique(together))
    for split, frac in [("train", 0.7), ("val", 0.15), ("test", 0.15)]:
        shares = np.bincount(labels[a[split]], minlength=4) / np.bincount(labels)
        assert np.allclose(shares, frac, atol=0.1)


def test_grouped_split_keeps_subjects_apart():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 6)
    labels = np.tile(np.arange(6), 40)
    rng.shuffle(labels)
    parts = split_indices(labels, (0.7, 0.15, 0.15), seed=0, groups=groups)
    subjects = [set(groups[idx]) for idx in parts.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert sum(map(len, parts.values())) == len(labels)


def test_too_small_to_split_is_a_user_error():
    with pytest.raises(UserError, match="cannot split"):
        split_indices(np.array([0, 1, 2]), (0.5, 0.25, 0.25), seed=0)
