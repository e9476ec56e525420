"""The fast store reader (issue #17): reused buffers, parallel read + sha256 ahead of use across
groups. Its batches equal a reference built from the files with safetensors alone, whatever the
threads, read-ahead and verification; a corrupt shard is still caught with verification on."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from repro.cli import main as cli_main
from repro.errors import ReproError
from repro.store import ActivationStore, StoreSource
from repro.store.chunks import chunk_seed
from repro.store.layout import select_tokens
from repro.store.shards import read_file

BLOCKS = ("mid.0", "up.0.1")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_pipe):
    """7 shards of 2 images (the last one short: 13 images), 2 blocks, 2 steps under guidance."""
    from repro.collect import CollectConfig, collect

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("store") / "s"
    collect(CollectConfig(out=out, n_prompts=13, shard_size=2, batch_size=2, steps=2, guidance=2.0, dtype="bf16",
                          blocks=BLOCKS, device="cpu"), tiny_pipe, progress=False)
    return out


def _reference(folder, batch, *, seed, shards_per_chunk, epochs, step=None, half=None):
    """The batches as StoreSource's docstring defines them, from `safetensors.load_file` alone:
    per epoch the shards in a (seed, epoch) order, in groups; each group's rows concatenated in
    that order, permuted by (seed, epoch, group); batches cut across groups."""
    store = ActivationStore(folder, verify=False)
    si = None if step is None else step % store.steps
    hi = None if half is None else store.halves.index(half)
    n = len(store.shards)
    rows = {b: [] for b in BLOCKS}
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(chunk_seed(seed, epoch, 1 << 30))).tolist()
        for g in range(-(-n // shards_per_chunk)):
            files = [load_file(folder / store.shards[i]["file"]) for i in order[g * shards_per_chunk:][:shards_per_chunk]]
            chunk = {b: torch.cat([select_tokens(f[b], si, hi) for f in files]) for b in BLOCKS}
            N = chunk[BLOCKS[0]].shape[0]
            perm = torch.randperm(N, generator=torch.Generator().manual_seed(chunk_seed(seed, epoch, g)))
            for b in BLOCKS:
                rows[b].append(chunk[b][perm])
    rows = {b: torch.cat(r) for b, r in rows.items()}
    total = rows[BLOCKS[0]].shape[0] // batch * batch
    return [{b: rows[b][i : i + batch] for b in BLOCKS} for i in range(0, total, batch)]


def _same(got, ref):
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("read_threads,read_ahead,prefetch", [(1, 1, 0), (3, 5, 1), (2, 1, 1), (4, 12, 0)])
@pytest.mark.parametrize("shards_per_chunk", [1, 3, 7])
def test_batches_equal_the_reference(store, shards_per_chunk, read_threads, read_ahead, prefetch, verify):
    kw = dict(seed=4, shards_per_chunk=shards_per_chunk, epochs=2)
    ref = _reference(store, 40, **kw)
    src = StoreSource(store, 40, **kw, read_threads=read_threads, read_ahead=read_ahead, prefetch=prefetch,
                      verify=verify)
    got = list(src)  # every batch kept: a reused buffer must not change one already yielded
    _same(got, ref)
    want = {r["file"] for r in src.store.shards} if verify else set()
    assert src.store._verified == want  # checked when asked, never when not


def test_strided_selection_equals_the_reference(store):
    kw = dict(seed=1, shards_per_chunk=2, epochs=1, step=1, half="cond")
    _same(list(StoreSource(store, 16, **kw, read_threads=3, read_ahead=4)), _reference(store, 16, **kw))


@pytest.mark.parametrize("stop_after", [1, 4, 9])
@pytest.mark.parametrize("prefetch", [0, 1])
def test_resume_mid_way_with_other_read_settings(store, stop_after, prefetch):
    kw = dict(seed=7, shards_per_chunk=2, epochs=2)
    ref = _reference(store, 24, **kw)
    src = StoreSource(store, 24, **kw, read_threads=3, read_ahead=6, prefetch=prefetch)
    for n, _ in enumerate(src, 1):
        if n == stop_after:
            break
    state = src.state_dict()
    again = StoreSource(store, 24, **kw, read_threads=1, read_ahead=1, prefetch=1 - prefetch)
    again.load_state_dict(state)
    _same(list(again), ref[stop_after:])
    # the first source, iterated again from where it stopped, drops what it had read ahead
    _same(list(src), ref[stop_after:])


def _corrupt(folder, index):
    """Flip one byte near the end of shard `index` (the tensors' data, not the header)."""
    path = folder / ActivationStore(folder).shards[index]["file"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def damaged(store, tmp_path):
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(store, folder)
    _corrupt(folder, 4)
    return folder


@pytest.mark.parametrize("shards_per_chunk", [1, 3, 7])
@pytest.mark.parametrize("prefetch", [0, 1])
def test_a_corrupt_shard_is_caught_by_the_verifying_reader(damaged, shards_per_chunk, prefetch):
    src = StoreSource(damaged, 8, seed=0, shards_per_chunk=shards_per_chunk, epochs=1, read_threads=3,
                      read_ahead=5, prefetch=prefetch)
    with pytest.raises(ReproError, match="shard-000004.safetensors .*corrupt"):
        list(src)
    # without the check it reads through (what --no-verify is for: a store already verified)
    n = sum(b["mid.0"].shape[0] for b in StoreSource(damaged, 8, seed=0, shards_per_chunk=shards_per_chunk,
                                                        epochs=1, verify=False))
    assert n == ActivationStore(damaged).n_images * 2 * 2 * 16 // 8 * 8


def test_read_file_reads_into_a_reused_buffer_and_hashes(store):
    path = store / ActivationStore(store).shards[0]["file"]
    raw = path.read_bytes()
    big = torch.full((len(raw) + 1000,), 7, dtype=torch.uint8)
    data, digest = read_file(path, lambda size: big, digest=True)
    assert data.numel() == len(raw) and bytes(data.numpy()) == raw and digest == hashlib.sha256(raw).hexdigest()
    assert data.data_ptr() == big.data_ptr() and read_file(path)[1] is None


@pytest.mark.parametrize("kw,match", [(dict(verify="no"), "verify must be True"),
                                      (dict(verify=1), "verify must be True"),
                                      (dict(read_threads=0), "read_threads must be"),
                                      (dict(read_ahead=2.5), "read_ahead must be")])
def test_bad_read_settings_are_one_line(store, kw, match):
    with pytest.raises(ReproError, match=match) as err:
        StoreSource(store, 8, **kw)
    assert "\n" not in str(err.value)


def test_cli_train_no_verify_and_parallel_store_verify(damaged, tmp_path, capsys):
    args = ["train", "--store", str(damaged), "--blocks", "mid.0", "--steps", "2", "--k", "2", "--k-aux", "0",
            "--batch-size", "32", "--checkpoint-every", "0", "--device", "cpu", "--no-progress"]
    assert cli_main([*args, "--out", str(tmp_path / "checked")]) == 2
    err = capsys.readouterr().err.strip()
    assert "shard-000004.safetensors" in err and "corrupt" in err and "\n" not in err
    assert cli_main([*args, "--out", str(tmp_path / "unchecked"), "--no-verify", "--read-threads", "2"]) == 0
    assert ActivationStore(damaged).verify_all(threads=3) == ["shards/shard-000004.safetensors"]
    assert cli_main(["store", "verify", str(damaged), "--threads", "2", "--no-progress"]) == 2
    assert "1 of 7 shards" in capsys.readouterr().err
