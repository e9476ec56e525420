"""`repro toy train`: render the data once, then train VAE -> base -> turbo and save two pipelines.

A run may stop early (`chunk_seconds`, `chunk_steps`) and save its state as a checkpoint
(`repro.toymodels.checkpoint`); the next run with the same settings resumes from it and
continues exactly. When a stage ends, its modules are rounded to fp16 (what ships), so the
base trains on the shipped VAE's latents and the turbo stage is distilled from exactly the
shipped base. Pipelines are written in diffusers' save_pretrained layout (fp16 safetensors)
into a temporary folder beside their target and renamed into place: `<out>/shapes-base`
(Euler, leading spacing) when the base stage ends, `<out>/shapes-turbo` (Euler ancestral,
trailing spacing) when the turbo stage ends. Beside the weights: `training.json` (config,
provenance, per-stage summaries, lineage, parameter counts) and `metrics.jsonl` (the loss
curve). `export_pipelines` writes the same folders from a checkpoint on another machine.

Several GPUs: `torchrun --nproc-per-node N -m repro.cli toy train ...` trains data-parallel
(`repro.toymodels.ranks`): each rank draws 1/N of every batch, gradients are averaged, rank 0
writes the checkpoint (with every rank's generator state) and the pipelines. A checkpoint
resumes only with the number of ranks that wrote it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from repro.devices import pick_device
from repro.errors import ReproError
from repro.io import atomic_dir, provenance, write_json_atomic
from repro.paths import cache_dir, models_dir
from repro.toymodels import checkpoint as ckpt
from repro.toymodels.config import STAGES, ToyTrainConfig
from repro.toymodels.data import ToyData
from repro.toymodels.diffusion import (Denoiser, alphas_cumprod, base_batch, base_loss, grain_pairs, teacher_pairs,
                                       turbo_batch, turbo_loss)
from repro.toymodels.engine import TrainStep, make_adamw, resolve_accel
from repro.toymodels.loop import Budget, MetricLog, run_stage
from repro.toymodels.ranks import Ranks
from repro.toymodels.vae import encode_images, latent_scale, vae_batch, vae_loss

NAMES = {"base": "shapes-base", "turbo": "shapes-turbo"}
TRAINING_FILE = "training.json"
METRICS_FILE = "metrics.jsonl"
# Run-control fields: they may differ between the chunks of one training.
_RUN_FIELDS = ("device", "accel", "out", "work", "checkpoint", "chunk_seconds", "chunk_steps", "threads", "log_every")
LINEAGE_RECIPE = ("UNet initialised from the shapes-base UNet; text encoders and VAE are shapes-base's (frozen); "
                  "1-step x0 regression on the teacher's guided Euler samples from the same noise (teacher_fraction) "
                  "and on the caption's render (the rest), plus epsilon loss at 749/499/249 for 4-step sampling")


def parameter_counts(pipe) -> dict[str, int]:
    return {k: sum(p.numel() for p in getattr(pipe, k).parameters())
            for k in ("unet", "vae", "text_encoder", "text_encoder_2")}


def folder_megabytes(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 2)


def training_digest(cfg: ToyTrainConfig, stages=STAGES) -> str:
    """Hash of the settings that decide the weights of `stages` (not where or how fast they are computed).

    A stage's length is left out: it may change between chunks (the LR schedule follows the new length).
    """
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _RUN_FIELDS + STAGES}
    for stage in stages:
        settings[stage] = {k: v for k, v in getattr(cfg, stage).__dict__.items() if k != "steps"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _started(state: dict) -> list[str]:
    """Stages whose settings a checkpoint is bound to: finished ones and the one in progress."""
    index = state["stage_index"]
    current = state["stages"][index : index + 1] if state["step"] > 0 else []
    return [s for s in STAGES if s in state["done"] or s in current]


def save_pipeline_atomic(pipe, target: Path, extra: dict, records: list[dict]) -> Path:
    """Write `pipe` in fp16 (a copy) plus training.json and metrics.jsonl.

    The text encoders' configs say float32, so plain `StableDiffusionXLPipeline.from_pretrained`
    upcasts them as diffusers upcasts the UNet and VAE (transformers keeps a config's dtype).
    """
    with atomic_dir(target) as tmp:
        copy.deepcopy(pipe).to("cpu", dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
        for name in ("text_encoder", "text_encoder_2"):
            path = tmp / name / "config.json"
            config = json.loads(path.read_text())
            config["dtype"] = "float32"
            config.pop("torch_dtype", None)
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / METRICS_FILE).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_json_atomic(tmp / TRAINING_FILE, {**extra, "megabytes": folder_megabytes(tmp)})
    return target


def _round_fp16(*modules: torch.nn.Module) -> None:
    """Round weights to fp16 values in place (kept in fp32): what later stages see is what ships."""
    with torch.no_grad():
        for m in modules:
            for t in m.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half())


def _load_component(cls, folder: Path, what: str):
    if not folder.exists():
        raise ReproError(f"{what} not found at {folder}: run the earlier stages first "
                         "(`repro toy train --stage all`), or point --out/--work at a folder holding them")
    return cls.from_pretrained(folder, torch_dtype=torch.float32).float()


def _records(folder: Path) -> list[dict]:
    path = folder / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Run:
    """The modules of one training (base skeleton, turbo UNet) and its state across chunks."""

    def __init__(self, cfg: ToyTrainConfig, device: torch.device, ranks: Ranks | None = None):
        from repro.models.build import build_pipeline

        self.cfg, self.device = cfg, device
        self.ranks = ranks or Ranks()
        spec = cfg.sizes.pipeline_spec()
        self.base = build_pipeline(spec, seed=cfg.seed, kind="base")
        self.turbo = build_pipeline(spec, seed=cfg.seed, kind="turbo")
        for m in (self.base.vae, self.base.unet, self.base.text_encoder, self.base.text_encoder_2, self.turbo.unet):
            m.to(device)
        if device.type == "cuda":
            self.base.unet.to(memory_format=torch.channels_last)
            self.turbo.unet.to(memory_format=torch.channels_last)
        self.turbo.register_modules(vae=self.base.vae, text_encoder=self.base.text_encoder,
                                    text_encoder_2=self.base.text_encoder_2)
        self.state: dict = {"digest": None, "stages": list(cfg.stages), "stage_index": 0, "step": 0,
                            "done": [], "summaries": {}, "records": [], "scaling_factor": None,
                            "world_size": self.ranks.world,
                            "config": cfg.to_dict(), "created": provenance(command="repro toy train")}

    # -- the modules a stage trains, and what the checkpoint holds -----------------------------
    def stage_modules(self, stage: str) -> dict[str, torch.nn.Module]:
        if stage == "vae":
            return {"vae": self.base.vae}
        if stage == "base":
            return {"base.unet": self.base.unet, "base.te1": self.base.text_encoder,
                    "base.te2": self.base.text_encoder_2}
        return {"turbo.unet": self.turbo.unet}

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        done = set(self.state["done"])
        return {k: m for s in STAGES if s in done for k, m in self.stage_modules(s).items()}

    def tensors(self, stage: str | None, opt, gen: torch.Generator) -> dict[str, torch.Tensor]:
        self.state["digest"] = training_digest(self.cfg, _started(self.state))
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self.frozen_modules().items():
            out.update(ckpt.module_tensors(prefix, module, torch.float16 if not prefix.startswith("turbo") else None))
        if stage is not None:
            for prefix, module in self.stage_modules(stage).items():
                out.update(ckpt.module_tensors(prefix, module))
            out.update(ckpt.optimizer_tensors(opt))
        for r, state in enumerate(self.ranks.generator_states(gen)):
            out["rng.gen" if r == 0 else f"rng.gen.{r}"] = state
        return out

    def restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.state = state
        stage = state["stages"][state["stage_index"]] if state["stage_index"] < len(state["stages"]) else None
        modules = dict(self.frozen_modules())
        if stage is not None and state["step"] > 0:
            modules.update(self.stage_modules(stage))
        for prefix, module in modules.items():
            ckpt.load_module(prefix, module, tensors)
        if state["scaling_factor"] is not None:
            self.base.vae.register_to_config(scaling_factor=state["scaling_factor"])

    def summary(self, stage: str, run: dict) -> None:
        s = self.state["summaries"].setdefault(stage, {"steps": 0, "seconds": 0.0, "runs": 0})
        s["seconds"] = round(s["seconds"] + run["seconds"], 1)
        s["runs"] += 1
        s["steps"] = run["steps"]
        losses = [r["loss"] for r in self.state["records"] if r["stage"] == stage]
        s["first_loss"], s["final_loss"] = (losses[0], losses[-1]) if losses else (None, None)
        s["steps_per_s"] = run["steps_per_s"]  # the latest chunk's rate (warm-up and capture included)


def train_toy_models(cfg: ToyTrainConfig = ToyTrainConfig(), progress: bool = True) -> dict:
    """Run (or resume) `cfg.stages`; returns {"finished", "stages": summaries, "folders", ...}."""
    from repro.models.loading import quiet_libraries

    from repro.dist import env

    quiet_libraries()
    env.init_from_env()
    ranks = Ranks()
    device = env.local_device() if ranks.parallel else pick_device(cfg.device)
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
    ckpt_dir = Path(cfg.checkpoint) if cfg.checkpoint else work / "checkpoint"
    mode = resolve_accel(cfg.accel, device)
    budget = Budget(cfg.chunk_seconds, cfg.chunk_steps)

    t0 = time.time()
    run = Run(cfg, device, ranks)
    if ckpt.checkpoint_files(ckpt_dir):
        tensors, state = ckpt.load_checkpoint(ckpt_dir)
        started = _started(state)
        if (training_digest(_config_from_dict(state["config"]), started) != training_digest(cfg, started)
                or state.get("stages") != list(cfg.stages)):
            raise ReproError(f"the checkpoint in {ckpt_dir} was written with other settings or stages: rerun with "
                             "the same ones to resume, or delete it (or pass --fresh) to start over")
        if state.get("world_size", 1) != ranks.world:
            raise ReproError(f"the checkpoint in {ckpt_dir} was written by {state.get('world_size', 1)} rank(s), this "
                             f"run has {ranks.world}: resume with the same number of GPUs, or pass --fresh")
        run.restore(tensors, state)
        run.state["config"] = cfg.to_dict()  # the settings this run continues with
        gen_state = tensors["rng.gen" if ranks.lead else f"rng.gen.{ranks.rank}"]
    else:
        tensors, gen_state = {}, None
    if ranks.lead:  # renders (or reads) the data first; the other ranks read what it cached
        data = ToyData.build(cfg.data, run.base.tokenizer, device, cache=work / "data")
    ranks.barrier()
    if not ranks.lead:
        data = ToyData.build(cfg.data, run.base.tokenizer, device, cache=work / "data")
    data_seconds = round(time.time() - t0, 1)
    gen = torch.Generator(device).manual_seed(ranks.seed(cfg.seed))
    if gen_state is not None:
        gen.set_state(gen_state)
    log = MetricLog(work / METRICS_FILE if ranks.lead else None, run.state["records"])
    run.state["trained_on"] = {"device": str(device),
                               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    folders: dict[str, str] = {}
    common = dict(log_every=cfg.log_every, progress=progress, ranks=ranks)

    _load_earlier_stages(run, out, work)
    latents = None
    while run.state["stage_index"] < len(cfg.stages):
        stage = cfg.stages[run.state["stage_index"]]
        start = run.state["step"]
        stage_cfg = getattr(cfg, stage)
        if budget.spent():  # the chunk ended with the previous stage: the checkpoint is already saved
            return {"finished": False, "stage": stage, "step": start, "checkpoint": str(ckpt_dir),
                    "stages": run.state["summaries"], "data_seconds": data_seconds,
                    "total_seconds": round(time.time() - t0, 1)}
        if stage != "vae" and latents is None:
            latents = encode_images(run.base.vae, data.images, use_autocast=cfg.autocast)
        params, make_batch, loss_fn = _setup_stage(run, stage, data, latents, device)
        ranks.broadcast(params)
        opt = make_adamw(params, stage_cfg.lr, device, 0.0 if stage == "vae" else 0.01, graph=mode == "graph")
        if start > 0:
            ckpt.load_optimizer(opt, tensors)
        step = TrainStep(loss_fn, params, opt, grad_clip=1.0, mode=mode, grad_sync=ranks.grad_sync())
        result = run_stage(stage, stage_cfg.steps, start, make_batch, step, gen, stage_cfg.lr, log, budget, **common)
        run.state["records"] = log.records
        run.summary(stage, result)
        run.state["step"] = result["steps"]
        for p in params:
            p.requires_grad_(False)
        if not result["finished"]:
            _save(run, ckpt_dir, run.tensors(stage, opt, gen))
            return {"finished": False, "stage": stage, "step": result["steps"], "checkpoint": str(ckpt_dir),
                    "stages": run.state["summaries"], "data_seconds": data_seconds,
                    "total_seconds": round(time.time() - t0, 1)}
        _finish_stage(run, stage, data)
        run.state["done"].append(stage)
        run.state["stage_index"] += 1
        run.state["step"] = 0
        _save(run, ckpt_dir, run.tensors(None, None, gen))
        if stage == "vae":
            if ranks.lead:
                run.base.vae.save_pretrained(work / "vae", safe_serialization=True)
            latents = None
        elif ranks.lead:
            folders[stage] = str(export_stage(run, stage, out))
        ranks.barrier()
    return {"finished": True, "stages": run.state["summaries"], "folders": folders, "checkpoint": str(ckpt_dir),
            "data_seconds": data_seconds, "total_seconds": round(time.time() - t0, 1)}


def _save(run: Run, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Rank 0 writes the checkpoint (`tensors` holds every rank's generator state); the others wait."""
    if run.ranks.lead:
        ckpt.save_checkpoint(folder, tensors, run.state)
    run.ranks.barrier()


def _load_earlier_stages(run: Run, out: Path, work: Path) -> None:
    """Stages before the first one this training runs come from disk (a single-stage run)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    first = STAGES.index(run.cfg.stages[0])
    if first >= 1 and "vae" not in run.state["done"]:
        source = work / "vae" if (work / "vae").exists() else out / NAMES["base"] / "vae"
        vae = _load_component(AutoencoderKL, source, "the trained VAE")
        run.base.vae.load_state_dict(vae.state_dict())
        run.base.vae.register_to_config(scaling_factor=vae.config.scaling_factor)
        run.state["scaling_factor"] = float(vae.config.scaling_factor)
        run.state["done"].insert(0, "vae")
    if first >= 2 and "base" not in run.state["done"]:
        folder = out / NAMES["base"]
        for name, cls in (("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel),
                          ("text_encoder_2", CLIPTextModelWithProjection)):
            getattr(run.base, name).load_state_dict(_load_component(cls, folder / name, f"the base {name}").state_dict())
        run.state["done"].insert(1, "base")
        run.state.setdefault("earlier_records", _records(folder))
    _round_fp16(*run.frozen_modules().values())


def _init_denoiser(run: Run, folder: Path) -> None:
    """The base's UNet and text encoders from a saved pipeline (`BaseStage.init_from`)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    for name, cls in (("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel),
                      ("text_encoder_2", CLIPTextModelWithProjection)):
        module = _load_component(cls, folder / name, f"the {name} to start the base from")
        try:
            getattr(run.base, name).load_state_dict(module.state_dict())
        except RuntimeError as exc:
            raise ReproError(f"{folder / name} does not fit these network sizes: {str(exc).splitlines()[0]}") from exc


