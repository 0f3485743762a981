"""Checkpoints and weight files are data, not code: every ``.pt``/``.pth`` xai-lab reads goes through
:func:`load_weights`, which unpickles tensors and plain values only (``torch.load(weights_only=True)``).

A file that needs more (a pickled class, a function call: a pickle can run code when it is loaded) is refused
with one line, and nothing in it runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from xai_lab.errors import UserError


def load_weights(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; any failure is a UserError naming the file.

    Args:
        path: the file.
        what: how the message names it ("checkpoint", "pretrained weights").
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt, foreign or unsafe file, whatever the unpickler says
        text = str(e)
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if unsafe:  # the pickle names a function or class to call: code, not data
            raise UserError(f"refusing {what} {path}: it holds more than tensors and plain values (its pickle "
                            f"calls {unsafe.group(1)}); nothing in it was run") from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
        why = detail.group(1).strip() if detail else (text.splitlines()[0] if text else type(e).__name__)
        raise UserError(f"cannot read {what} {path}: {why}") from None
