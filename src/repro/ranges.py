"""Valid ranges of the numbers a user gives (command line, profile, chapter parameter), in one place.

Each check raises one `ReproError` naming the setting, the value and the valid range, so the
command line, the notebooks and the library refuse a number the same way, before any work.
Upper caps sit where a larger value could only overflow or exhaust memory, never where it
is merely slow; each says why beside it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from repro.errors import ReproError

SEED_MAX = 2**63 - 1
"""Seeds are stored as int64 (a store's `seeds` tensor, numpy) and torch's manual_seed overflows past
2**64 - 1: every seed a run derives must fit a signed 64-bit integer."""
RESOLUTION_STEP = 8
"""Image sides are multiples of 8 pixels: the VAE factor of SDXL (8) and of the toy models (4) divide it."""
MIN_RESOLUTION = 32
"""Below 32 px SDXL's innermost UNet map (image / 8 / 4) is empty; the toy's VAE (4x) crashes at 8 px."""
MAX_RESOLUTION = 4096
"""Twice SDXL's largest trained size; attention maps beyond it exceed any GPU's memory."""
MAX_DENOISING_STEPS = 1000
"""The schedulers' training timesteps: more inference steps than that are refused by diffusers."""
MAX_PROMPTS = 100_000_000
"""Prompts of one collection (the paper's: 1.5M); the store's shard list is built in memory."""
MAX_SHARDS = 1_000_000
"""Shards of one store (n_prompts / shard_size): each is a file and a manifest record."""
MAX_SHARD_SIZE = 65_536
"""Images a shard holds in host memory while it fills (SDXL's four blocks: 2.7 GB per 1024)."""
MAX_IMAGE_BATCH = 4096
"""Images per generation call (a 512 px SDXL batch of 4096 needs about 1 TB of activations)."""
MAX_TOKEN_BATCH = 2**22
"""Tokens per SAE training batch (the paper's: 4096); 2**22 x 1280 channels is 21 GB in fp32."""
MAX_EXPANSION = 256
"""SAE features per input channel (the paper's: 4)."""
MAX_SAE_MATRIX = 2**31
"""d_model x n_features of one SAE: one weight matrix of 8 GiB in fp32 (four such with Adam)."""
MAX_TRAIN_STEPS = 10**9
"""Optimisation steps of one run; step counters are int64 tensors and names of 9 digits."""
MAX_THREADS = 1024
"""Threads or writer pools of one process."""


def _span(low: Any, high: Any) -> str:
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"in {low}..{high}"


def check_int(name: str, value: Any, low: int | None = 1, high: int | None = None, *, why: str = "") -> int:
    """`value` if it is a whole number in `low..high` (None: unbounded), else one ReproError
    "NAME must be in LOW..HIGH, got VALUE" (`why` appended after a colon)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ReproError(f"{name} must be a whole number {_span(low, high)}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ReproError(f"{name} must be {_span(low, high)}, got {value}" + (f": {why}" if why else ""))
    return int(value)


def check_float(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, why: str = "") -> float:
    """`value` if it is a finite number within the bounds (open ends excluded), else one ReproError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ReproError(f"{name} must be a finite number, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "" if low is None else ("(" if low_open else "[") + f"{low}, "
        right = "" if high is None else f"{high}" + (")" if high_open else "]")
        rng = f"in {left}{right}" if low is not None and high is not None else (
            f"{'>' if low_open else '>='} {low}" if high is None else f"{'<' if high_open else '<='} {high}")
        raise ReproError(f"{name} must be {rng}, got {value}" + (f": {why}" if why else ""))
    return float(value)


def check_seed(name: str, seed: Any, count: int = 1) -> int:
    """A seed whose run uses seeds `seed .. seed + count - 1`: all must fit torch's 0..2**63-1."""
    top = SEED_MAX - max(int(count), 1) + 1
    why = "seeds are signed 64-bit integers, 0..2**63-1" + (f" and this run also uses seed + 1 .. seed + {count - 1}" if count > 1 else "")
    return check_int(name, seed, 0, top, why=why)


def check_resolution(name: str, value: Any) -> int | None:
    """An image side in pixels (None: the model's own): a multiple of 8 in 32..4096."""
    if value is None:
        return None
    span = f"a multiple of {RESOLUTION_STEP} pixels in {MIN_RESOLUTION}..{MAX_RESOLUTION}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ReproError(f"{name} must be {span}, got {value!r}")
    if value % RESOLUTION_STEP or not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise ReproError(f"{name} must be {span}, got {value}")
    return int(value)


__all__ = ["MAX_DENOISING_STEPS", "MAX_EXPANSION", "MAX_IMAGE_BATCH", "MAX_PROMPTS", "MAX_RESOLUTION", "MAX_SAE_MATRIX",
           "MAX_SHARDS", "MAX_SHARD_SIZE", "MAX_THREADS", "MAX_TOKEN_BATCH", "MAX_TRAIN_STEPS", "MIN_RESOLUTION",
           "SEED_MAX", "check_float", "check_int", "check_resolution", "check_seed"]
