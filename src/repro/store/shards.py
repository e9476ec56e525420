"""Reading shard files: whole files into reused buffers, hashed as they land, several at once.

Reading for training (`repro.store.source.StoreSource`) is bound by the checksum and by
copying shards into memory, so a shard is read once, in pieces, into a reused buffer
(`read_file`: no zero-filled fresh allocation, no page faults after the first use) and
each piece is hashed while it is still in the CPU cache; several shards are read and
hashed at once by threads (hashlib releases the GIL), ahead of use and across group
boundaries (`ReadAhead`).

Reading for analysis (`read_shards`) needs each shard soon, in order: a shard is read in
ranges, several in flight at once (an NVMe disk reaches its bandwidth only with queue depth;
one thread reading one file sequentially has one request in flight, and several threads
on several whole shards finish them all late, together), and hashed in order as they land.

`tensor_views` turns a file's bytes into its tensors without a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from repro.errors import ReproError

if TYPE_CHECKING:
    from repro.store.activation_store import ActivationStore


READ_PIECE = 4 << 20
"""Bytes read (and hashed) at a time: small enough that a piece is still in the cache when hashed."""

READ_RANGE = 8 << 20
"""Bytes of one read in flight when a file is read in ranges (`read_file(..., pool=)`)."""

READS_IN_FLIGHT = 8
"""`read_shards`' default number of ranges read at once (threads blocked in one pread each)."""

SHARDS_AT_ONCE = 3
"""`read_shards`' default number of shards read and hashed at once: sha256 runs ~1.2 GB/s
per stream, so two or more keep up with a ~2 GB/s disk."""


def new_buffer(size: int) -> torch.Tensor:
    """An uninitialised uint8 buffer [size] (torch.empty: no zero-fill, unlike bytearray)."""
    return torch.empty(size, dtype=torch.uint8)


def _shorter(path: Path) -> ReproError:
    return ReproError(f"{path} was shorter than its size while reading it: is it being rewritten?")


def _pread_into(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill `view` with the file's bytes from `offset` on (pread: no shared file position)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if not n:
            raise _shorter(path)
        got += n


def _read_ranges(fd: int, view: memoryview, pool: Executor, path: Path, h: "hashlib._Hash | None") -> None:
    """Fill `view` (the whole file) in READ_RANGE ranges, all submitted to `pool` at once,
    hashing each into `h` in order as it lands. Returns or raises (the first failure) only
    once no range is still being read: the buffer and `fd` are then free to reuse and close."""
    spans = [(lo, min(len(view), lo + READ_RANGE)) for lo in range(0, len(view), READ_RANGE)]
    futures = [pool.submit(_pread_into, fd, view[lo:hi], lo, path) for lo, hi in spans]
    try:
        for (lo, hi), future in zip(spans, futures):
            future.result()
            if h is not None:
                h.update(view[lo:hi])
    finally:
        for future in futures:
            future.cancel()
        wait(futures)


def read_file(path: Path, alloc: Callable[[int], torch.Tensor] = new_buffer,
              digest: bool = False, pool: Executor | None = None) -> tuple[torch.Tensor, str | None]:
    """All bytes of `path` as a uint8 tensor [size] (a view of `alloc(size)`, which may be a
    reused buffer of at least `size` bytes), and their sha256 hex when `digest` (else None).

    One copy from the page cache with `readinto`, in pieces of READ_PIECE bytes; each piece
    is hashed right after it is read, while it is in the cache. Both release the GIL.
    With `pool` (threads), the file is read in READ_RANGE ranges by its threads at once
    (several reads in flight) and hashed in order meanwhile: the same bytes and digest.
    """
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = alloc(size)
        if buf.numel() < size:
            raise ValueError(f"a buffer of {buf.numel()} bytes cannot hold {path} ({size} bytes)")
        data = buf[:size]
        view = memoryview(data.numpy())
        h = hashlib.sha256() if digest else None
        if pool is not None and hasattr(os, "preadv"):
            _read_ranges(fh.fileno(), view, pool, path, h)
            return data, None if h is None else h.hexdigest()
        got = 0
        while got < size:
            n = fh.readinto(view[got : min(size, got + READ_PIECE)])
            if not n:
                raise _shorter(path)
            if h is not None:
                h.update(view[got : got + n])
            got += n
    return data, None if h is None else h.hexdigest()


def default_read_threads() -> int:
    """Threads that read and hash shards at once: the usable cores, at most 8 (one sha256
    stream does ~0.8-1.6 GB/s; 8 leave cores to the trainer and to other ranks of a host)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
           "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "F64": torch.float64, "I64": torch.int64}


def tensor_views(data: "bytearray | memoryview | torch.Tensor", names: Sequence[str] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file held in `data` (bytes, or a uint8 tensor [size]), as views
    of its bytes (no copy; they keep `data` alive): what `safetensors.torch.load(data)` gives,
    without its copy."""
    if isinstance(data, torch.Tensor):
        data = memoryview(data.numpy())
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8 : 8 + n]))
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name in (names if names is not None else header):
        info = header[name]
        dtype = _DTYPES[info["dtype"]]
        lo, hi = info["data_offsets"]
        count = (hi - lo) // torch.empty((), dtype=dtype).element_size()
        t = torch.frombuffer(data, dtype=dtype, count=count, offset=base + lo) if count else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    return out


