"""Reading a store for feature analysis: per-block chunks of whole images, with ground truth.

`store_chunks` yields `(image_ids [n], updates [n, H, W, C] float32[, concepts [n, c, H, W]])`
one shard at a time, for one step and one half — the input `analyse_features` takes.
On ShapesWorld stores the concepts come from the prompts themselves: every prompt is a
caption the grammar can parse back into its scene.
"""

from __future__ import annotations

from typing import Iterator

import torch

from repro.store import ActivationStore


def store_chunks(store: ActivationStore, block: str, step: int = 0, half: str | None = None,
                 concepts: bool = False, max_images: int | None = None) -> Iterator[tuple]:
    """Chunks of `block`'s updates at `step` (and `half` under guidance: default cond)."""
    H, W, C = store.block_shape(block)
    halves = store.halves
    h = halves.index(half or ("cond" if "cond" in halves else halves[0]))
    seen = 0
    for record in store.shards:
        if max_images is not None and seen >= max_images:
            return
        t = store.load_shard(record, [block])[block]  # [n, steps, halves, HW, C]
        n = t.shape[0] if max_images is None else min(t.shape[0], max_images - seen)
        updates = t[:n, step, h].float().reshape(n, H, W, C)
        ids = torch.arange(record["start"], record["start"] + n)
        seen += n
        if not concepts:
            yield ids, updates
            continue
        from repro.features.toy_concepts import scene_concepts
        from repro.shapes.captions import parse_caption

        scenes = [parse_caption(p) for p in store.prompts(record["start"], record["start"] + n)]
        yield ids, updates, scene_concepts(scenes, grid=H)
