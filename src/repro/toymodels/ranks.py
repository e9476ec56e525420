"""The data-parallel group of one `repro toy train` run (one process: world 1, no collectives).

Under torchrun every rank holds the same weights, draws its own share of each batch
(`per_rank`) with its own generator, and averages gradients before every update
(`engine.average_gradients`). What must agree across ranks goes through here: the mean
loss that is logged, the decision to stop a chunk early, the generators' states that a
checkpoint keeps (one per rank), and the starting weights.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from repro.dist import env
from repro.errors import ReproError

SEED_STRIDE = 7919  # rank r draws batches from seed + r * SEED_STRIDE (rank 0: the one-process run's seed)


class Ranks:
    def __init__(self) -> None:
        self.rank, self.world = env.rank(), env.world_size()

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def lead(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        return seed + self.rank * SEED_STRIDE

    def per_rank(self, stage_cfg, what: str):
        """The stage settings with this rank's share of the batch (the global batch is the config's)."""
        if not self.parallel:
            return stage_cfg
        if stage_cfg.batch_size % self.world:
            raise ReproError(f"{what} batch size {stage_cfg.batch_size} does not split over {self.world} ranks: "
                             f"pick a multiple of {self.world}")
        return dataclasses.replace(stage_cfg, batch_size=stage_cfg.batch_size // self.world)

    def grad_sync(self):
        from repro.toymodels.engine import average_gradients

        return average_gradients if self.parallel else None

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if it is True on one (e.g. a rank's clock says the chunk is over)."""
        if not self.parallel:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        env.barrier()

    def broadcast(self, tensors) -> None:
        """Rank 0's values into every rank's tensors (same shapes), in place."""
        if self.parallel:
            with torch.no_grad():
                for t in tensors:
                    dist.broadcast(t.data, src=0)

    def generator_states(self, gen: torch.Generator) -> list[torch.Tensor]:
        """Every rank's generator state (uint8 CPU tensors), on every rank."""
        state = gen.get_state()
        if not self.parallel:
            return [state]
        states: list = [None] * self.world
        dist.all_gather_object(states, state)
        return states
