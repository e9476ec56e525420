"""What every stage's training loop shares: optimiser, schedule, autocast, progress and metrics."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, steps: int, device: torch.device,
                   weight_decay: float = 0.01, warmup: float = 0.05):
    """AdamW (fused on CUDA) with linear warm-up over `warmup` of the steps, then cosine decay to 10%."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay,
                            fused=device.type == "cuda")
    n_warm = max(1, int(warmup * steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        progress = min(1.0, (step - n_warm) / max(1, steps - n_warm))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


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


def run_steps(stage: str, steps: int, step_fn: Callable[[int], torch.Tensor], opt, sched, params,
              log: MetricLog, log_every: int = 50, grad_clip: float = 1.0, progress: bool = True) -> dict:
    """Run `steps` optimiser steps of `step_fn(step) -> loss`; returns a summary of the stage.

    Losses are read back from the device only every `log_every` steps (a sync per step
    would make a small model wait on the host); the mean of those steps is recorded.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    pending: list[torch.Tensor] = []
    bar = tqdm(total=steps, desc=stage, disable=not progress, mininterval=2.0)
    first = last = float("nan")
    for step in range(steps):
        loss = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        pending.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = torch.stack(pending).float().mean().item()
            pending.clear()
            if not math.isfinite(mean):
                raise FloatingPointError(f"{stage}: loss became {mean} at step {step + 1}; lower the learning rate")
            first = mean if math.isnan(first) else first
            last = mean
            elapsed = time.time() - t0
            log.write(stage=stage, step=step + 1, loss=mean, lr=sched.get_last_lr()[0],
                      elapsed_s=round(elapsed, 2), steps_per_s=round((step + 1) / max(elapsed, 1e-9), 2))
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
        bar.update(1)
    bar.close()
    seconds = time.time() - t0
    return {"steps": steps, "seconds": round(seconds, 1), "steps_per_s": round(steps / max(seconds, 1e-9), 2),
            "first_loss": first, "final_loss": last}
