"""Transfer: a 1-step SAE applied to the updates of every step of other samplers/models.

The paper's second claim is that SAEs trained on 1-step SDXL Turbo also reconstruct the
updates of 4-step Turbo and of multi-step SDXL base (with guidance: cond and uncond halves).
A *control* SAE trained on the target setting itself gives the ceiling of each cell.
"""

from __future__ import annotations

from pathlib import Path

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


def train_control_sae(
    like: TopKSAE, tokens: torch.Tensor, steps: int, batch_size: int = 1024, seed: int = 0,
    device: str = "auto", out_dir: str | Path | None = None,
) -> TopKSAE:
    """An SAE of `like`'s shape trained on `tokens` [N, C] of the target setting (the ceiling)."""
    cfg = SAEConfig(**{**like.cfg.to_dict(), "d_model": tokens.shape[-1]})
    sae = TopKSAE(cfg, seed=seed)
    source = TensorSource({"x": tokens.reshape(-1, tokens.shape[-1]).float()}, batch_size=batch_size, seed=seed)
    train_cfg = TrainConfig(steps=steps, device=device, checkpoint_every=0, progress=False, log_every=max(steps, 1),
                            geometric_median_samples=min(8192, tokens.reshape(-1, tokens.shape[-1]).shape[0]))
    train_saes({"x": sae}, source, train_cfg, out_dir=out_dir)
    return sae
