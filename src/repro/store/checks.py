"""A store's manifest and shard files are untrusted input: checked before anything uses them.

A manifest may come from another machine, a half-finished copy or a hand edit. Before a
reader, `repro store verify` (with --repair, which deletes) or a resumed collection uses
it, `check_manifest` checks every field (one ReproError naming the first bad one), and
every shard's `file` must be a plain relative name inside the store folder (no '..', no
absolute path). `shard_state` is called before a shard file is opened: it must be a regular
file (not a folder, FIFO or device: never opened), inside the store once links are
followed, of the recorded size. `check_header` compares a shard's safetensors header with
what the manifest says it holds (dtype, shapes, prompt range), for the lies a checksum
cannot see (the manifest's own sha256 is of whatever file is there).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path, PurePosixPath
from typing import Any

from repro.errors import ReproError
from repro.schema import (
    BOOL, COUNT, COUNTS, DICT, NONNEG_NUMBER, POSITIVE, SHA256, STR, STR_LIST, TEXT, one_of, require, shown,
)

FIX = "the manifest is damaged or was edited; copy the store again, or collect it anew into another folder"

SETTINGS = {
    "format_version": POSITIVE, "model": TEXT, "blocks": STR_LIST, "steps": POSITIVE, "guidance": NONNEG_NUMBER,
    "resolution": POSITIVE, "dtype": one_of("bf16", "fp16", "fp32"), "compute_dtype": TEXT, "shard_size": POSITIVE,
    "batch_size": POSITIVE, "seed": COUNT, "prompt_kind": TEXT, "store_images": BOOL,
}
INFO = {"block_shapes": DICT, "halves": (one_of(["all"], ["uncond", "cond"])[0],
                                           lambda v: v in (["all"], ["uncond", "cond"]))}
SHAPE = {"height": POSITIVE, "width": POSITIVE, "channels": POSITIVE}
RECORD = {
    "index": COUNT, "file": TEXT, "start": COUNT, "stop": COUNT, "bytes": COUNT, "sha256": SHA256,
    "prompts_sha256": STR, "nonfinite": COUNTS,
}
_DTYPE_NAMES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}


def check_manifest(manifest: Any, folder: Path, *, part: bool = False) -> dict[str, Any]:
    """`manifest` (as parsed from JSON) if every field is what a store's manifest holds, else one
    ReproError naming the field. `part`: a rank's manifest part (n_prompts may be absent)."""
    where = f"the manifest of the store {folder}"
    require(manifest, {"settings": DICT, "info": DICT, "shards": ("a list of shard records", lambda v: isinstance(v, list))},
            where, FIX)
    settings, info = manifest["settings"], manifest["info"]
    require(settings, SETTINGS, f"{where} (settings)", FIX)
    require(info, INFO, f"{where} (info)", FIX)
    for block in settings["blocks"]:
        if block not in info["block_shapes"]:
            raise ReproError(f"{where} lists block {block!r} but records no shape for it (info.block_shapes): {FIX}")
        require(info["block_shapes"][block], SHAPE, f"{where} (shape of block {block!r})", FIX)
    if (info["halves"] == ["uncond", "cond"]) != (settings["guidance"] > 1):
        raise ReproError(f"{where} has halves {info['halves']} with guidance {settings['guidance']}: "
                         f"guidance above 1 stores the halves ['uncond', 'cond'], else ['all']: {FIX}")
    if "n_prompts" in manifest or not part:
        require(manifest, {"n_prompts": COUNT}, where, FIX)
    if "complete" in manifest:
        require(manifest, {"complete": BOOL}, where, FIX)
    size, n_prompts = settings["shard_size"], manifest.get("n_prompts")
    seen_index, seen_file = set(), set()
    for i, record in enumerate(manifest["shards"]):
        rwhere = f"shard record {i} of {where}"
        require(record, RECORD, rwhere, FIX)
        index, start, stop = record["index"], record["start"], record["stop"]
        if start != index * size or not start < stop <= start + size:
            raise ReproError(f"{rwhere} holds prompts {start}..{stop - 1} as shard {index}, but shard {index} of a "
                             f"store of {size} prompts per shard starts at {index * size} and holds 1..{size}: {FIX}")
        if n_prompts is not None and stop > n_prompts:
            raise ReproError(f"{rwhere} holds prompts up to {stop - 1}, beyond the store's n_prompts={n_prompts}: {FIX}")
        if index in seen_index or record["file"] in seen_file:
            raise ReproError(f"{rwhere} repeats shard {index} or file {record['file']!r}: {FIX}")
        seen_index.add(index)
        seen_file.add(record["file"])
        safe_name(record["file"], folder)
    return manifest


