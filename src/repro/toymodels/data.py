"""The training set: train-split scenes rendered once, kept on the device as uint8, sampled in batches.

Rendering inside the training loop starves a GPU (TOYWORLD-NOTES), so `ToyData.build`
renders every scene up front (`render_batch`, all cores), draws `captions_per_scene`
captions per scene and tokenizes them once. Grainy scenes also keep a grain-free copy
(the same scene in flat style; grainy renders are exactly flat + grain), which the turbo
stage uses to give 1-step targets grain drawn from the input noise.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from repro.errors import ReproError
from repro.shapes.captions import caption
from repro.shapes.render import GRAIN_BLOCK, GRAIN_SIGMA, render_batch
from repro.shapes.splits import split_scenes
from repro.shapes.world import Scene
from repro.toymodels.config import DataConfig

# CLIP's pre-tokenizer on our captions: runs of letters, and runs of other non-space marks.
_WORDS = re.compile(r"[a-z]+|[^\sa-z]+")


def tokenize_captions(tokenizer, captions: list[str], max_length: int = 77) -> torch.Tensor:
    """int64 ids [N, max_length] exactly as `tokenizer(..., padding="max_length", truncation=True)` gives.

    Fast path: every caption word is one token of our vocabulary, so the ids are a dict
    look-up per word; a caption with an unknown word goes through the tokenizer itself.
    """
    vocab = tokenizer.get_vocab()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = torch.full((len(captions), max_length), pad, dtype=torch.long)
    for i, text in enumerate(captions):
        words = _WORDS.findall(" ".join(text.lower().split()))
        ids = [vocab.get(w + "</w>") for w in words]
        if any(t is None for t in ids):
            ids = tokenizer(text, padding="max_length", max_length=max_length, truncation=True).input_ids
            out[i] = torch.tensor(ids)
            continue
        ids = [bos] + ids[: max_length - 2] + [eos]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def add_grain(flat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """uint8 flat renders [B, 128, 128, 3] + grain from unit noise [B, 4, 32, 32] -> uint8 renders.

    The renderer's grain is N(0, GRAIN_SIGMA) luminance on 2x2-pixel blocks (64x64 values);
    here those 64x64 values are the 4 noise channels pixel-shuffled (4 x 32 x 32 = 64 x 64),
    so the grain is a fixed, local function of the noise the 1-step generator starts from.
    """
    b, h, w, _ = flat.shape
    grain = torch.nn.functional.pixel_shuffle(noise.float(), 2)  # [B, 1, 64, 64]
    if grain.shape[-1] * GRAIN_BLOCK != w:
        raise ReproError(f"noise {tuple(noise.shape)} does not match {w} px renders; grain needs {w // 8}x{w // 8} latents")
    grain = grain.repeat_interleave(GRAIN_BLOCK, -2).repeat_interleave(GRAIN_BLOCK, -1)  # [B, 1, H, W]
    img = flat.float() + GRAIN_SIGMA * grain.permute(0, 2, 3, 1)
    return img.round().clamp(0, 255).to(torch.uint8)


def to_model_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1] (the VAE's input range)."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _cache_paths(cache: Path, cfg: DataConfig) -> tuple[Path, Path]:
    import hashlib
    import importlib

    code = b"".join(Path(importlib.import_module(f"repro.shapes.{m}").__file__).read_bytes() for m in ("render", "world"))
    key = f"scenes{cfg.scenes}-seed{cfg.seed}-{hashlib.sha256(code).hexdigest()[:12]}"  # new renderer, new key
    return cache / f"{key}-images.npy", cache / f"{key}-flat.npy"


def _read_cache(cache: Path | None, cfg: DataConfig):
    if cache is None:
        return None, None
    paths = _cache_paths(Path(cache), cfg)
    if not all(p.exists() for p in paths):
        return None, None
    return (np.load(p) for p in paths)


def _write_cache(cache: Path | None, cfg: DataConfig, images: np.ndarray, flat: np.ndarray) -> None:
    if cache is None:
        return
    Path(cache).mkdir(parents=True, exist_ok=True)
    for path, array in zip(_cache_paths(Path(cache), cfg), (images, flat)):
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)


@dataclass
class ToyData:
    """Rendered training set on one device; `sample(gen, n)` draws a batch of indices."""

    scenes: list[Scene]
    """The N train-split scenes."""
    captions: list[list[str]]
    """[N][K] caption variants."""
    images: torch.Tensor
    """uint8 [N, 128, 128, 3] renders."""
    ids: torch.Tensor
    """int64 [N, K, 77] token ids of the captions."""
    grainy: torch.Tensor
    """bool [N]: scene is in grainy style."""
    flat: torch.Tensor
    """uint8 [N_grainy, 128, 128, 3]: the grainy scenes rendered without grain."""
    flat_index: torch.Tensor
    """int64 [N]: row of `flat` for grainy scenes, -1 elsewhere."""

    @classmethod
    def build(cls, cfg: DataConfig, tokenizer, device: torch.device | str = "cpu",
              cache: Path | None = None) -> "ToyData":
        """Render (or read from `cache`, a folder: the renders of these settings saved by an earlier run)."""
        scenes = split_scenes("train", cfg.scenes, seed=cfg.seed)
        rng = np.random.default_rng([cfg.seed, 1])
        captions = [[caption(s, rng) for _ in range(cfg.captions_per_scene)] for s in scenes]
        grainy = np.array([s.style == "grainy" for s in scenes])
        images, flat = _read_cache(cache, cfg)
        if images is None:
            images = render_batch(scenes, workers=cfg.workers, with_masks=False).images
            flat_scenes = [Scene(s.objects, s.background, "flat") for s, g in zip(scenes, grainy) if g]
            if flat_scenes:
                flat = render_batch(flat_scenes, workers=cfg.workers, with_masks=False).images
            else:
                flat = np.zeros((0, *images.shape[1:]), np.uint8)
            _write_cache(cache, cfg, images, flat)
        flat_index = np.full(len(scenes), -1, np.int64)
        flat_index[grainy] = np.arange(int(grainy.sum()))
        ids = tokenize_captions(tokenizer, [c for cs in captions for c in cs])
        ids = ids.view(len(scenes), cfg.captions_per_scene, -1)
        device = torch.device(device)
        return cls(
            scenes=scenes,
            captions=captions,
            images=torch.from_numpy(np.ascontiguousarray(images)).to(device),
            ids=ids.to(device),
            grainy=torch.from_numpy(grainy).to(device),
            flat=torch.from_numpy(np.ascontiguousarray(flat)).to(device),
            flat_index=torch.from_numpy(flat_index).to(device),
        )

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def sample(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scene indices [n], caption ids [n, 77]) drawn uniformly, one caption variant each."""
        idx = torch.randint(len(self), (n,), generator=gen, device=gen.device)
        k = torch.randint(self.ids.shape[1], (n,), generator=gen, device=gen.device)
        idx, k = idx.to(self.device), k.to(self.device)
        return idx, self.ids[idx, k]
