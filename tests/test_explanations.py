"""Explainers and explanation metrics on tiny models with known answers, and on ResNet18."""

import inspect

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr

from xai_lab.config import ExplainConfig, ModelConfig, build_dataclass, read_yaml
from xai_lab.explain import metrics as M
from xai_lab.explain.explainers import EXPLAINERS, LAYER_METHODS, explain_batched, resolve_layer
from xai_lab.explain.run import method_params
from xai_lab.models import build_model

# cheap settings for the costly methods (shapes and hooks do not depend on them)
CHEAP = {"smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 4},
         "occlusion": {"window": 24, "stride": 24}}
TINY = {"smoothgrad": {"samples": 1}, "integrated_gradients": {"steps": 2}, "occlusion": {"window": 8, "stride": 8}}


class ToyCam(nn.Module):
    """x [B,1,16,16] -> features = 4x4 average pooling (2 channels: x and -x) -> mean -> linear.

    Class 0 sums the bright channel, class 1 the negative one: Grad-CAM of class 0 is the
    pooled image itself, that of class 1 is zero everywhere (ReLU of a negative map).
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 2, kernel_size=4, stride=4, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.stack([torch.full((1, 4, 4), 1 / 16), torch.full((1, 4, 4), -1 / 16)]))
        self.relu = nn.ReLU()
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))

    @property
    def target_layer(self):
        return self.features

    def forward(self, x):
        return self.head(self.relu(self.features(x)).mean(dim=(2, 3)))


def _square(batch=2):
    x = torch.zeros(batch, 1, 16, 16)
    x[:, :, 4:8, 8:12] = 1.0  # lights up cell (1, 2) of the 4x4 feature grid
    return x


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp"])
def test_cam_finds_the_known_active_region(name):
    model = ToyCam().eval()
    maps = explain_batched(name, model, _square(), torch.tensor([0, 1]))
    assert maps.shape == (2, 16, 16)
    peak = divmod(int(maps[0].argmax()), 16)
    assert 4 <= peak[0] < 8 and 8 <= peak[1] < 12
    far = maps[0].clone()
    far[2:10, 6:14] = 0  # everything but the square and its bilinear halo
    assert float(far.max()) < 1e-6 < float(maps[0].max())
    assert float(maps[1].abs().max()) == 0.0  # the class that counts dark pixels sees nothing here


class ToyPP(nn.Module):
    """conv (the layer) -> ReLU'd 1x1 conv -> mean -> linear: gradients vary across positions,
    and the class score is piecewise linear in the layer's activations (the paper's premise)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Conv2d(1, 2, 3, padding=1)
        self.mix = nn.Conv2d(2, 3, 1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.mix(self.features(x))).mean(dim=(2, 3)))


def test_gradcam_pp_equals_the_papers_formula_with_higher_derivatives():
    """Chattopadhyay et al. 2018, eq. 10 with S = exp(Y): the alphas from the 2nd and 3rd derivatives of S,
    taken by autograd element by element, then w_k = sum alpha relu(dS/dA) and map = relu(sum_k w_k A^k)."""
    model = ToyPP().double().eval()
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = 1
    acts = model.features(x).detach().requires_grad_(True)
    s = torch.exp(model.head(torch.relu(model.mix(acts)).mean(dim=(2, 3)))[0, target])
    (d1,) = torch.autograd.grad(s, acts, create_graph=True)
    d2, d3 = torch.zeros_like(acts), torch.zeros_like(acts)
    for e in range(acts.numel()):
        (row,) = torch.autograd.grad(d1.flatten()[e], acts, create_graph=True)
        d2.view(-1)[e] = row.flatten()[e]
        (row3,) = torch.autograd.grad(row.flatten()[e], acts, retain_graph=True)
        d3.view(-1)[e] = row3.flatten()[e]
    denom = 2 * d2 + acts.sum(dim=(2, 3), keepdim=True) * d3
    alpha = torch.where(denom != 0, d2 / denom, torch.zeros_like(d2))
    weights = (alpha * torch.relu(d1)).sum(dim=(2, 3), keepdim=True)
    expected = torch.relu((weights * acts).sum(dim=1))[0].detach()
    got = explain_batched("gradcam_pp", model, x, torch.tensor([target]), layer=model.features)[0]
    assert float(expected.max()) > 0
    # the same map up to the positive factor exp(Y) that the closed form drops
    torch.testing.assert_close(got / got.max(), (expected / expected.max()).float(), atol=1e-5, rtol=1e-4)


