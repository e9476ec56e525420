"""The activation store: equal to a direct capture, atomic, checked, and read back exactly."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from repro.cli import main as cli_main
from repro.collect import CollectConfig, collect
from repro.errors import ReproError
from repro.generate import Sampling, generate
from repro.hooks import capture_updates
from repro.prompts import open_prompts, seeds_for
from repro.store import ActivationStore, StoreSource
from repro.store import writer as store_writer

BLOCKS = ("down.2.1", "mid.0", "up.0.0", "up.0.1")




def _collect(pipe, out, **kw):
    cfg = dict(out=out, n_prompts=6, shard_size=4, batch_size=2, dtype="fp32")
    cfg.update(kw)
    return collect(CollectConfig(**cfg), pipe=pipe, progress=False)


def _direct(pipe, n, batch_size, sampling, seed=0):
    """Updates captured in a plain generate with the same batches: {block: [n, steps, B_total/B..]}."""
    prompts = open_prompts("shapes", seed=seed).get(0, n)
    out = {b: [] for b in BLOCKS}
    latents = []
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        with capture_updates(pipe.unet, BLOCKS, cfg=sampling.cfg) as cap:
            latents.append(generate(pipe, prompts[lo:hi], seeds_for(lo, hi, seed), sampling, output="latent"))
        for b in BLOCKS:
            out[b].append(cap)
    return prompts, out, torch.cat(latents)


def test_store_equals_direct_capture(pipe, tmp_path):
    store = _collect(pipe, tmp_path / "s")
    prompts, caps, latents = _direct(pipe, 6, 2, Sampling())
    assert store.n_images == 6 and store.complete and len(store.shards) == 2
    assert store.prompts() == prompts and store.seeds() == list(range(6))
    assert store.prompt(4) == prompts[4]
    for i in range(6):
        for b in BLOCKS:
            direct = caps[b][i // 2].updates(b)[:, i % 2]  # [steps, C, H, W]
            assert torch.equal(store.image(i, b), direct.permute(0, 2, 3, 1))
    assert torch.equal(store.latents(range(6)), latents)
    assert store.block_shape("mid.0") == (4, 4, 64)


def test_bf16_store_is_the_cast_capture(pipe, tmp_path):
    store = _collect(pipe, tmp_path / "s", n_prompts=2, dtype="bf16")
    _, caps, _ = _direct(pipe, 2, 2, Sampling())
    got = store.image(1, "up.0.1")
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, caps["up.0.1"][0].updates("up.0.1")[:, 1].permute(0, 2, 3, 1).to(torch.bfloat16))


def test_cfg_halves_are_stored_apart(pipe, tmp_path):
    sampling = Sampling(steps=2, guidance=3.0)
    store = _collect(pipe, tmp_path / "s", n_prompts=3, steps=2, guidance=3.0, blocks=("mid.0",))
    assert store.halves == ["uncond", "cond"]
    prompts = open_prompts("shapes").get(0, 3)
    for lo, hi in ((0, 2), (2, 3)):
        with capture_updates(pipe.unet, ["mid.0"], cfg=True) as cap:
            generate(pipe, prompts[lo:hi], seeds_for(lo, hi), sampling, output="latent")
        for j in range(hi - lo):
            for half in ("cond", "uncond"):
                want = cap.updates("mid.0", half=half)[:, j].permute(0, 2, 3, 1)  # [steps, H, W, C]
                assert torch.equal(store.image(lo + j, "mid.0", half=half), want)
            assert not torch.equal(store.image(lo + j, "mid.0", "cond"), store.image(lo + j, "mid.0", "uncond"))
    assert store.image(0, "mid.0", half=None).shape == (2, 2, 4, 4, 64)
    tokens = StoreSource(store, 4, half="cond", step=1, shuffle=False, epochs=1)
    first = next(iter(tokens))["mid.0"]
    assert torch.equal(first, store.image(0, "mid.0", "cond")[1].reshape(16, 64)[:4])


def test_checksum_corruption_is_reported_by_name(pipe, tmp_path):
    _collect(pipe, tmp_path / "s")
    shard = tmp_path / "s" / "shards" / "shard-000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore(tmp_path / "s")
    store.image(0, "mid.0")  # shard 0 is fine
    with pytest.raises(ReproError, match="shard-000001.safetensors .*corrupt"):
        store.image(5, "mid.0")
    with pytest.raises(ReproError, match="shard-000001"):
        list(StoreSource(store, 8, epochs=1))
    assert store.verify_all() == ["shards/shard-000001.safetensors"]
    assert cli_main(["store", "verify", str(tmp_path / "s"), "--no-progress"]) == 2
    shard.unlink()
    with pytest.raises(ReproError, match="shard-000001.safetensors .*missing"):
        ActivationStore(tmp_path / "s").image(4, "mid.0")


def test_append_with_other_settings_is_rejected(pipe, tmp_path):
    _collect(pipe, tmp_path / "s", n_prompts=2)
    for change in ({"dtype": "bf16"}, {"blocks": ("mid.0",)}, {"steps": 2}, {"seed": 1}, {"batch_size": 1}):
        with pytest.raises(ReproError, match="was created with .*" + next(iter(change))):
            _collect(pipe, tmp_path / "s", n_prompts=2, **change)
    other = tmp_path / "p.txt"
    other.write_text("a\nb\nc\n")
    with pytest.raises(ReproError, match="prompt_kind"):
        _collect(pipe, tmp_path / "s", n_prompts=2, prompts=str(other))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ReproError, match="not an activation store"):
        _collect(pipe, tmp_path / "foreign", n_prompts=2)
    with pytest.raises(ReproError, match="manifest.json is missing"):
        ActivationStore(tmp_path / "nowhere")


def test_changed_prompts_on_append_are_rejected(pipe, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a\nb\nc\nd\n")
    _collect(pipe, tmp_path / "s", n_prompts=2, shard_size=2, prompts=str(f))
    f.write_text("a\nB\nc\nd\n")
    with pytest.raises(ReproError, match="prompts of shard shards/shard-000000"):
        _collect(pipe, tmp_path / "s", n_prompts=4, shard_size=2, prompts=str(f))


def test_extending_a_store_redoes_only_its_short_last_shard(pipe, tmp_path):
    _collect(pipe, tmp_path / "a", n_prompts=5)
    first = json.loads((tmp_path / "a" / "manifest.json").read_text())["shards"][0]
    store = _collect(pipe, tmp_path / "a", n_prompts=7)
    ref = _collect(pipe, tmp_path / "b", n_prompts=7)
    assert store.shards[0] == first
    with pytest.raises(ReproError, match="already holds 7 prompts"):
        _collect(pipe, tmp_path / "a", n_prompts=6)
    assert [r["sha256"] for r in store.shards] == [r["sha256"] for r in ref.shards]


def test_disk_full_leaves_no_partial_shard(pipe, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = store_writer._write_file

    def full_disk(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(bytes(data[0]))  # the header only: a partial file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(store_writer, "_write_file", full_disk)
    with pytest.raises(ReproError, match="disk is full while writing shards/shard-000001"):
        _collect(pipe, tmp_path / "s")
    files = sorted(p.name for p in (tmp_path / "s" / "shards").iterdir())
    assert files == ["shard-000000.safetensors"]
    store = ActivationStore(tmp_path / "s")
    assert [r["file"] for r in store.shards] == ["shards/shard-000000.safetensors"] and not store.complete
    monkeypatch.setattr(store_writer, "_write_file", real)
    assert _collect(pipe, tmp_path / "s").complete


def test_exception_mid_shard_leaves_no_partial_shard(pipe, tmp_path, monkeypatch):
    import repro.collect as collect_mod

    real = collect_mod.capture_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # second batch of shard 1
            raise RuntimeError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(collect_mod, "capture_batch", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        _collect(pipe, tmp_path / "s", n_prompts=8)
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == ["shard-000000.safetensors"]
    assert len(ActivationStore(tmp_path / "s").shards) == 1
    monkeypatch.setattr(collect_mod, "capture_batch", real)
    resumed = _collect(pipe, tmp_path / "s", n_prompts=8)
    ref = _collect(pipe, tmp_path / "ref", n_prompts=8)
    assert [r["sha256"] for r in resumed.shards] == [r["sha256"] for r in ref.shards]


def test_nonfinite_values_are_counted(pipe, tmp_path, monkeypatch):
    import repro.collect as collect_mod

    real = collect_mod.capture_batch

    def with_nan(*args, **kwargs):
        updates, latents = real(*args, **kwargs)
        updates["mid.0"][0, 0, 0, :3, 0] = float("nan")
        return updates, latents

    monkeypatch.setattr(collect_mod, "capture_batch", with_nan)
    store = _collect(pipe, tmp_path / "s", n_prompts=4)
    assert [r["nonfinite"] for r in store.shards] == [{"down.2.1": 0, "mid.0": 6, "up.0.0": 0, "up.0.1": 0}]
    assert "non-finite values: 6" in store.summary()


@pytest.fixture(scope="module")
def small_store(pipe, tmp_path_factory):
    return _collect(pipe, tmp_path_factory.mktemp("store") / "s", n_prompts=10, shard_size=3, dtype="bf16")


def test_reader_yields_every_token_once_per_epoch(small_store):
    src = StoreSource(small_store, 7, seed=0, epochs=1, shards_per_chunk=2)
    batches = list(src)
    n_tokens = 10 * 16
    assert len(batches) == n_tokens // 7 and all(b["mid.0"].shape == (7, 64) for b in batches)
    assert set(batches[0]) == set(BLOCKS)
    # rows are aligned across blocks and every token appears at most once: compare against the full set
    everything = {b: torch.cat([small_store.image(i, b).reshape(-1, 64) for i in range(10)]) for b in BLOCKS}
    seen = torch.cat([b["up.0.0"] for b in batches]).float()
    full = everything["up.0.0"].float()
    idx = torch.cdist(seen, full).argmin(1)
    assert len(set(idx.tolist())) == len(idx)
    for b in BLOCKS:
        assert torch.equal(torch.cat([x[b] for x in batches]), everything[b][idx])
    again = list(StoreSource(small_store, 7, seed=0, epochs=1, shards_per_chunk=2))
    assert all(torch.equal(x["mid.0"], y["mid.0"]) for x, y in zip(batches, again))
    other = list(StoreSource(small_store, 7, seed=1, epochs=1, shards_per_chunk=2))
    assert not torch.equal(other[0]["mid.0"], batches[0]["mid.0"])
    assert StoreSource(small_store, 7, blocks=["mid.0"]).blocks == ["mid.0"]


@pytest.mark.parametrize("stop_after", [1, 5, 9, 23])
def test_reader_resume_gives_the_following_batches(small_store, stop_after):
    kw = dict(seed=3, shards_per_chunk=2, epochs=2)
    ref = list(StoreSource(small_store, 13, **kw))
    src = StoreSource(small_store, 13, **kw)
    for n, _ in enumerate(src, 1):
        if n == stop_after:
            break
    state = src.state_dict()
    torch.save(state, "/dev/null")
    new = StoreSource(ActivationStore(small_store.folder), 13, **kw)
    new.load_state_dict(state)
    rest = list(new)
    assert len(rest) == len(ref) - stop_after
    assert all(torch.equal(a[b], r[b]) for a, r in zip(rest, ref[stop_after:]) for b in BLOCKS)
    with pytest.raises(ReproError, match="seed"):
        StoreSource(small_store, 13, seed=4).load_state_dict(state)


def test_cli_collect_info_verify(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli_main(["collect", "--model", "tiny-random", "--n-prompts", "2", "--shard-size", "2", "--batch-size", "2", "--blocks",
                     "mid.0,up.0.1", "--store-dtype", "fp16", "--out", str(out), "--no-progress"]) == 0
    assert cli_main(["store", "info", str(out)]) == 0
    assert "dtype fp16" in capsys.readouterr().out
    assert cli_main(["store", "verify", str(out), "--no-progress"]) == 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli_main(["collect", "--model", "tiny-random", "--prompts", str(empty), "--n-prompts", "2",
                     "--out", str(tmp_path / "e")]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    assert cli_main(["collect", "--model", "tiny-random", "--n-prompts", "2", "--blocks", "down.9.9",
                     "--out", str(tmp_path / "b")]) == 2
    assert "no block 'down.9.9'" in capsys.readouterr().err


def test_one_writer_at_a_time(pipe, tmp_path):
    store = _collect(pipe, tmp_path / "s", n_prompts=2)
    from repro.store import StoreWriter

    settings, info = store.settings, store.info
    with StoreWriter(tmp_path / "s", settings, info, 2):
        with pytest.raises(ReproError, match="another collection is writing"):
            StoreWriter(tmp_path / "s", settings, info, 2)
    with StoreWriter(tmp_path / "s", settings, info, 2) as w:  # released
        assert w.has_shard(0, 0, 2, store.shards[0]["prompts_sha256"])
