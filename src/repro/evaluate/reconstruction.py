"""Reconstruction quality of an SAE on held-out updates.

Definitions (x: update vectors [N, C], x_hat: their reconstructions):
- EV  = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2   (explained variance; FVU = 1 - EV)
- L0  = mean number of nonzero latents per vector
- dead fraction = share of features that never fired on the evaluation set
- per-position EV: the same ratio computed separately for each spatial position (h, w),
  over all images, with the mean taken over all positions: where in the image
  reconstruction fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from repro.errors import ReproError
from repro.sae.model import TopKSAE


@dataclass
class Reconstruction:
    """Reconstruction figures of one SAE on one set of updates."""

    ev: float
    fvu: float
    l0: float
    dead_fraction: float
    n_tokens: int
    position_ev: list[list[float]]
    """[H][W] explained variance per spatial position."""

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_reconstruction(sae: TopKSAE, updates: torch.Tensor, batch_size: int = 8192) -> Reconstruction:
    """Metrics of `sae` on updates [N, H, W, C] (or [..., H, W, C]: leading dims are flattened)."""
    if updates.shape[-1] != sae.cfg.d_model:
        raise ReproError(
            f"the SAE reads vectors of width {sae.cfg.d_model} but these updates have {updates.shape[-1]} "
            "channels: evaluate it on a block of its width"
        )
    x = updates.reshape(-1, *updates.shape[-3:]).float()  # [N, H, W, C]
    n, h, w, c = x.shape
    flat = x.reshape(-1, c)
    mean_all = flat.mean(0)
    mean_pos = x.mean(0)  # [H, W, C]
    err_pos = torch.zeros(h, w, dtype=torch.float64)
    var_pos = ((x - mean_pos) ** 2).sum((0, 3)).double()  # [H, W]
    err_total, l0_total = 0.0, 0.0
    fired = torch.zeros(sae.cfg.n_features, dtype=torch.bool)
    images_per_batch = max(1, batch_size // (h * w))
    for start in range(0, n, images_per_batch):
        chunk = x[start : start + images_per_batch].to(device=sae.device, dtype=sae.dtype)
        vals, idx = sae.encode_topk(chunk)
        x_hat = sae.decode_sparse(vals, idx).float()
        sq = ((chunk.float() - x_hat) ** 2).sum(-1).cpu().double()  # [b, H, W]
        err_pos += sq.sum(0)
        err_total += float(sq.sum())
        active = vals > 0
        l0_total += float(active.sum())
        fired[idx[active].unique().cpu()] = True
    var_total = float(((flat - mean_all) ** 2).sum())
    ev = 1.0 - err_total / var_total if var_total > 0 else float("nan")
    position_ev = (1.0 - err_pos / var_pos.clamp_min(1e-12)).tolist()
    return Reconstruction(
        ev=ev, fvu=1.0 - ev, l0=l0_total / (n * h * w), dead_fraction=1.0 - float(fired.float().mean()),
        n_tokens=n * h * w, position_ev=position_ev,
    )


@torch.no_grad()
def code_overlap(sae: TopKSAE, a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of the SAE codes of the same positions in `a` and `b` ([..., C] each).

    The paper's "feature overlap" between adjacent denoising steps t and t+1.
    """
    za = sae.encode(a.reshape(-1, a.shape[-1]).to(device=sae.device, dtype=sae.dtype)).float()
    zb = sae.encode(b.reshape(-1, b.shape[-1]).to(device=sae.device, dtype=sae.dtype)).float()
    return float(torch.nn.functional.cosine_similarity(za, zb, dim=-1, eps=1e-12).mean())
