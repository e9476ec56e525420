"""The fast store paths against their references: shard bytes, direct UNet loop, writer pool, reading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from repro.collect import CollectConfig, collect
from repro.generate import Sampling, generate
from repro.store import ActivationStore
from repro.store.serialize import parts


def test_parts_are_the_bytes_of_safetensors_save():
    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16, torch.int32,
              torch.float32, torch.float64, torch.int64]
    g = torch.Generator().manual_seed(0)
    tensors = {f"n{i}": (torch.randn(3, i + 1, generator=g) * 10).to(d) for i, d in enumerate(dtypes)}
    tensors |= {"latents": torch.randn(2, 4, generator=g), "seeds": torch.arange(2), "empty": torch.zeros(0, 4)}
    meta = {"repro": json.dumps({"prompts": ['é "q"\n', "\x7f", "猫"], "start": 0}, ensure_ascii=False, sort_keys=True)}
    assert b"".join(bytes(p) for p in parts(tensors, meta)) == save(tensors, metadata=meta)
    assert b"".join(bytes(p) for p in parts(tensors)) == save(tensors)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(steps=2, guidance=2.0)])
def test_direct_sampler_gives_the_pipelines_latents(pipe, sampling):
    from repro.direct import DirectSampler

    prompts, seeds = ["a red cube", "two blue balls", "a green ring"], [3, 4, 5]
    ref = generate(pipe, prompts, seeds, sampling, output="latent")
    assert torch.equal(DirectSampler(pipe, sampling).latents(prompts, seeds), ref)


def _records(folder):
    store = ActivationStore(folder)
    assert store.complete and store.verify_all() == []
    keys = ("file", "start", "stop", "bytes", "sha256", "prompts_sha256", "nonfinite")
    return [{k: r[k] for k in keys} for r in store.shards], store.info


@pytest.mark.parametrize("kw", [dict(), dict(steps=2, guidance=2.0, dtype="fp32")])
def test_fast_collection_writes_the_same_store(pipe, tmp_path, kw):
    """Direct UNet loop + 3 writer threads == the pipeline with one writer, byte for byte."""
    base = dict(n_prompts=7, shard_size=2, batch_size=2, **kw)
    ref = collect(CollectConfig(out=tmp_path / "ref", engine="pipeline", writers=1, **base), pipe=pipe, progress=False)
    fast = collect(CollectConfig(out=tmp_path / "fast", engine="direct", writers=3, **base), pipe=pipe, progress=False)
    assert _records(ref.folder) == _records(fast.folder)
    for r in ref.shards:
        assert (ref.folder / r["file"]).read_bytes() == (fast.folder / r["file"]).read_bytes()


def test_fast_shard_equals_the_old_writers_bytes(pipe, tmp_path):
    """The first shard, rebuilt as the one-thread writer of before serialised it (`st_save`)."""
    from repro.collect import capture_batch
    from repro.prompts import open_prompts, seeds_for
    from repro.store.layout import LATENTS, SEEDS, store_dtype

    store = collect(CollectConfig(out=tmp_path / "s", n_prompts=4, shard_size=4, batch_size=2), pipe=pipe,
                    progress=False)
    prompts = open_prompts("shapes").get(0, 4)
    parts_, lat = {}, []
    for lo in (0, 2):
        up, latents = capture_batch(pipe, prompts[lo : lo + 2], seeds_for(lo, lo + 2, 0), store.blocks, Sampling(),
                                    store_dtype("bf16"))
        for b, t in up.items():
            parts_.setdefault(b, []).append(t.cpu())
        lat.append(latents.float().cpu())
    tensors = {b: torch.cat(p) for b, p in parts_.items()}
    tensors[LATENTS] = torch.cat(lat)
    tensors[SEEDS] = torch.tensor(seeds_for(0, 4, 0), dtype=torch.int64)
    meta = {"repro": json.dumps({"prompts": prompts, "start": 0, "stop": 4}, ensure_ascii=False, sort_keys=True)}
    assert (store.folder / store.shards[0]["file"]).read_bytes() == save(tensors, metadata=meta)


def _reference_batches(src, n_batches):
    """The batches of before: each group loaded in file order, rows gathered per batch by the permutation."""
    from repro.store.chunks import ChunkedSource

    B, out, rest = src.batch_size, [], None
    cursor = src.cursor
    while len(out) < n_batches and cursor is not None:
        chunk = src._load_chunk(cursor)
        n = next(iter(chunk.values())).shape[0]
        order = ChunkedSource._order(src, cursor, n)
        order = torch.arange(n) if order is None else order
        if src._row_map is not None:
            order = src._row_map[order]
        rows = {k: t[order] for k, t in chunk.items()}
        rest = rows if rest is None else {k: torch.cat([rest[k], rows[k]]) for k in rows}
        while rest[next(iter(rest))].shape[0] >= B and len(out) < n_batches:
            out.append({k: t[:B] for k, t in rest.items()})
            rest = {k: t[B:] for k, t in rest.items()}
        cursor = src._next_cursor(cursor)
    return out


@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("shards_per_chunk", [1, 2, 4])
def test_store_reading_gives_the_reference_batches(pipe, tmp_path, prefetch, shards_per_chunk):
    from repro.store import StoreSource

    store = collect(CollectConfig(out=tmp_path / "s", n_prompts=7, shard_size=2, batch_size=2, steps=2, guidance=2.0),
                    pipe=pipe, progress=False)
    kw = dict(seed=3, shards_per_chunk=shards_per_chunk, epochs=2)
    ref = _reference_batches(StoreSource(store, 48, **kw, prefetch=0), 10**6)
    got = list(StoreSource(store, 48, **kw, prefetch=prefetch))
    assert len(got) == len(ref) > 2
    for a, b in zip(got, ref):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    half = StoreSource(store, 48, step=1, half="cond", **kw, prefetch=prefetch)  # strided selection
    ref_half = _reference_batches(StoreSource(store, 48, step=1, half="cond", **kw, prefetch=0), 10**6)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(half, ref_half) for k in a)
    src = StoreSource(store, 48, **kw, prefetch=prefetch)  # resumed in the middle
    it = iter(src)
    for _ in range(3):
        next(it)
    state = src.state_dict()
    resumed = StoreSource(store, 48, **kw, prefetch=prefetch)
    resumed.load_state_dict(state)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(resumed, ref[3:]) for k in a)


def test_overlapped_streaming_trains_the_same_saes(pipe):
    """Direct UNet loop + prefetching generation thread + SAE side stream == the sequential path."""
    from repro.stream import StreamSource
    from repro.sae.config import SAEConfig, TrainConfig
    from repro.sae.model import TopKSAE
    from repro.sae.train import train_saes

    blocks = ["mid.0", "up.0.0"]

    def run(**kw):
        src = StreamSource(pipe, "shapes", 32, blocks=blocks, n_prompts=12, gen_batch_size=2, buffer_images=4, **kw)
        saes = {b: TopKSAE(SAEConfig(d_model=src_width(b), n_features=64, k=4, k_aux=8), seed=1) for b in blocks}
        cfg = TrainConfig(steps=6, device="cpu", checkpoint_every=0, progress=False, log_every=2,
                          geometric_median_samples=64, side_stream=kw.pop("side", False))
        res = train_saes(saes, src, cfg)
        return saes, res

    def src_width(b):
        from repro.blocks import get_block

        return get_block(pipe.unet, b).config.in_channels

    ref, r1 = run()
    fast, r2 = run(engine="direct", prefetch=1)
    strip = lambda m: {b: {k: v for k, v in row.items() if k != "tokens_per_s"} for b, row in m.items()}  # noqa: E731
    assert r1.steps == r2.steps == 6 and strip(r1.last_metrics) == strip(r2.last_metrics)
    for b in blocks:
        for (name, p), q in zip(ref[b].state_dict().items(), fast[b].state_dict().values()):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("prefetch", [0, 1])
def test_a_rewound_stream_serves_its_kept_chunks_without_generating_them_again(pipe, prefetch):
    """init_b_pre draws its sample and rewinds: the chunks it saw (and the one prepared ahead)
    are served again, the same batches, with no image generated twice."""
    from repro.stream import StreamSource
    from repro.sae.config import SAEConfig, TrainConfig
    from repro.sae.model import TopKSAE
    from repro.sae.train import train_saes

    blocks = ["mid.0"]

    def run(keep: int):
        src = StreamSource(pipe, "shapes", 32, blocks=blocks, n_prompts=12, gen_batch_size=2, buffer_images=4,
                           engine="direct", prefetch=prefetch)
        src.keep_chunks = keep
        from repro.blocks import get_block

        sae = TopKSAE(SAEConfig(d_model=get_block(pipe.unet, "mid.0").config.in_channels, n_features=64, k=4, k_aux=8),
                      seed=1)
        cfg = TrainConfig(steps=10, device="cpu", checkpoint_every=0, progress=False, log_every=5,
                          geometric_median_samples=48)
        train_saes({"mid.0": sae}, src, cfg)
        return sae, src.images_generated

    kept, n_kept = run(keep=2)
    plain, n_plain = run(keep=0)
    for (name, a), b in zip(kept.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert n_kept == 12  # every image once: 10 batches of 32 rows take 3 chunks of 4 images
    assert n_plain > n_kept  # without keeping, the first chunk (and the one read ahead) came twice


@pytest.mark.parametrize("prefetch", [0, 1])
def test_one_generation_pipeline_runs_across_chunks_and_restarts_where_a_stream_jumps(pipe, prefetch, monkeypatch):
    """The direct sampler's prepare pipeline carries on from one chunk to the next (the next
    chunk's first batch is prepared during this one); a resumed stream starts a new one there,
    and every batch equals the uninterrupted stream's."""
    from repro.stream import StreamSource
    from repro.direct import DirectSampler

    starts = []
    original = DirectSampler.prepared

    def counted(self, batches, ahead=1):
        starts.append(True)
        return original(self, batches, ahead)

    monkeypatch.setattr(DirectSampler, "prepared", counted)

    def source():
        return StreamSource(pipe, "shapes", 16, blocks=["mid.0"], n_prompts=12, gen_batch_size=2, buffer_images=4,
                            engine="direct", prefetch=prefetch)

    whole = list(source())
    assert len(starts) == 1  # three chunks, one pipeline
    src = source()
    it = iter(src)
    first = [next(it) for _ in range(2)]
    state = src.state_dict()
    it.close()
    resumed = source()
    resumed.load_state_dict(state)
    starts.clear()
    rest = list(resumed)
    assert len(starts) == 1 and len(first) + len(rest) == len(whole)
    for a, b in zip(first + rest, whole):
        assert torch.equal(a["mid.0"], b["mid.0"])