def test_integrated_gradients_are_complete():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x = torch.rand(3, 2, 6, 6)
    target = torch.tensor([0, 2, 1])
    maps = explain_batched("integrated_gradients", model, x, target, steps=64)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None])[:, 0]
    assert maps.shape == (3, 6, 6)
    torch.testing.assert_close(maps.sum(dim=(1, 2)), gap, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    return {stem: build_model(ModelConfig(depth=18, stem=stem), 7).eval() for stem in ("imagenet", "small")}


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_gives_finite_maps_on_resnet18(resnets, name, stem, batch):
    x = torch.rand(batch, 1, 48, 48, generator=torch.Generator().manual_seed(batch))
    target = torch.arange(batch) % 7
    maps = explain_batched(name, resnets[stem], x, target, batch_size=5, **CHEAP.get(name, {}))
    assert maps.shape == (batch, 48, 48) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def test_a_hundred_calls_leave_no_hook_registered():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    layer = model[2]
    x = torch.rand(2, 1, 8, 8)
    for name in EXPLAINERS:
        params = TINY.get(name, {})
        for _ in range(100):
            explain_batched(name, model, x, torch.tensor([0, 2]), layer=layer, **params)
        with pytest.raises((IndexError, RuntimeError)):  # a bad target: hooks are released on errors too
            explain_batched(name, model, x, torch.tensor([0, 7]), layer=layer, **params)
        assert _hooks(model) == 0, name


def test_randomizing_the_model_changes_the_maps_and_spares_the_original(resnets):
    model = resnets["imagenet"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 2])
    for name in ("saliency", "gradcam"):
        maps = explain_batched(name, model, x, target)
        rho = M.randomization_test(lambda m, n=name: explain_batched(n, m, x, target), model, maps)
        assert list(rho) == M.randomization_stages(model)
        assert list(rho)[0] == "backbone.fc" and list(rho)[-1] == "backbone.conv1"
        assert float(rho["backbone.conv1"].mean()) < 0.5, name
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the test's own reference: the same model gives the same maps, rho = 1
    maps = explain_batched("saliency", model, x, target)
    assert torch.allclose(M.spearman(maps, explain_batched("saliency", model, x, target)), torch.ones(2))


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 30), generator=gen).float()  # many ties
    b = a + torch.randint(0, 3, (4, 30), generator=gen).float()
    ours = M.spearman(a, b)
    for i in range(4):
        assert float(ours[i]) == pytest.approx(spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-6)
    assert float(M.spearman(torch.ones(1, 5), torch.arange(5.0)[None])[0]) == 0.0  # a constant map


class RegionModel(nn.Module):
    """p(class 0) rises with the brightness of the top-left 4x4 corner and nothing else."""

    def forward(self, x):
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3)) * 10
        return torch.stack([s, 5 - s], dim=1)


def test_deletion_and_insertion_reward_the_map_of_the_evidence():
    x = torch.zeros(2, 1, 8, 8)
    x[:, :, :4, :4] = 1.0  # the evidence; the blurred start of insertion dims it
    target = torch.tensor([0, 0])
    good = torch.zeros(2, 8, 8)
    good[:, :4, :4] = 1.0
    bad = 1.0 - good
    g = M.deletion_insertion(RegionModel(), x, target, good, steps=8)
    b = M.deletion_insertion(RegionModel(), x, target, bad, steps=8)
    r = M.deletion_insertion(RegionModel(), x, target, M.random_maps(2, 8, 8), steps=8)
    assert (g["deletion_auc"] < r["deletion_auc"]).all() and (r["deletion_auc"] < b["deletion_auc"]).all()
    assert (g["insertion_auc"] > b["insertion_auc"]).all()
    assert g["deletion"].shape == (2, 9)
    assert torch.allclose(g["deletion"][:, 0], b["deletion"][:, 0])  # nothing removed yet: the same p
    assert ((0 <= g["deletion_auc"]) & (g["deletion_auc"] <= 1)).all()


