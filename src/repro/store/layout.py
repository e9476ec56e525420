"""File names, dtypes, the manifest and the tensor layout of an activation store (see `repro.store`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from repro.errors import ReproError, choices_hint

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
LOCK = ".lock"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LATENTS = "latents"
SEEDS = "seeds"
IMAGES = "images"
HALVES_CFG = ("uncond", "cond")  # diffusers' order in the doubled batch
HALVES_PLAIN = ("all",)

SETTINGS_KEYS = (
    "format_version", "model", "blocks", "steps", "guidance", "resolution", "dtype",
    "compute_dtype", "shard_size", "batch_size", "seed", "prompt_kind", "store_images",
)
"""Settings an append must match (they change the tensors or what index i means)."""


def store_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ReproError(f"store dtype {name!r} is not known: use {choices_hint(DTYPES)}")
    return DTYPES[name]


def shard_file(index: int) -> str:
    """Path of shard `index` relative to the store folder."""
    return f"{SHARD_DIR}/shard-{index:06d}.safetensors"


def shard_range(index: int, shard_size: int, n_prompts: int) -> tuple[int, int]:
    """Prompts [start, stop) of shard `index`: fixed by global index, so resumes match."""
    start = index * shard_size
    return start, min(start + shard_size, n_prompts)


def sha256_file(path: Path, chunk: int = 4 << 20) -> str:
    """sha256 hex of a file, read in pieces into one reused buffer (no allocation per piece;
    each piece hashed while in the cache; both release the GIL, so threads hash in parallel)."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(chunk))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise ReproError(
            f"{folder} is not an activation store ({MANIFEST} is missing): run `repro collect --out {folder}` "
            "first (a collection killed before its first shard leaves no store)"
        )
    if not path.is_file():
        raise ReproError(f"{path} is not a file: the store's manifest must be a JSON file; copy the store again")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ReproError(f"cannot read {path} ({type(exc).__name__}: {str(exc)[:80]}): the store's manifest is damaged; "
                         "copy the store again") from None
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    version = settings.get("format_version") if isinstance(settings, dict) else None
    if version != FORMAT_VERSION:
        raise ReproError(f"{folder} is an activation store of format {version!r}, this code reads {FORMAT_VERSION}")
    from repro.store.checks import check_manifest  # every field, before anything uses it

    return check_manifest(manifest, Path(folder))


def to_layout(steps_updates: torch.Tensor, cfg: bool) -> torch.Tensor:
    """Captured updates [steps, B_total, C, H, W] -> stored layout [B, steps, halves, H*W, C].

    Under guidance B_total = 2B, unconditional half first; halves = 2 (uncond, cond).
    """
    S, BT, C, H, W = steps_updates.shape
    halves = 2 if cfg else 1
    x = steps_updates.reshape(S, halves, BT // halves, C, H * W)  # [S, halves, B, C, HW]
    return x.permute(2, 0, 1, 4, 3).contiguous()  # [B, S, halves, HW, C]


def select_tokens(t: torch.Tensor, step: int | None, half: int | None) -> torch.Tensor:
    """Stored [n, steps, halves, HW, C] -> token rows [N, C], optionally one step / one half."""
    if step is not None:
        t = t[:, step : step + 1]
    if half is not None:
        t = t[:, :, half : half + 1]
    return t.reshape(-1, t.shape[-1])


def half_index(halves: list[str] | tuple[str, ...], half: str | None) -> int | None:
    """Index of `half` in a store's halves; None keeps all. "cond"/"uncond" need guidance."""
    if half is None or (half == "all" and len(halves) == 1):
        return None
    if half not in halves:
        raise ReproError(f"half {half!r} is not in this store: its halves are {choices_hint(halves)} "
                         "(cond/uncond exist only when guidance was on)")
    return list(halves).index(half)


def step_index(steps: int, step: int | None) -> int | None:
    if step is None:
        return None
    if not -steps <= step < steps:
        raise ReproError(f"step {step} is out of range: this store holds steps 0..{steps - 1}")
    return step % steps
