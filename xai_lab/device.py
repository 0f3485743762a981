"""The compute device and the mixed-precision context used by training, evaluation and explanation."""

from __future__ import annotations

import contextlib
import functools

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


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16, e.g. Intel Sapphire Rapids and newer).

    On such a CPU oneDNN runs bf16 convolutions several times faster than fp32 (ResNet-20 training at
    48 px: 2.5x with channels_last, ``benchmarks/throughput.py``); without those units bf16 is emulated
    and slower than fp32, so autocast stays off there.
    """
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check() for check in checks if check is not None)


def bf16_on(device: torch.device, enabled: bool = True) -> bool:
    """Whether ``train.amp`` (``enabled``) means bf16 autocast on ``device``: on CUDA, and on a CPU with bf16 units."""
    return enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast where :func:`bf16_on` says so (CUDA; a CPU with AMX or AVX512-BF16), else a no-op."""
    if bf16_on(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
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
