"""Reconstruction in the loop: generate with block updates replaced, compare the images.

The paper replaces a block's update by its SAE reconstruction while generating and
compares the images to normal generation. Beside it we run two baselines, so a reader
sees how much of the block's effect the SAE keeps: the block ablated (update 0) and the
update replaced by its mean (per step and position, over the evaluation prompts).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from repro.generate import Sampling, generate
from repro.hooks import Ablate, Edit, Replace, edits_for_rows, intervene


def generate_with(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
                  edits: dict[str, Edit | list[Edit]] | None = None, batch_size: int = 16) -> np.ndarray:
    """uint8 images [N, H, W, 3], generated in batches with `edits` on their blocks.

    An edit's per-image mask [N, H, W] is sliced to each batch's images."""
    out = []
    for start in range(0, len(prompts), batch_size):
        sl = slice(start, start + batch_size)
        with intervene(pipe.unet, edits_for_rows(edits or {}, sl), cfg=sampling.cfg):
            out.append(generate(pipe, prompts[sl], seeds[sl], sampling))
    return np.concatenate(out)


def mean_update_edit(mean_update: torch.Tensor) -> Edit:
    """Replace the update by a per-step mean: `mean_update` [steps, C, H, W] (step-indexed)."""
    return Replace(value=lambda update, step, half: mean_update[min(step, len(mean_update) - 1)][None])


def manhattan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image mean absolute pixel difference in [0, 1]: the paper's Manhattan distance, normalised."""
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=(1, 2, 3)) / 255.0


def in_loop_comparison(
    pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
    variants: dict[str, dict[str, Edit | list[Edit]]],
    metrics: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    batch_size: int = 16,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Generate the plain images and one set per variant (name -> edits); compare each to plain.

    Returns (images by name incl. "original", {variant: {metric: mean over prompts}}).
    Metrics default to the Manhattan distance; add e.g. LPIPS or oracle agreement.
    """
    metrics = {"manhattan": manhattan, **(metrics or {})}
    images = {"original": generate_with(pipe, prompts, seeds, sampling, None, batch_size)}
    table: dict[str, dict[str, float]] = {}
    for name, edits in tqdm(variants.items(), desc="in the loop", unit="variant", leave=False):
        images[name] = generate_with(pipe, prompts, seeds, sampling, edits, batch_size)
        table[name] = {m: float(np.mean(fn(images["original"], images[name]))) for m, fn in metrics.items()}
    return images, table


def standard_variants(saes: dict, mean_updates: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
    """The paper's in-loop variants per block (SAE, ablated, mean) and the SAEs of all blocks at once."""
    from repro.features.interventions import SAEReconstruct

    variants: dict[str, dict] = {}
    for block, sae in saes.items():
        variants[f"{block}: SAE"] = {block: SAEReconstruct(sae=sae)}
        variants[f"{block}: ablated"] = {block: Ablate()}
        if mean_updates is not None:
            variants[f"{block}: mean"] = {block: mean_update_edit(mean_updates[block])}
    if len(saes) > 1:
        variants["all blocks: SAE"] = {b: SAEReconstruct(sae=s) for b, s in saes.items()}
        variants["all blocks: ablated"] = {b: Ablate() for b in saes}
    return variants


def step_windows(n_steps: int, n_windows: int = 4) -> list[list[int]]:
    """Split steps 0..n_steps-1 into `n_windows` consecutive windows of near-equal size
    (fewer when there are fewer steps): 25 steps -> 7, 6, 6, 6."""
    return [list(map(int, w)) for w in np.array_split(np.arange(n_steps), min(n_windows, n_steps))]


def intervention_timing(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
                        block: str, make_edit: Callable[[list[int]], Edit],
                        windows: Sequence[Sequence[int]], batch_size: int = 16,
                        plain: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-image change (Manhattan) [N] when the edit acts only in each window of steps, by window
    ("first-last" step).

    `make_edit(steps)` builds the edit restricted to those steps; `plain` (the unedited
    images, if already generated) saves one generation. The paper: early windows change
    the image strongly, late ones subtly.
    """
    if plain is None:
        plain = generate_with(pipe, prompts, seeds, sampling, None, batch_size)
    out = {}
    for window in windows:
        steps = list(window)
        edited = generate_with(pipe, prompts, seeds, sampling, {block: make_edit(steps)}, batch_size)
        out[f"{steps[0]}-{steps[-1]}"] = manhattan(plain, edited)
    return out
