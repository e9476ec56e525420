"""Real damaged generations: a random direction added to one block's update at high strength.

This is how interventions damage images (`repro.features.causality.painting_edit` adds
`s * mean_f * W_dec[:, f]`, a fixed direction, at strength s): here the direction is a random
unit vector and the scale is the block's mean update norm per position, so `s` means "s times
the norm the block normally writes". The oracle's `damaged` head trains on such images (with
the unedited generations as not damaged) and `benchmarks/investigations/oracle_damage.py` measures on them.

    scale = update_scale(pipe, prompts, seeds, sampling, PAPER_BLOCKS)   # {block: mean |update|}
    images = random_direction_images(pipe, prompts, seeds, sampling, "mid.0", [100.0] * n, scale["mid.0"], seed=0)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from repro.errors import ReproError
from repro.generate import Sampling


def update_scale(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
                 blocks: Sequence[str]) -> dict[str, float]:
    """Mean L2 norm over channels of each block's update, over positions, steps and images:
    {block: float} (the unit that `random_direction_images` strengths are in)."""
    from repro.generate import generate
    from repro.hooks import capture_updates

    with capture_updates(pipe.unet, blocks, cfg=sampling.cfg, device="cpu", dtype=torch.float32) as cap:
        generate(pipe, list(prompts), list(seeds), sampling)
    return {b: float(cap[b].flatten(0, -4).norm(dim=-3).mean()) for b in blocks}  # updates [..., C, H, W]


def random_directions(n: int, channels: int, seed: int) -> torch.Tensor:
    """n random unit vectors [n, channels] (isotropic: normalised Gaussians), seeded."""
    d = torch.randn(n, channels, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=1, keepdim=True)


def random_direction_images(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling, block: str,
                            strengths: Sequence[float], scale: float, seed: int = 0,
                            batch_size: int = 16) -> np.ndarray:
    """uint8 images [N, H, W, 3]: image i generated with `strengths[i] * scale * u_i` added to
    `block`'s update at every position and step, u_i a random unit direction (seed `seed`, one per image)."""
    from repro.blocks import get_block
    from repro.generate import generate
    from repro.hooks import Add, intervene

    n = len(prompts)
    if not len(seeds) == len(strengths) == n:
        raise ReproError(f"need one seed and one strength per prompt: {n} prompts, {len(seeds)} seeds, "
                         f"{len(strengths)} strengths")
    proj = get_block(pipe.unet, block).proj_out
    channels = getattr(proj, "out_features", None) or proj.out_channels
    dirs = random_directions(n, channels, seed) * torch.as_tensor(strengths, dtype=torch.float32)[:, None] * scale
    if sampling.cfg:  # the Add below would see the doubled [uncond; cond] batch
        raise ReproError("random_direction_images supports unguided sampling only (guidance <= 1)")
    out = []
    for a in range(0, n, batch_size):
        d = dirs[a : a + batch_size, :, None, None]  # [B, C, 1, 1]: one direction per image of the batch
        with intervene(pipe.unet, {block: Add(direction=d, strength=1.0)}):
            out.append(generate(pipe, list(prompts[a : a + batch_size]), list(seeds[a : a + batch_size]), sampling))
    return np.concatenate(out)
