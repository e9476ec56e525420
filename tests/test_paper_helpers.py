"""Helpers of the paper path: step windows, the example RIEBench, stand-in names, the fp16
VAE upcast and the device option of the store reader."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from repro.collect import CollectConfig, collect
from repro.evaluate.in_loop import step_windows
from repro.generate import decode_latents
from repro.models.loading import default_resolution
from repro.models.standin import is_standin, standin_note
from repro.riebench.data import CATEGORIES, attach_masks, load_edits, whole_image_masks
from repro.riebench.example import write_example
from repro.store import StoreSource

pytestmark = pytest.mark.usefixtures("one_thread")


# -- step windows ------------------------------------------------------------------------

@pytest.mark.parametrize("n, sizes", [(25, [7, 6, 6, 6]), (4, [1, 1, 1, 1]), (8, [2, 2, 2, 2]), (3, [1, 1, 1]),
                                      (1, [1])])
def test_step_windows_are_consecutive_and_cover_every_step_once(n, sizes):
    windows = step_windows(n, 4)
    assert [len(w) for w in windows] == sizes
    assert [s for w in windows for s in w] == list(range(n))
    assert all(type(s) is int for w in windows for s in w)


def test_step_windows_small_cases():
    assert step_windows(25, 4)[0] == [0, 1, 2, 3, 4, 5, 6] and step_windows(25, 4)[-1] == [19, 20, 21, 22, 23, 24]
    assert step_windows(3, 4) == [[0], [1], [2]]
    assert step_windows(1, 4) == [[0]]
    assert step_windows(25) == step_windows(25, 4)


# -- the example RIEBench ------------------------------------------------------------------

@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return write_example(tmp_path_factory.mktemp("example"), resolution=64, per_category=2)


def test_example_has_two_edits_per_category(example):
    edits_file, masks = example
    assert edits_file.name == "edits.json" and masks.is_dir() and masks.parent == edits_file.parent
    edits = load_edits(edits_file)
    assert len(edits) == 18
    assert [e.category for e in edits] == [c for c in CATEGORIES for _ in range(2)]
    assert all(e.problem is None for e in edits)
    assert len({e.id for e in edits}) == 18
    # the published layout: style edits have no mask file, the others one per image
    files = sorted(p.name for p in masks.iterdir())
    assert len(files) == 2 * 2 * 8
    assert not any(name.startswith("change_style") for name in files)


def test_example_masks(example):
    edits_file, masks = example
    edits = attach_masks(load_edits(edits_file), masks)
    assert all(e.problem is None for e in edits)
    for e in edits:
        if e.category == "change_style":
            assert e.source_mask is None and e.target_mask is None
            continue
        for mask in (e.source_mask, e.target_mask):
            assert mask.dtype == bool and mask.shape == (64, 64), e.id
            assert mask.any() and not mask.all(), e.id
        if e.category == "change_background":
            # the edited region is everything but the drawn (foreground) ellipse
            assert e.source_mask.mean() > 0.5 and e.target_mask.mean() > 0.5, e.id
        else:
            assert e.source_mask.mean() < 0.5, e.id
    # background edits are the complement of the named object's ellipse: a centred blob stays out
    bg = next(e for e in edits if e.category == "change_background")
    assert not bg.source_mask[32, 32] and bg.source_mask[0, 0] and bg.source_mask[63, 63]
    obj = next(e for e in edits if e.category == "change_object")
    assert obj.source_mask[32, 32] and not obj.source_mask[0, 0]

    full = whole_image_masks(edits, 64)
    for e in full:
        if e.category == "change_style":
            assert e.source_mask.shape == (64, 64) and e.source_mask.all() and e.target_mask.all()
        e.validate(64)
    # whole_image_masks leaves the others alone
    assert all(np.array_equal(a.source_mask, b.source_mask) for a, b in zip(edits, full) if a.category != "change_style")


def test_cli_writes_the_example(tmp_path):
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, "-m", "repro.cli", "riebench-example", str(out), "--resolution", "32"],
                            capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert (out / "edits.json").is_file() and str(out / "edits.json") in result.stdout
    edits = whole_image_masks(attach_masks(load_edits(out / "edits.json"), out / "masks"), 32)
    assert len(edits) == 18
    for e in edits:
        e.validate(32)
        assert e.source_mask.shape == (32, 32)


# -- stand-in names ------------------------------------------------------------------------

def test_is_standin_and_note():
    assert is_standin("standin-sdxl-turbo") == "sdxl-turbo"
    assert is_standin("standin-sdxl-base") == "sdxl-base"
    assert is_standin("tiny-random") is None
    assert is_standin("standin-foo") is None
    assert is_standin("sdxl-turbo") is None
    assert standin_note("shapes-turbo") is None
    assert standin_note() is None
    note = standin_note("standin-sdxl-base", "standin-sdxl-turbo")
    assert "sdxl-base" in note and "sdxl-turbo" in note and "noise" in note
    assert "\n" not in note
    assert standin_note("tiny-random", "standin-sdxl-turbo").count("sdxl-") == 1


# -- fp16 VAE decoding with force_upcast ---------------------------------------------------

def test_decode_latents_upcasts_an_fp16_vae_and_goes_back(tiny_pipe):
    vae = tiny_pipe.vae
    h = tiny_pipe.unet.config.sample_size
    latents = torch.randn(2, 4, h, h, generator=torch.Generator().manual_seed(0))
    upcast_before = vae.config.force_upcast
    weights = {k: v.clone() for k, v in vae.state_dict().items()}  # fp16 rounds them: restored at the end
    assert vae.dtype == torch.float32
    reference = decode_latents(tiny_pipe, latents)
    side = default_resolution(tiny_pipe)
    assert reference.shape == (2, side, side, 3) and side > h
    assert reference.dtype == np.uint8 and reference.std() > 10  # not a flat image
    seen = []  # dtype of the decoder's input and weights during each decode
    hook = vae.decoder.register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].dtype, next(mod.parameters()).dtype)))
    try:
        vae.register_to_config(force_upcast=True)
        vae.to(torch.float16)
        images = decode_latents(tiny_pipe, latents)
        assert seen == [(torch.float32, torch.float32)] * len(seen) and seen  # decoded in fp32
        assert vae.dtype == torch.float16 and all(p.dtype == torch.float16 for p in vae.parameters())
        assert images.shape == reference.shape and images.dtype == np.uint8
        assert np.abs(images.astype(int) - reference.astype(int)).max() <= 2

        # without force_upcast the fp16 VAE decodes in fp16
        seen.clear()
        vae.register_to_config(force_upcast=False)
        decode_latents(tiny_pipe, latents)
        assert seen and all(s == (torch.float16, torch.float16) for s in seen)
        vae.register_to_config(force_upcast=True)

        # a failing decode still leaves the VAE in fp16
        def fail(mod, args):
            raise RuntimeError("decoder broke")

        broken = vae.decoder.register_forward_pre_hook(fail)
        try:
            with pytest.raises(RuntimeError, match="decoder broke"):
                decode_latents(tiny_pipe, latents)
        finally:
            broken.remove()
        assert vae.dtype == torch.float16
    finally:
        hook.remove()
        vae.to(torch.float32)
        vae.load_state_dict(weights)
        vae.register_to_config(force_upcast=upcast_before)
    assert vae.dtype == torch.float32  # the shared fixture is as it was
    assert np.array_equal(decode_latents(tiny_pipe, latents), reference)


# -- the store reader's device option ------------------------------------------------------

@pytest.fixture(scope="module")
def small_store(tiny_pipe, tmp_path_factory):
    cfg = CollectConfig(out=tmp_path_factory.mktemp("store") / "s", n_prompts=6, shard_size=2, batch_size=2,
                        dtype="bf16", blocks=("mid.0", "up.0.1"))
    return collect(cfg, pipe=tiny_pipe, progress=False)


@pytest.mark.parametrize("shards_per_chunk", [None, 2])
def test_store_source_on_cpu_device_yields_the_same_batches(small_store, shards_per_chunk):
    kw = dict(seed=0, shards_per_chunk=shards_per_chunk)
    plain = list(itertools.islice(StoreSource(small_store, 7, **kw), 5))
    on_cpu = list(itertools.islice(StoreSource(small_store, 7, device="cpu", **kw), 5))
    assert len(plain) == len(on_cpu) == 5
    for a, b in zip(plain, on_cpu):
        assert set(a) == set(b) == {"mid.0", "up.0.1"}
        for block in a:
            assert b[block].device == torch.device("cpu") and b[block].shape == (7, 64)
            assert b[block].dtype == a[block].dtype == torch.bfloat16
            assert torch.equal(a[block], b[block])
    assert not torch.equal(plain[0]["mid.0"], plain[1]["mid.0"])  # real, different batches
    # and a resumed device reader continues with the same batches
    src = StoreSource(small_store, 7, device="cpu", **kw)
    next(iter(src))
    state = src.state_dict()
    again = StoreSource(small_store, 7, device=torch.device("cpu"), **kw)
    again.load_state_dict(state)
    assert all(torch.equal(x[b], y[b]) for x, y in zip(itertools.islice(again, 4), plain[1:]) for b in x)
