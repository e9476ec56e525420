"""SAE training on several ranks: block-parallel (one block's SAE per rank) or data-parallel.

`train_distributed(saes, source, cfg, out_dir=..., parallel=...)` is called by every rank
with the same arguments (under torchrun; `repro train` does it):

* `parallel="block"` (the paper's natural split: four independent SAEs): rank r trains
  blocks[r::world] with `train_saes` on a source for just those blocks; no collective
  during training. Each SAE is the one a single process training the same blocks on the
  same batches gives (bitwise on CPU). Checkpoints and metrics of rank r go to
  OUT/ranks/rank-R/ (resume: same world size); final SAEs to OUT/<block>/; after a
  barrier rank 0 merges the metrics into OUT/metrics.jsonl.
* `parallel="data"` (one large SAE, or all of them, replicated): every rank trains every
  SAE with `dp_train_step` on its part of each batch (`DataParallelSource`): either
  `split="slice"`, every rank reading the same stream and keeping rows
  [r*B/W, (r+1)*B/W) of each batch (the run equals one process on the full batch up to
  float rounding), or `split="own"`, the source already being this rank's own: its part
  of a store split by rank (`store_source(ranks=W, rank=r)`, what `repro train` uses:
  each rank reads 1/W of the shards; the run equals one process on the W parts
  concatenated, `store_source(ranks=W)`) or a stream generating other prompts on every
  rank. b_pre is initialised from the full batches (gathered from the ranks for "own").
  Rank 0 writes OUT/metrics.jsonl, OUT/checkpoints and the final SAEs; other ranks
  checkpoint into OUT/ranks/rank-R/ (their stream position); on resume all ranks restart
  from the newest step every rank holds.

`source` is a BatchSource, or a callable `blocks -> BatchSource` (needed for "block", so
that a rank reads only its blocks).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
import torch.distributed as dist

from repro.dist import env
from repro.dist.step import dp_train_step
from repro.errors import ReproError, choices_hint
from repro.io import write_bytes_atomic
from repro.sae.checkpoint import PREFIX, list_checkpoints
from repro.sae.config import TrainConfig
from repro.sae.model import TopKSAE
from repro.sae.train import CHECKPOINTS, METRICS_FILE, TrainResult, init_b_pre, train_saes

PARALLEL = ("block", "data")
RANKS_DIR = "ranks"


def rank_dir(out: Path, rank: int) -> Path:
    return Path(out) / RANKS_DIR / f"rank-{rank:05d}"


class DataParallelSource:
    """This rank's part of every batch of `source`, with the ranks agreeing on non-finite batches.

    `split="slice"`: rows [r*B//W, (r+1)*B//W) of each batch of a stream every rank reads
    alike; `split="own"`: the batches as they come (the source is already this rank's).
    When any rank's rows of a block hold NaN/inf, every rank sees that block as non-finite,
    so the trainer skips (or stops) on all ranks together. State = the wrapped source's.
    """

    def __init__(self, source, rank: int, world: int, split: Literal["slice", "own"] = "slice", group=None):
        if split not in ("slice", "own"):
            raise ReproError(f"unknown data split {split!r}: use {choices_hint(['slice', 'own'])}")
        self.source, self.rank, self.world, self.split, self.group = source, rank, world, split, group

    @property
    def blocks(self) -> list[str]:
        return list(self.source.blocks)

    @property
    def batch_size(self) -> int:
        """Rows of one global batch."""
        return int(self.source.batch_size) * (self.world if self.split == "own" else 1)

    def _device(self) -> torch.device:
        return env.local_device() if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n_blocks = len(self.blocks)
        for batch in self._own_rows():
            # [ended, non-finite per block], summed over ranks
            flags = [1.0] + [0.0] * n_blocks if batch is None else \
                [0.0] + [float(not torch.isfinite(v).all()) for v in batch.values()]
            flags_t = torch.tensor(flags, device=self._device())
            dist.all_reduce(flags_t, group=self.group)
            ended, *bad = flags_t.tolist()
            if ended:
                return
            for (name, v), b in zip(list(batch.items()), bad):
                if b and torch.isfinite(v).all():
                    v = v.clone()
                    v.view(-1)[0] = float("nan")  # another rank's part is non-finite: skip together
                    batch[name] = v
            yield batch

    def _own_rows(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """This rank's rows of each batch, then None once the source ends."""
        for batch in self.source:
            if self.split == "slice":
                B = next(iter(batch.values())).shape[0]
                lo, hi = self.rank * B // self.world, (self.rank + 1) * B // self.world
                batch = {k: v[lo:hi] for k, v in batch.items()}
            yield batch
        yield None

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        inner = self.source.describe() if hasattr(self.source, "describe") else {"source": type(self.source).__name__}
        return {**inner, "data_parallel": {"world_size": self.world, "split": self.split}}


class GatheredSource:
    """The full batches of a DataParallelSource with split "own": every rank's rows, in rank
    order (all-gathered; equal rows per rank). Only for b_pre's initialisation: one process
    on the concatenated parts starts from the same rows. State = the wrapped source's."""

    def __init__(self, data: DataParallelSource):
        self.data = data

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.data:
            full = {}
            for name, v in batch.items():
                on = v.to(self.data._device())
                parts = [torch.empty_like(on) for _ in range(self.data.world)]
                dist.all_gather(parts, on, group=self.data.group)
                full[name] = torch.cat(parts).to(v.device)  # [world * b, d]
            yield full

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state)


def _steps(root: Path) -> list[int]:
    return [int(p.name[len(PREFIX):]) for p in list_checkpoints(root)]


def _agree_on_checkpoint(own_root: Path, rank: int, world: int) -> int | None:
    """The newest checkpoint step every rank holds; newer ones are removed (a kill between ranks'
    writes). None: start afresh."""
    mine = _steps(own_root)
    gathered: list[list[int]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, mine)
    common = set(gathered[0]).intersection(*map(set, gathered[1:]))
    step = max(common) if common else None
    for s in mine:
        if step is None or s > step:
            shutil.rmtree(own_root / f"{PREFIX}{s:09d}", ignore_errors=True)
    return step


def _merge_metrics(out: Path, world: int, order: list[str]) -> None:
    rows = []
    for r in range(world):
        path = rank_dir(out, r) / METRICS_FILE
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rank_of = {b: i for i, b in enumerate(order)}
    rows.sort(key=lambda row: (row["step"], rank_of.get(row["block"], len(order))))
    write_bytes_atomic(out / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows).encode())


