"""Build SDXL-format pipelines in code: same classes and topology as SDXL, any size.

Used for the tiny random pipelines the tests run on, and as the skeleton the ShapesWorld
models are trained in. SDXL's UNet has three resolution levels: level 0 without
attention, level 1 with 2 transformer blocks per side, level 2 with 2 down / 3 up blocks
and the mid block: 11 `Transformer2DModel`s in all, named as in the paper (`down.2.1`, ...).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from repro.models.tokenizer import write_clip_tokenizer

# Words every built tokenizer knows, so tests can prompt with ordinary English.
BASIC_WORDS = (
    "a an the of on in at with and photo picture image painting cat dog red blue green "
    "yellow white black large small big circle square triangle star house tree car sky"
).split()


@dataclass(frozen=True)
class PipelineSpec:
    """Sizes of an SDXL-format pipeline. Defaults: the tiny random pipeline of the tests."""

    resolution: int = 64
    """Default image side in pixels (the UNet's `sample_size` is this over the VAE factor)."""
    text_hidden: tuple[int, int] = (32, 32)
    """Hidden size of text encoder 1 (CLIP-L analogue) and 2 (bigG analogue)."""
    text_layers: int = 2
    """Transformer layers per text encoder (SDXL reads the penultimate layer: at least 2)."""
    text_heads: int = 2
    """Attention heads per text encoder layer."""
    unet_channels: tuple[int, int, int] = (32, 64, 64)
    """Channels of the UNet's three levels (SDXL: 320, 640, 1280)."""
    unet_transformer_depth: tuple[int, int] = (1, 2)
    """Transformer layers inside each block at levels 1 and 2 (SDXL: 2, 10)."""
    unet_head_dim: tuple[int, int, int] = (2, 4, 4)
    """`attention_head_dim` per level (diffusers uses it as the number of heads for SDXL)."""
    time_embed_dim: int = 8
    """`addition_time_embed_dim` for the size/crop conditioning (SDXL: 256)."""
    vae_channels: tuple[int, ...] = (32, 32, 64)
    """VAE levels; the image shrinks by 2 ** (levels - 1) into the latent (SDXL: 8x)."""
    norm_groups: int = 32
    """Group-norm groups in UNet and VAE; must divide every channel count."""
    words: tuple[str, ...] = tuple(BASIC_WORDS)
    """Words the tokenizer joins into single tokens (others fall apart into pieces)."""

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    def replace(self, **changes) -> "PipelineSpec":
        return dataclasses.replace(self, **changes)


def unet_config(spec: PipelineSpec, text_projection_dim: int) -> dict:
    """UNet2DConditionModel kwargs with SDXL's topology at `spec`'s sizes."""
    d1, d2 = spec.unet_transformer_depth
    return dict(
        sample_size=spec.resolution // spec.vae_factor,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=spec.unet_channels,
        layers_per_block=2,
        transformer_layers_per_block=(1, d1, d2),
        attention_head_dim=spec.unet_head_dim,
        cross_attention_dim=sum(spec.text_hidden),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.time_embed_dim,
        projection_class_embeddings_input_dim=6 * spec.time_embed_dim + text_projection_dim,
        norm_num_groups=spec.norm_groups,
    )


def vae_config(spec: PipelineSpec) -> dict:
    n = len(spec.vae_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=spec.norm_groups,
        sample_size=spec.resolution,
        scaling_factor=1.0,
        force_upcast=False,
    )


def text_config(spec: PipelineSpec, which: int, vocab_size: int, eos_id: int, bos_id: int):
    from transformers import CLIPTextConfig

    hidden = spec.text_hidden[which]
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=77,
        projection_dim=spec.text_hidden[1],
        eos_token_id=eos_id,
        bos_token_id=bos_id,
        pad_token_id=eos_id,
        hidden_act="gelu",
    )


def scheduler_config(kind: str = "turbo") -> dict:
    """SDXL's noise schedule; `turbo` samples with trailing spacing (t=999 first), as SDXL Turbo."""
    config = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="trailing" if kind == "turbo" else "leading",
    )
    return config


def build_pipeline(spec: PipelineSpec = PipelineSpec(), seed: int = 0, kind: str = "turbo"):
    """A `StableDiffusionXLPipeline` with random weights (seeded) and our own tokenizer.

    `kind` picks the scheduler: "turbo" (Euler ancestral, trailing spacing, like SDXL Turbo)
    or "base" (Euler, leading spacing, like SDXL base).
    """
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(tmp, spec.words)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    ids = dict(vocab_size=len(tokenizer), eos_id=tokenizer.eos_token_id, bos_id=tokenizer.bos_token_id)

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = CLIPTextModel(text_config(spec, 0, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(spec, 1, **ids))
        unet = UNet2DConditionModel(**unet_config(spec, text_projection_dim=spec.text_hidden[1]))
        vae = AutoencoderKL(**vae_config(spec))
    finally:
        torch.random.set_rng_state(gen_state)
    scheduler_cls = EulerAncestralDiscreteScheduler if kind == "turbo" else EulerDiscreteScheduler
    scheduler = scheduler_cls(**scheduler_config(kind))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    for model in (text_encoder, text_encoder_2, unet, vae):
        model.eval()
    return pipe


def save_pipeline(pipe, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """`save_pretrained` in safetensors (optionally cast to `dtype` first, e.g. fp16)."""
    folder = Path(folder)
    if dtype is not None:
        pipe = pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
