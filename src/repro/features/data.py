"""Reading a store for feature analysis: per-block chunks of whole images, with ground truth.

`store_chunks` yields `(image_ids [n], updates [n, H, W, C] float32[, concepts [n, c, H, W]])`
one shard at a time, for one step and one half — the input `analyse_features` takes.
`analyse_store` is the same analysis for several blocks in one pass: each shard is read
once (ahead of use, in ranges with several reads in flight), its bf16 block slices go to
each SAE's device as they are stored and become float32 there; the results equal
`analyse_features` over `store_chunks` block by block (same chunks, same order). On ShapesWorld stores the concepts come from the
prompts themselves: every prompt is a caption the grammar can parse back into its scene.
"""

from __future__ import annotations

import functools
import json
import struct
import time
from contextlib import closing
from typing import Any, Iterator, Mapping

import torch

from repro.features.analysis import FeatureAccumulator, FeatureAnalysis
from repro.meter import add_sae_analysis
from repro.sae.model import TopKSAE
from repro.store import ActivationStore
from repro.store.shards import read_shards, tensor_views


def _half_row(store: ActivationStore, half: str | None) -> int:
    """Index of `half` in the store's halves (default: cond under guidance, else the only one)."""
    halves = store.halves
    return halves.index(half or ("cond" if "cond" in halves else halves[0]))


def _scene_concepts(prompts: list[str], grid: int) -> torch.Tensor:
    """int8 three-state [n, c, grid, grid] concept labels of ShapesWorld captions (`toy_concepts.scene_concepts`;
    a copy of the cached ones)."""
    return _cached_concepts(tuple(prompts), grid).clone()


@functools.lru_cache(maxsize=256)
def _cached_concepts(prompts: tuple[str, ...], grid: int) -> torch.Tensor:
    """Parsing and rendering the captions is most of a detection pass on the toy (~13 ms an image on
    one core), and 05 reads each shard's maps up to 16 times (blocks x dev/test x detectors):
    kept per shard's prompts and grid (a 125-image shard at 16x16: ~1.3 MB)."""
    from repro.features.toy_concepts import scene_concepts
    from repro.shapes.captions import parse_caption

    return scene_concepts([parse_caption(p) for p in prompts], grid=grid)


def store_chunks(store: ActivationStore, block: str, step: int = 0, half: str | None = None,
                 concepts: bool = False, max_images: int | None = None) -> Iterator[tuple]:
    """Chunks of `block`'s updates at `step` (and `half` under guidance: default cond)."""
    H, W, C = store.block_shape(block)
    h = _half_row(store, half)
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
        yield ids, updates, _scene_concepts(store.prompts(record["start"], record["start"] + n), H)


def _shard_prompts(data: torch.Tensor) -> list[str]:
    """The prompts recorded in a shard file's header; data: the file's bytes, uint8 [size]."""
    (n,) = struct.unpack("<Q", bytes(data[:8].numpy()))
    header = json.loads(bytes(data[8 : 8 + n].numpy()))
    return json.loads(header["__metadata__"]["repro"])["prompts"]


def _images_per_shard(store: ActivationStore, max_images: int | None) -> list[tuple[dict[str, Any], int]]:
    """(record, images analysed) of the shards to read: the first `max_images` images (all: None)."""
    out, seen = [], 0
    for record in store.shards:
        if max_images is not None and seen >= max_images:
            break
        n = record["stop"] - record["start"]
        n = n if max_images is None else min(n, max_images - seen)
        out.append((record, n))
        seen += n
    return out


@torch.no_grad()
def analyse_store(
    saes: Mapping[str, TopKSAE],
    store: ActivationStore,
    *,
    step: int = 0,
    half: str | None = None,
    concepts: bool = False,
    m: int = 16,
    concept_names: list[str] | None = None,
    sample_per_feature: int | None = None,
    sample_seed: int = 0,
    max_dense_elems: int = 2 ** 25,
    read_threads: int | None = None,
    reads_in_flight: int | None = None,
    max_images: int | None = None,
) -> dict[str, FeatureAnalysis]:
    """{block: analysis} of every SAE of `saes` ({block: TopKSAE}) over the store, in one read.

    Equal to `analyse_features(saes[b], store_chunks(store, b, step, half, concepts, max_images),
    m, concept_names, max_dense_elems, sample_per_feature, sample_seed)` for each block b
    (bitwise on the CPU). Shards are read by `read_shards`: `read_threads` shards at once
    (default `SHARDS_AT_ONCE`; each sha256-checked while it is read, on first use when the
    store verifies), each in ranges, `reads_in_flight` reads at once (default
    `READS_IN_FLIGHT`), into reused buffers, pinned when an SAE is on a GPU: at most
    read_threads + 2 shard files of host memory.
    Concepts (ShapesWorld stores) are made once per shard and map size. The meter counts
    the tokens of all blocks over the whole time.
    """
    started = time.perf_counter()
    blocks = list(saes)
    shapes = {b: store.block_shape(b) for b in blocks}  # (H, W, C); raises on a block the store lacks
    h = _half_row(store, half)
    accs = {b: FeatureAccumulator(saes[b], m, concept_names, max_dense_elems, sample_per_feature, sample_seed)
            for b in blocks}
    cuda = {saes[b].device for b in blocks if saes[b].device.type == "cuda"}
    plan = _images_per_shard(store, max_images)
    shards = read_shards(store, [r for r, _ in plan], threads=read_threads, in_flight=reads_in_flight,
                         pin=bool(cuda))
    with closing(shards):
        for (record, data), (_, n) in zip(shards, plan):
            tensors = tensor_views(data, blocks)  # {block: [n_shard, steps, halves, HW, C]} views of the buffer
            # [n, HW, C] as stored (bf16) to each SAE's device, from pinned memory without waiting;
            # on the CPU a view of the buffer, which the accumulator copies when it makes float32
            xs = {b: tensors[b][:n, step, h].to(saes[b].device, non_blocking=True) for b in blocks}
            copied = []
            for dev in cuda:  # the buffer is reused once the next shard is taken: its copies must be done
                copied.append(torch.cuda.Event())
                copied[-1].record(torch.cuda.current_stream(dev))
            maps = {}
            if concepts:
                prompts = _shard_prompts(data)[:n]
                maps = {H: _scene_concepts(prompts, H) for H in {s[0] for s in shapes.values()}}
            ids = torch.arange(record["start"], record["start"] + n)
            for b in blocks:
                H, W, C = shapes[b]
                accs[b].add(ids, xs[b].reshape(n, H, W, C), maps.get(H))  # to float32 on the device, per chunk
            for event in copied:
                event.synchronize()
            tensors = xs = None
    out = {b: acc.result() for b, acc in accs.items()}
    add_sae_analysis(sum(acc.n_tokens for acc in accs.values()), time.perf_counter() - started)  # reading included
    return out
