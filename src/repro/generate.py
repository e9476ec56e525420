"""Generate images with a fixed seed per prompt, in batches, with the block hooks around.

Each prompt gets its own CPU generator seeded by its seed, so an image depends only on
(prompt, seed, settings) — not on the batch it landed in or the device — which is what
makes resumed collections equal to uninterrupted ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from repro.errors import ReproError
from repro.meter import metered_images
from repro.models.loading import default_resolution


@dataclass(frozen=True)
class Sampling:
    """How to sample: the paper's SDXL Turbo setting is 1 step, guidance 0, 512 px."""

    steps: int = 1
    """Denoising steps (one UNet call each)."""
    guidance: float = 0.0
    """Classifier-free guidance scale; above 1 the UNet sees [uncond; cond] batches."""
    resolution: int | None = None
    """Image side in pixels; None takes the model's own (`sample_size` x VAE factor)."""

    def __post_init__(self):
        from repro.ranges import MAX_DENOISING_STEPS, check_float, check_int, check_resolution

        check_int("steps", self.steps, 1, MAX_DENOISING_STEPS, why="the scheduler has 1000 timesteps")
        check_float("guidance", self.guidance)
        check_resolution("resolution", self.resolution)

    @property
    def cfg(self) -> bool:
        """Whether the pipeline runs classifier-free guidance (diffusers: guidance > 1)."""
        return self.guidance > 1.0


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


@torch.no_grad()
def generate(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    sampling: Sampling = Sampling(),
    output: str = "np",
    negative_prompts: Sequence[str] | None = None,
) -> np.ndarray | torch.Tensor:
    """Images for `prompts` (one call: use your own loop for batching).

    Returns uint8 [B, H, W, 3] for `output="np"`, or the final latents [B, 4, h, w] for
    `output="latent"` (decode later, only what a person will look at).
    """
    prompts = list(prompts)
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ReproError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
    resolution = sampling.resolution or default_resolution(pipe)
    evaluations = len(prompts) * sampling.steps * (2 if sampling.cfg else 1)
    with metered_images(len(prompts), evaluations, pipe.device):
        result = pipe(
            prompt=prompts,
            negative_prompt=list(negative_prompts) if negative_prompts is not None else None,
            num_inference_steps=sampling.steps,
            guidance_scale=sampling.guidance,
            height=resolution,
            width=resolution,
            generator=generators(seeds),
            # "pt" keeps the decoded images on the device: they are quantised there and only uint8
            # crosses to the host (the "np" output copied float32 over and quantised on the CPU,
            # ~0.2 s per 1024 toy images, as long as the toy's UNet takes for them on a GPU)
            output_type="latent" if output == "latent" else "pt",
        )
    if output == "latent":
        return result.images
    return to_uint8(result.images.permute(0, 2, 3, 1))


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] ([B, H, W, 3], numpy or torch) -> uint8 numpy: round(255 x), in float32.

    A tensor is quantised on its own device (the same float32 arithmetic as numpy's), so only
    the uint8 images travel to the host."""
    if isinstance(images, torch.Tensor):
        q = (images.float().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)
        return q.cpu().numpy()
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> np.ndarray:
    """Final latents [B, 4, h, w] -> uint8 images [B, H, W, 3], as the pipeline would.

    SDXL's VAE overflows in fp16 (its config says `force_upcast`): like the pipeline, it
    then decodes in fp32 and goes back to fp16 afterwards.
    """
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    dtype = vae.dtype
    try:
        if upcast:
            vae.to(torch.float32)
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype)
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return to_uint8(image)
