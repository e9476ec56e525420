"""Device and dtype are settings with sensible defaults, never constants."""

from __future__ import annotations

import torch

from repro.errors import ReproError, choices_hint

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """`"auto"` picks CUDA, then MPS, then CPU; anything else is passed to `torch.device`."""
    if isinstance(preference, torch.device):
        return preference
    if preference in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError) as exc:
        raise ReproError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ReproError(f"device {preference!r} was asked for but CUDA is not available here; use --device auto or cpu")
    return device


def pick_dtype(preference: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`"auto"`: float16 on CUDA/MPS (the paper's inference dtype), float32 on CPU."""
    if isinstance(preference, torch.dtype):
        return preference
    if preference in (None, "auto"):
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if preference not in DTYPES:
        raise ReproError(f"unknown dtype {preference!r}: use auto or {choices_hint(DTYPES)}")
    return DTYPES[preference]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
