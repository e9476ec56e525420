"""Exactly resumable shuffled batches: a stream of chunks, each permuted by its own seed.

A chunked source sees its data as a sequence of chunks (a group of store shards, or a
group of freshly generated images), each `{block: Tensor[N, d]}` with rows aligned across
blocks. The rows of a chunk are permuted by a generator seeded from (seed, chunk cursor);
batches are consecutive slices of the concatenated permuted chunks, so a batch may span a
chunk boundary and nothing is dropped except a final partial batch when the data ends.

The position is (cursor, offset): the chunk the next row comes from and how many of its
permuted rows were already handed out. That is all a checkpoint holds; resuming reloads
(or regenerates) that one chunk and skips `offset` rows, which yields exactly the batches
an uninterrupted run would have yielded.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def chunk_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, group...), well mixed by numpy's SeedSequence."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class ChunkedSource:
    """Base class: subclasses set `self.cursor` to their first chunk (a tuple of ints) and
    give `_next_cursor(c)` (None at the end) and `_load_chunk(c) -> Batch`."""

    def __init__(self, batch_size: int, seed: int, shuffle: bool):
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.cursor: tuple[int, ...] | None = None  # the first chunk: set by the subclass
        self.offset = 0

    # -- to implement -------------------------------------------------------------------
    def _next_cursor(self, cursor: tuple[int, ...]) -> tuple[int, ...] | None:
        raise NotImplementedError

    def _load_chunk(self, cursor: tuple[int, ...]) -> Batch:
        raise NotImplementedError

    # -- the stream ---------------------------------------------------------------------
    def _order(self, cursor: tuple[int, ...], n: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(chunk_seed(self.seed, *cursor))
        return torch.randperm(n, generator=gen)

    def __iter__(self) -> Iterator[Batch]:
        B = self.batch_size
        parts: list[Batch] = []
        have = 0
        cursor, offset = self.cursor, self.offset
        while cursor is not None:
            chunk = self._load_chunk(cursor)
            n = next(iter(chunk.values())).shape[0]
            order = self._order(cursor, n)
            while offset < n:
                take = order[offset : offset + (B - have)]
                offset += len(take)
                have += len(take)
                parts.append({name: t[take.to(t.device)] for name, t in chunk.items()})
                if have == B:
                    batch = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
                    parts, have = [], 0
                    # Written before yielding: state_dict() taken after a batch points past it,
                    # never into a half-built batch.
                    if offset >= n:
                        self.cursor, self.offset = self._next_cursor(cursor), 0
                    else:
                        self.cursor, self.offset = cursor, offset
                    yield batch
            cursor, offset = self._next_cursor(cursor), 0
        # The data ended: a final partial batch is dropped and the source stays at its end.
        self.cursor, self.offset = None, 0

    def _position(self) -> dict[str, Any]:
        return {"cursor": None if self.cursor is None else list(self.cursor), "offset": self.offset, "seed": self.seed}

    def _restore(self, state: dict[str, Any]) -> None:
        self.cursor = None if state["cursor"] is None else tuple(int(c) for c in state["cursor"])
        self.offset = int(state["offset"])
