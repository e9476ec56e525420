"""Reading an activation store: random access per image, and shuffled token batches.

Checksums are verified lazily and cached: the first time an `ActivationStore` object
touches a shard (for tokens, an image, latents or prompts) it hashes the whole file and
compares it with the manifest; a mismatch raises a ReproError naming the shard, and the
shard is never used. The verdict is kept for the life of the object (not on disk: a file
may rot later). `verify=False` skips it; `verify_all()` (`repro store verify`) checks
every shard, several at once.

Reading for training (`StoreSource`) is bound by that check and by copying shards into
memory, so a shard is read once, in pieces, into a reused buffer (`read_file`: no
zero-filled fresh allocation, no page faults after the first use) and each piece is hashed
while it is still in the CPU cache; several shards are read and hashed at once by threads
(hashlib releases the GIL), ahead of use and across group boundaries (`_ReadAhead`).

Reading for analysis (`read_shards`) needs each shard soon, in order: a shard is read in
ranges, several in flight at once (an NVMe disk reaches its bandwidth only with queue depth;
one thread reading one file sequentially has one request in flight, and several threads
on several whole shards finish them all late, together), and hashed in order as they land.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
import threading
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import safe_open

from repro.paths import display_path
from repro.errors import ReproError, choices_hint
from repro.store.checks import check_header, shard_state
from repro.store.chunks import ChunkedSource, chunk_seed
from repro.store.layout import (
    IMAGES, LATENTS, SEEDS, half_index, read_manifest, select_tokens, sha256_file, step_index,
    store_dtype,
)


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


class ActivationStore:
    """A store opened for reading: the shards listed in its manifest (complete or not)."""

    def __init__(self, folder: str | os.PathLike, *, verify: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.settings: dict[str, Any] = self.manifest["settings"]
        self.info: dict[str, Any] = self.manifest.get("info", {})
        self.shards: list[dict[str, Any]] = sorted(self.manifest["shards"], key=lambda r: r["start"])
        self.verify = verify
        self._verified: set[str] = set()
        self._starts = [r["start"] for r in self.shards]

    # -- what it holds -------------------------------------------------------------------
    @property
    def blocks(self) -> list[str]:
        return list(self.settings["blocks"])

    @property
    def steps(self) -> int:
        return int(self.settings["steps"])

    @property
    def halves(self) -> list[str]:
        return list(self.info["halves"])

    @property
    def dtype(self) -> torch.dtype:
        return store_dtype(self.settings["dtype"])

    @property
    def n_images(self) -> int:
        return sum(r["stop"] - r["start"] for r in self.shards)

    @property
    def end(self) -> int:
        """One past the last prompt index any shard holds (n_images when there are no gaps)."""
        return max((r["stop"] for r in self.shards), default=0)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def block_shape(self, block: str) -> tuple[int, int, int]:
        """(H, W, C) of `block`'s update."""
        s = self.info["block_shapes"][self._block(block)]
        return s["height"], s["width"], s["channels"]

    def tokens_per_image(self, block: str, step: int | None = None, half: str | None = None) -> int:
        H, W, _ = self.block_shape(block)
        steps = self.steps if step_index(self.steps, step) is None else 1
        halves = len(self.halves) if half_index(self.halves, half) is None else 1
        return steps * halves * H * W

    def _block(self, block: str) -> str:
        from repro.blocks import short_name

        name = short_name(block)
        if name not in self.blocks:
            raise ReproError(f"the store {self.folder} has no block {block!r}: use {choices_hint(self.blocks)}")
        return name

    # -- shards --------------------------------------------------------------------------
    def _path(self, record: dict[str, Any]) -> Path:
        """The record's shard file, once checked to be a regular file inside the store of the
        recorded size (`checks.shard_state`): else one ReproError, before it is opened."""
        state = shard_state(self.folder, record)
        if state == "missing":
            raise self._missing(record)
        if state == "size":
            raise ReproError(f"shard {record['file']} of {self.folder} is not the {record['bytes']} bytes its manifest "
                             f"records (truncated or half-copied): run `repro store verify --repair {self.folder}`, "
                             "then the same `repro collect` command to rewrite it")
        return self.folder / record["file"]

    def _missing(self, record: dict[str, Any]) -> ReproError:
        return ReproError(f"shard {record['file']} of {self.folder} is missing: rerun the collection to rewrite it")

    def _corrupt(self, record: dict[str, Any], digest: str) -> ReproError:
        return ReproError(
            f"shard {record['file']} of {self.folder} is corrupt (sha256 {digest[:12]}... differs from the "
            f"manifest's): run `repro store verify --repair {self.folder}`, then the same `repro collect` "
            "command to rewrite it"
        )

    def _lies(self, record: dict[str, Any], why: str) -> ReproError:
        return ReproError(f"shard {record['file']} of {self.folder} does not hold what the manifest says ({why}): "
                          "the manifest or the shard was edited; copy the store again or collect it anew")

    def _check(self, record: dict[str, Any]) -> None:
        if not self.verify or record["file"] in self._verified:
            return
        path = self._path(record)
        digest = sha256_file(path)
        if digest != record["sha256"]:
            raise self._corrupt(record, digest)
        if why := check_header(path, record, self.manifest):
            raise self._lies(record, why)
        self._verified.add(record["file"])

    def read_shard(self, record: dict[str, Any], alloc: Callable[[int], torch.Tensor] = new_buffer,
                   verify: bool | None = None, pool: Executor | None = None) -> torch.Tensor:
        """The bytes of one shard file, uint8 [size], read into `alloc(size)` (see `read_file`:
        in ranges by `pool`'s threads when given).

        Checked against the manifest's sha256 while being read when verification is due
        (`verify`, default the store's, and not yet verified by this object): a mismatch
        raises before any byte is used. Safe to call from several threads at once.
        """
        path = self._path(record)
        check = (self.verify if verify is None else verify) and record["file"] not in self._verified
        try:
            data, digest = read_file(path, alloc, digest=check, pool=pool)
        except FileNotFoundError:
            raise self._missing(record) from None
        if check:
            if digest != record["sha256"]:
                raise self._corrupt(record, digest)
            if why := check_header(path, record, self.manifest):
                raise self._lies(record, why)
            self._verified.add(record["file"])  # set.add is atomic under the GIL
        return data

    def load_shard(self, record: dict[str, Any], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors of one shard (all, or `names`), verified first when `verify` is on."""
        if self.verify and record["file"] not in self._verified:
            return tensor_views(self.read_shard(record), names)  # one read: hashed, then viewed without a copy
        with safe_open(self._path(record), "pt") as fh:
            return {n: fh.get_tensor(n) for n in (names or fh.keys())}

    def locate(self, index: int) -> tuple[dict[str, Any], int]:
        """(shard record, row in it) of global image `index`."""
        i = bisect.bisect_right(self._starts, index) - 1
        if i < 0 or not self.shards[i]["start"] <= index < self.shards[i]["stop"]:
            raise ReproError(f"image {index} is not in the store {self.folder} (it holds {self.n_images} images)")
        return self.shards[i], index - self.shards[i]["start"]

    def _row(self, index: int, name: str) -> torch.Tensor:
        record, row = self.locate(index)
        self._check(record)
        with safe_open(self._path(record), "pt") as fh:
            if name not in fh.keys():
                raise ReproError(f"the store {self.folder} holds no {name!r} (collect with --store-images)")
            return fh.get_slice(name)[row : row + 1][0]

    # -- random access -------------------------------------------------------------------
    def image(self, index: int, block: str, half: str | None = "cond") -> torch.Tensor:
        """Updates of image `index` at `block`: [steps, H, W, C] (one half: "cond" by
        default under guidance; None returns [steps, halves, H, W, C])."""
        block = self._block(block)
        H, W, C = self.block_shape(block)
        t = self._row(index, block)  # [steps, halves, HW, C]
        if len(self.halves) == 1 and half is not None:
            if half not in ("cond", "all"):
                raise ReproError(f"the store {self.folder} was collected without guidance: it has no {half!r} half")
            return t[:, 0].reshape(self.steps, H, W, C)
        h = half_index(self.halves, half)
        if h is None:
            return t.reshape(self.steps, len(self.halves), H, W, C)
        return t[:, h].reshape(self.steps, H, W, C)

    def latents(self, indices: Sequence[int]) -> torch.Tensor:
        """Final latents [n, 4, h, w] (float32) of images `indices`: decode with `repro.generate.decode_latents`."""
        return torch.stack([self._row(int(i), LATENTS) for i in indices])

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """Stored uint8 images [n, H, W, 3] (only if collected with `store_images`)."""
        return torch.stack([self._row(int(i), IMAGES) for i in indices])

    def prompts(self, start: int = 0, stop: int | None = None) -> list[str]:
        stop = self.end if stop is None else stop  # a repaired store may have gaps: n_images is not its end
        out: list[str] = []
        for record in self.shards:
            if record["stop"] <= start or record["start"] >= stop:
                continue
            self._check(record)
            with safe_open(self._path(record), "pt") as fh:
                shard_prompts = json.loads(fh.metadata()["repro"])["prompts"]
            lo, hi = max(start, record["start"]), min(stop, record["stop"])
            out += shard_prompts[lo - record["start"] : hi - record["start"]]
        return out

    def prompt(self, index: int) -> str:
        return self.prompts(index, index + 1)[0]

    def seeds(self, start: int = 0, stop: int | None = None) -> list[int]:
        stop = self.end if stop is None else stop  # a repaired store may have gaps: n_images is not its end
        out: list[int] = []
        for record in self.shards:
            if record["stop"] <= start or record["start"] >= stop:
                continue
            self._check(record)
            with safe_open(self._path(record), "pt") as fh:
                s = fh.get_tensor(SEEDS).tolist()
            lo, hi = max(start, record["start"]), min(stop, record["stop"])
            out += s[lo - record["start"] : hi - record["start"]]
        return out

    # -- checking ------------------------------------------------------------------------
    def verify_all(self, progress: bool = False, threads: int | None = None) -> list[str]:
        """Hash every shard, `threads` at a time (default: `default_read_threads()`); returns the
        files that are missing or corrupt, in the manifest's order (empty: all good)."""
        from tqdm.auto import tqdm

        threads = default_read_threads() if threads is None else int(threads)
        if threads < 1:
            raise ReproError(f"verify needs at least 1 thread, got {threads}")

        # Every file is looked at (never opened) before any is read: a name outside the store, a
        # folder, FIFO or device is refused here, before a byte is read or a shard deleted.
        states = [shard_state(self.folder, record) for record in self.shards]

        def one(record: dict[str, Any], state: str) -> bool:
            return state == "ok" and sha256_file(self._path(record)) == record["sha256"]

        bad = []
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify") as pool:
            oks = pool.map(one, self.shards, states)  # in order; the files are hashed `threads` at a time
            for record, ok in tqdm(zip(self.shards, oks), total=len(self.shards), desc="verify", unit="shard",
                                   disable=not progress):
                if not ok:
                    bad.append(record["file"])
                elif why := check_header(self._path(record), record, self.manifest):
                    raise self._lies(record, why)  # not repairable by deleting the shard: the manifest may lie
                else:
                    self._verified.add(record["file"])
        return bad

    def summary(self) -> str:
        s, i = self.settings, self.info
        n_bytes = sum(r["bytes"] for r in self.shards)
        nonfinite = {b: sum(r["nonfinite"].get(b, 0) for r in self.shards) for b in self.blocks}
        lines = [
            f"store      {display_path(self.folder)}",
            f"model      {s['model']}  ({s['compute_dtype']})",
            f"sampling   steps={s['steps']} guidance={s['guidance']} resolution={s['resolution']} seed={s['seed']}",
            f"prompts    {self.n_images} of {self.manifest.get('n_prompts')} collected"
            f"{' (complete)' if self.complete else ' (incomplete: rerun the collection to finish)'}; "
            f"source {i.get('prompts', {})}",
            f"shards     {len(self.shards)} x {s['shard_size']} images, {n_bytes / 2**30:.3f} GiB, dtype {s['dtype']}",
            f"halves     {', '.join(self.halves)}",
        ]
        for b in self.blocks:
            H, W, C = self.block_shape(b)
            lines.append(f"block      {b:<9} {H}x{W}x{C}  non-finite values: {nonfinite[b]}")
        return "\n".join(lines)

    def source(self, batch_size: int, **kwargs: Any) -> "StoreSource":
        """Shuffled token batches of this store (see `StoreSource`)."""
        return StoreSource(self, batch_size, **kwargs)


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
    blocks = [store._block(b) for b in (blocks or store.blocks)]
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


class _Buffers:
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


class _ReadAhead:
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
    buffers = _Buffers(max(int(r.get("bytes", 0)) for r in records), pin)
    ranges = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="range-read")

    def read(record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        taken: list[torch.Tensor] = []

        def alloc(size: int) -> torch.Tensor:
            taken.append(buffers.get(size))
            return taken[0]

        try:
            data = store.read_shard(record, alloc, verify, pool=ranges)
            return taken[0], data
        except BaseException:
            if taken:
                buffers.put(taken[0])
            raise

    ahead = _ReadAhead(read, buffers.put, threads, threads + 1 if depth is None else int(depth))
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
        self._blocks = [self.store._block(b) for b in (blocks or self.store.blocks)]
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
        self._ahead: _ReadAhead | None = None  # made on first use, closed when an iteration stops
        self._buffers: _Buffers | None = None

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
        taken: list[torch.Tensor] = []

        def alloc(size: int) -> torch.Tensor:
            taken.append(self._buffers.get(size))
            return taken[0]

        try:
            data = self.store.read_shard(record, alloc, self.verify)
            return taken[0], data
        except BaseException:
            if taken:
                self._buffers.put(taken[0])
            raise

    def _reader(self) -> _ReadAhead:
        if self._ahead is None:
            pin = self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
            capacity = max(int(self.store.shards[i].get("bytes", 0)) for i in self.shard_ids)
            self._buffers = _Buffers(capacity, pin)
            self._ahead = _ReadAhead(self._read, self._buffers.put, self.read_threads, self.read_ahead)
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