def _student_init(folder: str | None) -> dict | None:
    """The UNet weights of the pipeline at `folder` (`TurboStage.init_from`), or None."""
    if not folder:
        return None
    from diffusers import UNet2DConditionModel

    return _load_component(UNet2DConditionModel, Path(folder) / "unet", "the UNet to start the turbo from").state_dict()


def _setup_stage(run: Run, stage: str, data: ToyData, latents, device):
    """(trainable parameters, make_batch(gen), loss_fn(batch)) of `stage`."""
    cfg, ranks = run.cfg, run.ranks
    if stage == "vae":
        run.base.vae.train().requires_grad_(True)
        params = list(run.base.vae.parameters())
        vc = ranks.per_rank(cfg.vae, "vae")
        return (params, lambda gen: vae_batch(data, vc, gen),
                vae_loss(run.base.vae, data, vc, cfg.autocast))
    run.base.vae.eval().requires_grad_(False)
    if stage == "base":
        if cfg.base.init_from and run.state["step"] == 0:
            _init_denoiser(run, Path(cfg.base.init_from))
        model = Denoiser(run.base.unet, run.base.text_encoder, run.base.text_encoder_2, cfg.sizes.resolution).train()
        bc = ranks.per_rank(cfg.base, "base")
        return (model.trainable(), lambda gen: base_batch(data, latents, bc, gen),
                base_loss(model, latents, bc, cfg.autocast))
    # turbo: the student starts as the (fp16-rounded) base UNet, or `turbo.init_from`'s, unless resumed mid-stage
    if run.state["step"] == 0:
        try:
            run.turbo.unet.load_state_dict(_student_init(cfg.turbo.init_from) or run.base.unet.state_dict())
        except RuntimeError as exc:
            raise ReproError(f"{cfg.turbo.init_from}/unet does not fit these network sizes: "
                             f"{str(exc).splitlines()[0]}") from exc
    teacher = Denoiser(run.base.unet, run.base.text_encoder, run.base.text_encoder_2, cfg.sizes.resolution).train(False)
    student = Denoiser(run.turbo.unet, run.base.text_encoder, run.base.text_encoder_2,
                       cfg.sizes.resolution).train(True, text_encoders=False)
    # same pairs whenever the stage (re)starts; each rank samples its own share of them
    aux = torch.Generator(device).manual_seed(ranks.seed(cfg.seed + 1))
    tc = ranks.per_rank(cfg.turbo, "turbo")
    tc = dataclasses.replace(tc, teacher_samples=-(-tc.teacher_samples // ranks.world))
    pairs = teacher_pairs(teacher, data, tuple(latents.shape[1:]), tc, aux, cfg.autocast) \
        if tc.teacher_fraction > 0 and tc.one_step_fraction > 0 else None
    grain = grain_pairs(run.base.vae, data, aux, cfg.autocast) if tc.couple_grain and tc.one_step_fraction > 0 else None
    return (student.trainable(), lambda gen: turbo_batch(data, latents, tc, gen, pairs, grain),
            turbo_loss(student, alphas_cumprod(device), cfg.autocast))


def _finish_stage(run: Run, stage: str, data: ToyData) -> None:
    if stage == "vae":
        _round_fp16(run.base.vae)
        scale = latent_scale(run.base.vae, data.images[: min(len(data), 4096)], use_autocast=run.cfg.autocast)
        run.base.vae.register_to_config(scaling_factor=scale)
        run.state["scaling_factor"] = scale
        run.state["summaries"]["vae"]["scaling_factor"] = scale
    elif stage == "base":
        _round_fp16(run.base.unet, run.base.text_encoder, run.base.text_encoder_2)


def _meta(run: Run) -> dict:
    trained_on = run.state.get("trained_on", {})
    return {"config": run.state["config"], "provenance": provenance(command="repro toy train"),
            "started": run.state["created"].get("created"), "device": trained_on.get("device"),
            "gpu": trained_on.get("gpu")}


def init_history(folder: str | os.PathLike | None) -> dict | None:
    """What a warm restart started from: the stages, lineage and GPU of the pipeline at `folder`
    (its training.json), so that a model's record keeps the whole chain of runs behind it."""
    meta = Path(folder) / TRAINING_FILE if folder else None
    if meta is None or not meta.exists():
        return None
    earlier = json.loads(meta.read_text())
    return {k: earlier.get(k) for k in ("model", "stages", "lineage", "gpu", "started", "provenance")}


def _precision(run: Run) -> str:
    """How the run computed: autocast is bf16 on a GPU only (on a CPU it is a no-op)."""
    device = str((run.state.get("trained_on") or {}).get("device") or "")
    return "bf16 autocast" if run.cfg.autocast and device.startswith("cuda") else "fp32"


def export_stage(run: Run, stage: str, out: Path) -> Path:
    """Write `<out>/shapes-base` or `<out>/shapes-turbo` from the run's modules (fp16)."""
    records = run.state.get("earlier_records", []) + run.state["records"]
    summaries = run.state["summaries"]
    meta = _meta(run)
    if stage == "base":
        stage_records = [r for r in records if r["stage"] in ("vae", "base")]
        extra = {**meta, "model": NAMES["base"], "stages": {k: v for k, v in summaries.items() if k != "turbo"},
                 "parameters": parameter_counts(run.base),
                 "lineage": {"teacher": None,
                             "init": f"warm restart from {Path(run.cfg.base.init_from).name}" if run.cfg.base.init_from
                             else "random (seeded)",
                             "recipe": f"epsilon prediction, Min-SNR-5, offset noise {run.cfg.base.noise_offset:g}, "
                             f"{run.cfg.base.caption_dropout:.0%} caption dropout",
                             "steps": summaries.get("base", {}).get("steps"),
                             "seconds": summaries.get("base", {}).get("seconds"),
                             "init_history": init_history(run.cfg.base.init_from)}}
        return save_pipeline_atomic(run.base, out / NAMES["base"], extra, stage_records)
    tc = run.cfg.turbo
    extra = {**meta, "model": NAMES["turbo"], "derived_from": NAMES["base"], "stages": summaries,
             "parameters": parameter_counts(run.turbo),
             "lineage": {"teacher": NAMES["base"],
                         "init": f"UNet of {Path(tc.init_from).name} (continued)" if tc.init_from else f"{NAMES['base']} UNet",
                         "recipe": LINEAGE_RECIPE, "precision": _precision(run),
                         "teacher_samples": tc.teacher_samples, "teacher_steps": tc.teacher_steps,
                         "teacher_guidance": tc.teacher_guidance, "teacher_fraction": tc.teacher_fraction,
                         "steps": summaries.get("turbo", {}).get("steps"),
                         "seconds": summaries.get("turbo", {}).get("seconds"),
                         "base_init_history": init_history(run.cfg.base.init_from),
                         "init_history": init_history(tc.init_from)}}
    return save_pipeline_atomic(run.turbo, out / NAMES["turbo"], extra, records)


def export_pipelines(checkpoint: str | os.PathLike, out: str | os.PathLike, unfinished: bool = False) -> dict[str, str]:
    """Write the pipelines of a checkpoint's finished stages (e.g. trained on another machine).

    unfinished: also the base or turbo stage in progress, as it stands (its training.json says
    so); a later run can warm-restart from it (`BaseStage.init_from`).
    """
    tensors, state = ckpt.load_checkpoint(checkpoint)
    cfg = _config_from_dict(state["config"])
    run = Run(cfg.replace(device="cpu"), torch.device("cpu"))
    run.restore(tensors, state)
    stages = [s for s in ("base", "turbo") if s in state["done"]]
    current = state["stages"][state["stage_index"]] if state["stage_index"] < len(state["stages"]) else None
    if unfinished and current in ("base", "turbo") and state["step"] > 0:
        stages.append(current)
        run.state["summaries"][current]["unfinished"] = f"step {state['step']} of {getattr(cfg, current).steps}"
    if not stages:
        raise ReproError(f"checkpoint {checkpoint} has no finished base or turbo stage yet: train on, or pass "
                         "--unfinished to export the stage in progress")
    return {stage: str(export_stage(run, stage, Path(out))) for stage in stages}


def _config_from_dict(d: dict) -> ToyTrainConfig:
    from repro.toymodels.config import BaseStage, DataConfig, ToySizes, TurboStage, VaeStage

    def tuples(x):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}

    return ToyTrainConfig(**{**d, "stages": tuple(d["stages"]), "sizes": ToySizes(**tuples(d["sizes"])),
                             "data": DataConfig(**d["data"]), "vae": VaeStage(**d["vae"]),
                             "base": BaseStage(**d["base"]), "turbo": TurboStage(**d["turbo"])})
