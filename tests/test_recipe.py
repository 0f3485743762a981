"""The optional training recipe: one-cycle schedule, mixup/CutMix, weight EMA, flip TTA (tiny tensors, CPU)."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from xai_lab.checkpoint import load_checkpoint, model_from_checkpoint
from xai_lab.config import TrainConfig
from xai_lab.evaluate import evaluate_run, predict_logits
from xai_lab.experiment import load_experiment
from xai_lab.recipe import make_ema, mix_batch, mix_rng, mixed_cross_entropy, restore_ema, update_ema
from xai_lab.train import fit, lr_factor

EXP = "configs/experiments/exp000_resnet18_saliency_synthfaces.yaml"
TINY = [
    "data.synthfaces.n_per_class=12", "model.stem=imagenet", "train.batch_size=32", "train.lr=0.003",
    "run.progress=false", "run.device=cpu", "run.tensorboard=false",
]
RECIPE = ["train.scheduler=onecycle", "train.warmup_epochs=0.5", "train.mixup=0.4", "train.cutmix=1.0",
          "train.ema_decay=0.9", "train.tta_flip=true", "train.label_smoothing=0.1"]


# --- one-cycle ----------------------------------------------------------------------------------


def test_onecycle_rises_from_lr_over_25_then_anneals_to_lr_over_1e4():
    tc = TrainConfig(epochs=10, warmup_epochs=2, scheduler="onecycle")
    f = np.array([lr_factor(s, 10, tc) for s in range(100)])  # 100 optimiser steps, warm-up 20
    assert f[0] == pytest.approx(1 / 25) and f[20] == pytest.approx(1.0) and f.max() == pytest.approx(1.0)
    assert np.all(np.diff(f[:21]) > 0)  # rising to the peak
    assert np.all(np.diff(f[20:]) <= 1e-12)  # monotone after it
    assert f[-1] == pytest.approx(1e-4)
    assert lr_factor(10, 10, tc) == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)  # cosine ramp: halfway at 10


def test_onecycle_drives_the_optimizer_through_lambdalr_and_resumes():
    tc = TrainConfig(epochs=2, warmup_epochs=1, scheduler="onecycle", lr=0.1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 5, tc))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 25)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=tc.lr)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: lr_factor(s, 5, tc))
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    for _ in range(4):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * 1e-4)  # the last step (9) of 2 x 5


# --- mixup and CutMix ---------------------------------------------------------------------------


def _rng(seed: int) -> np.random.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return mix_rng(g)


def test_mixup_is_a_convex_combination_with_the_rolled_batch():
    tc = TrainConfig(mixup=1.0)
    x = torch.rand(6, 1, 8, 8)
    mixed, lam = mix_batch(x.clone(), tc, _rng(0))
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.roll(1, 0))


def test_cutmix_pastes_one_box_and_lam_is_its_area():
    tc = TrainConfig(cutmix=1.0)
    x = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 1, 16, 12).clone()  # image i is all i + 1
    boxes = 0
    for seed in range(10):
        mixed, lam = mix_batch(x.clone(), tc, _rng(seed))
        own = mixed == x
        assert torch.all(own | (mixed == x.roll(1, 0)))  # every pixel from the image or its partner
        assert lam == pytest.approx(own[0].float().mean().item())  # lam: the kept fraction
        pasted = (~own[0, 0]).nonzero()
        if len(pasted):
            boxes += 1
            (y0, x0), (y1, x1) = pasted.min(0).values.tolist(), pasted.max(0).values.tolist()
            assert len(pasted) == (y1 - y0 + 1) * (x1 - x0 + 1)  # one rectangle
            assert torch.equal(own[:, 0], own[:1, 0].expand(4, -1, -1))  # the same box for the whole batch
    assert boxes >= 5


def test_mixed_targets_sum_to_one_and_match_soft_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    lam = 0.3
    soft = lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y.roll(1, 0), 4).float()
    torch.testing.assert_close(soft.sum(1), torch.ones(5))
    torch.testing.assert_close(mixed_cross_entropy(logits, y, lam, label_smoothing=0.1),
                               F.cross_entropy(logits, soft, label_smoothing=0.1))
    # label distributions (FER+ probability mode), class weights and smoothing: still the mixed target's loss
    q, w = torch.rand(5, 4).softmax(1), torch.tensor([0.5, 1.0, 2.0, 1.5])
    mixed_q = lam * q + (1 - lam) * q.roll(1, 0)
    torch.testing.assert_close(mixed_q.sum(1), torch.ones(5))
    torch.testing.assert_close(mixed_cross_entropy(logits, q, lam, w, 0.1),
                               F.cross_entropy(logits, mixed_q, weight=w, label_smoothing=0.1))
    # class indices with class weights: the two cross-entropies, each with its own weight normalisation
    assert mixed_cross_entropy(logits, y, lam, w).item() == pytest.approx(
        lam * F.cross_entropy(logits, y, weight=w).item() + (1 - lam) * F.cross_entropy(logits, y.roll(1, 0),
                                                                                         weight=w).item())
    assert torch.equal(mixed_cross_entropy(logits, y, 1.0, w), F.cross_entropy(logits, y, weight=w))


def test_mixing_is_repeatable_and_respects_mix_prob():
    tc = TrainConfig(mixup=0.4, cutmix=1.0)
    x = torch.rand(8, 3, 10, 10)
    runs = [[mix_batch(x.clone(), tc, rng) for _ in range(6)] for rng in (_rng(3), _rng(3), _rng(4))]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(runs[0], runs[1], strict=True))
    assert [lam for _, lam in runs[0]] != [lam for _, lam in runs[2]]
    kinds = set()
    rng = _rng(5)
    for _ in range(30):
        mixed, lam = mix_batch(x.clone(), tc, rng)
        kinds.add("cutmix" if torch.all((mixed == x) | (mixed == x.roll(1, 0))) else "mixup")
    assert kinds == {"mixup", "cutmix"}  # both on: each batch takes one of the two
    off = TrainConfig(mixup=0.4, cutmix=1.0, mix_prob=0.0)
    same, lam = mix_batch(x, off, _rng(0))
    assert same is x and lam == 1.0


# --- the weight EMA -----------------------------------------------------------------------------


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))


def _train(model: nn.Module, steps: int, after_step) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 2, (4,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        after_step()


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_a_hand_computed_average_of_weights_and_buffers(warmup):
    model = _tiny_net()
    tc = TrainConfig(ema_decay=0.8, ema_warmup=warmup)
    ema = make_ema(model, tc)
    expected: dict[str, torch.Tensor] = {}

    def step():
        update_ema(ema, model, tc)
        n = len(steps_seen)
        for name, t in model.state_dict().items():
            if n == 0 or not t.is_floating_point():
                expected[name] = t.clone()
            else:
                d = min(0.8, (1 + n) / (10 + n)) if warmup else 0.8
                expected[name] = d * expected[name] + (1 - d) * t
        steps_seen.append(n)

    steps_seen: list[int] = []
    _train(model, 5, step)
    got = ema.module.state_dict()
    assert int(ema.n_averaged) == 5 and ema.n_averaged.device.type == "cpu"
    for name, t in expected.items():
        torch.testing.assert_close(got[name], t)
    assert not torch.equal(got["4.weight"], model.state_dict()["4.weight"])  # an average, not a copy


def test_ema_without_warmup_is_averaged_models_own_update():
    model = _tiny_net()
    tc = TrainConfig(ema_decay=0.7, ema_warmup=False)
    ours = make_ema(model, tc)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=True)
    _train(model, 4, lambda: (update_ema(ours, model, tc), reference.update_parameters(model)))
    for (name, a), b in zip(ours.module.state_dict().items(), reference.module.state_dict().values(), strict=True):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, msg=name)
    assert make_ema(model, TrainConfig()) is None


# --- flip test-time augmentation ----------------------------------------------------------------


def test_tta_flip_on_a_mirror_symmetric_model_keeps_its_predictions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3)).eval()  # pooling: flip-invariant
    images = torch.randint(0, 256, (10, 2, 6, 6), dtype=torch.uint8)
    plain = predict_logits(model, images, 4, amp=False)
    tta = predict_logits(model, images, 4, amp=False, tta_flip=True)
    assert torch.equal(plain.argmax(1), tta.argmax(1))
    torch.testing.assert_close(tta, plain.log_softmax(1))
    torch.testing.assert_close(tta.exp().sum(1), torch.ones(10))


def test_tta_flip_is_the_log_of_the_mean_softmax_over_image_and_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1 * 5 * 7, 4)).eval()  # sees left from right
    images = torch.randint(0, 256, (9, 1, 5, 7), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():
        expected = torch.log((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2)
    got = predict_logits(model, images, 4, amp=False, tta_flip=True)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, predict_logits(model, images, 4, amp=False).log_softmax(1))
    assert predict_logits(model, images[:0], 4, tta_flip=True).shape == (0, 0)
    assert math.isfinite(float(F.cross_entropy(got, torch.zeros(9, dtype=torch.long))))


# --- the whole recipe in fit --------------------------------------------------------------------


def test_fit_with_the_whole_recipe_writes_ema_checkpoints_and_resumes(in_tmp):
    cfg = load_experiment(EXP, TINY + RECIPE + ["train.epochs=2"])
    first = fit(cfg)
    run = in_tmp / first["run_dir"]
    last, best = load_checkpoint(run / "last.pt"), load_checkpoint(run / "best.pt")  # weights_only=True
    steps = int(last["ema"]["n_averaged"])
    assert steps >= 2 and steps % 2 == 0  # one update per optimiser step, 2 epochs
    assert set(last["model_raw"]) == set(last["model"])
    assert any(not torch.equal(last["model_raw"][k], v) for k, v in last["model"].items() if v.is_floating_point())
    assert "model_raw" not in best and "ema" not in best and "optimizer" not in best
    model, cfg2, _, _ = model_from_checkpoint(run / "best.pt")  # evaluate/explain load the EMA weights
    assert cfg2.train.tta_flip and cfg2.train.ema_decay == 0.9
    if best["epoch"] == 2:
        assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])

    # resuming restores the raw weights and the EMA exactly
    net = copy.deepcopy(model).train()
    net.load_state_dict(last["model_raw"])
    ema = make_ema(net, cfg.train)
    restore_ema(ema, last)
    assert int(ema.n_averaged) == steps
    assert all(torch.equal(v, last["model"][k]) for k, v in ema.module.state_dict().items())

    cfg.train.epochs = 3
    resumed = fit(cfg, resume_from=run / "last.pt")
    log = [json.loads(line) for line in open(in_tmp / resumed["run_dir"] / "train_log.jsonl")]
    assert [r["epoch"] for r in log] == [3] and resumed["epochs_run"] == 1
    assert log[0]["lr"] == pytest.approx(cfg.train.lr * 1e-4)  # one-cycle ends at lr / 1e4
    assert int(load_checkpoint(in_tmp / resumed["run_dir"] / "last.pt")["ema"]["n_averaged"]) == steps * 3 // 2
    summary = evaluate_run(run, in_tmp / "report")  # best.pt: the EMA weights, scored with the run's tta_flip
    assert summary["n"] > 0 and 0 <= summary["accuracy"] <= 1
