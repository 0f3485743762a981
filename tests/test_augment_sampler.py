import pytest
import torch

from xai_lab.config import AugmentConfig
from xai_lab.data.augment import augment_batch
from xai_lab.data.sampler import epoch_indices, sample_weights


def _batch(n=16, c=1, size=48):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, size, size, generator=g)


def test_strength_zero_is_the_identity():
    x = _batch()
    out = augment_batch(x, AugmentConfig(strength=0.0), torch.Generator().manual_seed(1))
    assert torch.equal(out, x)


@pytest.mark.parametrize("channels", [1, 3])
def test_full_strength_keeps_shape_dtype_range_and_changes_images(channels):
    x = _batch(c=channels)
    out = augment_batch(x, AugmentConfig(strength=1.0), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).mean(1)
    assert (changed > 1e-3).all()


def test_augmentation_is_seeded():
    x = _batch()
    a = augment_batch(x, AugmentConfig(strength=0.7), torch.Generator().manual_seed(5))
    b = augment_batch(x, AugmentConfig(strength=0.7), torch.Generator().manual_seed(5))
    c = augment_batch(x, AugmentConfig(strength=0.7), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_only_mirrors_the_image():
    x = _batch(n=64)
    cfg = AugmentConfig(strength=1.0, rotation_deg=0, translate=0, scale=0, flip=1.0, brightness=0, contrast=0,
                        erase_prob=0)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_strength_scales_the_change():
    ramp = torch.linspace(0, 1, 48)
    x = (0.5 * ramp.view(1, 48) + 0.5 * ramp.view(48, 1)).expand(256, 1, 48, 48).contiguous()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    weak = (augment_batch(x, AugmentConfig(strength=0.2), g()) - x).abs().mean()
    strong = (augment_batch(x, AugmentConfig(strength=1.0), g()) - x).abs().mean()
    assert strong > 1.5 * weak > 0


def _class_shares(labels, mode, k=3, n_draws=20):
    g = torch.Generator().manual_seed(0)
    w = sample_weights(labels, mode, k)
    drawn = torch.cat([labels[epoch_indices(w, len(labels), g)] for _ in range(n_draws)])
    return torch.bincount(drawn, minlength=k).float() / len(drawn)


def test_class_balanced_sampler_balances_classes():
    labels = torch.tensor([0] * 800 + [1] * 150 + [2] * 50)
    assert torch.allclose(_class_shares(labels, "none"), torch.tensor([0.8, 0.15, 0.05]))
    assert torch.allclose(_class_shares(labels, "class_balanced"), torch.full((3,), 1 / 3), atol=0.02)
    sqrt = torch.tensor([800, 150, 50]).float().sqrt()
    assert torch.allclose(_class_shares(labels, "sqrt_balanced"), sqrt / sqrt.sum(), atol=0.02)


def test_none_sampler_visits_each_image_once():
    g = torch.Generator().manual_seed(0)
    order = epoch_indices(None, 100, g)
    assert sorted(order.tolist()) == list(range(100))
