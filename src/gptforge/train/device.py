"""Device, precision and compile choices, with fallbacks that say what they changed.

* ``device auto``: CUDA, then Apple's MPS, then the CPU.
* ``precision auto``: bf16 autocast on GPUs that support it, fp16 + grad scaler on
  older GPUs, fp32 on CPU/MPS. bf16 autocast works on the CPU too (on CPUs with
  bf16 matrix units it is several times faster). fp16 needs a grad scaler, which
  only CUDA has here, so fp16 elsewhere falls back to bf16 (CPU) or fp32 (MPS).
* ``compile``: off with a warning where it cannot work (MPS; a CPU without a C++
  compiler, which inductor needs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gptforge.errors import ConfigError, GptforgeError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str, local_rank: int = 0, flag: str = "--train.device") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a device that exists here.

    ``flag`` names the option in error messages (``--device`` for generate and eval).
    """
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"{flag.lstrip('-')} {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag.lstrip('-')} is cuda but no CUDA GPU is available; use {flag} cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{flag.lstrip('-')} is mps but MPS is not available; use {flag} cpu (or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{flag.lstrip('-')} {spec!r} is not supported; use auto, cpu, cuda or mps")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision to use on ``device``: ``fp32``, ``bf16`` or ``fp16`` (with a warning if changed)."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        fallback = "bf16" if device.type == "cpu" else "fp32"
        logger.warning("fp16 needs a grad scaler, which %s lacks here; using %s", device.type, fallback)
        return fallback
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bf16; using fp16 with a grad scaler")
        return "fp16"
    if precision == "bf16" and device.type == "mps":
        logger.warning("bf16 autocast on MPS is not reliable in every torch; using fp32")
        return "fp32"
    return precision


def autocast_context(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of contexts for the forward pass: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = DTYPES[precision]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need no scaler."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def compile_supported(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot work here, or None when it can."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if device.type == "mps":
        return "torch.compile does not support MPS training here"
    if device.type == "cpu" and not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "torch.compile on the CPU needs a C++ compiler (none found on PATH)"
    return None


def maybe_compile(model: torch.nn.Module, enabled: bool, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)`` when asked for and possible; the model itself otherwise."""
    if not enabled:
        return model
    reason = compile_supported(device)
    if reason:
        logger.warning("train.compile is on but %s; training without it", reason)
        return model
    return torch.compile(model)


@dataclass
class DevicePlan:
    """The resolved device choices of a run."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16

    @property
    def autocast(self) -> Callable[[], contextlib.AbstractContextManager]:
        return autocast_context(self.device, self.precision)


def plan_device(device_spec: str, precision: str, local_rank: int = 0) -> DevicePlan:
    device = resolve_device(device_spec, local_rank)
    return DevicePlan(device=device, precision=resolve_precision(precision, device))


def enable_tf32(device: torch.device, train_cfg: Any) -> bool:
    """TF32 tensor-core matmuls for the fp32 work on CUDA (the optimizer, fp32 layers under
    autocast), unless the user asked for strict fp32 (``train.precision fp32``) or turned
    ``train.tf32`` off. Returns whether it was turned on. (A process-wide PyTorch setting.)"""
    if device.type != "cuda" or not getattr(train_cfg, "tf32", True) or train_cfg.precision == "fp32":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def mfu_inputs(model_cfg: Any, device: torch.device, precision: str) -> tuple[float, float | None]:
    """The model's FLOPs per token and the device's peak FLOP/s (None where unknown), for MFU."""
    from gptforge.model.accounting import flops_per_token, peak_flops

    fpt = flops_per_token(model_cfg)
    peak = None
    if device.type == "cuda":
        try:
            peak = peak_flops(torch.cuda.get_device_name(device),
                              "fp32" if precision == "fp32" else "bf16")
        except GptforgeError:
            peak = None
    return fpt, peak
