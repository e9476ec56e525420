"""Writing an activation store: one shard at a time, atomically, manifest last.

`StoreWriter` owns a store folder while a collection runs (an exclusive `flock` on
`.lock`, released by the kernel even on SIGKILL). Opening it checks the settings against
an existing manifest (any difference is a ReproError naming it) and removes temporary
files a killed run left behind. `write_shard` serialises a shard in memory, hashes it,
writes it under a hidden temporary name, fsyncs and renames it, and only then rewrites
the manifest (atomically) with the shard's record: readers, which list shards from the
manifest, never see a partial shard, and a shard file not yet in the manifest is simply
written again by the resumed run.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Iterable
from typing import Any

import torch

from repro.errors import ReproError
from repro.io import FolderLock, atomic_path, provenance, write_json_atomic
from repro.store.checks import check_manifest, shard_state
from repro.store.serialize import parts as st_parts, write_parts
from repro.store.layout import (
    IMAGES, LATENTS, LOCK, MANIFEST, SEEDS, SETTINGS_KEYS, SHARD_DIR,
    read_manifest, shard_file,
)


PART_PREFIX = ".manifest.rank-"


def part_file(rank: int) -> str:
    """Name of rank `rank`'s manifest part (hidden: not a foreign file for `_check_folder`)."""
    return f"{PART_PREFIX}{rank:05d}.json"


def manifest_parts(folder: str | os.PathLike) -> list[Path]:
    """Manifest parts in `folder`, by rank."""
    return sorted(Path(folder).glob(f"{PART_PREFIX}*.json"))


def clean_temporaries(folder: str | os.PathLike) -> None:
    """Remove the hidden temporaries (`atomic_path`'s) a killed run left in a store folder."""
    folder = Path(folder)
    for sub in (folder, folder / SHARD_DIR):
        for p in sub.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


def _write_file(path: Path, data: list) -> tuple[int, str]:
    """Write the chunks `data` to `path`, hashing them on the way: (bytes, sha256 hex). A module
    function so tests can simulate a full disk."""
    with open(path, "wb") as fh:
        return write_parts(fh, data)


