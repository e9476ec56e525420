"""Reading a shard in byte ranges, several at once (`read_file(pool=)`, `read_shards(in_flight=)`):
the same bytes, digest and tensors as the plain sequential read, whatever the range size
(files not a multiple of it included); a failing or short range read raises, never hangs,
and leaves no range still writing into the buffer."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

import repro.store.shards as shards
from repro.errors import ReproError
from repro.store import ActivationStore, StoreWriter
from repro.store.layout import FORMAT_VERSION
from repro.store.shards import read_file, read_shards, tensor_views

BLOCKS = {"mid.0": 4, "up.0.1": 8}  # block: map side


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """7 images in shards of 3 (the last one short), 2 blocks of 16 channels, bf16."""
    out = tmp_path_factory.mktemp("ranges") / "s"
    settings = {"format_version": FORMAT_VERSION, "model": "synthetic", "blocks": list(BLOCKS), "steps": 1,
                "guidance": 0.0, "resolution": 64, "dtype": "bf16", "compute_dtype": "fp32", "shard_size": 3,
                "batch_size": 3, "seed": 0, "prompt_kind": "synthetic", "store_images": False}
    info = {"prompts": {"kind": "synthetic"}, "halves": ["all"], "vae_factor": 8, "latent_shape": [4, 8, 8],
            "block_shapes": {b: {"height": s, "width": s, "channels": 16, "module": "synthetic"}
                             for b, s in BLOCKS.items()}}
    gen = torch.Generator().manual_seed(0)
    with StoreWriter(out, settings, info, 7) as w:
        for i, lo in enumerate(range(0, 7, 3)):
            hi = min(lo + 3, 7)
            data = {b: torch.randn(hi - lo, 1, 1, s * s, 16, generator=gen).bfloat16() for b, s in BLOCKS.items()}
            w.write_shard(i, lo, hi, [f"p{j}" for j in range(lo, hi)], list(range(lo, hi)), data,
                          torch.zeros(hi - lo, 4, 8, 8))
        w.finish(i + 1)
    return out


def _paths(folder):
    return [folder / r["file"] for r in ActivationStore(folder).shards]


@pytest.mark.parametrize("range_bytes", [1000, 4096, 1 << 30])  # many uneven ranges, page-sized, one range
@pytest.mark.parametrize("in_flight", [1, 3])
def test_ranges_read_the_same_bytes_and_digest(folder, monkeypatch, range_bytes, in_flight):
    monkeypatch.setattr(shards, "READ_RANGE", range_bytes)
    with ThreadPoolExecutor(in_flight) as pool:
        for path in _paths(folder):
            raw = path.read_bytes()
            assert len(raw) % 1000 and len(raw) % 4096  # the last range is a short one
            big = torch.full((len(raw) + 333,), 7, dtype=torch.uint8)  # a reused buffer, larger than the file
            data, digest = read_file(path, lambda size: big, digest=True, pool=pool)
            plain, plain_digest = read_file(path, digest=True)
            assert data.data_ptr() == big.data_ptr() and data.numel() == len(raw)
            assert torch.equal(data, plain) and bytes(data.numpy()) == raw
            assert digest == plain_digest == hashlib.sha256(raw).hexdigest()
            assert read_file(path, pool=pool)[1] is None


def test_an_empty_file_reads_in_ranges(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with ThreadPoolExecutor(2) as pool:
        data, digest = read_file(path, digest=True, pool=pool)
    assert data.numel() == 0 and digest == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("verify", [True, False])
def test_read_shards_in_ranges_gives_the_files_tensors(folder, monkeypatch, verify):
    monkeypatch.setattr(shards, "READ_RANGE", 1000)
    store = ActivationStore(folder, verify=verify)
    n = 0
    for (record, data), path in zip(read_shards(store, store.shards, threads=2, in_flight=3), _paths(folder)):
        assert bytes(data.numpy()) == path.read_bytes()
        want = load_file(path)
        got = tensor_views(data)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
        n += 1
    assert n == len(store.shards) == 3
    assert store._verified == ({r["file"] for r in store.shards} if verify else set())


def _failing_preadv(monkeypatch, fail_at: int, short: bool):
    """os.preadv that fails (OSError, or 0 bytes: a file cut short) at byte `fail_at`, is
    slow after it (reads still running when it fails) and counts the reads running."""
    real = shards.os.preadv
    running = [0]
    lock = threading.Lock()

    def preadv(fd, buffers, offset):
        with lock:
            running[0] += 1
        try:
            if offset == fail_at:
                if short:
                    return 0
                raise OSError(5, "Input/output error (injected)")
            if offset > fail_at:
                time.sleep(0.2)
            return real(fd, buffers, offset)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(shards.os, "preadv", preadv)
    return running


def _within(fn, seconds=60):
    """fn()'s exception (None if it returned), failing the test if it takes longer (a hang)."""
    box = []

    def run():
        try:
            fn()
            box.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the read hung"
    return box[0]


@pytest.mark.parametrize("short", [False, True])
def test_a_failing_range_raises_and_leaves_no_read_running(folder, monkeypatch, short):
    monkeypatch.setattr(shards, "READ_RANGE", 1000)
    running = _failing_preadv(monkeypatch, fail_at=3000, short=short)
    path = _paths(folder)[1]
    with ThreadPoolExecutor(3) as pool:
        err = _within(lambda: read_file(path, digest=True, pool=pool))
        assert running[0] == 0  # nothing writes into the buffer after read_file has raised
    assert isinstance(err, ReproError if short else OSError)
    assert ("shorter than its size" if short else "injected") in str(err)


def test_a_failing_shard_read_surfaces_in_read_shards(folder, monkeypatch):
    monkeypatch.setattr(shards, "READ_RANGE", 1000)
    _failing_preadv(monkeypatch, fail_at=2000, short=False)
    store = ActivationStore(folder, verify=True)
    seen = []

    def consume():
        for record, _ in read_shards(store, store.shards, threads=2, in_flight=3):
            seen.append(record["file"])

    err = _within(consume)
    assert isinstance(err, OSError) and "injected" in str(err)
    assert seen == []  # every shard is longer than 2000 bytes: the first one already fails
    assert not store._verified


def test_bad_read_counts_are_refused(folder):
    store = ActivationStore(folder)
    with pytest.raises(ReproError, match="at least 1 shard and 1 read"):
        next(read_shards(store, store.shards, in_flight=0))
