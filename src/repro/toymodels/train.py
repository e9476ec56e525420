"""`repro toy train`: render the data once, then train VAE -> base -> turbo and save two pipelines.

Each pipeline is written in diffusers' save_pretrained layout (safetensors, fp16) into a
temporary folder beside its target and renamed into place, so a reader never sees half a
model: `<out>/shapes-base` (Euler, leading spacing) and `<out>/shapes-turbo` (Euler
ancestral, trailing spacing). Beside the weights: `training.json` (the config, provenance,
per-stage summaries, parameter counts) and `metrics.jsonl` (the loss curve).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from repro.devices import pick_device
from repro.errors import ReproError
from repro.io import provenance, write_json_atomic
from repro.paths import cache_dir, models_dir
from repro.toymodels.config import ToyTrainConfig
from repro.toymodels.data import ToyData
from repro.toymodels.diffusion import Denoiser, train_base, train_turbo
from repro.toymodels.loop import MetricLog
from repro.toymodels.vae import encode_images, latent_scale, train_vae

NAMES = {"base": "shapes-base", "turbo": "shapes-turbo"}
TRAINING_FILE = "training.json"
METRICS_FILE = "metrics.jsonl"


def parameter_counts(pipe) -> dict[str, int]:
    return {k: sum(p.numel() for p in getattr(pipe, k).parameters())
            for k in ("unet", "vae", "text_encoder", "text_encoder_2")}


def folder_megabytes(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 2)


def save_pipeline_atomic(pipe, target: Path, extra: dict, records: list[dict]) -> Path:
    """Write `pipe` in fp16 (a copy: the training modules stay fp32) plus training.json and metrics.jsonl."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        copy.deepcopy(pipe).to(dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
        (tmp / METRICS_FILE).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_json_atomic(tmp / TRAINING_FILE, {**extra, "megabytes": folder_megabytes(tmp)})
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _load_component(cls, folder: Path, what: str):
    if not folder.exists():
        raise ReproError(f"{what} not found at {folder}: run the earlier stages first "
                         "(`repro toy train --stage all`), or point --out/--work at a folder holding them")
    return cls.from_pretrained(folder).float()


def _records(folder: Path) -> list[dict]:
    path = folder / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def train_toy_models(cfg: ToyTrainConfig = ToyTrainConfig(), progress: bool = True) -> dict:
    """Run `cfg.stages`; returns {"stages": {stage: summary}, "folders": {...}, ...}."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from repro.models.build import build_pipeline
    from repro.models.loading import quiet_libraries

    quiet_libraries()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(cfg.out) if cfg.out else models_dir()
    work = Path(cfg.work) if cfg.work else cache_dir() / "toymodels"
    work.mkdir(parents=True, exist_ok=True)
    spec = cfg.sizes.pipeline_spec()
    meta = {"config": cfg.to_dict(), "provenance": provenance(command="repro toy train"), "device": str(device)}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)

    t0 = time.time()
    base = build_pipeline(spec, seed=cfg.seed, kind="base")
    data = ToyData.build(cfg.data, base.tokenizer, device)
    meta["data_seconds"] = round(time.time() - t0, 1)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    log = MetricLog(work / METRICS_FILE)
    if log.path.exists():
        log.path.unlink()
    summaries: dict[str, dict] = {}
    common = dict(use_autocast=cfg.autocast, log_every=cfg.log_every, progress=progress)

    # --- stage 1: VAE ---------------------------------------------------------------------
    if "vae" in cfg.stages:
        base.vae.to(device)
        summaries["vae"] = train_vae(base.vae, data, cfg.vae, gen, log, **common)
        scale = latent_scale(base.vae, data.images[: min(len(data), 4096)], use_autocast=cfg.autocast)
        base.vae.register_to_config(scaling_factor=scale)
        base.vae.save_pretrained(work / "vae", safe_serialization=True)
        summaries["vae"]["scaling_factor"] = scale
    else:
        source = work / "vae" if (work / "vae").exists() else out / NAMES["base"] / "vae"
        base.register_modules(vae=_load_component(AutoencoderKL, source, "the trained VAE").to(device))
    vae = base.vae.eval().requires_grad_(False)
    if not {"base", "turbo"} & set(cfg.stages):
        return {"stages": summaries, "folders": {"vae": str(work / "vae")}}
    latents = encode_images(vae, data.images, use_autocast=cfg.autocast)

    # --- stage 2: base ----------------------------------------------------------------------
    folders = {}
    base_records: list[dict] = []
    if "base" in cfg.stages:
        for m in (base.unet, base.text_encoder, base.text_encoder_2):
            m.to(device)
        base.unet.to(memory_format=torch.channels_last)
        model = Denoiser(base.unet, base.text_encoder, base.text_encoder_2, cfg.sizes.resolution,
                         compiled_unet=torch.compile(base.unet) if cfg.compile else None)
        summaries["base"] = train_base(model, latents, data, cfg.base, gen, log, **common)
        base_records = list(log.records)
        extra = {**meta, "model": NAMES["base"], "stages": summaries, "parameters": parameter_counts(base)}
        folders["base"] = str(save_pipeline_atomic(base, out / NAMES["base"], extra, base_records))
    else:
        folder = out / NAMES["base"]
        base.register_modules(
            unet=_load_component(UNet2DConditionModel, folder / "unet", "the base UNet").to(device),
            text_encoder=_load_component(CLIPTextModel, folder / "text_encoder", "the base text encoder").to(device),
            text_encoder_2=_load_component(CLIPTextModelWithProjection, folder / "text_encoder_2",
                                           "the base text encoder 2").to(device),
        )
        base_records = _records(folder)

    # --- stage 3: turbo ---------------------------------------------------------------------
    if "turbo" in cfg.stages:
        turbo = build_pipeline(spec, seed=cfg.seed, kind="turbo")
        turbo.register_modules(vae=vae)
        for name in ("unet", "text_encoder", "text_encoder_2"):
            module = getattr(turbo, name)
            module.load_state_dict(getattr(base, name).state_dict())
            module.to(device)
        turbo.unet.to(memory_format=torch.channels_last)
        model = Denoiser(turbo.unet, turbo.text_encoder, turbo.text_encoder_2, cfg.sizes.resolution,
                         compiled_unet=torch.compile(turbo.unet) if cfg.compile else None)
        turbo_log = MetricLog(work / METRICS_FILE)
        summaries["turbo"] = train_turbo(model, vae, latents, data, cfg.turbo, gen, turbo_log, **common)
        extra = {**meta, "model": NAMES["turbo"], "derived_from": NAMES["base"], "stages": summaries,
                 "parameters": parameter_counts(turbo)}
        records = [r for r in base_records if r.get("stage") != "turbo"] + turbo_log.records
        folders["turbo"] = str(save_pipeline_atomic(turbo, out / NAMES["turbo"], extra, records))
    return {"stages": summaries, "folders": folders, "data_seconds": meta["data_seconds"],
            "total_seconds": round(time.time() - t0, 1)}
