"""The ShapesWorld model training at tiny size on CPU: losses drop, folders load and generate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from repro.errors import ReproError
from repro.toymodels.config import BaseStage, DataConfig, ToyTrainConfig, TurboStage, VaeStage


def tiny_config(tmp_path, **changes) -> ToyTrainConfig:
    cfg = ToyTrainConfig.tiny(
        data=DataConfig(scenes=48, captions_per_scene=2, workers=1),
        vae=VaeStage(steps=16, batch_size=4, lr=2e-3),
        base=BaseStage(steps=16, batch_size=8, lr=2e-3),
        turbo=TurboStage(steps=16, batch_size=8, lr=2e-3, teacher_samples=16, teacher_steps=3),
        out=str(tmp_path / "models"),
        work=str(tmp_path / "work"),
        log_every=4,
        threads=2,
    )
    return cfg.replace(**changes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every stage trained for a few steps at tiny size; (config, result) of the run."""
    from repro.toymodels.train import train_toy_models

    tmp = tmp_path_factory.mktemp("toy")
    cfg = tiny_config(tmp)
    return cfg, train_toy_models(cfg, progress=False)


def _curve(folder, stage):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["stage"] == stage]


@pytest.mark.parametrize("stage", ["vae", "base", "turbo"])
def test_each_stage_loss_is_finite_and_drops(trained, stage):
    cfg, result = trained
    summary = result["stages"][stage]
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] < summary["first_loss"]
    curve = _curve(Path(cfg.out) / "shapes-turbo", stage)  # the turbo folder holds the whole history
    assert len(curve) == getattr(cfg, stage).steps // cfg.log_every and all(map(math.isfinite, curve))


def test_saved_folders_load_and_generate_at_one_step(trained):
    from repro.generate import Sampling, generate
    from repro.models.loading import load_pipeline

    cfg, result = trained
    for name, scheduler in (("shapes-turbo", "EulerAncestralDiscreteScheduler"),
                            ("shapes-base", "EulerDiscreteScheduler")):
        folder = Path(result["folders"][name.removeprefix("shapes-")])
        pipe = load_pipeline(folder, device="cpu", dtype="float32")
        assert type(pipe.scheduler).__name__ == scheduler
        assert pipe.unet.dtype == torch.float32 and pipe.vae.config.scaling_factor != 1.0
        images = generate(pipe, ["a small red plain circle in the centre on a white background, flat style"],
                          [0], Sampling(steps=1))
        assert images.shape == (1, 128, 128, 3) and images.dtype == np.uint8
        training = json.loads((folder / "training.json").read_text())
        assert training["model"] == name and training["megabytes"] > 0
        assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_saved_weights_are_fp16(trained):
    from safetensors import safe_open

    _, result = trained
    path = f"{result['folders']['turbo']}/unet/diffusion_pytorch_model.safetensors"
    with safe_open(path, "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in list(f.keys())[:5])


def test_turbo_alone_resumes_from_the_saved_base(trained, tmp_path):
    import shutil

    from repro.toymodels.train import train_toy_models

    cfg, result = trained
    shutil.copytree(result["folders"]["base"], tmp_path / "out" / "shapes-base")  # the fixture's folders stay as trained
    result = train_toy_models(cfg.replace(stages=("turbo",), out=str(tmp_path / "out"), checkpoint=str(tmp_path / "ckpt"),
                                          turbo=TurboStage(steps=4, batch_size=8, teacher_samples=8, teacher_steps=2)),
                              progress=False)
    assert result["stages"]["turbo"]["steps"] == 4 and "base" not in result["stages"]
    lineage = json.loads((Path(result["folders"]["turbo"]) / "training.json").read_text())["lineage"]
    assert lineage["teacher"] == "shapes-base" and lineage["steps"] == 4
    assert lineage["precision"] == "fp32"  # autocast is on, but a no-op on a CPU


def test_every_vocabulary_word_is_one_token():
    from repro.models.build import build_pipeline
    from repro.shapes.captions import vocabulary
    from repro.toymodels.config import ToySizes

    tok = build_pipeline(ToyTrainConfig.tiny().sizes.pipeline_spec()).tokenizer
    for word in vocabulary():
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{word!r} -> {tok.convert_ids_to_tokens(ids)}"
    assert ToySizes().pipeline_spec().words == tuple(vocabulary())


def test_fast_tokenization_equals_the_tokenizer():
    from repro.models.build import build_pipeline
    from repro.shapes.captions import caption
    from repro.shapes.world import sample_scene
    from repro.toymodels.data import tokenize_captions

    tok = build_pipeline(ToyTrainConfig.tiny().sizes.pipeline_spec()).tokenizer
    rng = np.random.default_rng(0)
    captions = [caption(sample_scene(rng), rng) for _ in range(200)] + ["a zebra on a white background, flat style"]
    ref = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(tokenize_captions(tok, captions), ref)


def test_grain_from_noise_matches_the_renderers_grain():
    from repro.shapes.render import render
    from repro.shapes.world import Scene, sample_scene
    from repro.toymodels.data import add_grain

    scene = sample_scene(3, style="grainy")
    flat = torch.from_numpy(render(Scene(scene.objects, scene.background, "flat")).image)[None]
    grainy = add_grain(flat, torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)))
    diff = grainy.float() - flat.float()
    bg = torch.from_numpy(render(scene).background)
    bg = bg[0::2, 0::2] & bg[1::2, 1::2]  # blocks wholly on the background, where the flat render is one colour
    assert torch.equal(diff[0, 0::2, 0::2][bg], diff[0, 1::2, 1::2][bg])  # constant on 2x2 blocks, as the renderer's
    real = torch.from_numpy(render(scene).image).float() - flat.float()
    assert abs(float(diff.std()) - float(real.std())) < 6.0  # same strength as the renderer's (sigma 30)


