"""The toy's own most active blocks, beside the paper's four (issue #27): which they are, and SAEs on them.

The paper's four blocks are SDXL's. The toy UNet is [1, 1, 2] transformer layers deep and 32-128
channels wide (SDXL: [1, 2, 10], 320-1280), and ablating three of the four barely changes its
images (01): a causality test there has nothing to find, whatever the SAE. So 05 also runs its
detection and causality experiments where the toy does write its attributes:

- `rank_blocks`: every block's ablation effect on dev (train-split) scenes, with a bootstrap over
  scenes (`repro.shapes.scoring.BlockAblation.bootstrap`); `own_blocks` takes the most harmful
  ones outside the paper's four;
- `capture_blocks`: those blocks' updates on train-split scenes, with each cell's concept labels;
- `train_block_saes`: an SAE per block of the profile's shape (expansion, k), trained the profile's
  way (steps, batch, lr) by the one trainer, `repro.sae.train.train_saes`.

The chosen blocks, the data and the SAEs never see the held-out test scenes the causality test uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import pandas as pd
import torch

from repro.blocks import PAPER_BLOCKS
from repro.generate import Sampling
from repro.sae.model import TopKSAE

TOP = 4
"""Rank cut of the bootstrap's P(top): as many blocks as the paper studies."""


def rank_blocks(pipe, oracle, sampling: Sampling, *, n: int, seed: int, batch_size: int = 16,
                n_boot: int = 2000) -> pd.DataFrame:
    """Every block, most harmful ablation first: change in the share of images with every attribute
    right when the block is ablated, its 95% bootstrap interval over the `n` dev scenes, median rank
    and P(top 4) (index: block; column `in_paper`)."""
    from repro.features.causality import scene_prompts
    from repro.features.planted import dev_scenes
    from repro.shapes.scoring import block_ablation

    scenes = dev_scenes(n, seed=seed)
    captions, seeds = scene_prompts(scenes, seed)
    ablation = block_ablation(pipe, oracle, scenes, captions, seeds, sampling, batch_size=batch_size)
    table = ablation.bootstrap("all", top=TOP, n_boot=n_boot, seed=seed).sort_values(["change", "median rank"])
    return table.assign(in_paper=[b in PAPER_BLOCKS for b in table.index])


def own_blocks(ranking: pd.DataFrame, n: int) -> list[str]:
    """The `n` most harmful blocks of `rank_blocks`' table that are not among the paper's four."""
    return [b for b in ranking.index if b not in PAPER_BLOCKS][:n]


@dataclass
class BlockData:
    """Captured updates of some blocks on scenes, with each cell's concept labels."""

    updates: dict[str, torch.Tensor]
    """block -> [N, H, W, C] (the UNet's dtype; one step, the conditional half under guidance)."""
    scenes: list
    labels: dict[int, torch.Tensor] = field(default_factory=dict)
    """grid -> int8 [N, c, grid, grid] concept labels of the scenes (`scene_concepts`), drawn once per grid."""

    def chunks(self, block: str, size: int = 256, concepts: bool = True) -> Iterator[tuple]:
        """(image_ids [b], updates [b, H, W, C] float32[, labels int8 [b, c, H, W]]) as
        `repro.features.detection.concept_detection_table` and `analyse_features` read them."""
        from repro.features.toy_concepts import scene_concepts

        x = self.updates[block]
        grid = x.shape[1]
        if concepts and grid not in self.labels:
            self.labels[grid] = scene_concepts(self.scenes, grid)
        for start in range(0, x.shape[0], size):
            stop = min(start + size, x.shape[0])
            ids, chunk = torch.arange(start, stop), x[start:stop].float()
            yield (ids, chunk, self.labels[grid][start:stop]) if concepts else (ids, chunk)


def capture_blocks(pipe, blocks: Sequence[str], sampling: Sampling, *, n: int, seed: int,
                   batch_size: int = 16) -> BlockData:
    """`blocks`' updates at the first step while generating `n` train-split scenes (captions and
    seeds as the causality tests make them)."""
    from repro.evaluate.capture import capture_eval_updates
    from repro.features.causality import scene_prompts
    from repro.features.planted import dev_scenes

    scenes = dev_scenes(n, seed=seed)
    prompts, seeds = scene_prompts(scenes, seed)
    captured = capture_eval_updates(pipe, prompts, seeds, sampling, list(blocks), batch_size)
    half = "cond" if sampling.cfg else "all"
    return BlockData({b: captured[b][half][0] for b in blocks}, scenes)


def train_block_saes(data: BlockData, profile, *, seed: int, device: str = "auto") -> dict[str, TopKSAE]:
    """{block: SAE} of the profile's expansion and k, trained for `sae_steps` batches of `sae_batch`
    shuffled tokens at `sae_lr`, with per-feature statistics (mean activation: the painting rule's
    mean_f) from one pass over the data."""
    from repro.features.analysis import analyse_features
    from repro.sae.config import TrainConfig
    from repro.sae.sets import block_sae
    from repro.sae.sources import TensorSource
    from repro.sae.train import train_saes

    saes = {}
    for i, (block, x) in enumerate(data.updates.items()):
        C = x.shape[-1]
        saes[block] = block_sae(C, k=profile.sae_k, expansion=profile.sae_expansion, dead_tokens=profile.dead_tokens,
                                seed=seed + i)
        tokens = x.reshape(-1, C)
        train_saes({block: saes[block]}, TensorSource({block: tokens}, batch_size=min(profile.sae_batch, len(tokens)),
                                                      seed=seed + i),
                   TrainConfig(steps=profile.sae_steps, lr=profile.sae_lr, device=device, checkpoint_every=0,
                               progress=False, log_every=profile.sae_steps,
                               geometric_median_samples=min(32_768, len(tokens))))
        saes[block].requires_grad_(False)
        saes[block].feature_stats = analyse_features(saes[block], data.chunks(block, concepts=False), m=1).stats
    return saes


__all__ = ["BlockData", "TOP", "capture_blocks", "own_blocks", "rank_blocks", "train_block_saes"]