class StoreWriter:
    """Append shards to the store at `folder` created (or to be created) with `settings`.

    `settings` must hold every key of `SETTINGS_KEYS`; `info` (per-block shapes, prompt
    source, ...) is recorded but not compared. Use as a context manager (releases the lock).
    `part=R` makes it one rank's writer of a shared store (see the module docstring): it
    writes `.manifest.rank-R.json`, and leaves temporaries alone (other ranks' writes).
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any], info: dict[str, Any], n_prompts: int,
                 *, part: int | None = None):
        self.folder = Path(folder)
        missing = [k for k in SETTINGS_KEYS if k not in settings]
        if missing:
            raise ValueError(f"store settings lack {missing}")
        self.settings = {k: settings[k] for k in SETTINGS_KEYS}
        self.part = part
        self._lock = threading.Lock()  # records and manifest: shards may be written by several threads
        self._check_folder()
        (self.folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        # One writer: exclusive .lock. Ranks: shared .lock (no one-process writer meanwhile)
        # plus an exclusive lock of their own (no two runs as the same rank).
        wanted = [(self.folder, LOCK, False)] if part is None else [(self.folder, LOCK, True),
                                                                    (self.folder, f"{LOCK}.rank-{part:05d}", False)]
        self._lock_files = FolderLock(wanted, f"another collection is writing to {self.folder} right now: "
                                              "wait for it or use another --out")
        try:
            if part is None:
                self._clean_temporaries()
            if (self.folder / MANIFEST).exists():
                self.manifest = read_manifest(self.folder)
                self._check_settings(self.manifest["settings"])
                self.manifest["info"] = {**self.manifest.get("info", {}), **info}
            else:
                self.manifest = {"settings": self.settings, "info": info, "shards": [], "complete": False,
                                 "provenance": provenance()}
            self.records = {int(r["index"]): r for r in self.manifest["shards"]}
            self._folded = self._fold_parts()
            held = max((r["stop"] for r in self.records.values()), default=0)
            if held > n_prompts:
                raise ReproError(
                    f"the store {self.folder} already holds {held} prompts, more than the {n_prompts} asked for: "
                    f"ask for at least {held} (a store only grows)"
                )
        except BaseException:
            self.close()
            raise
        self.manifest["n_prompts"] = int(n_prompts)

    # -- opening -------------------------------------------------------------------------
    def _check_folder(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise ReproError(f"{self.folder} is a file: give --out a folder for the activation store")
        if self.folder.is_dir() and not (self.folder / MANIFEST).exists():
            ours = {SHARD_DIR, LOCK}
            foreign = [p.name for p in self.folder.iterdir() if p.name not in ours and not p.name.startswith(".")]
            if foreign:
                raise ReproError(
                    f"{self.folder} exists and is not an activation store (it holds {sorted(foreign)[:5]}): "
                    "give --out an empty or new folder"
                )

    def _clean_temporaries(self) -> None:
        # Hidden temporaries are atomic_path's: left only by a run killed mid-write.
        clean_temporaries(self.folder)

    def _fold_parts(self) -> list[Path]:
        """Take in the records of manifest parts a distributed run left (none in one-process use)."""
        parts = manifest_parts(self.folder)
        for path in parts:
            try:
                part = check_manifest(json.loads(path.read_text()), self.folder, part=True)
            except (OSError, ValueError, RecursionError, ReproError):
                continue  # a damaged part only costs redoing its shards
            self._check_settings(part["settings"])
            self.manifest["info"] = {**part.get("info", {}), **self.manifest["info"]}
            self.records.update({int(r["index"]): r for r in part["shards"]})
        return parts

    def _check_settings(self, existing: dict[str, Any]) -> None:
        diff = [k for k in SETTINGS_KEYS if existing.get(k) != self.settings[k]]
        if diff:
            was = ", ".join(f"{k}={existing.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={self.settings[k]!r}" for k in diff)
            raise ReproError(
                f"the store {self.folder} was created with {was} but this run asks for {now}: "
                "use the store's settings to append (see `repro store info`), or another --out folder"
            )

    # -- writing -------------------------------------------------------------------------
    def has_shard(self, index: int, start: int, stop: int, prompts_sha: str) -> bool:
        """Whether shard `index` is done with exactly prompts [start, stop) of that digest.

        A recorded shard with another range (the last shard of a shorter earlier run) is
        redone; one with other prompts means the prompt source changed: a ReproError.
        """
        rec = self.records.get(index)
        if rec is None or (rec["start"], rec["stop"]) != (start, stop):
            return False
        if rec["prompts_sha256"] != prompts_sha:
            raise ReproError(
                f"the prompts of shard {rec['file']} (prompts {start}..{stop - 1}) differ from the prompts "
                f"this run reads: append with the same prompt source, or use another --out folder"
            )
        # The size is free to check on every resume (a truncated or half-copied shard is
        # rewritten); a flipped byte needs the sha256: `repro store verify --repair`.
        return shard_state(self.folder, rec) == "ok"

    def write_shard(
        self,
        index: int,
        start: int,
        stop: int,
        prompts: list[str],
        seeds: list[int],
        blocks: dict[str, torch.Tensor],
        latents: torch.Tensor,
        images: torch.Tensor | None = None,
        prompts_sha: str = "",
        extra: dict[str, Any] | None = None,
        nonfinite: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Write shard `index` holding `blocks` {block: [n, steps, halves, HW, C]} (already in
        the store dtype, on CPU), latents [n, 4, h, w] float32, optional uint8 images [n, H, W, 3].

        Thread-safe: several shards may be written at once (`repro.store.pool`). `nonfinite`
        {block: count}, when the caller counted it (on the GPU), skips counting here."""
        n = stop - start
        tensors = {name: t.contiguous() for name, t in blocks.items()}
        tensors[LATENTS] = latents.detach().float().cpu().contiguous()
        tensors[SEEDS] = torch.tensor(seeds, dtype=torch.int64)
        if images is not None:
            tensors[IMAGES] = images.cpu().contiguous()
        for name, t in tensors.items():
            if t.shape[0] != n:
                raise ValueError(f"shard {index}: {name} has {t.shape[0]} rows for {n} prompts")
        if nonfinite is None:
            nonfinite = {b: int((~torch.isfinite(t)).sum()) for b, t in blocks.items()}
        # One metadata key only: safetensors writes several in hash order, which would make
        # the bytes (and the checksum) of identical shards differ between runs.
        meta = {"repro": json.dumps({"prompts": prompts, "start": start, "stop": stop}, ensure_ascii=False, sort_keys=True)}
        data = st_parts(tensors, metadata=meta)  # the bytes of st_save(tensors, metadata=meta), not copied
        rel = shard_file(index)
        try:
            with atomic_path(self.folder / rel) as tmp:
                size, digest = _write_file(tmp, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ReproError(
                    f"the disk is full while writing {rel} of {self.folder} ({sum(memoryview(d).nbytes for d in data) / 2**20:.1f} MiB): "
                    "no partial shard was kept; free space and run the same command again to resume"
                ) from exc
            raise
        record = {
            "index": index, "file": rel, "start": start, "stop": stop, "bytes": size,
            "sha256": digest, "prompts_sha256": prompts_sha, "nonfinite": nonfinite, **(extra or {}),
        }
        with self._lock:  # several writer threads: one manifest rewrite at a time, records in index order
            self.records[index] = record
            self._write_manifest()
        return record

    def _write_manifest(self, complete: bool = False) -> None:
        self.manifest["shards"] = [self.records[i] for i in sorted(self.records)]
        self.manifest["complete"] = complete
        if self.part is not None:
            write_json_atomic(self.folder / part_file(self.part), self.manifest)
            return
        write_json_atomic(self.folder / MANIFEST, self.manifest)
        for path in self._folded:  # now recorded in manifest.json
            path.unlink(missing_ok=True)
        self._folded = []

    def drop_shards(self, files: Iterable[str]) -> list[str]:
        """Forget the shards stored in `files` (and delete them): the next collection rewrites them."""
        files = set(files)
        dropped = [r["file"] for i, r in sorted(self.records.items()) if r["file"] in files]
        self.records = {i: r for i, r in self.records.items() if r["file"] not in files}
        self._write_manifest()  # first: a kill in between leaves unlisted files, which are simply rewritten
        for name in dropped:
            (self.folder / name).unlink(missing_ok=True)
        return dropped

    def finish(self, n_shards: int) -> None:
        """Mark the store complete once shards 0..n_shards-1 are all recorded."""
        self._write_manifest(complete=all(i in self.records for i in range(n_shards)))

    def close(self) -> None:
        self._lock_files.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_manifest_parts(folder: str | os.PathLike, n_shards: int, parts: Iterable[Path] | None = None) -> dict[str, Any]:
    """Fold the manifest parts of a distributed collection into `manifest.json` (atomically), then
    remove them; the store is complete once shards 0..n_shards-1 are all recorded. Call it once
    every rank has written its last shard (rank 0 after a barrier). Returns the manifest."""
    folder = Path(folder)
    parts = manifest_parts(folder) if parts is None else list(parts)
    manifest = read_manifest(folder) if (folder / MANIFEST).exists() else None
    records: dict[int, dict[str, Any]] = {} if manifest is None else {int(r["index"]): r for r in manifest["shards"]}
    for path in parts:
        try:
            part = check_manifest(json.loads(path.read_text()), folder, part=True)
        except (OSError, ValueError, RecursionError) as exc:
            raise ReproError(f"manifest part {path.name} of {folder} cannot be read ({type(exc).__name__}): "
                             "delete it and rerun the collection") from None
        if manifest is None:
            manifest = part
        elif part["settings"] != manifest["settings"]:
            raise ReproError(f"manifest part {path.name} of {folder} was written with other settings than the store: "
                             "delete it and rerun the collection")
        manifest["info"] = {**part.get("info", {}), **manifest["info"]}
        manifest["n_prompts"] = max(int(manifest.get("n_prompts", 0)), int(part.get("n_prompts", 0)))
        records.update({int(r["index"]): r for r in part["shards"]})
    if manifest is None:
        raise ReproError(f"{folder} holds neither {MANIFEST} nor manifest parts: nothing to merge")
    manifest["shards"] = [records[i] for i in sorted(records)]
    manifest["complete"] = all(i in records for i in range(n_shards))
    write_json_atomic(folder / MANIFEST, manifest)
    for path in parts:
        path.unlink(missing_ok=True)
    return manifest