def test_one_step_x0_is_what_the_pipeline_samples(trained):
    from repro.models.loading import load_pipeline
    from repro.toymodels.data import tokenize_captions
    from repro.toymodels.diffusion import Denoiser, alphas_cumprod, one_step_input, one_step_sigma, one_step_x0

    _, result = trained
    pipe = load_pipeline(result["folders"]["turbo"], device="cpu", dtype="float32")
    prompt = "a large blue striped square at the top on a black background, grainy style"
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    latents = pipe(prompt=[prompt], num_inference_steps=1, guidance_scale=0.0, output_type="latent",
                   generator=[torch.Generator().manual_seed(5)]).images
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, 128)
    sigma, t = one_step_sigma(alphas_cumprod()), torch.full((1,), 999)
    with torch.no_grad():  # the two halves turbo_loss trains with, around one UNet call
        eps = model.eps(one_step_input(noise, sigma), t, tokenize_captions(pipe.tokenizer, [prompt])).float()
    mine = one_step_x0(noise, eps, sigma)
    torch.testing.assert_close(mine, latents, rtol=1e-4, atol=1e-4)


def test_config_rejects_conflicts():
    with pytest.raises(ReproError, match="unknown stage"):
        ToyTrainConfig(stages=("vae", "decoder"))
    with pytest.raises(ReproError, match="order"):
        ToyTrainConfig(stages=("turbo", "base"))
    with pytest.raises(ReproError, match="new base"):
        ToyTrainConfig(stages=("vae", "turbo"))


def test_cli_parses_steps_and_stages():
    import argparse

    from repro.cli import build_parser
    from repro.cli.toy import build_config

    args = build_parser().parse_args(["toy", "train", "--stage", "base,turbo", "--steps", "base=7,turbo=9",
                                      "--tiny", "--out", "x"])
    cfg = build_config(args)
    assert cfg.stages == ("base", "turbo") and cfg.base.steps == 7 and cfg.turbo.steps == 9 and cfg.out == "x"
    with pytest.raises(ReproError, match="unknown stage"):
        build_config(argparse.Namespace(**{**vars(args), "steps": "decoder=3"}))


