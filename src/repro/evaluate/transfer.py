"""Transfer: a 1-step SAE applied to the updates of every step of other samplers/models.

The paper's second claim is that SAEs trained on 1-step SDXL Turbo also reconstruct the
updates of 4-step Turbo and of multi-step SDXL base (with guidance: cond and uncond halves).
A *control* SAE trained on the target setting itself gives the ceiling of each cell; it is
a ceiling only when it gets the same budget (width, k, batch, steps) as the SAE it is
compared with, so `control_curve` trains one control up to that budget and records its
EV at several budgets on the way: a curve of control EV against training tokens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import torch

from repro.evaluate.reconstruction import code_overlap, evaluate_reconstruction
from repro.sae.config import SAEConfig, TrainConfig
from repro.sae.model import TopKSAE
from repro.sae.sources import TensorSource
from repro.sae.train import train_saes


def ev_per_step(sae: TopKSAE, updates: torch.Tensor) -> list[float]:
    """EV of `sae` at each step: updates [steps, N, H, W, C] -> [steps] floats."""
    return [evaluate_reconstruction(sae, updates[t]).ev for t in range(updates.shape[0])]


def overlap_per_step(sae: TopKSAE, updates: torch.Tensor) -> list[float]:
    """Cosine similarity of the codes at steps t and t+1 (same positions): [steps - 1] floats."""
    return [code_overlap(sae, updates[t], updates[t + 1]) for t in range(updates.shape[0] - 1)]


def budget_points(steps: int, n_points: int) -> list[int]:
    """`n_points` training budgets (in steps) halving down from `steps`: 1500, 4 -> [188, 375, 750, 1500]."""
    return sorted({max(1, round(steps / 2 ** i)) for i in range(n_points)})


def control_curve(
    like: TopKSAE, tokens: torch.Tensor, budgets: Sequence[int], updates: torch.Tensor, batch_size: int,
    seed: int = 0, device: str = "auto", lr: float = 1e-4,
) -> list[dict]:
    """Train one control SAE of `like`'s config on `tokens` [N, C] of the target setting, stopping at
    each budget (steps of `batch_size` rows, increasing) to measure its EV on `updates` [steps, N, H, W, C].
    `lr` is the compared SAE's (the paper's 1e-4 by default).

    Returns [{"steps", "tokens", "ev_per_step": [steps floats], "ev": mean}] per budget; the
    last entry is the ceiling at the full budget. Training continues from the previous
    budget (same run, checkpointed), so the curve costs one training to its largest budget.
    """
    budgets = sorted(int(b) for b in budgets)
    cfg = SAEConfig(**{**like.cfg.to_dict(), "d_model": tokens.shape[-1]})
    sae = TopKSAE(cfg, seed=seed)
    flat = tokens.reshape(-1, tokens.shape[-1]).float()
    source = TensorSource({"x": flat}, batch_size=batch_size, seed=seed)
    curve = []
    with tempfile.TemporaryDirectory(prefix="control-") as work:
        for budget in budgets:
            train_cfg = TrainConfig(steps=budget, lr=lr, device=device, checkpoint_every=budgets[-1] + 1, progress=False,
                                    log_every=max(budget, 1), geometric_median_samples=min(8192, flat.shape[0]))
            train_saes({"x": sae}, source, train_cfg, out_dir=work, resume=True, save_final=False)
            per_step = ev_per_step(sae, updates)
            curve.append({"steps": budget, "tokens": budget * batch_size, "ev_per_step": per_step,
                          "ev": float(sum(per_step) / len(per_step))})
    return curve
