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
    give `_next_cursor(c)` (None at the end) and `_load_chunk(c) -> Batch`.

    `keep_chunks` (a subclass's choice, default 0): how many prepared chunks to keep after an
    iteration is left, so that a rewind to them (`load_state_dict` to an earlier position:
    `init_b_pre` draws its sample and rewinds) serves them again instead of loading them
    again. For a generating source that is a whole chunk of images; a store re-reads cheaply.
    Batches are views of a kept chunk: consumers must not change them in place.
    """

    keep_chunks = 0

    def __init__(self, batch_size: int, seed: int, shuffle: bool):
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.cursor: tuple[int, ...] | None = None  # the first chunk: set by the subclass
        self.offset = 0
        self._kept: dict[tuple[int, ...], tuple[Batch, int]] = {}  # cursor -> prepared chunk, oldest first

    # -- to implement -------------------------------------------------------------------
    def _next_cursor(self, cursor: tuple[int, ...]) -> tuple[int, ...] | None:
        raise NotImplementedError

    def _load_chunk(self, cursor: tuple[int, ...]) -> Batch:
        raise NotImplementedError

    def _end_iteration(self) -> None:
        """Called when an iteration ends or is left: free what was read ahead (default: nothing)."""

    # -- the stream ---------------------------------------------------------------------
    def _order(self, cursor: tuple[int, ...], n: int) -> torch.Tensor | None:
        """The chunk's row order (None: as loaded)."""
        if not self.shuffle:
            return None
        gen = torch.Generator().manual_seed(chunk_seed(self.seed, *cursor))
        return torch.randperm(n, generator=gen)

    def _prepared(self, cursor: tuple[int, ...]) -> tuple[Batch, int]:
        """Chunk `cursor` with its rows already in this chunk's permuted order, and its size.

        One gather per chunk (on the chunk's device), after which every batch is a slice:
        the rows and their order are those of gathering `order[offset:offset+B]` per batch.
        """
        chunk = self._load_chunk(cursor)
        n = next(iter(chunk.values())).shape[0]
        order = self._order(cursor, n)
        if order is not None:
            chunk = {name: t.index_select(0, order.to(t.device)) for name, t in chunk.items()}
        return chunk, n

    def __iter__(self) -> Iterator[Batch]:
        B = self.batch_size
        parts: list[Batch] = []
        have = 0
        cursor, offset = self.cursor, self.offset
        ahead = _Prefetcher(self) if getattr(self, "prefetch", 0) else None
        try:
            while cursor is not None:
                chunk, n = self._chunk(cursor, ahead)
                following = self._next_cursor(cursor)
                if ahead and following not in self._kept:
                    ahead.start(following)  # the next chunk loads while this one is served
                while offset < n:
                    take = min(n - offset, B - have)
                    parts.append({name: t[offset : offset + take] for name, t in chunk.items()})
                    offset += take
                    have += take
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
        finally:
            if ahead:
                done = ahead.close()  # first: the prefetch thread may still be reading
                if done is not None:
                    self._keep(*done)  # a chunk prepared ahead and not served yet
            self._end_iteration()
        # The data ended: a final partial batch is dropped and the source stays at its end.
        self.cursor, self.offset = None, 0

    def _chunk(self, cursor: tuple[int, ...], ahead: "_Prefetcher | None") -> tuple[Batch, int]:
        """Chunk `cursor`, permuted: kept from an earlier iteration, prepared ahead, or prepared now."""
        if cursor in self._kept:
            chunk, n = self._kept.pop(cursor)
        else:
            chunk, n = ahead.get(cursor) if ahead else self._prepared(cursor)
        self._keep(cursor, (chunk, n))
        return chunk, n

    def _keep(self, cursor: tuple[int, ...], prepared: tuple[Batch, int]) -> None:
        """Remember a served (or ready) chunk, dropping the oldest beyond `keep_chunks`."""
        if self.keep_chunks < 1:
            return
        self._kept.pop(cursor, None)
        self._kept[cursor] = prepared
        while len(self._kept) > self.keep_chunks:
            self._kept.pop(next(iter(self._kept)))

    def _position(self) -> dict[str, Any]:
        return {"cursor": None if self.cursor is None else list(self.cursor), "offset": self.offset, "seed": self.seed}

    def _restore(self, state: dict[str, Any]) -> None:
        self.cursor = None if state["cursor"] is None else tuple(int(c) for c in state["cursor"])
        self.offset = int(state["offset"])


class _Prefetcher:
    """Prepares the next chunk (`ChunkedSource._prepared`) in one background thread.

    Chunks are prepared strictly one after another in that thread, in the order they are
    consumed, so a source's own state that `_load_chunk` and `_order` share (a store's row
    map) stays consistent. On CUDA the thread works on its own stream and the consumer's
    stream waits for it before using the chunk.
    """

    def __init__(self, source: ChunkedSource):
        from concurrent.futures import ThreadPoolExecutor

        self.source = source
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-prefetch")
        self.future = None
        self.cursor = None

    def _run(self, cursor, consumer_stream):
        if consumer_stream is None:
            return self.source._prepared(cursor), None
        stream = torch.cuda.Stream(device=consumer_stream.device)
        stream.wait_stream(consumer_stream)  # tensors the consumer handed over (e.g. a held chunk) are ready
        with torch.cuda.stream(stream):
            out = self.source._prepared(cursor)
            done = torch.cuda.Event()
            done.record(stream)
        return out, (stream, done)

    def start(self, cursor) -> None:
        if cursor is None:
            return
        stream = torch.cuda.current_stream() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.cursor, self.future = cursor, self.pool.submit(self._run, cursor, stream)

    def get(self, cursor):
        if self.future is None or self.cursor != cursor:
            self.start(cursor)
        (chunk, n), sync = self.future.result()
        self.future = None
        if sync is not None:
            stream, done = sync
            torch.cuda.current_stream().wait_event(done)
            for t in chunk.values():
                if t.is_cuda:
                    t.record_stream(torch.cuda.current_stream())
        return chunk, n

    def close(self):
        """Stop; returns (cursor, (chunk, n)) of a chunk the thread had already prepared when the
        source keeps chunks (ready for the consumer's stream), else None."""
        keep = self.future is not None and self.source.keep_chunks > 0
        if self.future is not None and not keep:
            self.future.cancel()
        self.pool.shutdown(wait=True)
        if not keep or self.future.cancelled() or self.future.exception() is not None:
            return None
        return self.cursor, self.get(self.cursor)