def test_cli_sets_any_stage_field_typed_like_its_default():
    from repro.cli import build_parser
    from repro.cli.toy import build_config

    args = build_parser().parse_args(["toy", "train", "--tiny", "--stage", "turbo", "--no-autocast",
                                      "--init-turbo", "old/shapes-turbo", "--set", "turbo.teacher_fraction=0.75",
                                      "--set", "turbo.teacher_samples=64", "--set", "turbo.couple_grain=false",
                                      "--set", "base.min_snr_gamma=none"])
    cfg = build_config(args)
    assert cfg.autocast is False and cfg.turbo.init_from == "old/shapes-turbo"
    assert cfg.turbo.teacher_fraction == 0.75 and isinstance(cfg.turbo.teacher_fraction, float)
    assert cfg.turbo.teacher_samples == 64 and isinstance(cfg.turbo.teacher_samples, int)
    assert cfg.turbo.couple_grain is False and cfg.base.min_snr_gamma is None
    for bad, message in (("turbo.nope=1", "turbo.teacher_fraction"), ("turbo.teacher_samples=1.5", "not a valid int"),
                         ("turbo.couple_grain=maybe", "not a valid bool"), ("sizes.resolution=64", "STAGE.FIELD"),
                         ("turbo.teacher_fraction=2", "lie in")):
        with pytest.raises(ReproError, match=message):
            build_config(build_parser().parse_args(["toy", "train", "--tiny", "--set", bad]))


