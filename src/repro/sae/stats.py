"""Per-feature statistics kept beside each SAE: how often a feature fires and how strongly.

The mean and std of a feature's activation *when it fires* set intervention strengths
(feature icons use mean_f * k * W_dec[:, f]; painting uses s * mean_f * W_dec[:, f]).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Iterable

import torch

from repro.errors import ReproError, choices_hint
from repro.sae.metrics import fires
from repro.sae.model import TopKSAE


@dataclass
class FeatureStats:
    """Statistics of the n features of one SAE over `n_tokens` tokens; all tensors [n].

    Features that never fired have mean and std 0 (and count 0). The original release
    ships only `mean` and `std`, so the counting fields may be None.
    """

    mean: torch.Tensor
    """[n] mean activation over the tokens where the feature fires (`repro.sae.metrics.fires`)."""
    std: torch.Tensor
    """[n] standard deviation of the activation over those tokens (population std)."""
    frequency: torch.Tensor | None = None
    """[n] fraction of tokens on which the feature fires."""
    count: torch.Tensor | None = None
    """[n] int64 number of tokens on which the feature fires."""
    n_tokens: int | None = None
    """Tokens the statistics were measured on."""

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict for safetensors (None fields left out; n_tokens as a 0-d int64 tensor)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = torch.tensor(value, dtype=torch.int64) if f.name == "n_tokens" else value.contiguous().cpu()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "FeatureStats":
        n_tokens = tensors.get("n_tokens")
        return cls(
            mean=tensors["mean"],
            std=tensors["std"],
            frequency=tensors.get("frequency"),
            count=tensors.get("count"),
            n_tokens=int(n_tokens) if n_tokens is not None else None,
        )


def _pick_block(batch: dict, block: str | None, sae: TopKSAE) -> str:
    name = block or sae.metadata.get("block")
    if name is None:
        if len(batch) == 1:
            return next(iter(batch))
        raise ReproError(f"the source yields several blocks; pass block=, {choices_hint(batch)}")
    if name not in batch:
        raise ReproError(f"the source has no block {name!r}; it yields {choices_hint(batch)}")
    return name


@torch.no_grad()
def feature_stats(
    sae: TopKSAE, source: Iterable[dict[str, torch.Tensor]], n_batches: int, *, block: str | None = None
) -> FeatureStats:
    """One pass over `n_batches` batches of `source` (from its current position): firing and activation stats.

    `block` picks the source's block (default: `sae.metadata["block"]`, or the only block).
    Accumulates in float64 on the SAE's device.
    """
    n = sae.cfg.n_features
    dev = sae.device
    count = torch.zeros(n, dtype=torch.int64, device=dev)
    total = torch.zeros(n, dtype=torch.float64, device=dev)
    total_sq = torch.zeros(n, dtype=torch.float64, device=dev)
    n_tokens = 0
    for batch in itertools.islice(source, n_batches):  # islice pulls no batch beyond n_batches
        x = batch[_pick_block(batch, block, sae)].to(dev)
        vals, idx = sae.encode_topk(x.reshape(-1, x.shape[-1]))  # [B, k]
        on = fires(sae.cfg, vals).reshape(-1)  # the training loss's rule (a ReLU'd zero never fires)
        vals = vals.double().reshape(-1) * on
        idx = idx.reshape(-1)
        count.index_add_(0, idx, on.to(torch.int64))
        total.index_add_(0, idx, vals)
        total_sq.index_add_(0, idx, vals * vals)
        n_tokens += x.reshape(-1, x.shape[-1]).shape[0]
    if n_tokens == 0:
        raise ReproError("feature_stats got no batches from the source: pass a source with data and n_batches >= 1")
    safe = count.clamp_min(1).double()
    mean = total / safe
    std = (total_sq / safe - mean * mean).clamp_min(0).sqrt()
    return FeatureStats(
        mean=mean.float(),
        std=std.float(),
        frequency=(count.double() / n_tokens).float(),
        count=count,
        n_tokens=n_tokens,
    )
