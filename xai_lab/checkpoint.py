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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best.pt``)."""
    path = Path(path)
    if path.is_dir():
        from xai_lab.runs import resolve_run_dir

        return resolve_run_dir(path) / "best.pt"
    return path


def init_from_checkpoint(model: FaceNet, path: str | Path, class_names: list[str]) -> dict[str, Any]:
    """Start ``model`` from another run's weights (``model.init_from``): fine-tuning, e.g. FER+ -> CK+.

    Every weight is copied when the checkpoint was trained on the same classes in the same
    order; otherwise all but the head (``backbone.fc``) are copied and the new head keeps its
    fresh initialisation.

    Returns:
        ``{"path", "head": "kept" | "replaced", "source_classes"}`` for the run's summary.

    Raises:
        UserError: the checkpoint is unreadable or holds another architecture (depth, stem, channels).
    """
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    source_classes = list(state.get("class_names", []))
    weights = dict(state["model"])
    same = source_classes == list(class_names)
    if not same:
        weights = {k: v for k, v in weights.items() if not k.startswith("backbone.fc.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        lines = str(e).splitlines()
        detail = next((ln.strip() for ln in lines if "size mismatch" in ln), lines[0])
        raise UserError(
            f"model.init_from={path}: its weights do not fit this model ({detail}); "
            "depth, stem and data.channels must match the run it came from"
        ) from None
    wrong = [k for k in missing if not k.startswith("backbone.fc.")] + list(unexpected)
    if wrong:
        raise UserError(
            f"model.init_from={path}: its weights do not fit this model (e.g. {wrong[0]}); "
            "depth, stem and data.channels must match the run it came from"
        )
    return {"path": str(path), "head": "kept" if same else "replaced", "source_classes": source_classes}
