"""Checkpoints: one dict of tensors and plain values, loaded with ``weights_only=True``.

Keys: ``model`` (state dict), ``optimizer``, ``scheduler``, ``epoch`` (last finished, 1-based),
``config`` (the resolved config as a dict), ``class_names``, ``metrics`` (that epoch's),
``best_val_macro_f1``, ``best_epoch``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from xai_lab import config as config_mod
from xai_lab.atomic import atomic_write_with
from xai_lab.errors import UserError
from xai_lab.models import FaceNet, build_model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    atomic_write_with(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; an unreadable file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, whatever the unpickler says
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {why}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not an xai-lab checkpoint (no model/config inside)")
    return state


def model_from_checkpoint(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild the model of a checkpoint in eval mode.

    Returns:
        ``(model, cfg, class_names, state)``.
    """
    state = load_checkpoint(path)
    cfg = config_mod.from_dict(state["config"])
    class_names = list(state["class_names"])
    # The checkpoint holds every weight: build without loading ImageNet weights.
    model: FaceNet = build_model(dataclasses.replace(cfg.model, pretrained=False), len(class_names), cfg.data.channels)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"{path} does not match its own config: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), cfg, class_names, state
