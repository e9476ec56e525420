"""Held-out updates for evaluation, captured directly (no store: evaluation sets are small)."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from repro.generate import Sampling, generate
from repro.hooks import capture_updates


def capture_eval_updates(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampling: Sampling,
    blocks: Sequence[str],
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Updates of `blocks` at every step: `{block: {half: [steps, N, H, W, C]}}` on the CPU.

    `half` is "all" without guidance, else "cond" and "uncond". `dtype` None keeps the
    UNet's own (fp16 on a GPU: exact, and half the host memory of fp32, which matters at
    SDXL base's 1024 px: 25 steps x 2 halves x 1024 positions x 1280 channels per block
    and image).
    """
    dtype = dtype or pipe.unet.dtype
    halves = ("cond", "uncond") if sampling.cfg else ("all",)
    parts: dict[str, dict[str, list[torch.Tensor]]] = {b: {h: [] for h in halves} for b in blocks}
    bar = tqdm(range(0, len(prompts), batch_size), desc="capture", unit="batch", leave=False)
    for start in bar:
        sl = slice(start, start + batch_size)
        with capture_updates(pipe.unet, blocks, cfg=sampling.cfg) as cap:
            generate(pipe, prompts[sl], seeds[sl], sampling, output="latent")
        for b in blocks:
            for h in halves:
                u = cap.updates(b, h if sampling.cfg else None)  # [steps, B, C, H, W]
                parts[b][h].append(u.permute(0, 1, 3, 4, 2).to("cpu", dtype))
    return {b: {h: torch.cat(v, dim=1) for h, v in hs.items()} for b, hs in parts.items()}
