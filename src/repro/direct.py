"""Sampling by calling the UNet directly: the pipeline's numbers without its per-call overhead.

`DirectSampler(pipe, sampling).latents(prompts, seeds)` runs the same operations as
`StableDiffusionXLPipeline.__call__(..., output_type="latent")` (`repro.generate.generate`)
in the same order on the same inputs, so hooks see the same floats and the final
latents are the same bits (tested on the CPU against `generate`). What it leaves out is
what costs time on a GPU and changes no number:

* no host sync inside the denoising loop. A copy from pageable host memory to the GPU makes
  the host wait until the GPU has run everything queued before it; the pipeline does several
  per batch (the timesteps, the sigmas, the time ids, the initial noise, the ancestral
  scheduler's noise each step), so the GPU sat idle while the host prepared the next batch.
  Here the timesteps and time ids are copied once per sampler, the initial noise is drawn
  from the per-image CPU generators as `randn_tensor` draws it and copied from pinned memory,
  and the scheduler's own noise, still drawn inside `scheduler.step` from the same generators,
  is copied the same way (`_async_scheduler_noise`);
* text encoding and the initial noise are a separate `prepare` step, which `prepared(...)`
  runs one batch ahead in a background thread on its own CUDA stream: the tokenizer's
  copy waits for that stream alone, and the text towers overlap the UNet of the batch before;
* the per-image CPU generators draw their noise in parallel threads (`parallel_randn`: each
  generator draws what it drew before, so the same floats);
* on CUDA the UNet call itself is replayed from a CUDA graph (`repro.unet_graph.UNetGraph`,
  `graph=True`, the default there), with the recorded blocks' updates as extra outputs
  (`run_recording`): one launch per UNet call instead of ~1,500, so the host is free for the
  next batch's text towers. A UNet carrying other hooks (interventions) runs eagerly;
* no progress bar, callbacks, input checks or VAE branch;
* text encoding through the pipeline's own `encode_prompt`, once per UNet batch (a
  larger text batch would change the floats of the embeddings on a GPU).

Only the plain SDXL pipeline (no IP adapter, no `denoising_end`, no guidance rescale) is
covered; anything else should keep using `generate`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import torch

from repro.generate import Sampling, generators
from repro.meter import add_images
from repro.unet_graph import UNetGraph, unhooked

T = TypeVar("T")


@dataclass
class Prepared:
    """One batch's inputs to the denoising loop, on the pipe's device (`DirectSampler.prepare`)."""

    n: int
    """Images in the batch."""
    embeds: torch.Tensor
    """[B or 2B, 77, D] text embeddings (negative half first under guidance)."""
    pooled: torch.Tensor
    """[B or 2B, P] pooled text embeddings."""
    noise: torch.Tensor
    """[B, 4, h, w] initial noise (not yet scaled by the scheduler's init sigma)."""
    gens: list[torch.Generator]
    """The per-image CPU generators after drawing `noise`: the ancestral scheduler draws on from them."""

    def tensors(self) -> list[torch.Tensor]:
        return [self.embeds, self.pooled, self.noise]


class DirectSampler:
    """Denoising loop of `pipe` (a StableDiffusionXLPipeline) at `sampling`, UNet called directly."""

    def __init__(self, pipe, sampling: Sampling, graph: bool = True):
        from repro.models.loading import default_resolution

        self.pipe = pipe
        self.sampling = sampling
        self.resolution = sampling.resolution or default_resolution(pipe)
        self.device = pipe._execution_device
        self.pin = self.device.type == "cuda"
        self.graph = graph and self.device.type == "cuda"
        """Replay UNet calls from a CUDA graph (CUDA only; a hooked UNet runs eagerly)."""
        self._graphs: dict[tuple[str, ...], UNetGraph] = {}  # one per recorded block set
        self._constants: dict[str, torch.Tensor] | None = None  # timesteps, time ids: the same every batch

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
        if len(gens) == 1:  # randn_tensor treats a list of one as the generator itself
            noise = randn_tensor(shape, generator=gens, device=torch.device("cpu"), dtype=dtype)
            return (noise.pin_memory() if self.pin else noise), gens
        return parallel_randn(shape, gens, dtype, pin=self.pin), gens

    def _set_pipe_state(self) -> None:
        """The pipeline's state that its properties (do_classifier_free_guidance, ...) read."""
        pipe = self.pipe
        pipe._guidance_scale = self.sampling.guidance
        pipe._guidance_rescale = 0.0
        pipe._clip_skip = None
        pipe._cross_attention_kwargs = None
        pipe._denoising_end = None
        pipe._interrupt = False

    @torch.no_grad()
    def prepare(self, prompts: Sequence[str], seeds: Sequence[int]) -> Prepared:
        """Text embeddings and initial noise of one batch, queued on the current stream.

        Touches no scheduler state, so it may run in another thread while `run` denoises a batch."""
        pipe = self.pipe
        self._set_pipe_state()
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=pipe.do_classifier_free_guidance, negative_prompt=None,
            negative_prompt_2=None, lora_scale=None, clip_skip=None,
        )
        if pipe.do_classifier_free_guidance:
            embeds = torch.cat([neg_embeds, embeds], dim=0)
            pooled = torch.cat([neg_pooled, pooled], dim=0)
        first, gens = self.noise(seeds, embeds.dtype)
        first = first.to(self.device, non_blocking=True)
        return Prepared(len(prompts), embeds.to(self.device), pooled.to(self.device), first, gens)

    def _constant_inputs(self, dtype: torch.dtype, proj: int) -> dict[str, torch.Tensor]:
        """Timesteps [steps] and time ids [1, 6] on the device, copied once per sampler."""
        if self._constants is None:
            pipe, s = self.pipe, self.sampling
            pipe.scheduler.set_timesteps(s.steps)  # on the CPU: no copy, no wait
            res = (self.resolution, self.resolution)
            time_ids = pipe._get_add_time_ids(res, (0, 0), res, dtype=dtype, text_encoder_projection_dim=proj)
            pinned = {"timesteps": pipe.scheduler.timesteps, "time_ids": time_ids}
            if self.pin:
                pinned = {k: v.pin_memory() for k, v in pinned.items()}
            self._constants = {k: v.to(self.device, non_blocking=True) for k, v in pinned.items()}
        return self._constants

    @torch.no_grad()
    def run(self, prep: Prepared) -> torch.Tensor:
        """Denoise a prepared batch; final latents [B, 4, h, w] on the pipe's device, no host sync on CUDA."""
        return self._loop(prep, (), None)[0]

    @torch.no_grad()
    def run_recording(self, prep: Prepared, blocks: Sequence[str], dtype: torch.dtype | None = None
                      ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """`run`, also returning each block's update (output - input) at every step, in `dtype`
        (default: the UNet's): (latents [B, 4, h, w], {block: [steps] x [B or 2B, C, H, W]}), the
        floats `repro.hooks.capture_updates` records (negative half first under guidance)."""
        return self._loop(prep, tuple(blocks), dtype)

    def _unet_call(self, blocks: tuple[str, ...]):
        """The UNet call of one step: (sample, t, embeds, added, timestep_cond) -> (pred, {block: update}),
        replayed from a graph where allowed, and whether its outputs are graph memory (to copy)."""
        unet = self.pipe.unet
        if self.graph and unhooked(unet):
            if blocks not in self._graphs:
                self._graphs[blocks] = UNetGraph(unet, blocks)
            return self._graphs[blocks], True
        return UNetGraph(unet, blocks).eager, False

    def _loop(self, prep: Prepared, blocks: tuple[str, ...], dtype: torch.dtype | None
              ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        pipe, s = self.pipe, self.sampling
        start = time.perf_counter()
        device, n = self.device, prep.n
        self._set_pipe_state()
        cfg = pipe.do_classifier_free_guidance
        proj = int(prep.pooled.shape[-1]) if pipe.text_encoder_2 is None else pipe.text_encoder_2.config.projection_dim
        const = self._constant_inputs(prep.embeds.dtype, proj)
        # the scheduler's per-batch state, as `retrieve_timesteps` leaves it (sigmas on the CPU)
        pipe.scheduler.set_timesteps(s.steps)
        if hasattr(pipe.scheduler, "set_begin_index"):
            pipe.scheduler.set_begin_index(0)
        latents = prep.noise * pipe.scheduler.init_noise_sigma  # [B, 4, h, w]
        extra = pipe.prepare_extra_step_kwargs(prep.gens, 0.0)
        time_ids = const["time_ids"].repeat(2 * n if cfg else n, 1)
        timestep_cond = None
        if pipe.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(s.guidance - 1).repeat(n)
            timestep_cond = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device, dtype=latents.dtype)
        added = {"text_embeds": prep.pooled, "time_ids": time_ids}
        unet_call, in_graph = self._unet_call(blocks)
        records: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
        with _async_scheduler_noise(pipe.scheduler, device):
            for t in const["timesteps"]:
                inp = torch.cat([latents] * 2) if cfg else latents
                inp = pipe.scheduler.scale_model_input(inp, t)
                pred, updates = unet_call(inp, t, prep.embeds, added, timestep_cond)
                for b in blocks:  # copied before the next replay overwrites them
                    records[b].append(updates[b].to(dtype=dtype or updates[b].dtype, copy=in_graph))
                if cfg:
                    uncond, cond = pred.chunk(2)
                    pred = uncond + s.guidance * (cond - uncond)
                latents = pipe.scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
        add_images(n, n * s.steps * (2 if cfg else 1), time.perf_counter() - start)
        return latents, records

    def latents(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Final latents [B, 4, h, w] on the pipe's device: `run(prepare(prompts, seeds))`."""
        return self.run(self.prepare(prompts, seeds))

    def prepared(self, batches: Iterable[tuple[T, Sequence[str], Sequence[int]]], ahead: int = 1
                 ) -> Iterator[tuple[T, Prepared]]:
        """(tag, prompts, seeds) items -> (tag, prepared batch), each prepared `ahead` batches early.

        On CUDA a background thread prepares on its own stream; the consumer's stream waits for
        that batch's event alone, and its tensors are marked as used there (the allocator must
        not reuse them before). Elsewhere, or with ahead=0, it prepares in line."""
        if self.device.type != "cuda" or ahead < 1:
            for tag, prompts, seeds in batches:
                yield tag, self.prepare(prompts, seeds)
            return
        stream = torch.cuda.Stream(device=self.device)

        def work(prompts, seeds):
            with torch.cuda.stream(stream):
                prep = self.prepare(prompts, seeds)
                done = torch.cuda.Event()
                done.record(stream)
            return prep, done

        items = iter(batches)
        queued: deque = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct-prepare") as pool:
            while True:
                while len(queued) <= ahead:
                    item = next(items, None)
                    if item is None:
                        break
                    queued.append((item[0], pool.submit(work, item[1], item[2])))
                if not queued:
                    return
                tag, future = queued.popleft()
                prep, done = future.result()
                current = torch.cuda.current_stream(self.device)
                current.wait_event(done)
                for t in prep.tensors():
                    t.record_stream(current)
                yield tag, prep


_noise_pool: ThreadPoolExecutor | None = None
_noise_pool_lock = threading.Lock()


def parallel_randn(shape: Sequence[int], gens: Sequence[torch.Generator], dtype: torch.dtype | None,
                   pin: bool = False) -> torch.Tensor:
    """`diffusers.utils.torch_utils.randn_tensor(shape, generator=gens, device="cpu", dtype=dtype)`
    for a list of CPU generators, one per row of `shape`, the rows drawn in parallel threads.

    Each generator draws the same [1, ...] tensor as in `randn_tensor` (torch releases the GIL
    while it draws), so the floats are the same; `pin` puts the result in pinned memory."""
    global _noise_pool
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for {shape[0]} rows")
    with _noise_pool_lock:
        if _noise_pool is None:
            workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
            _noise_pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="noise")
    row = (1, *shape[1:])
    out = torch.empty(tuple(shape), dtype=dtype, pin_memory=pin)
    list(_noise_pool.map(lambda i: torch.randn(row, generator=gens[i], dtype=dtype, out=out[i : i + 1]),
                         range(len(gens))))
    return out


_patch_lock = threading.Lock()
_patch_users: dict[str, int] = {}
_patch_originals: dict[str, object] = {}


@contextlib.contextmanager
def _async_scheduler_noise(scheduler, device: torch.device):
    """While inside, the scheduler module's `randn_tensor` draws CPU-generator noise exactly as
    before, but copies it to the GPU from pinned memory without waiting for the GPU.

    Same floats (same generators, shapes, dtypes, order); the original function is put back
    when the last user leaves (the patch is shared by threads sampling at the same time)."""
    module = sys.modules.get(type(scheduler).__module__)
    if device.type != "cuda" or module is None or not hasattr(module, "randn_tensor"):
        yield
        return
    name = module.__name__
    with _patch_lock:
        if _patch_users.get(name, 0) == 0:
            original = module.randn_tensor
            _patch_originals[name] = original

            def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
                target = torch.device(device) if device is not None else torch.device("cpu")
                first = generator[0] if isinstance(generator, list) else generator
                if target.type != "cuda" or first is None or first.device.type != "cpu":
                    return original(shape, generator=generator, device=device, dtype=dtype, layout=layout)
                if isinstance(generator, list) and len(generator) > 1 and layout in (None, torch.strided):
                    cpu = parallel_randn(shape, generator, dtype, pin=True)
                else:
                    cpu = original(shape, generator=generator, device=torch.device("cpu"), dtype=dtype,
                                   layout=layout).pin_memory()
                return cpu.to(target, non_blocking=True)

            module.randn_tensor = randn_tensor
        _patch_users[name] = _patch_users.get(name, 0) + 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users[name] -= 1
            if _patch_users[name] == 0:
                module.randn_tensor = _patch_originals.pop(name)
