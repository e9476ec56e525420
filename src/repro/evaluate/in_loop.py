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
from repro.hooks import Ablate, Edit, Replace, batch_pieces, by_rows, edits_for_rows, intervene


def generate_with(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
                  edits: dict[str, Edit | list[Edit]] | None = None, batch_size: int = 16) -> np.ndarray:
    """uint8 images [N, H, W, 3], generated in batches with `edits` on their blocks.

    An edit's per-image mask [N, H, W] is sliced to each batch's images."""
    return generate_variants(pipe, prompts, seeds, sampling, [edits], batch_size)[0]


def generate_variants(pipe, prompts: Sequence[str], seeds: Sequence[int], sampling: Sampling,
                      variants: Sequence[dict | None], batch_size: int = 16, desc: str | None = None) -> list[np.ndarray]:
    """uint8 images [N, H, W, 3] of `prompts` per variant ({block: edit or list}, or None: unedited).

    The variants run side by side, `batch_size` images a call (`hooks.by_rows` gives each variant's
    rows its own edits): on a GPU a small model is launch-bound at small batches, so many variants
    of a few prompts cost about one large generation. An image depends only on its prompt, seed and
    edits, not on the variants beside it. `desc`: show a progress bar (images/s) under that name."""
    n = len(prompts)
    out = []
    bar = tqdm(total=n * len(variants), desc=desc, unit="image", leave=False, disable=desc is None)
    for pieces in batch_pieces([n] * len(variants), batch_size):
        edits = by_rows([(a, b, edits_for_rows(variants[v] or {}, sl)) for a, b, v, sl in pieces])
        idx = [i for _, _, _, sl in pieces for i in range(sl.start, sl.stop)]
        with intervene(pipe.unet, edits, cfg=sampling.cfg):
            out.append(generate(pipe, [prompts[i] for i in idx], [seeds[i] for i in idx], sampling))
        bar.update(len(idx))
    bar.close()
    images = np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
    return [images[v * n : (v + 1) * n] for v in range(len(variants))]


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
    generated = generate_variants(pipe, prompts, seeds, sampling, [None, *variants.values()], batch_size, "in the loop")
    images = dict(zip(["original", *variants], generated))
    table = {name: {m: float(np.mean(fn(images["original"], images[name]))) for m, fn in metrics.items()}
             for name in variants}
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
    variants = [{block: make_edit(list(window))} for window in windows]
    edited = generate_variants(pipe, prompts, seeds, sampling, ([] if plain is not None else [None]) + variants, batch_size)
    if plain is None:
        plain, *edited = edited
    return {f"{w[0]}-{w[-1]}": manhattan(plain, images) for w, images in zip(windows, edited)}