class ReadBuffers:
    """Host buffers for whole shard files, reused: allocated once (uninitialised), so reads pay
    no zero-fill and no page faults after the first use. Pinned (page-locked) when batches
    go to a GPU, so that the copy there is a direct DMA. Thread-safe."""

    def __init__(self, capacity: int, pin: bool):
        self.capacity, self.pin = int(capacity), pin  # capacity: the largest shard, so any buffer fits any shard
        self.free: list[torch.Tensor] = []
        self.lock = threading.Lock()

    def get(self, size: int) -> torch.Tensor:
        """A uint8 buffer [>= size]."""
        with self.lock:
            while self.free:
                buf = self.free.pop()
                if buf.numel() >= size:
                    return buf
        return torch.empty(max(size, self.capacity), dtype=torch.uint8, pin_memory=self.pin)

    def put(self, buf: torch.Tensor) -> None:
        """Give `buf` back: nothing may use its bytes any more."""
        with self.lock:
            self.free.append(buf)

    def read(self, store: ActivationStore, record: dict[str, Any], verify: bool | None = None,
             pool: Executor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(buffer, the shard's bytes uint8 [size] in it): `record`'s shard read by
        `store.read_shard(record, ..., verify, pool=pool)` into one of these buffers. Put the
        buffer back once its bytes are used; a read that fails puts it back itself."""
        taken: list[torch.Tensor] = []

        def alloc(size: int) -> torch.Tensor:
            taken.append(self.get(size))
            return taken[0]

        try:
            data = store.read_shard(record, alloc, verify, pool=pool)
            return taken[0], data
        except BaseException:
            if taken:
                self.put(taken[0])
            raise


class ReadAhead:
    """Shards read (and hashed) by `threads` threads ahead of use, in reading order, at most
    `depth` not yet taken: the reads run across group boundaries, so every thread has a
    shard to read even when a group holds one shard.

    `take(key, stream)` waits for and returns the read of `key`; when `key` is not the next
    one read ahead (the first call, a resume, another iteration), what was read ahead is
    dropped and reading restarts from `stream()`, an iterator of (key, record) in reading
    order that starts at `key`. `read(record)` -> (buffer, bytes); `release(buffer)` gives a
    dropped read's buffer back.
    """

    def __init__(self, read: Callable, release: Callable, threads: int, depth: int):
        self.read, self.release, self.depth = read, release, depth
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard-read")
        self.pending: deque = deque()  # (key, future), in reading order
        self.upcoming: Iterator = iter(())

    def take(self, key: tuple[int, ...], stream: Callable[[], Iterator]) -> Any:
        if not self.pending or self.pending[0][0] != key:
            self.drop()
            self.upcoming = stream()
            self._fill()
        _, future = self.pending.popleft()
        self._fill()  # the next read starts before this one is waited for
        return future.result()  # a failed check raises here, when the shard is used

    def _fill(self) -> None:
        while len(self.pending) < self.depth:
            nxt = next(self.upcoming, None)
            if nxt is None:
                return
            key, record = nxt
            self.pending.append((key, self.pool.submit(self.read, record)))

    def drop(self) -> None:
        """Forget what was read ahead; its buffers go back."""
        while self.pending:
            _, future = self.pending.popleft()
            if future.cancel():
                continue
            try:
                self.release(future.result()[0])
            except Exception:  # noqa: BLE001 - a read that failed ahead of use: it raises again if used
                pass
        self.upcoming = iter(())

    def close(self) -> None:
        self.drop()
        self.pool.shutdown(wait=True)


def read_shards(store: ActivationStore, records: Sequence[dict[str, Any]], *, threads: int | None = None,
                depth: int | None = None, pin: bool = False, verify: bool | None = None,
                in_flight: int | None = None) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """(record, the shard's bytes uint8 [size]) of each of `records`, in order: each file read
    once (`read_shard`: checked on its first read when `verify`, default the store's), `threads`
    shards at once (default SHARDS_AT_ONCE), at most `depth` (default threads + 1) ahead of
    use, into reused host buffers (pinned when `pin`: for copies to a GPU).

    Each shard is read in READ_RANGE ranges by a pool of `in_flight` threads (default
    READS_IN_FLIGHT): that many reads in flight at once, first come first served, so the
    ranges of the shard needed first go first and the disk is busy with the next shards'
    while it is hashed and used. Host memory: at most depth + 1 buffers of the largest shard
    ((threads + 2) x the largest shard by default).

    The bytes are valid until the next shard is asked for: copy out what is kept (and wait
    for a non-blocking copy from them) before that. Close the generator to stop early.
    """
    records = list(records)
    if not records:
        return
    threads = SHARDS_AT_ONCE if threads is None else int(threads)
    in_flight = READS_IN_FLIGHT if in_flight is None else int(in_flight)
    if threads < 1 or in_flight < 1:
        raise ReproError(f"reading needs at least 1 shard and 1 read at once, got {threads} and {in_flight}")
    buffers = ReadBuffers(max(int(r.get("bytes", 0)) for r in records), pin)
    ranges = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="range-read")

    def read(record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return buffers.read(store, record, verify, pool=ranges)

    ahead = ReadAhead(read, buffers.put, threads, threads + 1 if depth is None else int(depth))
    try:
        for j, record in enumerate(records):
            buf, data = ahead.take(j, lambda: enumerate(records))
            try:
                yield record, data
            finally:
                buffers.put(buf)
    finally:
        ahead.close()  # waits for the shards being read, hence for their ranges
        ranges.shutdown(wait=True)

