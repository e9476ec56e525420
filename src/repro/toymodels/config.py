"""Settings of the ShapesWorld model training: sizes, one dataclass per stage, the whole run.

`ToyTrainConfig` is what `repro toy train` parses; `ToyTrainConfig.tiny()` is the
seconds-on-CPU variant the tests use. Every field has a one-line docstring; conflicts are
rejected on construction with a message saying what to change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from repro.errors import ReproError, choices_hint

STAGES = ("vae", "base", "turbo")
Stage = Literal["vae", "base", "turbo"]
TURBO_TIMESTEPS = (999, 749, 499, 249)  # SDXL Turbo's 4-step trailing schedule; 999 alone = 1 step


@dataclass(frozen=True)
class ToySizes:
    """Network sizes of both pipelines (fp16 on disk: ~19.5 MB per pipeline at the defaults)."""

    resolution: int = 128
    """Image side in pixels (the renders' size); latents are resolution / 4."""
    unet_channels: tuple[int, int, int] = (32, 64, 128)
    """UNet channels per level (SDXL: 320, 640, 1280); level 2 (8x8 at 128 px) holds the paper's blocks."""
    unet_transformer_depth: tuple[int, int] = (1, 2)
    """Transformer layers per block at levels 1 and 2 (SDXL: 2, 10)."""
    unet_head_dim: tuple[int, int, int] = (2, 4, 8)
    """`attention_head_dim` per level (diffusers reads it as the number of heads for SDXL)."""
    time_embed_dim: int = 32
    """`addition_time_embed_dim` of the size/crop conditioning."""
    text_hidden: tuple[int, int] = (64, 96)
    """Hidden sizes of text encoder 1 and 2."""
    text_layers: int = 3
    """Layers per text encoder (the UNet reads the penultimate one, as SDXL does)."""
    text_heads: int = 4
    """Attention heads per text layer."""
    vae_channels: tuple[int, ...] = (32, 64, 64)
    """VAE levels: 3 levels = 4x downsampling (128 px -> 32x32x4 latents)."""
    norm_groups: int = 32
    """Group-norm groups; must divide every UNet and VAE channel count."""

    def __post_init__(self) -> None:
        for c in (*self.unet_channels, *self.vae_channels):
            if c % self.norm_groups:
                raise ReproError(f"channel count {c} is not divisible by norm_groups={self.norm_groups}; "
                                 "pick channels that are multiples of it or lower norm_groups")
        if self.resolution % (2 ** (len(self.vae_channels) - 1) * 4):
            raise ReproError(f"resolution {self.resolution} must be divisible by 4x the VAE factor")

    def pipeline_spec(self):
        """The `PipelineSpec` of these sizes, with the ShapesWorld vocabulary as the tokenizer's words."""
        from repro.models.build import PipelineSpec
        from repro.shapes.captions import vocabulary

        return PipelineSpec(
            resolution=self.resolution,
            text_hidden=self.text_hidden,
            text_layers=self.text_layers,
            text_heads=self.text_heads,
            unet_channels=self.unet_channels,
            unet_transformer_depth=self.unet_transformer_depth,
            unet_head_dim=self.unet_head_dim,
            time_embed_dim=self.time_embed_dim,
            vae_channels=self.vae_channels,
            norm_groups=self.norm_groups,
            words=tuple(vocabulary()),
        )


@dataclass(frozen=True)
class DataConfig:
    """The training set: train-split scenes rendered once, captions tokenized once."""

    scenes: int = 100_000
    """Train-split scenes to render (each kept as uint8 on the training device)."""
    captions_per_scene: int = 2
    """Caption variants drawn per scene (a batch picks one of them at random)."""
    seed: int = 0
    """Seed of the scene list and the caption draws."""
    workers: int | None = None
    """Render processes (None: all cores)."""

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.captions_per_scene < 1:
            raise ReproError("data.scenes and data.captions_per_scene must be at least 1")


@dataclass(frozen=True)
class VaeStage:
    """Stage 1: AutoencoderKL trained as a plain autoencoder on renders, small KL term."""

    steps: int = 6000
    """Optimiser steps (~200 s on an H200 at 31 steps/s)."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 5e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    kl_weight: float = 1e-5
    """Weight of the KL term (per latent element) against the per-pixel reconstruction loss."""
    l1_weight: float = 1.0
    """Weight of the L1 term added to the MSE reconstruction loss (sharper edges and textures)."""


@dataclass(frozen=True)
class BaseStage:
    """Stage 2: the multi-step model, epsilon prediction on SDXL's schedule, caption dropout."""

    steps: int = 12000
    """Optimiser steps (~13-20 min on an H200 at 10-16 steps/s; the committed base had 858)."""
    batch_size: int = 256
    """Latents per step (graph-captured steps run ~4 200 latents/s whatever the batch)."""
    lr: float = 5e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    caption_dropout: float = 0.1
    """Share of captions replaced by the empty prompt (zero embeddings, as SDXL's pipeline uses)."""
    min_snr_gamma: float | None = 5.0
    """Min-SNR loss weighting (Hang et al. 2023) on the epsilon loss; None for plain MSE."""
    noise_offset: float = 0.3
    """Std of a per-image, per-channel constant added to the training noise (offset noise). SDXL's
    schedule keeps sqrt(alpha_bar) = 0.07 of the signal at t = 999, and ShapesWorld latents carry a
    per-image channel mean (flat backgrounds) as large as their spread, so without it the model reads
    colours from that leak and, sampling from pure noise, draws them at random (measured: 3-6 % all
    right at 25 steps; 75 % when the noise is given the leak)."""
    init_from: str | None = None
    """Start from this pipeline's UNet and text encoders instead of random weights (a warm restart:
    the optimiser and the LR schedule start afresh), e.g. a shapes-base exported by an earlier run."""


@dataclass(frozen=True)
class TurboStage:
    """Stage 3: the base fine-tuned into a 1-step (and 4-step) generator, see `repro.toymodels.diffusion`."""

    steps: int = 8000
    """Optimiser steps (~13 min on an H200 at 10 steps/s). The 1-step model keeps improving long after
    the 4-step one: the shipped turbo got 8 710 steps in four runs, 1-step all-right 55% after 1 200,
    68% after 2 700, 83% after 5 110, 94% after 8 710 (benchmarks/toy_training.md)."""
    batch_size: int = 512
    """Latents per step (split between the 1-step and the ordinary loss)."""
    lr: float = 5e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    one_step_fraction: float = 0.75
    """Share of each batch trained as the pipeline's 1-step sample (pure noise at t=999 -> target latent, x0 MSE)."""
    teacher_fraction: float = 0.25
    """Share of the 1-step part whose target is the teacher's sample from the same noise (the rest: the render)."""
    teacher_samples: int = 8192
    """(noise, teacher sample) pairs the base generates when the stage starts (regenerated on resume)."""
    teacher_steps: int = 20
    """Euler steps of the teacher's samples."""
    teacher_guidance: float = 5.0
    """Classifier-free guidance of the teacher's samples."""
    caption_dropout: float = 0.0
    """Share of captions replaced by the empty prompt (SDXL Turbo runs without guidance)."""
    couple_grain: bool = True
    """Grainy targets take their grain from the input noise (so 1 step can draw grain, not its mean)."""
    init_from: str | None = None
    """Start the student UNet from this pipeline's UNet (e.g. a shapes-turbo exported by an earlier run,
    to continue its distillation) instead of the base UNet; the teacher is still the base."""


@dataclass(frozen=True)
class ToyTrainConfig:
    """One `repro toy train` run: which stages, sizes, data, device and where to write."""

    stages: tuple[Stage, ...] = STAGES
    """Stages to run, in order; a later stage alone loads the earlier ones from `out`."""
    sizes: ToySizes = field(default_factory=ToySizes)
    """Network sizes."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training set."""
    vae: VaeStage = field(default_factory=VaeStage)
    """VAE stage settings."""
    base: BaseStage = field(default_factory=BaseStage)
    """Base stage settings."""
    turbo: TurboStage = field(default_factory=TurboStage)
    """Turbo stage settings."""
    out: str | None = None
    """Folder receiving shapes-base/ and shapes-turbo/ (None: the project's models/ folder)."""
    work: str | None = None
    """Folder for the VAE between runs of single stages (None: <cache>/toymodels)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""
    seed: int = 0
    """Seeds initialisation, noise and batch sampling."""
    autocast: bool = True
    """bf16 autocast on CUDA (a no-op on CPU)."""
    accel: str = "auto"
    """Step execution: auto (CUDA graph on a GPU, eager on a CPU), eager, graph, compile (torch.compile)."""
    checkpoint: str | None = None
    """Training-state folder; a run resumes from it when it exists (None: <work>/checkpoint)."""
    chunk_seconds: float | None = None
    """Stop this run after about this many seconds of training and save the checkpoint (resume later)."""
    chunk_steps: int | None = None
    """Stop this run after this many optimiser steps (over all stages) and save the checkpoint."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""
    log_every: int = 50
    """Steps between metric records (metrics.jsonl) and progress-bar updates."""

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad or not self.stages:
            raise ReproError(f"unknown stage(s) {bad or '(none)'}: use {choices_hint(STAGES + ('all',))}")
        if list(self.stages) != sorted(self.stages, key=STAGES.index):
            raise ReproError(f"stages must run in the order {', '.join(STAGES)}, got {', '.join(self.stages)}")
        if "vae" in self.stages and "turbo" in self.stages and "base" not in self.stages:
            raise ReproError("a new VAE needs a new base model before turbo: run --stage all, or vae,base,turbo")
        if not 0 <= self.turbo.one_step_fraction <= 1 or not 0 <= self.turbo.teacher_fraction <= 1:
            raise ReproError("turbo.one_step_fraction and turbo.teacher_fraction must lie in [0, 1]")
        from repro.toymodels.engine import ACCELS

        if self.accel not in ACCELS:
            raise ReproError(f"unknown accel {self.accel!r}: use {choices_hint(ACCELS)}")
        from repro.ranges import (MAX_IMAGE_BATCH, MAX_RESOLUTION, MAX_THREADS, MAX_TRAIN_STEPS, MIN_RESOLUTION,
                                  check_float, check_int, check_seed)

        for stage in STAGES:
            section = getattr(self, stage)
            check_int(f"{stage}.steps", section.steps, 1, MAX_TRAIN_STEPS)
            check_int(f"{stage}.batch_size", section.batch_size, 1, 16 * MAX_IMAGE_BATCH, why="images or latents per step")
            check_float(f"{stage}.lr", section.lr, 0.0, low_open=True)
        check_int("turbo.teacher_samples", self.turbo.teacher_samples, 1, 2**20, why="held on the training device")
        check_int("turbo.teacher_steps", self.turbo.teacher_steps, 1, 1000)
        check_float("turbo.teacher_guidance", self.turbo.teacher_guidance)
        # Renders are held as uint8 on the training device: 10^6 scenes of 128 px are 49 GB.
        check_int("data.scenes", self.data.scenes, 1, 1_000_000, why="the renders are held in memory")
        check_int("data.captions_per_scene", self.data.captions_per_scene, 1, 64)
        check_seed("data.seed", self.data.seed)
        check_int("sizes.resolution", self.sizes.resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        check_seed("seed", self.seed)
        check_int("log_every", self.log_every, 1, MAX_TRAIN_STEPS)
        if self.chunk_steps is not None:
            check_int("chunk_steps", self.chunk_steps, 1, MAX_TRAIN_STEPS)
        if self.chunk_seconds is not None:
            check_float("chunk_seconds", self.chunk_seconds, 0.0, low_open=True)
        for name in ("threads", "data.workers"):
            value = self.threads if name == "threads" else self.data.workers
            if value is not None:
                check_int(name, value, 1, MAX_THREADS)

    def replace(self, **changes) -> "ToyTrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def tiny(cls, **changes) -> "ToyTrainConfig":
        """A few steps of every stage at tiny size: seconds on a CPU (tests, smoke runs)."""
        cfg = cls(
            sizes=ToySizes(unet_channels=(16, 32, 32), unet_head_dim=(1, 2, 2), time_embed_dim=8,
                           text_hidden=(16, 16), text_layers=2, text_heads=2, vae_channels=(16, 16, 16),
                           norm_groups=8),
            data=DataConfig(scenes=96, captions_per_scene=2, workers=1),
            vae=VaeStage(steps=30, batch_size=8, lr=2e-3),
            base=BaseStage(steps=30, batch_size=16, lr=2e-3),
            turbo=TurboStage(steps=30, batch_size=16, lr=2e-3, teacher_samples=32, teacher_steps=4),
            device="cpu",
            log_every=5,
        )
        return cfg.replace(**changes)


def parse_stages(text: str) -> tuple[str, ...]:
    """"all" -> every stage; "base,turbo" -> ("base", "turbo")."""
    if text == "all":
        return STAGES
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ReproError(f"unknown stage {bad[0]!r}: use {choices_hint(STAGES + ('all',))}")
    return stages