def store_batches(store: Any, batch_size: int, *, parallel: Literal["block", "data"] = "block",
                  **kwargs: Any) -> tuple[Callable[[list[str]], Any], Literal["slice", "own"]]:
    """What `repro train` trains on: (a factory blocks -> source of a store, the split for
    `train_distributed`). `batch_size` is the global batch; `kwargs` go to `store_source`.

    Data-parallel on several ranks: rank r reads only its part of the shards
    (`store_source(ranks=W, rank=r)`, split "own"), so reading scales with the ranks;
    otherwise every source reads all shards of its blocks.
    """
    from repro.store import store_source

    if parallel == "data" and env.active() and env.world_size() > 1:
        rank, world = env.rank(), env.world_size()
        return (lambda blocks: store_source(store, batch_size, blocks=blocks, ranks=world, rank=rank, **kwargs)), "own"
    return (lambda blocks: store_source(store, batch_size, blocks=blocks, **kwargs)), "slice"


def train_distributed(
    saes: dict[str, TopKSAE],
    source: Any,
    cfg: TrainConfig,
    *,
    out_dir: str | os.PathLike,
    parallel: Literal["block", "data"] = "block",
    split: Literal["slice", "own"] = "slice",
    resume: bool = True,
    metadata: dict[str, Any] | None = None,
    group=None,
) -> TrainResult:
    """Train `saes` {block: SAE} on every rank of the default process group (see the module
    docstring); returns this rank's `TrainResult`. With no process group: `train_saes`."""
    if parallel not in PARALLEL:
        raise ReproError(f"unknown parallel mode {parallel!r}: use {choices_hint(PARALLEL)}")
    make_source: Callable[[list[str]], Any] = source if callable(source) and not hasattr(source, "state_dict") else (
        lambda blocks: source)
    out = Path(out_dir)
    metadata = {**(metadata or {}), "distributed": {**env.describe(), "parallel": parallel}}
    if not env.active() or env.world_size() == 1:
        return train_saes(saes, make_source(list(saes)), cfg, out_dir=out, resume=resume, metadata=metadata)
    rank, world = env.rank(), env.world_size()
    if cfg.device == "auto":
        cfg = dataclasses.replace(cfg, device=str(env.local_device()))
    cfg = dataclasses.replace(cfg, progress=cfg.progress and rank == 0)
    if parallel == "block":
        mine = list(saes)[rank::world]
        result = TrainResult(steps=0, tokens=0, skipped_nonfinite={})
        if mine:
            result = train_saes({b: saes[b] for b in mine}, make_source(mine), cfg, out_dir=out, resume=resume,
                                metadata=metadata, work_dir=rank_dir(out, rank))
        env.barrier()
        if rank == 0:
            _merge_metrics(out, world, list(saes))
        env.barrier()
        return result

    inner = make_source(list(saes))
    data = DataParallelSource(inner, rank, world, split, group)
    own_root = (out if rank == 0 else rank_dir(out, rank)) / CHECKPOINTS
    step = _agree_on_checkpoint(own_root, rank, world) if resume else None
    if step is None and cfg.init_b_pre:
        # b_pre from the data one process would use: the full batches, read whole or gathered
        init_b_pre(saes, inner if split == "slice" else GatheredSource(data), cfg.geometric_median_samples)
    for sae in saes.values():  # identical replicas (same seeds already; this makes sure)
        sae.to(cfg.device if cfg.device != "auto" else env.local_device())
        for t in list(sae.parameters()) + list(sae.buffers()):
            dist.broadcast(t.data, src=0, group=group)
    result = train_saes(
        saes, data, dataclasses.replace(cfg, init_b_pre=False), out_dir=out, resume=resume, metadata=metadata,
        step_fn=functools.partial(dp_train_step, group=group), batch_rows=data.batch_size,
        work_dir=None if rank == 0 else rank_dir(out, rank), save_final=rank == 0,
    )
    env.barrier()
    return result


__all__ = ["DataParallelSource", "GatheredSource", "PARALLEL", "rank_dir", "store_batches", "train_distributed"]
