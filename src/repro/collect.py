"""Collect block updates while generating, into an activation store.

Both `collect` and `repro.stream.StreamSource` (which streams the same updates straight to
SAE training) generate prompts in batches fixed by global prompt index with seed
`seed + index` (see `repro.prompts`), capture the update of each chosen block at every
step (cond and uncond halves kept apart under guidance) and arrange it as
[n, steps, halves, H*W, C] (see `repro.store`).

* `collect(cfg)` writes a store shard by shard. Rerunning the same command after a crash
  or a kill (SIGKILL included) skips the finished shards and redoes the interrupted one
  from its first prompt: the result is bitwise the store an uninterrupted run writes
  (same device and software). Different settings on an existing store are refused.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from repro.blocks import resolve_blocks
from repro.errors import ReproError
from repro.direct import DirectSampler, Prepared
from repro.generate import Sampling, decode_latents, generate
from repro.hooks import capture_updates, short_name, stack_steps
from repro.prompts import PromptSource, open_prompts, prompts_digest, seeds_for
from repro.store.layout import HALVES_CFG, HALVES_PLAIN, FORMAT_VERSION, LATENTS, shard_range, store_dtype, to_layout


@dataclass
class CollectConfig:
    """One collection run into an activation store (the CLI `repro collect` maps onto it)."""

    out: Path
    """Store folder; an existing store with the same settings is resumed / extended."""
    model: str = "shapes-turbo"
    """Pipeline to load: shapes-turbo (the default profile's 1-step model), shapes-base, tiny-random,
    sdxl-turbo, sdxl-base, a local pipeline folder or a hub id. Given a `pipe`, only recorded."""
    prompts: str = "shapes"
    """Prompt source: a .txt/.jsonl/.parquet file, hf:DATASET[:SPLIT] or a generator name."""
    n_prompts: int = 64
    """Prompts to collect: indices 0..n_prompts-1 of the source (one image each)."""
    blocks: tuple[str, ...] | None = None
    """Blocks to capture: short names (a comma list), 'paper' or 'all' (every block); none: the paper's four."""
    steps: int = 1
    """Denoising steps; every step is stored."""
    guidance: float = 0.0
    """Guidance scale; above 1 both halves (uncond, cond) are stored."""
    resolution: int | None = None
    """Image side in pixels, a multiple of 8; none: the model's own."""
    batch_size: int = 8
    """Images per UNet call (part of the settings: batch composition changes the floats)."""
    shard_size: int = 1024
    """Images per shard file: the unit of atomic writes and of resumption (1024 SDXL Turbo
    images at 16x16 x 1280 in bf16: 2.7 GB for the four blocks)."""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Dtype of the stored updates (`repro collect --store-dtype`; the model's is `model_dtype`)."""
    seed: int = 0
    """Seed of prompt 0; prompt i gets seed + i (also keys generated prompts)."""
    prompt_column: str = "prompt"
    """Column holding the prompts in .jsonl/.parquet/hf sources."""
    store_images: bool = False
    """Also decode and store uint8 images (small toy models only: costs a VAE decode)."""
    device: str = "auto"
    """Where to generate: auto, cpu, cuda, cuda:N, mps."""
    model_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Compute dtype of the pipeline (`repro collect --dtype`): auto (fp16 on GPU, fp32 on CPU), float32,
    float16, bfloat16."""
    engine: Literal["direct", "pipeline"] = "direct"
    """How images are generated: the UNet called directly (`repro.direct`) or the diffusers
    pipeline (`generate`); the same bits either way (tested), the direct one without host syncs."""
    unet_graph: bool = True
    """With the direct engine on CUDA, replay each UNet call from a CUDA graph (`repro.unet_graph`;
    the same floats, one launch per call); False launches its kernels one by one."""
    writers: int = 4
    """Shards serialised, hashed and written at once by background threads (memory: one
    shard's buffers per writer, plus one being filled)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.engine not in ("direct", "pipeline"):
            raise ReproError(f"engine {self.engine!r} is not known: use 'direct' or 'pipeline'")
        store_dtype(self.dtype)
        from repro.ranges import (MAX_IMAGE_BATCH, MAX_PROMPTS, MAX_SHARD_SIZE, MAX_SHARDS, MAX_THREADS, check_int,
                                  check_seed)

        check_int("n_prompts", self.n_prompts, 1, MAX_PROMPTS)
        check_int("batch_size", self.batch_size, 1, MAX_IMAGE_BATCH, why="images generated in one call")
        check_int("shard_size", self.shard_size, 1, MAX_SHARD_SIZE, why="a shard fills in host memory")
        check_int("writers", self.writers, 1, MAX_THREADS)
        if -(-self.n_prompts // self.shard_size) > MAX_SHARDS:  # each shard is a file and a manifest record
            raise ReproError(f"n_prompts={self.n_prompts} at shard_size={self.shard_size} makes more than {MAX_SHARDS} "
                             f"shards: raise shard_size to at least {-(-self.n_prompts // MAX_SHARDS)}")
        check_seed("seed", self.seed, count=self.n_prompts)  # prompt i gets seed + i
        if isinstance(self.blocks, str):
            self.blocks = tuple(b.strip() for b in self.blocks.split(",") if b.strip())
        Sampling(steps=self.steps, guidance=self.guidance, resolution=self.resolution)  # validates

    @property
    def sampling(self) -> Sampling:
        return Sampling(steps=self.steps, guidance=self.guidance, resolution=self.resolution)


# ---------------------------------------------------------------------------------------
# One batch


def capture_batch(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    blocks: Sequence[str],
    sampling: Sampling,
    dtype: torch.dtype,
    sampler: DirectSampler | None = None,
    prepared: Prepared | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Generate one batch and return ({block: [B, steps, halves, H*W, C]} on the pipe's
    device in `dtype`, final latents [B, 4, h, w]). `sampler` (a `DirectSampler` of the
    same sampling) calls the UNet directly instead of the pipeline: same numbers;
    `prepared` is its `prepare(prompts, seeds)`, done ahead."""
    if sampler is None:
        with capture_updates(pipe.unet, blocks, cfg=sampling.cfg, dtype=dtype) as cap:
            latents = generate(pipe, prompts, seeds, sampling, output="latent")
        records = {block: cap.raw.get(short_name(block), []) for block in blocks}
    else:  # the sampler records the updates itself (inside its CUDA graph on a GPU)
        latents, records = sampler.run_recording(prepared or sampler.prepare(prompts, seeds), blocks, dtype)
    out = {}
    for block in blocks:
        if len(records[block]) != sampling.steps:
            raise ReproError(
                f"block {block} was called {len(records[block])} times for {sampling.steps} steps: this pipeline "
                "does not run one UNet call per step; collection needs one"
            )
        out[block] = to_layout(stack_steps(records[block], sampling.cfg, "all"), sampling.cfg)  # [steps, B_total, C, H, W] -> [B, steps, halves, HW, C]
    return out, latents


def _compute_dtype_name(pipe) -> str:
    return str(pipe.unet.dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------
# Into a store


def collect(cfg: CollectConfig, pipe=None, progress: bool = True, source: PromptSource | None = None,
            *, rank: int | None = None, world_size: int | None = None):
    """Run (or resume) the collection `cfg` and return the store opened for reading.

    `pipe` skips loading `cfg.model` (its name is still what the manifest records);
    `source` replaces `cfg.prompts`.

    Several ranks (`rank`/`world_size`, by default those of an initialised torch.distributed
    group, e.g. under torchrun): rank r generates the shards i with i % world_size == r into
    the same store, writing its own manifest part; after a barrier rank 0 merges the parts
    into manifest.json and every rank returns the store. The shards are the bytes one process
    writes. Given explicitly without a process group, the ranks run as independent workers
    and return None; rerunning the command in one process then merges their parts.
    """
    from tqdm.auto import tqdm

    from repro.models.loading import default_resolution, load_pipeline, vae_factor
    from repro.store import ActivationStore, StoreWriter

    source = source or open_prompts(cfg.prompts, column=cfg.prompt_column, seed=cfg.seed)
    if source.length is not None and source.length < cfg.n_prompts:
        raise ReproError(
            f"{source.describe_short()} holds {source.length} prompts but {cfg.n_prompts} were asked for: "
            f"lower --n-prompts to at most {source.length}"
        )
    from repro.dist import env as dist_env

    world = dist_env.world_size() if world_size is None else int(world_size)
    rank = dist_env.rank() if rank is None else int(rank)
    if pipe is None:
        device = cfg.device if world == 1 or cfg.device != "auto" else str(dist_env.local_device())
        pipe = load_pipeline(cfg.model, device=device, dtype=cfg.model_dtype)
    blocks = resolve_blocks(pipe.unet, cfg.blocks)
    sampling = cfg.sampling
    resolution = sampling.resolution or default_resolution(pipe)
    sampling = dataclasses.replace(sampling, resolution=resolution)
    dtype = store_dtype(cfg.dtype)
    settings = {
        "format_version": FORMAT_VERSION, "model": cfg.model, "blocks": blocks, "steps": cfg.steps,
        "guidance": cfg.guidance, "resolution": resolution, "dtype": cfg.dtype,
        "compute_dtype": _compute_dtype_name(pipe), "shard_size": cfg.shard_size, "batch_size": cfg.batch_size,
        "seed": cfg.seed, "prompt_kind": source.kind, "store_images": cfg.store_images,
    }
    info = {"prompts": source.describe(), "halves": list(HALVES_CFG if sampling.cfg else HALVES_PLAIN),
            "vae_factor": vae_factor(pipe)}
    n_shards = -(-cfg.n_prompts // cfg.shard_size)
    device = str(pipe.device)
    ranked = world > 1  # several ranks: shards i % world == rank, manifest parts merged at the end
    if ranked and dist_env.active():
        if rank == 0:
            _clean_store_temporaries(cfg.out)
        dist_env.barrier()
    with StoreWriter(cfg.out, settings, info, cfg.n_prompts, part=rank if ranked else None) as writer:
        ranges = [shard_range(i, cfg.shard_size, cfg.n_prompts) for i in range(n_shards)]
        mine = [i % world == rank for i in range(n_shards)]
        done = sum(stop - start for i, (start, stop) in enumerate(ranges)
                   if mine[i] and (r := writer.records.get(i)) and (r["start"], r["stop"]) == (start, stop))
        total = sum(stop - start for i, (start, stop) in enumerate(ranges) if mine[i])
        bar = tqdm(total=total, initial=done, unit="img", desc=f"collect {cfg.out.name}",
                   disable=not progress or rank != 0, dynamic_ncols=True)
        # Shards are written by `cfg.writers` background threads (serialise, hash, fsync,
        # rename, manifest) while the next shards generate; each batch's updates are copied
        # into the shard's (pinned) host buffers without waiting for the GPU, and a writer
        # waits for the shard's CUDA event. Errors surface before the next shard is handed
        # over. Order and bytes are unchanged.
        sampler = DirectSampler(pipe, sampling, graph=cfg.unet_graph) if cfg.engine == "direct" else None
        buffers = _ShardBuffers(pipe.device)
        pool = ThreadPoolExecutor(max_workers=cfg.writers, thread_name_prefix="store-writer")
        pending: deque[Future] = deque()

        def shards_to_make():  # (index, start, stop, prompts, digest) of this rank's missing shards, lazily
            for index, (start, stop) in enumerate(ranges):
                if mine[index]:
                    prompts = source.get(start, stop)  # per shard: generated prompts are made lazily
                    digest = prompts_digest(prompts)
                    if not writer.has_shard(index, start, stop, digest):
                        yield index, start, stop, prompts, digest

        def batches():  # ((shard, lo, hi), prompts, seeds): batches fixed by global index
            for shard in shards_to_make():
                _, start, stop, prompts, _ = shard
                for lo in range(start, stop, cfg.batch_size):
                    hi = min(lo + cfg.batch_size, stop)
                    yield (shard, lo, hi), prompts[lo - start : hi - start], seeds_for(lo, hi, cfg.seed)

        # the direct sampler encodes the next batch's text in a background thread meanwhile
        work = sampler.prepared(batches()) if sampler is not None else ((tag, None) for tag, _, _ in batches())
        host: dict[str, torch.Tensor] | None = None
        nonfinite: list[torch.Tensor] = []
        imgs = []
        try:
            for (shard, lo, hi), prep in work:
                index, start, stop, prompts, digest = shard
                updates, latents = capture_batch(
                    pipe, prompts[lo - start : hi - start], seeds_for(lo, hi, cfg.seed), blocks, sampling, dtype,
                    sampler, prep,
                )
                updates[LATENTS] = latents.float()
                if host is None:
                    host = buffers.take(updates, cfg.shard_size)
                for name, t in updates.items():  # [B, ...] into rows lo..hi of the shard, async on CUDA
                    host[name][lo - start : hi - start].copy_(t, non_blocking=True)
                nonfinite.append(torch.stack([(~torch.isfinite(updates[b])).sum() for b in blocks]))
                if cfg.store_images:
                    imgs.append(torch.from_numpy(decode_latents(pipe, latents)))
                bar.update(hi - lo)
                if hi < stop:
                    continue
                n = stop - start
                tensors = {b: host[b][:n] for b in blocks}
                counts = buffers.counts(torch.stack(nonfinite).sum(0))
                ready = buffers.event()
                if "block_shapes" not in writer.manifest["info"]:
                    writer.manifest["info"].update(_shape_info(pipe, tensors, host[LATENTS][:n], sampling))
                while len(pending) >= cfg.writers:
                    pending.popleft().result()
                pending.append(pool.submit(
                    _write_when_ready, writer, buffers, host, ready, counts, blocks, index, start, stop, prompts,
                    seeds_for(start, stop, cfg.seed), tensors, host[LATENTS][:n], torch.cat(imgs) if imgs else None,
                    digest, {"device": device},
                ))
                host, nonfinite, imgs = None, [], []  # the writer owns this shard's buffers now
            while pending:
                pending.popleft().result()
        finally:
            pool.shutdown(wait=True)  # shards being written when generation fails are still finished
            bar.close()
        if not ranked:
            writer.finish(n_shards)
        elif dist_env.active():
            dist_env.barrier()  # every rank's last shard and part are written
            if rank == 0:
                _merge_store_parts(cfg.out, n_shards)
            dist_env.barrier()
        else:
            return None  # independent workers: the same command in one process merges the parts
    return ActivationStore(cfg.out)


class _ShardBuffers:
    """Reusable host buffers for a shard's tensors (pinned on CUDA), handed back by the writers."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.free: list[dict[str, torch.Tensor]] = []
        self.lock = threading.Lock()

    def take(self, like: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
        """Buffers {name: [rows, ...]} shaped and typed like the batch tensors `like`."""
        with self.lock:
            while self.free:
                bufs = self.free.pop()
                if all(k in bufs and bufs[k].shape[1:] == t.shape[1:] and bufs[k].dtype == t.dtype
                       and bufs[k].shape[0] >= rows for k, t in like.items()):
                    return bufs
        return {k: torch.empty((rows, *t.shape[1:]), dtype=t.dtype, pin_memory=self.cuda) for k, t in like.items()}

    def give_back(self, bufs: dict[str, torch.Tensor]) -> None:
        with self.lock:
            self.free.append(bufs)

    def counts(self, t: torch.Tensor) -> torch.Tensor:
        """A small device tensor copied to the host without waiting (read after `event()`)."""
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.cuda)
        return host.copy_(t, non_blocking=True)

    def event(self):
        """Marks the copies queued so far (None on the CPU, where they are done)."""
        if not self.cuda:
            return None
        ev = torch.cuda.Event()
        ev.record()
        return ev


def _write_when_ready(writer, buffers: _ShardBuffers, host, ready, counts, blocks, index, start, stop, prompts, seeds,
                      tensors, latents, images, digest, extra):
    """A writer thread's job: wait for the shard's copies, write it, hand its buffers back."""
    if ready is not None:
        ready.synchronize()
    try:
        return writer.write_shard(index, start, stop, prompts, seeds, tensors, latents, images, prompts_sha=digest,
                                  extra=extra, nonfinite=dict(zip(blocks, (int(c) for c in counts.tolist()))))
    finally:
        buffers.give_back(host)


def _clean_store_temporaries(folder: Path) -> None:
    from repro.store.writer import clean_temporaries

    clean_temporaries(folder)


def _merge_store_parts(folder: Path, n_shards: int) -> None:
    from repro.store.writer import merge_manifest_parts

    merge_manifest_parts(folder, n_shards)


def _shape_info(pipe, tensors: dict[str, torch.Tensor], latents: torch.Tensor, sampling: Sampling) -> dict[str, Any]:
    shapes = {}
    for b, t in tensors.items():
        from repro.blocks import get_block

        hw = t.shape[3]
        # square maps: H = W = sqrt(HW); checked against the latent's aspect (always square here)
        side = int(round(hw**0.5))
        if side * side != hw:
            raise ReproError(f"block {b} has a non-square map of {hw} positions: not supported by the store")
        shapes[b] = {"height": side, "width": side, "channels": int(t.shape[4]),
                     "module": type(get_block(pipe.unet, b)).__name__}
    return {"block_shapes": shapes, "latent_shape": list(latents.shape[1:])}
