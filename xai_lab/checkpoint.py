"""Checkpoints: one dict of tensors and plain values, loaded with ``weights_only=True``.

Keys: ``model`` (state dict), ``optimizer``, ``scheduler``, ``epoch`` (last finished, 1-based),
``config`` (the resolved config as a dict), ``class_names``, ``metrics`` (that epoch's),
``best_val_macro_f1``, ``best_epoch``.

A run folder's checkpoints are ``last.pt`` (all of the above, to resume) and ``best.pt`` (the
best epoch's weights, no optimizer state); :class:`CheckpointPolicy` says after which epochs
:func:`xai_lab.train.fit` writes them, and :class:`Saved` tells its callback what it wrote.
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
from xai_lab.safe_load import load_weights


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    atomic_write_with(path, lambda p: torch.save(state, p))


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """After which epochs :func:`xai_lab.train.fit` writes the run folder's checkpoints, and how full.

    A checkpoint writes ``last.pt`` and, when a better epoch came since the last checkpoint,
    ``best.pt``. ``fit`` always writes one after its last epoch (``train.epochs``), after the epoch
    it stops at on ``train.early_stopping_patience``, and after an epoch whose callback stopped
    the run (when none was written that epoch). Besides, the policy asks for one after every
    ``every``-th epoch (0: none) and after each epoch in ``epochs``.

    ``slim_from``: the checkpoint after this epoch or a later one, and the one at a stop on patience
    before ``train.epochs``, is the run's final one, which nothing resumes. It is slim: ``best.pt``
    only, and an older ``last.pt`` (most of whose size is the optimizer state) is removed, so the
    run folder then holds ``config.yaml``, ``best.pt`` and ``train_log.jsonl``. None: every
    checkpoint is full (a stopped single run resumes from its ``last.pt``).

    A single run's policy is :meth:`for_run`: every ``train.checkpoint_every`` epochs, all full.
    """

    every: int = 1
    epochs: frozenset[int] = frozenset()
    slim_from: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", frozenset(int(e) for e in self.epochs))

    @classmethod
    def for_run(cls, train: config_mod.TrainConfig) -> CheckpointPolicy:
        """A single run's: ``last.pt`` every ``train.checkpoint_every`` epochs (and the last), never slim."""
        return cls(every=train.checkpoint_every)

    def wants(self, epoch: int) -> bool:
        """Whether the policy asks for a checkpoint after ``epoch`` (``fit`` adds its last and stopping epochs)."""
        return epoch in self.epochs or (self.every > 0 and epoch % self.every == 0)

    def slim(self, epoch: int, early_stopped: bool) -> bool:
        """Whether the checkpoint after ``epoch`` is the slim final one (``early_stopped``: fit stops on patience)."""
        return self.slim_from is not None and (early_stopped or epoch >= self.slim_from)


@dataclasses.dataclass(frozen=True)
class Saved:
    """A checkpoint ``fit`` wrote after one epoch, as its callback gets it.

    The run folder then holds a whole checkpoint of the run: ``config.yaml``, ``train_log.jsonl``
    (up to ``epoch``), ``best.pt`` and, unless ``slim`` (:class:`CheckpointPolicy`), ``last.pt``.
    ``written`` names the files written this time: ``last.pt`` (unless slim) and ``best.pt`` (when
    a better epoch came since the last checkpoint).
    """

    run_dir: Path
    epoch: int
    written: tuple[str, ...]
    slim: bool = False

    @property
    def last_pt(self) -> Path | None:
        """``last.pt``, to resume from; None in a slim checkpoint."""
        return None if self.slim else self.run_dir / "last.pt"


def save_run_checkpoint(
    run_dir: Path, last: dict[str, Any], best: dict[str, Any] | None = None, *, slim: bool = False
) -> tuple[str, ...]:
    """Write a run folder's checkpoint, each file atomically: ``last.pt`` (none when ``slim``; an older one
    is then removed after ``best.pt`` is written), then ``best.pt`` when ``best`` is given.

    Returns:
        The names of the files written.
    """
    written = []
    if not slim:
        save_checkpoint(run_dir / "last.pt", last)
        written.append("last.pt")
    if best is not None:
        save_checkpoint(run_dir / "best.pt", best)
        written.append("best.pt")
    if slim:
        (run_dir / "last.pt").unlink(missing_ok=True)
    return tuple(written)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU, tensors and plain values only (:func:`xai_lab.safe_load.load_weights`); an
    unreadable or unsafe file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    state = load_weights(path)
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
