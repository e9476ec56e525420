"""Random controls: what a claim about SAE features is compared against.

- `random_direction_twin(sae, features)`: the same SAE (same encoder, so the same firing
  positions and activations) with the decoder columns of `features` replaced by random
  unit vectors, i.e. random directions of the same norm as the feature's intervention.
  Adding, removing or painting "feature f" of the twin is the control for doing it with f.
- `data_shaped_twin(sae, features, covariance)`: the same, but each random direction is drawn
  as z ~ N(0, Sigma) with Sigma the block updates' covariance (`update_covariance`), then
  normalised to the feature's norm: a random direction the block could plausibly write,
  which an isotropic one (mostly in directions the block never uses) is not.
- `random_sae_like(sae)`: an untrained TopK SAE of the same shape and sparsity k, with the
  trained one's b_pre (the data's centre): random decoder directions, W_enc = W_dec^T.
  Its purity, labels and RIEBench transport are the floor a trained SAE must clear.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from repro.errors import ReproError
from repro.sae.model import TopKSAE


def _unit_columns(d: int, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """[d, n] random unit vectors (float64 draw, so the result does not depend on dtype)."""
    gen = torch.Generator().manual_seed(seed)
    cols = torch.randn(d, n, generator=gen, dtype=torch.float64)
    return (cols / cols.norm(dim=0, keepdim=True)).to(dtype)


@torch.no_grad()
def random_direction_twin(sae: TopKSAE, features: int | Sequence[int], seed: int = 0) -> TopKSAE:
    """A copy of `sae` whose decoder columns `features` point in random directions (unit norm,
    like every decoder column); everything else, feature stats included, is shared."""
    feats = [int(features)] if isinstance(features, int) else [int(f) for f in features]
    twin = copy.deepcopy(sae)
    twin.feature_stats = sae.feature_stats
    cols = _unit_columns(sae.cfg.d_model, len(feats), seed, sae.dtype).to(sae.device)
    twin.W_dec[:, feats] = cols * sae.W_dec[:, feats].norm(dim=0, keepdim=True)
    twin.metadata = {**sae.metadata, "control": f"random decoder directions for features {feats} (seed {seed})"}
    return twin


def update_covariance(updates: torch.Tensor) -> torch.Tensor:
    """float64 [C, C] covariance of a block's updates over positions: updates [..., C]."""
    x = updates.reshape(-1, updates.shape[-1]).double()
    x = x - x.mean(0)
    return x.T @ x / max(len(x) - 1, 1)


def _shaped_columns(covariance: torch.Tensor, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """[C, n] unit vectors along z ~ N(0, covariance) (float64 draw; negative eigenvalues from
    rounding clipped to 0)."""
    evals, evecs = torch.linalg.eigh(covariance.double().cpu())
    root = evecs * evals.clamp_min(0).sqrt()  # [C, C]: root @ root.T = covariance
    gen = torch.Generator().manual_seed(seed)
    cols = root @ torch.randn(len(evals), n, generator=gen, dtype=torch.float64)
    return (cols / cols.norm(dim=0, keepdim=True)).to(dtype)


@torch.no_grad()
def data_shaped_twin(sae: TopKSAE, features: int | Sequence[int], covariance: torch.Tensor, seed: int = 0) -> TopKSAE:
    """A copy of `sae` whose decoder columns `features` are random directions drawn with the
    block's update covariance ([C, C], `update_covariance`), each of its column's norm;
    everything else, feature stats included, is shared."""
    feats = [int(features)] if isinstance(features, int) else [int(f) for f in features]
    c = sae.cfg.d_model
    if tuple(covariance.shape) != (c, c):
        raise ReproError(f"covariance of shape {tuple(covariance.shape)} does not fit an SAE of width {c}: "
                         "pass update_covariance of this block's updates")
    twin = copy.deepcopy(sae)
    twin.feature_stats = sae.feature_stats
    cols = _shaped_columns(covariance, len(feats), seed, sae.dtype).to(sae.device)
    twin.W_dec[:, feats] = cols * sae.W_dec[:, feats].norm(dim=0, keepdim=True)
    twin.metadata = {**sae.metadata, "control": f"data-shaped random decoder directions for features {feats} (seed {seed})"}
    return twin


@torch.no_grad()
def random_sae_like(sae: TopKSAE, seed: int = 12345) -> TopKSAE:
    """An untrained SAE of `sae`'s shape and k (random unit decoder, W_enc = W_dec^T, b_lat = 0)
    centred at `sae`'s b_pre, on its device and dtype."""
    rand = TopKSAE(copy.deepcopy(sae.cfg), seed=seed, dtype=sae.dtype).to(sae.device)
    rand.b_pre.copy_(sae.b_pre)
    rand.metadata = {**{k: v for k, v in sae.metadata.items() if k == "block"},
                     "control": f"random TopK SAE (seed {seed}), b_pre of the trained SAE"}
    return rand


__all__ = ["data_shaped_twin", "random_direction_twin", "random_sae_like", "update_covariance"]
