"""`analyse_store` (all blocks in one read of a store) equals `analyse_features` over
`store_chunks` block by block, bitwise on the CPU: with and without ground-truth concepts,
activation distributions, a cap on images, chunk splitting, a verifying store and not; each shard is read
once (not once per block) and nothing else opens the files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import repro.store.activation_store as activation_store
import repro.store.shards as shards
from repro.features.analysis import analyse_features
from repro.features.data import analyse_store, store_chunks
from repro.meter import METER
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.store import ActivationStore, StoreWriter
from repro.store.layout import FORMAT_VERSION

SIDES = {"mid.0": 4, "up.0.1": 8}  # two map sizes: concept maps per grid
C = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory, one_thread):
    """8 ShapesWorld images in shards of 3 (the last one short), 2 steps, cond/uncond halves."""
    from repro.shapes import caption, sample_scene

    out = tmp_path_factory.mktemp("analysis_store") / "s"
    rng = np.random.default_rng(0)
    prompts = [caption(sample_scene(rng), rng) for _ in range(8)]
    settings = {"format_version": FORMAT_VERSION, "model": "synthetic", "blocks": list(SIDES), "steps": 2,
                "guidance": 2.0, "resolution": 64, "dtype": "bf16", "compute_dtype": "fp32", "shard_size": 3,
                "batch_size": 3, "seed": 0, "prompt_kind": "shapes", "store_images": False}
    info = {"prompts": {"kind": "shapes"}, "halves": ["uncond", "cond"], "vae_factor": 8, "latent_shape": [4, 8, 8],
            "block_shapes": {b: {"height": s, "width": s, "channels": C, "module": "synthetic"}
                             for b, s in SIDES.items()}}
    gen = torch.Generator().manual_seed(0)
    with StoreWriter(out, settings, info, len(prompts)) as w:
        for i, lo in enumerate(range(0, len(prompts), 3)):
            hi = min(lo + 3, len(prompts))
            blocks = {b: (torch.randn(hi - lo, 2, 2, s * s, C, generator=gen) * 3).bfloat16() for b, s in SIDES.items()}
            w.write_shard(i, lo, hi, prompts[lo:hi], list(range(lo, hi)), blocks, torch.zeros(hi - lo, 4, 8, 8))
        w.finish(i + 1)
    return out


@pytest.fixture(scope="module")
def saes(one_thread):
    return {b: TopKSAE(SAEConfig(d_model=C, n_features=32, k=3, k_aux=4), seed=i) for i, b in enumerate(SIDES)}


def _assert_same(a, b, where="analysis"):
    """Every tensor, number and name of two analyses (nested dataclasses) identical."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


def _count_reads(monkeypatch) -> list[str]:
    """Names of the files read through `read_file` (every whole-file read of the store reader)
    from now on; opening a shard any other way (safetensors) fails the test."""
    seen = []
    real = activation_store.read_file

    def counting(path, *args, **kwargs):
        seen.append(path.name)
        return real(path, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a shard was opened outside the one read")

    monkeypatch.setattr(activation_store, "read_file", counting)
    monkeypatch.setattr(activation_store, "safe_open", refuse)
    return seen


def _per_block(folder, saes, verify, **kw):
    store = ActivationStore(folder, verify=verify)
    chunk_kw = {k: kw.pop(k) for k in ("step", "half", "concepts", "max_images") if k in kw}
    return {b: analyse_features(sae, store_chunks(store, b, **chunk_kw), **kw) for b, sae in saes.items()}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("concepts", [False, True])
@pytest.mark.parametrize("max_images, dense", [(None, 2 ** 25), (5, 32 * 128)])
def test_one_read_equals_per_block_analysis(folder, saes, monkeypatch, verify, concepts, max_images, dense):
    kw = dict(concepts=concepts, max_images=max_images, m=3, max_dense_elems=dense, sample_per_feature=4, sample_seed=7)
    want = _per_block(folder, saes, verify, **kw)
    store = ActivationStore(folder, verify=verify)
    reads = _count_reads(monkeypatch)
    before = METER.analysed_tokens
    got = analyse_store(saes, store, read_threads=2, **kw)
    n_images = 8 if max_images is None else max_images
    assert METER.analysed_tokens - before == n_images * sum(s * s for s in SIDES.values())  # all blocks counted
    needed = store.shards[: 2 if max_images else None]
    assert sorted(reads) == sorted(r["file"].split("/")[-1] for r in needed)  # each read once, for all blocks
    assert store._verified == ({r["file"] for r in needed} if verify else set())
    assert list(got) == list(SIDES)
    for b in SIDES:
        _assert_same(got[b], want[b], b)
        assert (got[b].concepts is not None) == concepts
        assert got[b].stats.n_tokens == n_images * SIDES[b] ** 2


def test_step_and_half(folder, saes):
    kw = dict(step=1, half="uncond", m=2)
    got = analyse_store(saes, ActivationStore(folder, verify=False), **kw)
    want = _per_block(folder, saes, False, **kw)
    for b in SIDES:
        _assert_same(got[b], want[b], b)
    default = analyse_store(saes, ActivationStore(folder, verify=False), m=2)  # step 0, cond
    assert not torch.equal(default["mid.0"].stats.count, got["mid.0"].stats.count)


def test_corrupt_shard_raises(folder, saes, tmp_path):
    import shutil

    from repro.errors import ReproError

    copy = tmp_path / "s"
    shutil.copytree(folder, copy)
    store = ActivationStore(copy)
    path = copy / store.shards[1]["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ReproError, match="corrupt"):
        analyse_store(saes, store, m=2)


@pytest.mark.parametrize("verify", [True, False])
def test_reading_in_small_ranges_changes_nothing(folder, saes, monkeypatch, verify):
    """Shards read in uneven 1000-byte ranges, 3 in flight (`reads_in_flight`): the same analysis."""
    kw = dict(concepts=True, m=3, sample_per_feature=4, sample_seed=7)
    want = _per_block(folder, saes, verify, **kw)
    monkeypatch.setattr(shards, "READ_RANGE", 1000)
    store = ActivationStore(folder, verify=verify)
    got = analyse_store(saes, store, read_threads=2, reads_in_flight=3, **kw)
    assert store._verified == ({r["file"] for r in store.shards} if verify else set())
    for b in SIDES:
        _assert_same(got[b], want[b], b)
