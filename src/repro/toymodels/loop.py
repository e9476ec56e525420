"""What every stage's training loop shares: optimiser, schedule, autocast, progress and metrics."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch


class Schedule:
    """Learning rate: linear warm-up over the first `warmup` of training, then cosine decay to 10%.

    Progress is the larger of steps done / steps and seconds spent / max_seconds, so a stage
    with a time budget still ends its decay when its time is up.
    """

    def __init__(self, opt, lr: float, steps: int, max_seconds: float | None = None, warmup: float = 0.05):
        self.opt, self.lr, self.steps, self.max_seconds, self.warmup = opt, lr, steps, max_seconds, warmup
        self.t0 = time.time()
        self.set(0)

    def progress(self, step: int) -> float:
        p = step / self.steps
        if self.max_seconds:
            p = max(p, (time.time() - self.t0) / self.max_seconds)
        return min(p, 1.0)

    def factor(self, progress: float) -> float:
        if progress < self.warmup:
            return max(progress / self.warmup, 0.01)
        rest = (progress - self.warmup) / (1 - self.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * rest))

    def set(self, step: int) -> float:
        lr = self.lr * self.factor(self.progress(step))
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def done(self, step: int) -> bool:
        return step >= self.steps or (bool(self.max_seconds) and time.time() - self.t0 >= self.max_seconds)


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, steps: int, device: torch.device,
                   weight_decay: float = 0.01, max_seconds: float | None = None):
    """AdamW (fused on CUDA) and its `Schedule`."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay,
                            fused=device.type == "cuda")
    return opt, Schedule(opt, lr, steps, max_seconds)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU training runs in fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class MetricLog:
    """Appends one JSON line per record to `path` (if given) and keeps them in memory."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.records: list[dict] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record, sort_keys=True) + "\n")


def run_steps(stage: str, steps: int, step_fn: Callable[[int], torch.Tensor], opt, sched: Schedule, params,
              log: MetricLog, log_every: int = 50, grad_clip: float = 1.0, progress: bool = True) -> dict:
    """Run optimiser steps of `step_fn(step) -> loss` until `sched` is done; returns a summary.

    Losses are read back from the device only every `log_every` steps (a sync per step
    would make a small model wait on the host); the mean of those steps is recorded.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    pending: list[torch.Tensor] = []
    bar = tqdm(total=steps, desc=stage, disable=not progress, mininterval=2.0)
    first = last = float("nan")
    step = 0
    while not sched.done(step):
        lr = sched.set(step)
        loss = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        pending.append(loss.detach())
        step += 1
        if step % log_every == 0 or sched.done(step):
            mean = torch.stack(pending).float().mean().item()
            pending.clear()
            if not math.isfinite(mean):
                raise FloatingPointError(f"{stage}: loss became {mean} at step {step}; lower the learning rate")
            first = mean if math.isnan(first) else first
            last = mean
            elapsed = time.time() - t0
            log.write(stage=stage, step=step, loss=mean, lr=lr,
                      elapsed_s=round(elapsed, 2), steps_per_s=round(step / max(elapsed, 1e-9), 2))
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
        bar.update(1)
    bar.close()
    seconds = time.time() - t0
    return {"steps": step, "seconds": round(seconds, 1), "steps_per_s": round(step / max(seconds, 1e-9), 2),
            "first_loss": first, "final_loss": last}