def test_turbo_continues_from_a_saved_turbo_and_records_the_chain(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from repro.toymodels.train import train_toy_models

    cfg, result = trained
    shutil.copytree(result["folders"]["base"], tmp_path / "out" / "shapes-base")
    earlier = Path(result["folders"]["turbo"])
    run = cfg.replace(stages=("turbo",), out=str(tmp_path / "out"), checkpoint=str(tmp_path / "ckpt"), autocast=False,
                      turbo=TurboStage(steps=1, batch_size=8, lr=1e-9, teacher_samples=8, teacher_steps=2,
                                       init_from=str(earlier)))
    folder = Path(train_toy_models(run, progress=False)["folders"]["turbo"])
    name = "unet/diffusion_pytorch_model.safetensors"
    saved, again, base = (load_file(f / name) for f in (earlier, folder, tmp_path / "out" / "shapes-base"))
    assert all(torch.allclose(again[k].float(), saved[k].float(), atol=1e-3) for k in saved)  # the turbo's, not the base's
    assert any(not torch.allclose(base[k].float(), saved[k].float(), atol=1e-3) for k in saved)
    lineage = json.loads((folder / "training.json").read_text())["lineage"]
    assert lineage["teacher"] == "shapes-base" and lineage["precision"] == "fp32"
    assert lineage["init"] == "UNet of shapes-turbo (continued)"
    assert lineage["init_history"]["lineage"]["init"] == "shapes-base UNet"  # the earlier run's own record


def _small_config(tmp_path, **changes) -> ToyTrainConfig:
    return tiny_config(tmp_path, data=DataConfig(scenes=24, captions_per_scene=2, workers=1),
                       vae=VaeStage(steps=5, batch_size=2, lr=2e-3), base=BaseStage(steps=5, batch_size=4, lr=2e-3),
                       turbo=TurboStage(steps=5, batch_size=4, lr=2e-3, teacher_samples=6, teacher_steps=2),
                       log_every=2).replace(**changes)


def _tensors(folder):
    from safetensors.torch import load_file

    return {f"{p.parent.name}/{k}": v for p in sorted(Path(folder).rglob("*.safetensors")) for k, v in load_file(p).items()}


def test_training_in_chunks_resumes_exactly(tmp_path):
    """Chunks of 4 steps (crossing every stage boundary) give bitwise the weights of one uninterrupted run."""
    from repro.toymodels.checkpoint import MAX_FILES, checkpoint_files, load_checkpoint
    from repro.toymodels.train import train_toy_models

    whole = _small_config(tmp_path / "whole")
    assert train_toy_models(whole, progress=False)["finished"]
    chunked = _small_config(tmp_path / "chunks", chunk_steps=4)
    results = []
    while not (results and results[-1]["finished"]):
        results.append(train_toy_models(chunked, progress=False))
        assert len(checkpoint_files(results[-1]["checkpoint"])) <= MAX_FILES
        assert len(results) < 10
    assert [r.get("stage") for r in results[:-1]] == ["vae", "base", "turbo"]  # 4-step chunks of 5 + 5 + 5 steps
    ref, got = load_checkpoint(tmp_path / "whole" / "work" / "checkpoint"), load_checkpoint(results[-1]["checkpoint"])
    assert ref[0].keys() == got[0].keys()
    for k in ref[0]:
        assert torch.equal(ref[0][k], got[0][k]), k
    for name in ("shapes-base", "shapes-turbo"):
        a, b = _tensors(tmp_path / "whole" / "models" / name), _tensors(tmp_path / "chunks" / "models" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (Path(chunked.out) / "shapes-turbo" / "metrics.jsonl").read_text().splitlines()]
    for stage in ("vae", "base", "turbo"):
        steps = [r["step"] for r in records if r["stage"] == stage]
        assert steps == sorted(set(steps)) and steps[-1] == 5  # one history across the chunks


def test_export_from_a_checkpoint_equals_the_runs_folders(trained, tmp_path):
    from repro.toymodels.train import export_pipelines

    cfg, result = trained
    folders = export_pipelines(result["checkpoint"], tmp_path / "exported")
    for stage in ("base", "turbo"):
        a, b = _tensors(result["folders"][stage]), _tensors(folders[stage])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_other_settings_is_refused(trained):
    from repro.toymodels.train import train_toy_models

    cfg, _ = trained
    with pytest.raises(ReproError, match="other settings"):  # the finished base stage had another learning rate
        train_toy_models(cfg.replace(base=BaseStage(steps=16, batch_size=8, lr=1e-3)), progress=False)


@pytest.mark.parametrize("stage", ["base", "turbo"])
def test_default_training_state_fits_in_8_files_of_16_mib(stage):
    """The largest checkpoints (base: UNet + text encoders trained; turbo: teacher + student) at default sizes."""
    from repro.toymodels.checkpoint import MAX_FILE_BYTES, MAX_FILES, plan_shards
    from repro.toymodels.engine import make_adamw
    from repro.toymodels.train import Run

    torch.set_num_threads(2)
    run = Run(ToyTrainConfig(device="cpu"), torch.device("cpu"))
    run.state["done"] = ["vae"] if stage == "base" else ["vae", "base"]
    params = [p for m in run.stage_modules(stage).values() for p in m.parameters()]
    opt = make_adamw(params, 1e-3, torch.device("cpu"), 0.0, graph=False)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()  # creates the moments
    tensors = run.tensors(stage, opt, torch.Generator().manual_seed(0))
    shards = plan_shards(tensors)
    sizes = [sum(tensors[k].numel() * tensors[k].element_size() for k in names) for names in shards]
    assert len(shards) <= MAX_FILES and max(sizes) <= MAX_FILE_BYTES
    n_trained = sum(p.numel() for p in params)
    assert sum(sizes) >= 12 * n_trained  # fp32 weights + both AdamW moments are all there


def test_training_steps_hold_no_host_sync(tmp_path):
    """Every stage's step is graphable: no tensor value is read on the host (CUDA graph capture would fail)."""
    from repro.toymodels.data import ToyData
    from host_sync import HostSync, no_host_sync
    from repro.toymodels.train import Run, _setup_stage
    from repro.toymodels.vae import encode_images

    cfg = _small_config(tmp_path)
    run = Run(cfg, torch.device("cpu"))
    data = ToyData.build(cfg.data, run.base.tokenizer)
    latents = encode_images(run.base.vae, data.images)
    gen = torch.Generator().manual_seed(0)
    for stage in ("vae", "base", "turbo"):
        params, make_batch, loss_fn = _setup_stage(run, stage, data, latents, torch.device("cpu"))
        batch = make_batch(gen)
        with no_host_sync():
            loss = loss_fn(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        main = next(iter(run.stage_modules(stage).values()))  # the VAE or the UNet (text encoder 1's last layer
        assert all(p.grad is not None for p in main.parameters())  # is unused: SDXL reads its penultimate one)
        for p in params:
            p.requires_grad_(False)
    with pytest.raises(HostSync):  # the detector does catch a read
        with no_host_sync():
            float(loss.detach())


def test_teacher_sampler_is_the_base_pipeline(trained):
    """`euler_sample` (the teacher's samples) equals the shapes-base pipeline's latents from the same noise."""
    from repro.models.loading import load_pipeline
    from repro.toymodels.data import tokenize_captions
    from repro.toymodels.diffusion import Denoiser, euler_sample

    _, result = trained
    pipe = load_pipeline(result["folders"]["base"], device="cpu", dtype="float32")
    prompts = ["a large blue striped square at the top on a black background, grainy style", "a red circle"]
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    ref = pipe(prompt=prompts, num_inference_steps=3, guidance_scale=5.0, output_type="latent",
               latents=noise.clone()).images
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, 128)
    mine = euler_sample(model, noise, tokenize_captions(pipe.tokenizer, prompts), steps=3, guidance=5.0)
    torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-4)


