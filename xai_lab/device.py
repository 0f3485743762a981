"""The compute device and the mixed-precision context used by training, evaluation and explanation."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from xai_lab.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key 'run.device' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device is {name!r} but no CUDA GPU is available (use run.device=cpu or auto)")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; nothing on the CPU (where bf16 convolutions are slower than fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array (possibly read-only, e.g. from Ray's object store) as a tensor on ``device``."""
    return torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device)


def release_device_memory(device: torch.device) -> None:
    """Collect unreachable tensors and return PyTorch's cached CUDA blocks to the driver.

    Call it once the tensors of a run are dropped: a process that trains several runs (a reused
    Ray actor, trials packed on one GPU) otherwise keeps the previous run's peak memory reserved.
    """
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()
