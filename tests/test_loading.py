import json
import shutil

import numpy as np
import pytest
import torch

from repro.devices import pick_device, pick_dtype
from repro.errors import ReproError
from repro.generate import generate
from repro.models.loading import default_resolution, load_pipeline, vae_factor


def test_round_trip_through_the_users_loader(tiny_pipe, tiny_pipe_dir):
    loaded = load_pipeline(tiny_pipe_dir, device="cpu", dtype="float32")
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    assert default_resolution(loaded) == 64 and vae_factor(loaded) == 4
    a = generate(tiny_pipe, ["a red circle", "a cat"], [3, 4])
    b = generate(loaded, ["a red circle", "a cat"], [3, 4])
    np.testing.assert_array_equal(a, b)
    for name, p in tiny_pipe.unet.state_dict().items():
        torch.testing.assert_close(loaded.unet.state_dict()[name], p, rtol=0, atol=0)


def test_load_in_half_precision_keeps_dtype(tiny_pipe_dir):
    pipe = load_pipeline(tiny_pipe_dir, device="cpu", dtype="bfloat16")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "remove, expected",
    [("unet/config.json", "unet/config.json is missing"),
     ("model_index.json", "model_index.json is missing"),
     ("vae/diffusion_pytorch_model.safetensors", "weights of vae")],
)
def test_incomplete_folder_names_the_missing_file(tiny_pipe_dir, tmp_path, remove, expected):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipe_dir, broken)
    (broken / remove).unlink()
    with pytest.raises(ReproError, match=expected):
        load_pipeline(broken)


def test_non_sdxl_pipeline_is_rejected(tiny_pipe_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_pipe_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ReproError, match="not an SDXL pipeline"):
        load_pipeline(other)


def test_missing_model_gets_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(ReproError, match="does not exist"):
        load_pipeline(tmp_path / "nothing-here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ReproError) as err:
        load_pipeline("someone/not-a-cached-model")
    assert "hf download someone/not-a-cached-model" in str(err.value)
    monkeypatch.setenv("REPRO_MODELS_DIR", str(tmp_path))
    with pytest.raises(ReproError, match="make toy-model"):
        load_pipeline("shapes-turbo")


def test_device_and_dtype_choices():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ReproError, match="unknown dtype"):
        pick_dtype("float8", torch.device("cpu"))
    with pytest.raises(ReproError, match="unknown device"):
        pick_device("gpu-please")


def test_the_vae_decodes_in_chunks_of_a_pixel_budget(tiny_pipe):
    """64-px images under a budget of 3 images' pixels: 7 latents decode in calls of 3, 3 and 1, and
    equal decoding them one at a time."""
    from repro.models.loading import decode_in_chunks

    vae = tiny_pipe.vae
    z = torch.randn(7, vae.config.latent_channels, 16, 16)
    with torch.no_grad():
        alone = torch.cat([vae._decode(z[i:i + 1]).sample for i in range(7)])
        sizes = []
        original = vae._decode
        vae._decode = lambda part, **kw: (sizes.append(len(part)), original(part, **kw))[1]
        try:
            decode_in_chunks(tiny_pipe, max_pixels=3 * 64 * 64)
            chunked = vae.decode(z).sample
            as_tuple = vae.decode(z[:2], return_dict=False)[0]
        finally:
            del vae._decode
            decode_in_chunks(tiny_pipe)  # the loader's budget again
    assert sizes == [3, 3, 1, 2]
    torch.testing.assert_close(chunked, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(as_tuple, alone[:2], rtol=1e-4, atol=1e-4)


def test_images_are_quantised_on_the_device_as_numpy_would():
    """`to_uint8` of a tensor (quantised where it lives) equals the numpy path, at the rounding
    edges (k/255 +- half a step), out of range, and from float16."""
    from repro.generate import to_uint8

    k = torch.arange(256, dtype=torch.float32) / 255
    x = torch.cat([k, k + 0.5 / 255, k - 0.5 / 255, torch.tensor([-1.0, 0.0, 1.0, 2.0]), torch.rand(4000)])
    x = x.reshape(1, -1, 1, 3 if x.numel() % 3 == 0 else 1)
    assert np.array_equal(to_uint8(x), to_uint8(x.numpy()))
    h = x.half()
    assert np.array_equal(to_uint8(h), to_uint8(h.float().numpy()))


def test_generate_returns_the_pipelines_own_images(tiny_pipe):
    """The images `generate` quantises on the device equal the pipeline's numpy output quantised on
    the host (what it returned before), for the same prompts and generators."""
    from repro.generate import Sampling, generators, to_uint8

    prompts, seeds = ["a red circle", "a blue square", "a green star"], [3, 1, 4]
    ours = generate(tiny_pipe, prompts, seeds, Sampling(steps=2))
    with torch.no_grad():
        theirs = tiny_pipe(prompt=prompts, num_inference_steps=2, guidance_scale=0.0, height=ours.shape[1],
                           width=ours.shape[2], generator=generators(seeds), output_type="np").images
    assert ours.dtype == np.uint8 and ours.shape == (3, *theirs.shape[1:])
    assert np.array_equal(ours, to_uint8(theirs))
