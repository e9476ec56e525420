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
    parts: dict[str, dict[str, list[torch.Tensor]]] = {b: {} for b in blocks}
    for _, b, h, u in _batch_updates(pipe, prompts, seeds, sampling, blocks, batch_size):
        parts[b].setdefault(h, []).append(u.permute(0, 1, 3, 4, 2).to("cpu", dtype))
    return {b: {h: torch.cat(v, dim=1) for h, v in hs.items()} for b, hs in parts.items()}


def stream_eval_updates(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
                        blocks: Sequence[str], batch_size: int = 16):
    """`capture_eval_updates` one batch of images at a time, left where the UNet made them:
    yields (block, half, updates [steps, B, H, W, C]) in the UNet's dtype, so that a caller
    keeps only what it computes from them (`repro.evaluate.transfer.StepStream`)."""
    for _, b, h, u in _batch_updates(pipe, prompts, seeds, sampling, blocks, batch_size):
        yield b, h, u.permute(0, 1, 3, 4, 2).to(dtype=pipe.unet.dtype)


def _batch_updates(pipe, prompts, seeds, sampling: Sampling, blocks, batch_size: int):
    """Generate in batches; yield (first image index, block, half, updates [steps, B, C, H, W])."""
    halves = ("cond", "uncond") if sampling.cfg else ("all",)
    for start in tqdm(range(0, len(prompts), batch_size), desc="capture", unit="batch", leave=False):
        sl = slice(start, start + batch_size)
        with capture_updates(pipe.unet, blocks, cfg=sampling.cfg) as cap:
            generate(pipe, prompts[sl], seeds[sl], sampling, output="latent")
        for b in blocks:
            for h in halves:
                yield start, b, h, cap.updates(b, h if sampling.cfg else None)


def capture_token_sample(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampling: Sampling,
    blocks: Sequence[str],
    max_tokens: int,
    batch_size: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, torch.Tensor]]:
    """About `max_tokens` update rows per block and half: `{block: {half: [steps, N, P, C]}}` on the CPU.

    For training data (the control SAEs), not for per-position metrics: each image keeps
    the same P = ceil(max_tokens / (N x steps)) positions at every step, drawn by
    (`seed`, image index); with P >= H x W every position is kept, in order, which is
    exactly `capture_eval_updates`. SDXL base at 1024 px gives 1024 positions per block and
    step: keeping all of them for 96 prompts would take ~50 GB of host memory; `device`
    (default the CPU) keeps the sample there instead, e.g. on the GPU that trains on it.
    """
    per = max(1, -(-int(max_tokens) // (len(prompts) * sampling.steps)))
    # each batch is written into its rows of one preallocated tensor per block and half: a
    # final torch.cat would hold the sample twice (SDXL base: 2 x 50 GB, over an H200's memory)
    out: dict[str, dict[str, torch.Tensor]] = {b: {} for b in blocks}
    for start, b, h, u in _batch_updates(pipe, prompts, seeds, sampling, blocks, batch_size):
        u = u.flatten(3).transpose(2, 3)  # [steps, B, H*W, C]
        if per < u.shape[2]:
            keep = torch.stack([
                torch.randperm(u.shape[2], generator=torch.Generator().manual_seed(seed + start + i))[:per].sort().values
                for i in range(u.shape[1])
            ]).to(u.device)  # [B, P]
            u = u.gather(2, keep[None, :, :, None].expand(u.shape[0], -1, -1, u.shape[3]))
        if h not in out[b]:
            out[b][h] = torch.empty((u.shape[0], len(prompts), *u.shape[2:]), dtype=pipe.unet.dtype, device=device)
        out[b][h][:, start : start + u.shape[1]].copy_(u)
    return out
