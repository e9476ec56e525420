"""Token batches for SAE training from an activation store (`StoreSource`, `store_source`).

Shards are read whole, checked against the manifest on first use and several at once,
ahead of use (`repro.store.shards`); each group of shards is permuted and cut into batches
as `repro.store.chunks` describes, so a resumed run yields exactly the batches that would
have come next.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import torch

from repro.errors import ReproError
from repro.store.activation_store import ActivationStore
from repro.store.chunks import ChunkedSource, chunk_seed
from repro.store.layout import half_index, select_tokens, step_index
from repro.store.shards import ReadAhead, ReadBuffers, default_read_threads, tensor_views


class StoreSource(ChunkedSource):
    """Token batches `{block: [B, C]}` from a store, following the SAE batch-source protocol.

    Each epoch visits the shards in an order permuted by (seed, epoch), in groups of
    `shards_per_chunk` shards (default: enough for `buffer_tokens` tokens per block);
    the tokens of a group are permuted together (seed, epoch, group) and cut into batches,
    which may span groups. Rows are aligned across blocks (same image, step, half and
    position), which needs all chosen blocks to have the same map size. `step` / `half`
    keep one step / one half; by default every stored token is used. `epochs=None` cycles
    forever. The state is (epoch, group, offset): resuming reloads one group and yields
    exactly the batches that would have come next. `shards` (indices into the store's
    shard list) restricts the reader to those shards (one rank's part, see `store_source`).
    A store (or part) that fits in one group is read once and kept, not reread each epoch.

    Reading: `read_threads` threads (default `default_read_threads()`) read and hash
    shards at once, `read_ahead` shards (default read_threads + 1) ahead of use and across
    group boundaries, into reused host buffers (pinned when `device` is a GPU): host memory
    of about (read_ahead + 2) shard files. `verify` (default: the store's, on for a folder)
    checks every shard's sha256 against the manifest on its first read by this source's
    store; `verify=False` skips it, for a store already checked with `repro store verify`.
    None of these change the batches.
    """

    def __init__(
        self,
        store: ActivationStore | str | os.PathLike,
        batch_size: int,
        *,
        blocks: Sequence[str] | None = None,
        step: int | None = None,
        half: str | None = None,
        seed: int = 0,
        shuffle: bool = True,
        buffer_tokens: int = 1 << 20,
        shards_per_chunk: int | None = None,
        epochs: int | None = None,
        device: str | torch.device | None = None,
        shards: Sequence[int] | None = None,
        prefetch: int = 1,
        read_threads: int | None = None,
        read_ahead: int | None = None,
        verify: bool | None = None,
    ):
        super().__init__(batch_size, seed, shuffle)
        self.prefetch = int(prefetch)  # 1: the next group is read (and permuted) while this one is served
        if verify is not None and not isinstance(verify, bool):
            raise ReproError(f"verify must be True (check each shard's sha256 on its first read, the default) or False "
                             f"(a store already checked with `repro store verify`), got {verify!r}")
        self.read_threads = default_read_threads() if read_threads is None else read_threads
        self.read_ahead = self.read_threads + 1 if read_ahead is None else read_ahead
        for name in ("read_threads", "read_ahead"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ReproError(f"{name} must be a whole number >= 1 (shards read at once / ahead), got {value!r}")
        # On a GPU, each group is moved there once and batches are gathered there: the
        # per-batch CPU gather and host-to-device copy otherwise bound SAE training (H100,
        # 4 SAEs 1280x5120: 95k tokens/s per block with CPU batches).
        self.device = None if device is None else torch.device(device)
        self.store = store if isinstance(store, ActivationStore) else ActivationStore(store)
        self.verify = self.store.verify if verify is None else verify
        if not self.store.shards:
            raise ReproError(f"the store {self.store.folder} holds no shards yet: collect first")
        self._blocks = [self.store.block_name(b) for b in (blocks or self.store.blocks)]
        self.step = step_index(self.store.steps, step)
        self.half = half_index(self.store.halves, half)
        self._step_arg, self._half_arg = step, half
        per_image = {b: self.store.tokens_per_image(b, step, half) for b in self._blocks}
        if len(set(per_image.values())) != 1:
            raise ReproError(
                f"blocks {self._blocks} have different token counts per image {per_image}: rows cannot be "
                "aligned; read them with store_source(), one source per map size"
            )
        self.per_image = next(iter(per_image.values()))
        per_shard = self.per_image * self.store.settings["shard_size"]
        total = len(self.store.shards)
        self.shard_ids = list(range(total)) if shards is None else [int(i) for i in shards]
        if not self.shard_ids or len(set(self.shard_ids)) != len(self.shard_ids) \
                or not all(0 <= i < total for i in self.shard_ids):
            raise ReproError(f"shards {list(shards or [])} are not distinct shard indices of the store "
                             f"{self.store.folder}: use indices in 0..{total - 1}")
        self.n_shards = len(self.shard_ids)
        self.shards_per_chunk = min(self.n_shards, shards_per_chunk or max(1, buffer_tokens // max(1, per_shard)))
        self.n_groups = -(-self.n_shards // self.shards_per_chunk)
        if self.batch_size < 1:
            raise ReproError(f"batch_size must be at least 1, got {batch_size}")
        self.epochs = epochs
        self.cursor = (0, 0)
        # one group: the chunk as first read ({shard: (first row, rows)}, tensors) and the
        # row map from this epoch's shard order into it (None: the chunk is in its own order)
        self._held: tuple[dict[int, tuple[int, int]], dict[str, torch.Tensor]] | None = None
        self._row_map: torch.Tensor | None = None
        self._ahead: ReadAhead | None = None  # made on first use, closed when an iteration stops
        self._buffers: ReadBuffers | None = None

    @property
    def blocks(self) -> list[str]:
        return list(self._blocks)

    def _shard_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n_shards))
        gen = torch.Generator().manual_seed(chunk_seed(self.seed, epoch, 1 << 30))
        return torch.randperm(self.n_shards, generator=gen).tolist()

    def _next_cursor(self, cursor):
        epoch, group = cursor
        group += 1
        if group == self.n_groups:
            epoch, group = epoch + 1, 0
        if self.epochs is not None and epoch >= self.epochs:
            return None
        return (epoch, group)

    def _group_records(self, cursor: tuple[int, int]) -> list[dict[str, Any]]:
        """Manifest records of group `cursor`'s shards, in this epoch's order."""
        epoch, group = cursor
        order = self._shard_order(epoch)[group * self.shards_per_chunk : (group + 1) * self.shards_per_chunk]
        return [self.store.shards[self.shard_ids[i]] for i in order]

    def _stream(self, cursor: tuple[int, int] | None) -> Iterator[tuple[tuple[int, int, int], dict[str, Any]]]:
        """((epoch, group, position), record) of every shard read from group `cursor` on."""
        while cursor is not None:
            for j, record in enumerate(self._group_records(cursor)):
                yield (*cursor, j), record
            cursor = self._next_cursor(cursor)

    def _read(self, record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffer, the shard's bytes [size] in it), checked when verification is on."""
        return self._buffers.read(self.store, record, self.verify)

    def _reader(self) -> ReadAhead:
        if self._ahead is None:
            pin = self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
            capacity = max(int(self.store.shards[i].get("bytes", 0)) for i in self.shard_ids)
            self._buffers = ReadBuffers(capacity, pin)
            self._ahead = ReadAhead(self._read, self._buffers.put, self.read_threads, self.read_ahead)
        return self._ahead

    def _end_iteration(self) -> None:
        """Stop reading ahead and free the buffers (an iteration ended or was left)."""
        if self._ahead is not None:
            self._ahead.close()
        self._ahead = self._buffers = None

    def _load_chunk(self, cursor) -> dict[str, torch.Tensor]:
        """The group's rows {block: [N, C]} in file order (used when the store is one group)."""
        epoch, group = cursor
        order = self._shard_order(epoch)[group * self.shards_per_chunk : (group + 1) * self.shards_per_chunk]
        ids = [self.shard_ids[i] for i in order]
        if self._held is not None and self.n_groups == 1:
            # the same shards in another order: index the kept rows instead of reading again
            spans, chunk = self._held
            self._row_map = torch.cat([torch.arange(spans[i][0], spans[i][0] + spans[i][1]) for i in ids])
            return chunk
        parts: dict[str, list[torch.Tensor]] = {b: [] for b in self._blocks}
        spans: dict[int, tuple[int, int]] = {}
        row = 0
        records = [self.store.shards[i] for i in ids]

        def load(record):  # own buffers: the kept chunk may be views of them
            return tensor_views(self.store.read_shard(record, verify=self.verify), self._blocks)

        with ThreadPoolExecutor(max_workers=min(self.read_threads, len(records))) as pool:  # read + sha256 in parallel
            loaded = list(pool.map(load, records))
        for i, record, tensors in zip(ids, records, loaded):
            for b in self._blocks:
                parts[b].append(select_tokens(tensors[b], self.step, self.half).to(self.device or "cpu"))
            spans[i] = (row, (record["stop"] - record["start"]) * self.per_image)
            row += spans[i][1]
        chunk = {b: p[0] if len(p) == 1 else torch.cat(p) for b, p in parts.items()}
        self._row_map = None
        if self.n_groups == 1:
            self._held = (spans, chunk)
        return chunk

    def _prepared(self, cursor):
        """The group's rows gathered straight into their permuted order: each shard's tokens are
        scattered to their places (one copy from the file's bytes), no concatenation first.
        Shards come from the read-ahead (read and checked by other threads); each one's buffer
        is given back as soon as its rows are copied out.
        A store of one group keeps its rows in file order (reread never) and gathers per epoch."""
        if self.n_groups == 1:
            return super()._prepared(cursor)
        records = self._group_records(cursor)
        sizes = [(r["stop"] - r["start"]) * self.per_image for r in records]
        n = sum(sizes)
        perm = super()._order(cursor, n)  # output row p holds concatenated row perm[p]
        dest = None
        if perm is not None:
            dest = torch.empty(n, dtype=torch.int64)
            dest[perm] = torch.arange(n)  # concatenated row r goes to output row dest[r]
        device = self.device or torch.device("cpu")
        out: dict[str, torch.Tensor] = {}
        reader = self._reader()
        lo = 0
        for j, size in enumerate(sizes):
            buf, data = reader.take((*cursor, j), lambda: self._stream(cursor))
            try:
                tensors = tensor_views(data, self._blocks)
                for b in self._blocks:
                    rows = select_tokens(tensors[b], self.step, self.half)  # [size, C] view of the file's bytes
                    if b not in out:
                        out[b] = torch.empty((n, rows.shape[1]), dtype=rows.dtype, device=device)
                    # both copies are synchronous (the host-to-GPU one included): the buffer is free after them
                    if dest is None:
                        out[b][lo : lo + size].copy_(rows)
                    else:
                        out[b].index_copy_(0, dest[lo : lo + size].to(device), rows.to(device))
            finally:
                tensors = rows = None
                self._buffers.put(buf)
            lo += size
        return out, n

    def _order(self, cursor: tuple[int, ...], n: int) -> torch.Tensor | None:
        # rows of the chunk in this epoch's shard order, then permuted as by the base class
        order = super()._order(cursor, n)
        if self._row_map is None:
            return order
        return self._row_map if order is None else self._row_map[order]

    def state_dict(self) -> dict[str, Any]:
        return {**self._position(), "n_shards": self.n_shards, "shards_per_chunk": self.shards_per_chunk}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("n_shards", self.n_shards), ("shards_per_chunk", self.shards_per_chunk)):
            if state.get(key, mine) != mine:
                raise ReproError(
                    f"the saved reader state has {key}={state[key]} but this reader has {key}={mine}: "
                    "resume on the same store with the same reader settings"
                )
        self._restore(state)

    def describe(self) -> dict[str, Any]:
        return {
            "source": "ActivationStore", "store": str(self.store.folder), "model": self.store.settings["model"],
            "images": self.store.n_images, "step": self._step_arg, "half": self._half_arg,
            "batch_size": self.batch_size, "seed": self.seed,
            **({} if self.n_shards == len(self.store.shards) else {"shards": self.n_shards}),
        }



def store_source(store: "ActivationStore | str | os.PathLike", batch_size: int, *,
                 blocks: Sequence[str] | None = None, ranks: int = 1, rank: int | None = None, **kwargs: Any):
    """Token batches of `blocks` (default: all) of a store, whatever their map sizes.

    Blocks with the same number of tokens per image share one `StoreSource` (rows aligned,
    each shard read once); blocks of other map sizes (down.1.1 at 32x32 beside down.2.1
    at 16x16) get one source per size, zipped into one (`ZipSource`). `kwargs` go to
    every `StoreSource`.

    `ranks=W` splits the stream over W readers (data-parallel training): reader r reads
    only shards r, r+W, r+2W, ... (its own shuffle seed) in batches of batch_size/W rows,
    and a global batch is the W readers' batches one after another. `rank=r` returns
    reader r's part (what rank r of a data-parallel run reads: 1/W of the bytes); `rank=None`
    all W parts concatenated (what one process reads to train on the same global batches).
    """
    from repro.sae.sources import ConcatSource, ZipSource

    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    blocks = [store.block_name(b) for b in (blocks or store.blocks)]
    ranks = int(ranks)
    if ranks < 1 or (rank is not None and not 0 <= rank < ranks):
        raise ReproError(f"reader {rank} of {ranks} does not exist: use ranks >= 1 and 0 <= rank < ranks")
    if ranks > 1 and batch_size % ranks:
        raise ReproError(f"a batch of {batch_size} tokens does not split over {ranks} ranks: use a multiple of {ranks}")
    if ranks > 1 and len(store.shards) < ranks:
        raise ReproError(f"the store {store.folder} holds {len(store.shards)} shards, fewer than the {ranks} ranks "
                         "reading it: collect with a smaller --shard-size (or more prompts)")

    def part(group: list[str], r: int) -> StoreSource:
        if ranks == 1:
            return StoreSource(store, batch_size, blocks=group, **kwargs)
        seed = chunk_seed(kwargs.get("seed", 0), r, ranks)  # readers shuffle independently
        return StoreSource(store, batch_size // ranks, blocks=group, shards=range(r, len(store.shards), ranks),
                           **{**kwargs, "seed": seed})

    groups: dict[int, list[str]] = {}
    for block in blocks:
        groups.setdefault(store.tokens_per_image(block, kwargs.get("step"), kwargs.get("half")), []).append(block)
    if rank is None and ranks > 1:
        parts = [ConcatSource([part(group, r) for r in range(ranks)]) for group in groups.values()]
    else:
        parts = [part(group, rank or 0) for group in groups.values()]
    return parts[0] if len(parts) == 1 else ZipSource(parts)
