"""The process-wide meter: images and UNet evaluations from generate, SAE tokens from
training, and the `resources` record every results file carries."""

import json

import pytest
import torch

from repro.generate import Sampling, generate
from repro.meter import METER
from repro.results import write_results
from repro.sae import SAEConfig, TensorSource, TopKSAE, TrainConfig, train_saes
from sparse_data import sparse_dictionary_data

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def _counts():
    return METER.images, METER.unet_evaluations, METER.image_seconds


@pytest.mark.parametrize("steps, guidance, per_image", [(2, 0.0, 2), (1, 5.0, 2), (1, 1.0, 1)])
def test_generate_counts_images_and_unet_evaluations(tiny_pipe, steps, guidance, per_image):
    images, evaluations, seconds = _counts()
    rows = []  # the images the UNet really saw: batch rows of each call
    handle = tiny_pipe.unet.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    try:
        out = generate(tiny_pipe, PROMPTS, sampling=Sampling(steps=steps, guidance=guidance), output="latent")
    finally:
        handle.remove()
    assert out.shape[0] == len(PROMPTS)
    assert METER.images - images == len(PROMPTS)
    assert METER.unet_evaluations - evaluations == len(PROMPTS) * steps * (2 if guidance > 1 else 1)
    assert METER.unet_evaluations - evaluations == len(PROMPTS) * per_image
    assert len(rows) == steps and METER.unet_evaluations - evaluations == sum(rows)
    assert METER.image_seconds > seconds


def test_generate_counts_each_call(tiny_pipe):
    images, evaluations, _ = _counts()
    generate(tiny_pipe, PROMPTS[:1], sampling=Sampling(steps=2), output="np")
    generate(tiny_pipe, PROMPTS[:2], seeds=[7, 8], sampling=Sampling(steps=1), output="latent")
    assert METER.images - images == 3
    assert METER.unet_evaluations - evaluations == 1 * 2 + 2 * 1


def test_write_results_records_resources(tiny_pipe, tmp_path):
    generate(tiny_pipe, PROMPTS[:2], output="latent")  # so images and images/s are known
    path = write_results("99_test", {"ev": 0.5}, folder=tmp_path, profile="toy")
    assert path == tmp_path / "99_test.json"
    record = json.loads(path.read_text())
    assert record["numbers"] == {"ev": 0.5} and record["context"] == {"profile": "toy"}
    res = record["resources"]
    assert {"wall_s", "images", "images_per_s", "peak_host_memory_gib", "sae_tokens_per_s_per_block"} <= set(res)
    assert res["images"] == METER.images and res["images"] >= 2
    assert res["images_per_s"] == pytest.approx(METER.images / METER.image_seconds, rel=0.01, abs=1e-3)
    assert res["images_per_s"] > 0
    assert res["wall_s"] >= 0 and res["peak_host_memory_gib"] > 0.05  # a process with torch loaded
    if not torch.cuda.is_available():
        assert res["peak_gpu_memory_gib"] is None and res["gpu"] is None


def _saes(n):
    return {f"b{i}": TopKSAE(SAEConfig(d_model=16, n_features=32, k=4, k_aux=8, dead_tokens_threshold=640), seed=i)
            for i in range(n)}


def _cfg(**kw):
    return TrainConfig(**{**dict(steps=6, lr=1e-3, log_every=3, checkpoint_every=0, progress=False, device="cpu",
                                 geometric_median_samples=256), **kw})


def _source(blocks, rows=1024, batch=64, **kw):
    x, _ = sparse_dictionary_data(rows, 16, n_atoms=16, k_active=3, seed=0)
    return TensorSource({b: x * (i + 1) for i, b in enumerate(blocks)}, batch, **kw)


def test_training_counts_tokens_per_block_and_blocks():
    tokens, seconds = METER.sae_tokens, METER.sae_seconds
    saes = _saes(3)
    res = train_saes(saes, _source(saes, batch=64), _cfg(steps=6))
    assert res.steps == 6 and res.tokens == 6 * 64
    assert METER.sae_tokens - tokens == 6 * 64  # per block, not x 3
    assert METER.sae_blocks == 3
    assert METER.sae_seconds > seconds
    snap = METER.snapshot()
    assert snap["sae_tokens_per_block"] == METER.sae_tokens and snap["sae_blocks"] == 3
    assert snap["sae_tokens_per_s_per_block"] == round(METER.sae_tokens / METER.sae_seconds)

    # a second run adds its tokens; sae_blocks is that run's count
    tokens = METER.sae_tokens
    one = _saes(1)
    train_saes(one, _source(one, batch=32), _cfg(steps=5, log_every=5))
    assert METER.sae_tokens - tokens == 5 * 32
    assert METER.sae_blocks == 1


def test_training_counts_only_the_steps_taken():
    # 256 rows in batches of 64, one epoch: the source runs out after 4 of 10 steps
    tokens = METER.sae_tokens
    saes = _saes(2)
    res = train_saes(saes, _source(saes, rows=256, batch=64, epochs=1), _cfg(steps=10, init_b_pre=False))
    assert res.steps == 4
    assert METER.sae_tokens - tokens == 4 * 64
    assert METER.sae_blocks == 2
