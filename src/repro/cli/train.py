"""`repro train`: TopK SAEs on an activation store, one per block (resumes automatically).

One process, or several under torchrun (`--parallel block`: blocks split over ranks;
`--parallel data`: every rank trains every SAE on its part of each batch, reading only
its part of the store's shards).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repro.errors import ReproError

SAE_FLAGS = ("k", "k_aux", "dead_tokens_threshold")
"""The SAEConfig fields a training run chooses (d_model comes from the store, n_features from --expansion)."""


@dataclass
class StoreTraining:
    """What `repro train` reads and writes, and how its SAEs are sized: the arguments of
    `build_block_saes` and `store_batches` (the run itself is a `TrainConfig`, each SAE an `SAEConfig`)."""

    store: Path
    """Activation store folder (from `repro collect`)."""
    out: Path
    """Output folder: OUT/<block>/, metrics.jsonl, checkpoints."""
    blocks: tuple[str, ...] = ("all",)
    """Blocks of the store to train an SAE on (comma list), 'paper' or 'all'."""
    expansion: int = 4
    """n_features = expansion x the block's channels."""
    batch_size: int = 4096
    """Tokens per batch (global, over all ranks)."""
    seed: int = 0
    """SAE init seed (block i of the store gets seed + i) and shuffle seed."""
    step: int | None = None
    """Train on this denoising step only (none: all steps)."""
    half: Literal["cond", "uncond"] | None = None
    """Train on this guidance half only (stores collected with guidance; none: both)."""
    parallel: Literal["block", "data"] = "block"
    """Under torchrun: block = one block's SAE per rank, data = all ranks share every SAE."""
    verify: bool = True
    """Check each shard's sha256 against the manifest on its first read; --no-verify only for a store
    already checked with `repro store verify`."""
    read_threads: int | None = None
    """Shards read and checked at once (none: the usable cores, at most 8)."""

    def __post_init__(self) -> None:
        from repro.ranges import MAX_EXPANSION, MAX_THREADS, MAX_TOKEN_BATCH, MAX_TRAIN_STEPS, check_int, check_seed

        self.store, self.out, self.blocks = Path(self.store), Path(self.out), tuple(self.blocks)
        check_int("expansion", self.expansion, 1, MAX_EXPANSION, why="SAE features per channel (the paper's: 4)")
        check_int("batch_size", self.batch_size, 1, MAX_TOKEN_BATCH, why="tokens held in memory at once")
        check_seed("seed", self.seed)
        if self.step is not None:
            check_int("step", self.step, 0, MAX_TRAIN_STEPS)
        if self.read_threads is not None:
            check_int("read_threads", self.read_threads, 1, MAX_THREADS)


def add_train_args(p) -> None:
    from repro.cli.dataclass_args import add_dataclass_args
    from repro.sae.config import SAEConfig, TrainConfig

    add_dataclass_args(p, StoreTraining, title="data and SAE sizes (StoreTraining)")
    add_dataclass_args(p, SAEConfig, only=SAE_FLAGS, title="each SAE (SAEConfig)",
                       flags={"dead_tokens_threshold": ("--dead-tokens-threshold", "--dead-tokens")})
    add_dataclass_args(p, TrainConfig, title="the run (TrainConfig)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train TopK SAEs on an activation store (torchrun-aware; resumes automatically)",
                       description="Settings: every flag is a field of StoreTraining (repro.cli.train), SAEConfig "
                                   "or TrainConfig (repro.sae.config), with its default and docstring.",
                       populate=add_train_args)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from repro.blocks import expand_aliases
    from repro.cli.dataclass_args import from_args
    from repro.dist import env
    from repro.dist.train import store_batches, train_distributed
    from repro.io import writable_folder
    from repro.ranges import check_seed
    from repro.sae import TrainConfig, build_block_saes
    from repro.store import ActivationStore

    cfg = from_args(TrainConfig, args)  # bad settings are refused before the store is opened
    run = from_args(StoreTraining, args)
    store = ActivationStore(run.store, verify=run.verify)
    blocks = [store.block_name(b) for b in expand_aliases(run.blocks, store.blocks)]
    if len(set(blocks)) != len(blocks):
        raise ReproError(f"--blocks {','.join(run.blocks)} names a block twice: give each block once")
    check_seed("seed", run.seed, count=len(store.blocks))  # block i of the store gets seed + i
    if not store.shards:
        raise ReproError(f"the store {run.store} holds no shards yet: finish `repro collect` first")
    store.tokens_per_image(blocks[0], run.step, run.half)  # checks --step and --half before --out is made
    saes = build_block_saes(store, k=args.k, k_aux=args.k_aux, expansion=run.expansion,
                            dead_tokens=args.dead_tokens_threshold, seed=run.seed, blocks=blocks)
    writable_folder(run.out)  # before any batch is read
    env.init_from_env()
    try:
        # Batches are gathered where the SAEs train (see StoreSource): same rows, no per-batch copy.
        # One source per map size (blocks of different sizes train together, see store_source);
        # data-parallel ranks read only their part of the shards (see store_batches).
        data_device = env.local_device() if cfg.device == "auto" else cfg.device
        source, split = store_batches(store, run.batch_size, parallel=run.parallel, step=run.step, half=run.half,
                                      seed=run.seed, device=data_device, read_threads=run.read_threads)
        result = train_distributed(saes, source, cfg, out_dir=run.out, parallel=run.parallel, split=split,
                                   resume=True, metadata={"model": store.settings["model"], "store": str(run.store)})
        if env.rank() == 0:
            print(f"trained {', '.join(blocks)} for {result.steps} steps ({result.tokens} tokens per block) "
                  f"into {run.out}")
    finally:
        env.shutdown()
    return 0