def test_plain_diffusers_opens_and_runs_the_saved_pipeline_on_a_cpu(trained):
    from diffusers import StableDiffusionXLPipeline

    _, result = trained
    pipe = StableDiffusionXLPipeline.from_pretrained(result["folders"]["turbo"])
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.float32}
    image = pipe("a red circle", num_inference_steps=1, guidance_scale=0.0, output_type="np").images
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()


def test_base_warm_restart_starts_from_a_saved_pipeline(trained, tmp_path):
    from safetensors.torch import load_file

    from repro.toymodels.train import train_toy_models

    cfg, result = trained
    saved = load_file(Path(result["folders"]["base"]) / "unet" / "diffusion_pytorch_model.safetensors")
    run = cfg.replace(stages=("base",), out=str(tmp_path / "out"), checkpoint=str(tmp_path / "ckpt"),
                      base=BaseStage(steps=1, batch_size=8, lr=1e-9, init_from=result["folders"]["base"]))
    (tmp_path / "out").mkdir()
    train_toy_models(run, progress=False)  # the VAE comes from the first run's work folder
    again = load_file(tmp_path / "out" / "shapes-base" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.allclose(again[k].float(), saved[k].float(), atol=1e-3) for k in saved)


@pytest.mark.parametrize("name", ["shapes-turbo", "shapes-base"])
def test_the_embedded_models_open_with_plain_diffusers_on_a_cpu(name):
    """A user's first try: every component in fp32 (the text encoders are fp16 on disk), and a first call runs."""
    from diffusers import StableDiffusionXLPipeline

    from repro.paths import models_dir

    pipe = StableDiffusionXLPipeline.from_pretrained(models_dir() / name)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.float32}
    image = pipe("a red circle in the centre", num_inference_steps=1, guidance_scale=0.0, output_type="np").images
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all()


def test_resumed_adamw_moments_take_their_parameters_layout():
    """On a GPU the UNet's convs are channels_last: moments read back contiguous made fused AdamW refuse to step."""
    from repro.toymodels.checkpoint import load_optimizer, optimizer_tensors

    conv = torch.nn.Conv2d(4, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(conv.parameters(), lr=1e-3)
    conv(torch.randn(2, 4, 8, 8)).sum().backward()
    opt.step()
    saved = {k: v.contiguous() for k, v in optimizer_tensors(opt).items()}  # as a checkpoint stores them
    resumed = torch.optim.AdamW(conv.parameters(), lr=1e-3)
    load_optimizer(resumed, saved)
    for p in conv.parameters():
        for field in ("exp_avg", "exp_avg_sq"):
            assert resumed.state[p][field].stride() == p.stride()
            assert torch.equal(resumed.state[p][field], opt.state[p][field])