def test_pointing_game_and_mask_iou_on_known_maps():
    masks = torch.zeros(3, 1, 6, 6, dtype=torch.bool)
    masks[:, :, 1:3, 1:3] = True
    maps = torch.zeros(3, 6, 6)
    maps[0, 1, 2] = 1.0  # peak on the mask
    maps[1, 5, 5] = 1.0  # peak far away
    maps[2, 3, 3] = 1.0  # peak one pixel off the mask (diagonally)
    assert M.pointing_game(maps, masks).tolist() == [1.0, 0.0, 0.0]
    assert M.pointing_game(maps, masks, tolerance=1).tolist() == [1.0, 0.0, 1.0]
    perfect = masks[:, 0].float()
    assert M.mask_iou(perfect, masks).tolist() == [1.0, 1.0, 1.0]
    assert M.mask_iou(1.0 - perfect, masks).tolist() == [0.0, 0.0, 0.0]
    # a plateau maximum points at one of its pixels, drawn at random, not at its first one
    plateau = torch.zeros(200, 6, 6)
    plateau[:, :3, :] = 1.0
    hits = M.pointing_game(plateau, masks[:1].expand(200, -1, -1, -1)).mean()
    assert 0.1 < float(hits) < 0.45  # 4 of the 18 plateau pixels lie on the mask


def test_explain_configs_load_and_their_parameters_reach_the_explainers():
    from conftest import ROOT

    for path in sorted((ROOT / "configs" / "explain").glob("*.yaml")):
        ec = build_dataclass(ExplainConfig, read_yaml(path) or {}, "explain")
        assert ec.methods and all(m in EXPLAINERS for m in ec.methods), path
    ec = ExplainConfig()
    for name in EXPLAINERS:
        params = method_params(ec, name)
        defaults = {k: p.default for k, p in inspect.signature(EXPLAINERS[name]).parameters.items()
                    if p.default is not inspect.Parameter.empty and k != "layer"}
        assert params == defaults, name  # the config's defaults are the explainer's own


def test_target_layer_by_name(resnets):
    model = resnets["small"]
    layer, name = resolve_layer(model, "")
    assert layer is model.backbone.layer4[-1] and name == "backbone.layer4.1"
    layer3, _ = resolve_layer(model, "backbone.layer3")
    x = torch.rand(2, 1, 48, 48)
    maps = explain_batched("gradcam", model, x, torch.tensor([1, 2]), layer=layer3)
    assert maps.shape == (2, 48, 48) and torch.isfinite(maps).all()
    from xai_lab.errors import UserError

    with pytest.raises(UserError, match="explain.layer.*backbone.layer"):
        resolve_layer(model, "backbone.layer9")
    assert LAYER_METHODS == {"gradcam", "guided_gradcam", "gradcam_pp"}


def test_cam_grid_size_matches_the_layer_output(resnets):
    from xai_lab.explain.run import cam_grid
    from xai_lab.models import cam_grid_size

    for stem, model in resnets.items():
        grid = cam_grid(model, model.target_layer, torch.rand(1, 1, 48, 48))
        assert grid == [cam_grid_size(ModelConfig(stem=stem, input_size=48))] * 2
    assert cam_grid_size(ModelConfig(stem="imagenet", input_size=48)) == 2
    assert cam_grid_size(ModelConfig(stem="small", input_size=48)) == 6


def test_selection_picks_misclassified_and_per_class():
    from xai_lab.explain.selection import select_misclassified, select_per_class

    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1])
    assert select_misclassified(probs, labels, 5).tolist() == [1, 3]  # most confident mistake first
    assert [a.tolist() for a in select_per_class(probs, labels, 1, 2)] == [[0], [2]]


