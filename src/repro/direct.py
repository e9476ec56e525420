"""Sampling by calling the UNet directly: the pipeline's numbers without its per-call overhead.

`DirectSampler(pipe, sampling).latents(prompts, seeds)` runs the same operations as
`StableDiffusionXLPipeline.__call__(..., output_type="latent")` (`repro.generate.generate`)
in the same order on the same inputs, so hooks see the same floats and the final
latents are the same bits (tested on the CPU against `generate`). What it leaves out is
what costs time on a GPU and changes no number:

* fewer host syncs per batch (`generate`'s meter waits for the GPU; the pipeline moves the
  initial noise from pageable memory, which waits for the stream): the noise is drawn on
  the CPU from the per-image generators exactly as `randn_tensor` does (it can be drawn
  ahead), put in pinned memory and copied with `non_blocking=True`. The ancestral
  scheduler's own noise (drawn on the CPU inside `scheduler.step`, once per step) is left
  as it is: it is part of the numbers;
* no progress bar, callbacks, input checks or VAE branch;
* text encoding through the pipeline's own `encode_prompt`, once per UNet batch (a
  larger text batch would change the floats of the embeddings on a GPU).

Only the plain SDXL pipeline (no IP adapter, no `denoising_end`, no guidance rescale) is
covered; anything else should keep using `generate`.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from repro.generate import Sampling, generators
from repro.meter import add_images


class DirectSampler:
    """Denoising loop of `pipe` (a StableDiffusionXLPipeline) at `sampling`, UNet called directly."""

    def __init__(self, pipe, sampling: Sampling):
        from repro.models.loading import default_resolution

        self.pipe = pipe
        self.sampling = sampling
        self.resolution = sampling.resolution or default_resolution(pipe)
        self.device = pipe._execution_device
        self.pin = self.device.type == "cuda"

    @torch.no_grad()
    def noise(self, seeds: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Generator]]:
        """(initial noise [B, 4, h, w] on the CPU, the generators after drawing it), drawn as the
        pipeline draws it (one CPU generator per image, `randn_tensor` in the text embeddings'
        dtype; an ancestral scheduler goes on drawing from the same generators); pinned on CUDA."""
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.pipe
        f = pipe.vae_scale_factor
        shape = (len(seeds), pipe.unet.config.in_channels, self.resolution // f, self.resolution // f)
        gens = generators(seeds)
        noise = randn_tensor(shape, generator=gens, device=torch.device("cpu"), dtype=dtype)
        return (noise.pin_memory() if self.pin else noise), gens

    @torch.no_grad()
    def latents(self, prompts: Sequence[str], seeds: Sequence[int],
                noise: tuple[torch.Tensor, list[torch.Generator]] | None = None) -> torch.Tensor:
        """Final latents [B, 4, h, w] on the pipe's device (no host sync of its own on CUDA).

        `noise` (`self.noise(seeds, dtype)`, e.g. drawn ahead) skips drawing it here.
        """
        pipe, s = self.pipe, self.sampling
        prompts = list(prompts)
        start = time.perf_counter()
        device = self.device
        cfg = s.cfg
        # the pipeline's state that its properties (do_classifier_free_guidance, ...) read
        pipe._guidance_scale = s.guidance
        pipe._guidance_rescale = 0.0
        pipe._clip_skip = None
        pipe._cross_attention_kwargs = None
        pipe._denoising_end = None
        pipe._interrupt = False
        cfg = pipe.do_classifier_free_guidance
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=None, negative_prompt_2=None, lora_scale=None,
            clip_skip=None,
        )
        from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import retrieve_timesteps

        timesteps, _ = retrieve_timesteps(pipe.scheduler, s.steps, device)
        if noise is None:
            noise = self.noise(seeds, embeds.dtype)
        first, gens = noise
        latents = first.to(device, non_blocking=True) * pipe.scheduler.init_noise_sigma  # [B, 4, h, w]
        extra = pipe.prepare_extra_step_kwargs(gens, 0.0)
        res = (self.resolution, self.resolution)
        proj = int(pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(res, (0, 0), res, dtype=embeds.dtype, text_encoder_projection_dim=proj)
        text = pooled
        if cfg:
            embeds = torch.cat([neg_embeds, embeds], dim=0)
            text = torch.cat([neg_pooled, text], dim=0)
            time_ids = torch.cat([time_ids, time_ids], dim=0)
        embeds = embeds.to(device)
        text = text.to(device)
        time_ids = time_ids.to(device).repeat(len(prompts), 1)
        timestep_cond = None
        if pipe.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(s.guidance - 1).repeat(len(prompts))
            timestep_cond = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device, dtype=latents.dtype)
        if hasattr(pipe.scheduler, "set_begin_index"):
            pipe.scheduler.set_begin_index(0)
        added = {"text_embeds": text, "time_ids": time_ids}
        for t in timesteps:
            inp = torch.cat([latents] * 2) if cfg else latents
            inp = pipe.scheduler.scale_model_input(inp, t)
            pred = pipe.unet(inp, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
                             cross_attention_kwargs=None, added_cond_kwargs=added, return_dict=False)[0]
            if cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + s.guidance * (cond - uncond)
            latents = pipe.scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
        add_images(len(prompts), len(prompts) * len(timesteps) * (2 if cfg else 1), time.perf_counter() - start)
        return latents
