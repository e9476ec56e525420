"""Rank, world size and device of this process under torch.distributed (torchrun or any rendezvous).

Nothing here starts processes: `torchrun --nproc-per-node N -m repro.cli ...` (or a
cluster launcher using torch.distributed's usual env:// rendezvous: MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) starts them, and `init_from_env()` joins the
process group they describe. Device per rank: cuda:LOCAL_RANK when CUDA is there, else
cpu; backend nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from repro.errors import ReproError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE")) and int(os.environ["WORLD_SIZE"]) >= 1


def active() -> bool:
    """Whether a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", rank() if active() else 0))


def local_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's env vars; True if one is active afterwards.

    Does nothing when no launcher set them (one plain process) or a group is already up.
    """
    if active():
        return True
    if not launched():
        return False
    missing = [v for v in TORCHRUN_VARS if v not in os.environ and v != "LOCAL_RANK"]
    if missing:
        raise ReproError(f"RANK/WORLD_SIZE are set but {missing} are not: start the run with torchrun "
                         "(or set the env:// rendezvous variables yourself)")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def describe() -> dict:
    """Recorded beside trained SAEs: how the run was split."""
    return {"world_size": world_size(), "backend": dist.get_backend() if active() else None}
