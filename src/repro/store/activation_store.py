"""An activation store opened for reading: its manifest, per-image access, and checks.

Checksums are verified lazily and cached: the first time an `ActivationStore` object
touches a shard (for tokens, an image, latents or prompts) it hashes the whole file and
compares it with the manifest; a mismatch raises a ReproError naming the shard, and the
shard is never used. The verdict is kept for the life of the object (not on disk: a file
may rot later). `verify=False` skips it; `verify_all()` (`repro store verify`) checks
every shard, several at once. Shard bytes are read by `repro.store.shards`; token batches
for training come from `repro.store.source`.
"""

from __future__ import annotations

import bisect
import json
import os
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from safetensors import safe_open

from repro.paths import display_path
from repro.errors import ReproError, choices_hint
from repro.store.checks import check_header, shard_state
from repro.store.layout import (
    IMAGES, LATENTS, SEEDS, half_index, read_manifest, sha256_file, step_index, store_dtype,
)
from repro.store.shards import default_read_threads, new_buffer, read_file, tensor_views

if TYPE_CHECKING:
    from repro.store.source import StoreSource


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
        s = self.info["block_shapes"][self.block_name(block)]
        return s["height"], s["width"], s["channels"]

    def tokens_per_image(self, block: str, step: int | None = None, half: str | None = None) -> int:
        H, W, _ = self.block_shape(block)
        steps = self.steps if step_index(self.steps, step) is None else 1
        halves = len(self.halves) if half_index(self.halves, half) is None else 1
        return steps * halves * H * W

    def block_name(self, block: str) -> str:
        """The store's short name of `block` (any name `repro.blocks.short_name` takes, e.g. a
        module path); a block the store does not hold raises a ReproError listing those it holds."""
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
        block = self.block_name(block)
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

    def _per_image(self, start: int, stop: int | None, read: Callable[[Any], list]) -> list:
        """Images [start, stop)'s entries (stop None: to the end) of the per-image lists
        `read(fh)` gives for each shard (`fh` the shard opened with safetensors)."""
        stop = self.end if stop is None else stop  # a repaired store may have gaps: n_images is not its end
        out: list = []
        for record in self.shards:
            if record["stop"] <= start or record["start"] >= stop:
                continue
            self._check(record)
            with safe_open(self._path(record), "pt") as fh:
                values = read(fh)
            lo, hi = max(start, record["start"]), min(stop, record["stop"])
            out += values[lo - record["start"] : hi - record["start"]]
        return out

    def prompts(self, start: int = 0, stop: int | None = None) -> list[str]:
        return self._per_image(start, stop, lambda fh: json.loads(fh.metadata()["repro"])["prompts"])

    def prompt(self, index: int) -> str:
        return self.prompts(index, index + 1)[0]

    def seeds(self, start: int = 0, stop: int | None = None) -> list[int]:
        return self._per_image(start, stop, lambda fh: fh.get_tensor(SEEDS).tolist())

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
        from repro.store.source import StoreSource  # the source module builds on this one

        return StoreSource(self, batch_size, **kwargs)