def test_randomized_copy_is_the_cascade_s_last_stage_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet8", input_size=32), 7).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomized = M.randomized_copy(model, seed=3)
    *_, (_, last) = M.cascading_randomization(model, seed=3)
    pairs = zip(randomized.state_dict().values(), last.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(randomized.backbone.conv1.weight, model.backbone.conv1.weight)


def _entry(pg_lead, ins_rnd=(0.3, 0.2, 0.4), ins_rmod=(0.2, 0.1, 0.3), output_range=0.6):
    """A metrics entry with the paired intervals (diff, low, high) a verdict reads; pg_lead None: no masks."""
    entry = {"insertion_auc": 0.8, "deletion_auc": 0.2, "n_images": 32, "output_range": output_range,
             "randomized_model_baseline": {"pointing_game": 0.3},
             "intervals": {"insertion_auc": {"random_maps": list(ins_rnd), "randomized_model": list(ins_rmod)}}}
    if pg_lead is not None:
        entry["pointing_game"] = 0.3 + pg_lead[0]
        entry["intervals"]["pointing_game"] = {"randomized_model": list(pg_lead)}
    return entry


def test_a_method_must_beat_the_randomized_model_to_be_the_model_s_doing_and_the_interval_decides():
    from xai_lab.explain.scoring import randomized_model_verdict

    outcome, text = randomized_model_verdict(_entry((0.6, 0.45, 0.75)), margin=0.25)
    assert outcome == "beats" and "because of what the model learned" in text and "0.90 against 0.30" in text
    assert "lead +0.60 [+0.45, +0.75]" in text and "+0.30 [+0.20, +0.40] over random maps" in text
    assert "paired 95% bootstrap intervals over 32 images" in text
    # localises as well with nothing learned: the image, not the model (the saliency case on synthfaces)
    outcome, text = randomized_model_verdict(_entry((0.09, -0.02, 0.2)), margin=0.25)
    assert outcome == "fails" and "the image, not the model" in text
    # a lead of 0.3 whose interval reaches below the margin: not enough faces to say
    outcome, text = randomized_model_verdict(_entry((0.3, 0.1, 0.5)), margin=0.25)
    assert outcome == "cannot tell" and "cannot be told apart from the randomized model" in text
    outcome, text = randomized_model_verdict(_entry((0.6, 0.45, 0.75), ins_rmod=(-0.2, -0.3, -0.1)), margin=0.25)
    assert outcome == "fails" and "no more faithful" in text
    # no masks: insertion alone, and an interval across zero is no verdict either way
    assert randomized_model_verdict(_entry(None), margin=0.25)[0] == "beats"
    outcome, text = randomized_model_verdict(_entry(None, ins_rnd=(0.03, -0.01, 0.07)), margin=0.25)
    assert outcome == "cannot tell" and "+0.03 [-0.01, +0.07] over random maps" in text
    # an output that does not move as pixels go: both AUCs equal whatever the order, so nothing is judged
    outcome, text = randomized_model_verdict(_entry(None, output_range=0.004), margin=0.25)
    assert outcome == "cannot tell" and "barely moves" in text


def test_paired_interval_is_the_bootstrap_of_the_per_image_differences():
    from xai_lab.explain.scoring import decide, paired_interval

    rng = np.random.default_rng(0)
    a = rng.normal(0.7, 0.1, 64)
    diff, low, high = paired_interval(a, a - 0.2 + rng.normal(0, 0.05, 64))
    assert low < diff < high and low > 0.15 and high < 0.25 and decide([diff, low, high]) == "beats"
    assert paired_interval(a, a - 0.1) == pytest.approx([0.1] * 3)  # the same lead on every face: no spread
    assert decide(paired_interval(a, a)) == "cannot tell"  # identical maps score identically
    assert np.isnan(paired_interval(a[:1], a[:1] - 1)[1]) and decide(paired_interval(a[:1], a[:1] - 1)) == "cannot tell"
    assert decide([-0.2, -0.3, -0.1]) == "fails" and decide([0.3, 0.27, 0.4], margin=0.25) == "beats"


def test_a_model_whose_output_never_moves_gets_no_verdict():
    """The case of a barely trained model: the same probability whatever is removed, both AUCs at 1.00."""
    from xai_lab.explain.scoring import Explainer, Scoring, randomized_model_verdict

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet8", input_size=32), 3).eval()
    with torch.no_grad():  # a head that answers class 0 with certainty, whatever the pixels
        model.backbone.fc.weight.zero_()
        model.backbone.fc.bias.copy_(torch.tensor([20.0, 0.0, 0.0]))
    images = torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8)
    ec = ExplainConfig()
    scoring = Scoring(model, images, np.zeros(12, np.int64), None, np.arange(12), ec)
    maps = torch.rand(12, 32, 32)
    entry, _, _ = scoring.score(Explainer("saliency", {}, "", 16), maps)
    entry["n_images"] = 12
    assert entry["insertion_auc"] == pytest.approx(1.0) and entry["output_range"] < 1e-3
    outcome, text = randomized_model_verdict(entry, ec.metrics.randomized_margin)
    assert outcome == "cannot tell" and "barely moves" in text
