"""What every stage's training loop shares: the learning-rate schedule, metrics, and `run_stage`.

A stage is `make_batch(gen) -> dict of tensors` (every random draw of a step) plus a pure
`loss_fn(batch) -> scalar`; `run_stage` runs its optimiser steps through a `TrainStep`
(eager or one CUDA graph), from `start` to `steps`, and stops early when the run's chunk
budget (seconds or steps) is spent, so that the caller can save a checkpoint and a later
run resumes where this one stopped. The schedule depends on the step alone, so a stage
run as one piece or as chunks follows the same learning rates.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from repro.toymodels.engine import TrainStep
from repro.toymodels.ranks import Ranks


def lr_at(step: int, steps: int, lr: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first `warmup` of the steps, then cosine decay to 10% of `lr`."""
    progress = min(step / max(steps, 1), 1.0)
    if progress < warmup:
        return lr * max(progress / warmup, 0.01)
    rest = (progress - warmup) / (1 - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * rest)))


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (cache off, as CUDA graph capture needs); a no-op elsewhere (fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


class MetricLog:
    """Metric records (one dict each), kept in memory and appended to `path` as JSON lines if given."""

    def __init__(self, path: Path | None = None, records: list[dict] | None = None):
        self.path = path
        self.records: list[dict] = list(records or [])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")


@dataclass
class Budget:
    """What one run (chunk) may spend before it stops to checkpoint: wall seconds and/or optimiser steps."""

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        self.t0 = time.time()
        self.used_steps = 0
        self.stopped = False  # set when the ranks agreed that the clock ran out

    def clock_spent(self) -> bool:
        return self.seconds is not None and time.time() - self.t0 >= self.seconds

    def spent(self, clock: bool = True) -> bool:
        """Steps or (if `clock`) seconds used up. Several ranks read the clock only where they agree (`run_stage`)."""
        return (self.stopped or (self.steps is not None and self.used_steps >= self.steps)
                or (clock and self.clock_spent()))


def run_stage(stage: str, steps: int, start: int, make_batch: Callable[[torch.Generator], dict],
              step: TrainStep, gen: torch.Generator, lr: float, log: MetricLog, budget: Budget,
              log_every: int = 50, progress: bool = True, ranks: Ranks | None = None) -> dict:
    """Optimiser steps `start`..`steps` (or until `budget` is spent); returns the run's summary.

    Losses stay on the device and are read back every `log_every` steps (one sync then);
    each record holds the mean loss of those steps (over all ranks) and the rate of this run
    so far. Several ranks check the chunk's clock only at those points, and stop together.
    """
    from tqdm.auto import tqdm

    ranks = ranks or Ranks()
    t0 = time.time()
    pending: list[torch.Tensor] = []
    bar = tqdm(total=steps, initial=start, desc=stage, disable=not progress or not ranks.lead, mininterval=2.0,
               unit="step")
    first = last = float("nan")
    i = start
    while i < steps and not budget.spent(clock=not ranks.parallel):
        rate = lr_at(i, steps, lr)
        pending.append(step(make_batch(gen), rate))
        i += 1
        budget.used_steps += 1
        at_log = i % log_every == 0 or i == steps
        if ranks.parallel and at_log and ranks.any(budget.clock_spent(), pending[-1].device):
            budget.stopped = True
        if at_log or budget.spent(clock=not ranks.parallel):
            mean = ranks.mean(torch.stack(pending).float().mean()).item()
            pending.clear()
            if not math.isfinite(mean):
                raise FloatingPointError(f"{stage}: loss became {mean} at step {i}; lower the learning rate")
            first = mean if math.isnan(first) else first
            last = mean
            elapsed = time.time() - t0
            log.write(stage=stage, step=i, loss=mean, lr=rate, elapsed_s=round(elapsed, 2),
                      steps_per_s=round((i - start) / max(elapsed, 1e-9), 2))
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            bar.update(i - bar.n)
    bar.close()
    seconds = time.time() - t0
    return {"steps": i, "run_steps": i - start, "seconds": round(seconds, 1),
            "steps_per_s": round((i - start) / max(seconds, 1e-9), 2),
            "first_loss": first, "final_loss": last, "finished": i >= steps}
