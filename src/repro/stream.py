"""Token batches generated on the fly for SAE training, with no store (`StreamSource`).

`StreamSource` feeds the SAE trainer directly, all blocks from one generation pass (the
same capture as `repro.collect`): it generates `buffer_images` images at a time (a chunk),
permutes their tokens together and cuts batches (see `repro.store.chunks`). Its state is
(chunk, offset): a resumed stream regenerates the chunk it was in (at most `buffer_images`
images of repeated work) and skips the rows already handed out, so it yields exactly the
batches an uninterrupted stream would — provided generation is deterministic (CPU is; on
GPU, nondeterministic kernels can make the regenerated chunk differ in the last bits).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from repro.blocks import resolve_blocks
from repro.collect import capture_batch
from repro.direct import DirectSampler
from repro.errors import ReproError
from repro.generate import Sampling
from repro.prompts import PromptSource, open_prompts, seeds_for
from repro.store.chunks import ChunkedSource
from repro.store.layout import HALVES_CFG, HALVES_PLAIN, half_index, select_tokens, step_index


class StreamSource(ChunkedSource):
    """Token batches `{block: [B, C]}` generated on the fly (SAE batch-source protocol).

    Prompts `start .. start+n_prompts-1` of `prompts` (n_prompts None: endless, for
    generator sources) are generated `gen_batch_size` at a time with seed `seed + index`,
    `buffer_images` images per chunk; a chunk's tokens are permuted together (by
    `shuffle_seed` and the chunk number) and cut into batches that may span chunks.
    `step` / `half` keep one step / one half. Tokens stay on the pipeline's device, in
    `dtype` (default: the pipeline's). See the module docstring for resume semantics.
    `engine="direct"` calls the UNet directly (`repro.direct`, same numbers); `prefetch=1`
    generates the next chunk in a background thread on its own CUDA stream while this one
    is trained on (with `TrainConfig(side_stream=True)` the SAE steps run on a third);
    `unet_graph` replays the direct engine's UNet calls from a CUDA graph (CUDA only).
    """

    keep_chunks = 2  # a rewind (init_b_pre's) serves the chunk and the one prepared ahead again: no regeneration

    def __init__(
        self,
        pipe,
        prompts: PromptSource | str | Sequence[str],
        batch_size: int,
        *,
        blocks: Sequence[str] | str | None = None,
        sampling: Sampling = Sampling(),
        seed: int = 0,
        shuffle_seed: int = 0,
        start: int = 0,
        n_prompts: int | None = None,
        gen_batch_size: int = 8,
        buffer_images: int = 64,
        step: int | None = None,
        half: str | None = None,
        dtype: torch.dtype | None = None,
        shuffle: bool = True,
        progress: bool = False,
        engine: str = "pipeline",
        prefetch: int = 0,
        unet_graph: bool = True,
    ):
        super().__init__(batch_size, shuffle_seed, shuffle)
        self.pipe = pipe
        if engine not in ("direct", "pipeline"):
            raise ReproError(f"engine {engine!r} is not known: use 'direct' or 'pipeline'")
        self.engine = engine
        self.prefetch = int(prefetch)  # 1: the next chunk generates in a background thread (own CUDA stream)
        self.source = prompts if isinstance(prompts, PromptSource) else open_prompts(prompts, seed=seed)
        self._blocks = resolve_blocks(pipe.unet, blocks)
        from repro.models.loading import default_resolution

        self.sampling = dataclasses.replace(sampling, resolution=sampling.resolution or default_resolution(pipe))
        self.image_seed = int(seed)
        self.start = int(start)
        length = self.source.length
        if n_prompts is None and length is not None:
            n_prompts = length - self.start
        if n_prompts is not None and length is not None and self.start + n_prompts > length:
            raise ReproError(f"{self.source.describe_short()} holds {length} prompts, fewer than start+n_prompts")
        self.n_prompts = n_prompts
        if gen_batch_size < 1 or buffer_images < 1 or batch_size < 1:
            raise ReproError("batch_size, gen_batch_size and buffer_images must be at least 1")
        self.gen_batch_size = gen_batch_size
        self.buffer_images = buffer_images
        halves = HALVES_CFG if self.sampling.cfg else HALVES_PLAIN
        self.step = step_index(self.sampling.steps, step)
        self.half = half_index(halves, half)
        self._step_arg, self._half_arg = step, half
        self.dtype = dtype or pipe.unet.dtype
        self.sampler = DirectSampler(pipe, self.sampling, graph=unet_graph) if engine == "direct" else None
        self.progress = progress
        self.images_generated = 0
        self._pipeline = None  # ((a, b, prompts), prepared batch) items from `_pipeline_at` on (`_load_chunk`)
        self._pipeline_at: int | None = None
        self.cursor = self._chunk_cursor(0)

    @property
    def blocks(self) -> list[str]:
        return list(self._blocks)

    def _chunk_cursor(self, chunk: int):
        first = chunk * self.buffer_images
        if self.n_prompts is not None and first >= self.n_prompts:
            return None
        return (chunk,)

    def _next_cursor(self, cursor):
        return self._chunk_cursor(cursor[0] + 1)

    def _chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Global prompt indices [lo, hi) of chunk `chunk`."""
        lo = self.start + chunk * self.buffer_images
        hi = lo + self.buffer_images
        return lo, hi if self.n_prompts is None else min(hi, self.start + self.n_prompts)

    def _batches(self, chunk: int):
        """((a, b, prompts), prompts, seeds) of every generation batch from chunk `chunk` on, fixed by global index."""
        while self._chunk_cursor(chunk) is not None:
            lo, hi = self._chunk_bounds(chunk)
            prompts = self.source.get(lo, hi)
            for a in range(lo, hi, self.gen_batch_size):
                b = min(a + self.gen_batch_size, hi)
                yield (a, b, prompts[a - lo : b - lo]), prompts[a - lo : b - lo], seeds_for(a, b, self.image_seed)
            chunk += 1

    def _load_chunk(self, cursor) -> dict[str, torch.Tensor]:
        lo, hi = self._chunk_bounds(cursor[0])
        # One generation pipeline runs across chunks, so the direct sampler prepares the next
        # chunk's first batch (text towers, noise) while this chunk's last one denoises; a chunk
        # that does not follow the last one served (resume, rewind) starts a new pipeline.
        if self._pipeline is None or self._pipeline_at != lo:
            self._stop_pipeline()
            specs = self._batches(cursor[0])
            self._pipeline = (self.sampler.prepared(specs) if self.sampler is not None
                              else ((tag, None) for tag, _, _ in specs))
        parts: dict[str, list[torch.Tensor]] = {b: [] for b in self._blocks}
        b_ = lo
        while b_ < hi:
            (a, b_, prompts), prep = next(self._pipeline)
            updates, _ = capture_batch(self.pipe, prompts, seeds_for(a, b_, self.image_seed),
                                       self._blocks, self.sampling, self.dtype, self.sampler, prep)
            for b in self._blocks:
                parts[b].append(select_tokens(updates[b], self.step, self.half))
            self.images_generated += b_ - a
        self._pipeline_at = hi
        sizes = {b: sum(p.shape[0] for p in ps) for b, ps in parts.items()}
        if len(set(sizes.values())) != 1:
            raise ReproError(
                f"blocks {self._blocks} give different token counts {sizes}: rows cannot be aligned; "
                "stream blocks of one map size together"
            )
        return {b: torch.cat(p) for b, p in parts.items()}

    def _end_iteration(self) -> None:
        self._stop_pipeline()

    def _stop_pipeline(self) -> None:
        """Stop the generation pipeline (its prepare thread); the next chunk starts a new one."""
        if self._pipeline is not None:
            self._pipeline.close()
        self._pipeline, self._pipeline_at = None, None

    def state_dict(self) -> dict[str, Any]:
        state = self._position()
        chunk = None if self.cursor is None else self.cursor[0]
        state.update(start=self.start, image_seed=self.image_seed, buffer_images=self.buffer_images,
                     prompt_position=None if chunk is None else self.start + chunk * self.buffer_images)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("start", self.start), ("image_seed", self.image_seed),
                          ("buffer_images", self.buffer_images)):
            if state.get(key, mine) != mine:
                raise ReproError(f"the saved stream state has {key}={state[key]} but this stream has {key}={mine}: "
                                 "resume with the same stream settings")
        self._restore(state)

    def describe(self) -> dict[str, Any]:
        return {
            "source": "StreamSource", "model": getattr(self.pipe, "repro_source", None),
            "prompts": self.source.describe(), "start": self.start, "n_prompts": self.n_prompts,
            "steps": self.sampling.steps, "guidance": self.sampling.guidance, "resolution": self.sampling.resolution,
            "seed": self.image_seed, "shuffle_seed": self.seed, "buffer_images": self.buffer_images,
            "step": self._step_arg, "half": self._half_arg, "batch_size": self.batch_size,
        }
