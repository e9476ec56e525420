"""The UNet replayed from a CUDA graph gives the eager UNet's latents and block updates."""

from __future__ import annotations

import pytest
import torch

from repro.direct import DirectSampler
from repro.generate import Sampling
from repro.hooks import block_hooks
from repro.unet_graph import UNetGraph, unhooked

BLOCKS = ["down.2.1", "up.0.1"]


def test_unhooked_sees_a_hook_anywhere_in_the_unet(tiny_pipe):
    unet = tiny_pipe.unet
    assert unhooked(unet)
    with block_hooks(unet, {"up.0.1": lambda update, inp, step: None}):
        assert not unhooked(unet)
    assert unhooked(unet)


def test_a_sampler_on_the_cpu_never_captures(tiny_pipe):
    sampler = DirectSampler(tiny_pipe, Sampling(steps=1, resolution=64))
    assert not sampler.graph
    sampler.run_recording(sampler.prepare(["a red circle"], [0]), BLOCKS)
    assert not sampler._graphs


def _record(pipe, graph: bool, sampling: Sampling, batches: int = 4):
    sampler = DirectSampler(pipe, sampling, graph=graph)
    out = []
    for i in range(batches):
        prompts = [f"a red circle {i}", f"a blue square {i}", "two green triangles"]
        seeds = [3 * i, 3 * i + 1, 3 * i + 2]
        latents, records = sampler.run_recording(sampler.prepare(prompts, seeds), BLOCKS, torch.bfloat16)
        out.append((latents.clone(), {b: torch.stack(r) for b, r in records.items()}))
    return sampler, out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("sampling", [Sampling(steps=1, resolution=64), Sampling(steps=3, guidance=2.0, resolution=64)])
def test_replayed_unet_calls_match_the_eager_ones_on_cuda(sampling):
    from repro.models.loading import load_pipeline

    pipe = load_pipeline("tiny-random", device="cuda", dtype="float16")
    graphed, got = _record(pipe, True, sampling)
    _, want = _record(pipe, False, sampling)
    (g,) = graphed._graphs.values()
    assert g.graph is not None and g.replays >= 2 * sampling.steps  # later batches were replays
    for (lat_g, rec_g), (lat_e, rec_e) in zip(got, want):
        torch.testing.assert_close(lat_g, lat_e, rtol=0, atol=1e-3)
        for b in BLOCKS:
            assert rec_g[b].shape == rec_e[b].shape and rec_g[b].dtype == torch.bfloat16
            torch.testing.assert_close(rec_g[b].float(), rec_e[b].float(), rtol=1e-2, atol=1e-2)
    # an intervention hook on the UNet: the sampler runs eagerly rather than replay a graph without it
    replays = g.replays
    with block_hooks(pipe.unet, {"up.0.1": lambda update, inp, step: torch.zeros_like(update)}):
        graphed.run_recording(graphed.prepare(["x"] * 3, [0, 1, 2]), BLOCKS)
    assert g.replays == replays


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_batch_of_another_shape_runs_eagerly_on_cuda():
    from repro.models.loading import load_pipeline

    pipe = load_pipeline("tiny-random", device="cuda", dtype="float16")
    sampler = DirectSampler(pipe, Sampling(steps=1, resolution=64))
    for n in (2, 2, 2, 1):
        latents, records = sampler.run_recording(sampler.prepare(["a"] * n, list(range(n))), BLOCKS)
        assert latents.shape[0] == n and records[BLOCKS[0]][0].shape[0] == n
    (g,) = sampler._graphs.values()
    assert g.replays == 2 and isinstance(g, UNetGraph)
