"""Several GPUs (or hosts) through torch.distributed: sharded collection and parallel SAE training.

`repro.collect.collect` and the trainer entry points here become rank-aware when a process
group is up (torchrun); with one plain process nothing changes.
"""

from repro.dist.env import init_from_env, local_device, rank, world_size
from repro.dist.step import dp_train_step
from repro.dist.train import DataParallelSource, train_distributed

__all__ = ["DataParallelSource", "dp_train_step", "init_from_env", "local_device", "rank", "train_distributed",
           "world_size"]