def safe_name(name: str, folder: Path) -> PurePosixPath:
    """`name` if it is a plain relative path inside `folder` (no '..', not absolute, no
    backslash or NUL, inside once existing links are followed), else one ReproError."""
    rel = PurePosixPath(name)
    bad = (rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts)
           or "\\" in name or "\0" in name or name != rel.as_posix())
    if not bad:
        root = Path(folder).resolve()
        bad = not Path(os.path.realpath(root / rel)).is_relative_to(root)
    if bad:
        raise ReproError(f"the manifest of the store {folder} names the shard file {shown(name)}, which is not a "
                         f"plain name inside the store folder: refused, nothing was read or deleted; {FIX}")
    return rel


def shard_state(folder: Path, record: dict[str, Any]) -> str:
    """"ok", "missing" or "size" (not the recorded size: truncated or half-copied) for the
    record's shard file; a name outside the store, or a file that is not a regular file
    (folder, FIFO, device, a link to one) raises ReproError. Nothing is opened."""
    rel = safe_name(record["file"], folder)  # again: a link may have been made since the manifest was read
    path = Path(folder) / rel
    try:
        st = os.stat(path)  # follows links; safe_name checked where they lead
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise ReproError(f"cannot look at shard {rel} of the store {folder} ({exc.strerror}): check its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise ReproError(f"shard {rel} of the store {folder} is {kind}, not a file: refused, nothing was read or "
                         "deleted; move it away, then run `repro store verify --repair` and the same `repro collect`")
    return "ok" if st.st_size == record["bytes"] else "size"


def check_header(path: Path, record: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    """Why the safetensors header of shard `path` disagrees with the manifest (dtype, shapes,
    prompt range), or None. Reads the header only."""
    settings, info = manifest["settings"], manifest["info"]
    n = record["stop"] - record["start"]
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > min(record["bytes"], 100 << 20):
                return "its header is larger than the file"
            header = json.loads(fh.read(size))
        meta = json.loads(header.get("__metadata__", {}).get("repro", "null"))
    except (OSError, struct.error, ValueError, AttributeError) as exc:
        return f"its header cannot be read ({type(exc).__name__})"
    if not isinstance(meta, dict) or not isinstance(meta.get("prompts"), list):
        return "it records no prompts"
    if (meta.get("start"), meta.get("stop"), len(meta["prompts"])) != (record["start"], record["stop"], n):
        return (f"it holds {len(meta['prompts'])} prompts {meta.get('start')}..{meta.get('stop')}, the manifest says "
                f"{n} prompts {record['start']}..{record['stop']}")
    for block in settings["blocks"]:
        s = info["block_shapes"][block]
        want = [n, settings["steps"], len(info["halves"]), s["height"] * s["width"], s["channels"]]
        got = header.get(block)
        if not isinstance(got, dict):
            return f"it holds no tensor {block!r}"
        if got.get("dtype") != _DTYPE_NAMES[settings["dtype"]] or got.get("shape") != want:
            return (f"its {block} is {got.get('dtype')} {got.get('shape')}, the manifest says "
                    f"{_DTYPE_NAMES[settings['dtype']]} {want}")
    return None
