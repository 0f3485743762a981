"""The optional parts of the training recipe used by :func:`xai_lab.train.fit`: batch mixing and a weight EMA.

Mixing (``train.mixup``, ``train.cutmix``, ``train.mix_prob``) works on the augmented on-device
batch as a whole: image ``i`` is mixed with image ``i - 1`` of the same batch (the batch rolled
by one; batches are random draws, so these are random pairs), with one mixing weight ``lam``
per batch:

* mixup (Zhang et al. 2018, arXiv:1710.09412): ``lam * x + (1 - lam) * x_rolled`` with
  ``lam ~ Beta(mixup, mixup)``;
* CutMix (Yun et al. 2019, arXiv:1905.04899): one box of area about ``1 - lam``
  (``lam ~ Beta(cutmix, cutmix)``) is pasted from ``x_rolled``; ``lam`` is then recomputed
  from the box's true area after clipping to the image.

When both are on, each mixed batch takes one of the two with equal probability. The loss is
``lam * CE(y) + (1 - lam) * CE(y_rolled)`` (:func:`mixed_cross_entropy`), which works for class
indices and for label distributions, with class weights and label smoothing.

Every draw is made on the host from a numpy Generator seeded from the training
``torch.Generator``'s state (:func:`mix_rng`): repeatable with ``run.seed``, and no value is read
back from the device.

The EMA (``train.ema_decay``) is a :class:`torch.optim.swa_utils.AveragedModel` with
``use_buffers=True`` (BatchNorm statistics are averaged too), updated after every optimiser step
by torch's EMA rule (:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`)::

    ema = decay * ema + (1 - decay) * weights          (the first update copies the weights)

With ``train.ema_warmup`` the decay at update ``n`` (0-based, counted by ``n_averaged``) is
``min(ema_decay, (1 + n) / (10 + n))`` (the ``num_updates`` rule of TensorFlow's
ExponentialMovingAverage), so a short run is not dominated by the initial weights. The EMA
averages over about ``1 / (1 - ema_decay)`` steps: pick ``ema_decay`` so that this is an epoch or
a few (0.999 is 1,000 steps: about 4 epochs of FER2013 at batch size 128; 0.99 suits small sets).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from xai_lab.config import TrainConfig

# Checkpoint keys written beside ``model`` (the EMA's weights) when the EMA is on.
EMA_KEYS = ("model_raw", "ema")


# ---------------------------------------------------------------------------------------------
# Mixup and CutMix.
# ---------------------------------------------------------------------------------------------


def mixing_on(tc: TrainConfig) -> bool:
    """Whether any batch can be mixed."""
    return (tc.mixup > 0 or tc.cutmix > 0) and tc.mix_prob > 0


def mix_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy Generator seeded from ``generator``'s current state (host-side, even on CUDA: no sync).

    ``fit`` calls it once per epoch, after the epoch's order was drawn from ``generator``, so
    each epoch (and a resumed run, which reseeds ``generator``) mixes differently but repeatably.
    """
    return np.random.default_rng(generator.get_state().numpy())


def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """CutMix's box ``(y0, y1, x0, x1)``: sides ``sqrt(1 - lam)`` of the image's, centred uniformly, clipped."""
    r = np.sqrt(1.0 - lam)
    h, w = int(height * r), int(width * r)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    return max(cy - h // 2, 0), min(cy + h // 2, height), max(cx - w // 2, 0), min(cx + w // 2, width)


def mix_batch(x: torch.Tensor, tc: TrainConfig, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Mix the float batch ``x`` [B, C, H, W] with itself rolled by one (mixup or CutMix), per ``tc``.

    Returns:
        ``(x, lam)``: the batch (mixed in place for CutMix) and the weight of each image's own
        target; the mixed target is ``lam * y + (1 - lam) * y.roll(1, 0)``. ``lam == 1.0``: not mixed.
    """
    if not mixing_on(tc) or rng.random() >= tc.mix_prob:
        return x, 1.0
    use_cutmix = tc.cutmix > 0 and (tc.mixup <= 0 or rng.random() < 0.5)
    alpha = tc.cutmix if use_cutmix else tc.mixup
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return torch.lerp(x.roll(1, 0), x, lam), lam
    height, width = x.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(lam, height, width, rng)
    x[..., y0:y1, x0:x1] = x.roll(1, 0)[..., y0:y1, x0:x1]
    return x, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mixed_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lam: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``lam * CE(targets) + (1 - lam) * CE(targets rolled by one)``; plain cross-entropy when ``lam == 1``.

    ``targets``: class indices [B] or label distributions [B, K] (FER+ probabilities).
    """
    loss = F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    if lam >= 1.0:
        return loss
    other = F.cross_entropy(logits, targets.roll(1, 0), weight=weight, label_smoothing=label_smoothing)
    return lam * loss + (1.0 - lam) * other


# ---------------------------------------------------------------------------------------------
# The weight EMA.
# ---------------------------------------------------------------------------------------------


def make_ema(model: torch.nn.Module, tc: TrainConfig) -> AveragedModel | None:
    """An EMA copy of ``model`` (on its device) when ``train.ema_decay`` is on, else None.

    ``n_averaged`` stays on the CPU (no ``device`` given): :func:`update_ema` reads it every step.
    """
    if tc.ema_decay <= 0:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: AveragedModel, model: torch.nn.Module, tc: TrainConfig) -> None:
    """One EMA update from ``model``'s parameters and buffers: ``ema.update_parameters(model)``'s rule.

    Not ``update_parameters`` itself: it reads ``n_averaged`` with ``bool()`` and copies it to the
    device on every call, a host sync per training step on CUDA (pytorch/pytorch#175085), and its
    decay is fixed. The averaging is the same :func:`get_ema_multi_avg_fn`; integer buffers
    (BatchNorm's ``num_batches_tracked``) are copied rather than averaged.
    """
    n = int(ema.n_averaged)  # on the CPU
    averaged = [*ema.module.parameters(), *ema.module.buffers()]
    current = [t.detach() for t in (*model.parameters(), *model.buffers())]
    floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
    if n == 0 or not floats:
        for a, c in zip(averaged, current, strict=True):
            a.copy_(c)
    else:
        decay = min(tc.ema_decay, (1 + n) / (10 + n)) if tc.ema_warmup else tc.ema_decay
        get_ema_multi_avg_fn(decay)([a for a, _ in floats], [c for _, c in floats], n)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)
    ema.n_averaged += 1


def ema_checkpoint(ema: AveragedModel | None, model: torch.nn.Module) -> dict:
    """What ``last.pt`` holds beside ``model`` (the EMA weights) when the EMA is on: the raw weights and the count."""
    if ema is None:
        return {}
    return {"model_raw": model.state_dict(), "ema": {"n_averaged": ema.n_averaged.detach().clone()}}


def restore_ema(ema: AveragedModel | None, state: dict) -> None:
    """Continue the EMA of a checkpoint written with one; else it restarts from the resumed weights."""
    if ema is None or not all(k in state for k in EMA_KEYS):
        return
    ema.module.load_state_dict(state["model"])
    ema.n_averaged.fill_(int(state["ema"]["n_averaged"]))
