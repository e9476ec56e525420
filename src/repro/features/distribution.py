"""A feature's activation distribution beyond its mean and std: how widely and how strongly
it fires, and a uniform sample of the images it fires in (the "weakly on" examples of a
feature page).

Built in `analyse_features`' pass over `(image_ids [b], updates [b, H, W, C], ...)` chunks
(`sample_per_feature=`). Per feature f, with z_f zeroed where it does not fire (`repro.sae.metrics.fires`):
- image_count: images with at least one firing position (density over images; the
  position density is `FeatureStats.frequency`);
- hist: firing positions counted in log-spaced activation bins shared by all features
  (`HIST_EDGES`: 2^-8 .. 2^12, four bins per octave), so chunks, shards and machines add up;
- a reservoir: `sample` images drawn uniformly without replacement from those it fires in
  (each (feature, image) pair gets a random key; the smallest keys are kept), with the
  image's max activation and its [H, W] map. Quantiles estimated on this sample pick the
  examples of the lower activation bands (`quantile_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from repro.sae.metrics import fires
from repro.sae.model import TopKSAE

BINS_PER_OCTAVE = 4
LOW_EXP, HIGH_EXP = -8, 12
HIST_EDGES = torch.pow(2.0, torch.arange(LOW_EXP * BINS_PER_OCTAVE, HIGH_EXP * BINS_PER_OCTAVE + 1) / BINS_PER_OCTAVE)
"""[81] bin edges of activation; below the first edge counts in bin 0, above the last in the last bin."""


@dataclass
class ActivationDistribution:
    """Per feature of one SAE: density over images, activation histogram, a uniform image sample."""

    image_count: torch.Tensor
    """[n] int64 images in which the feature fires at one position or more."""
    n_images: int
    hist: torch.Tensor
    """[n, len(HIST_EDGES) - 1] int64 firing positions per activation bin."""
    sample_ids: torch.Tensor
    """[n, r] int64 image ids drawn uniformly from those it fires in (-1: fewer images)."""
    sample_values: torch.Tensor
    """[n, r] float32 max activation of the feature in each sampled image."""
    sample_maps: torch.Tensor
    """[n, r, H, W] float16 the feature's activation over each sampled image."""

    @property
    def image_density(self) -> torch.Tensor:
        """[n] share of images in which the feature fires."""
        return self.image_count.double().div(max(self.n_images, 1)).float()


def hist_bin(values: torch.Tensor) -> torch.Tensor:
    """Activation values -> bin index in [0, len(HIST_EDGES) - 2]."""
    edges = HIST_EDGES.to(values.device, torch.float32)
    return (torch.bucketize(values.float(), edges, right=True) - 1).clamp(0, len(edges) - 2)


class DistributionAccumulator:
    """The running state of a distribution pass: `add` takes one chunk's codes, `result` gives it.

    `analyse_features(..., sample_per_feature=r)` feeds it from its own pass over the store (one
    read of a paper-scale store instead of two). The same pass alone, the plain reference it is tested
    against: `activation_distribution` in tests/test_feature_pages.py.
    """

    def __init__(self, n_features: int, sample: int, seed: int, device: torch.device):
        n, r, self.n_bins = n_features, sample, len(HIST_EDGES) - 1
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.image_count = torch.zeros(n, dtype=torch.int64, device=device)
        self.hist = torch.zeros(n * self.n_bins, dtype=torch.int64, device=device)
        self.keys = torch.full((n, r), float("inf"), device=device)
        self.ids = torch.full((n, r), -1, dtype=torch.int64, device=device)
        self.values = torch.zeros(n, r, device=device)
        self.maps: torch.Tensor | None = None
        self.n_images = 0

    def add(self, ids: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, z: torch.Tensor, hw: tuple[int, int]) -> None:
        """ids [b]; vals, idx [b*h*w, k] the fired TopK codes (0 where silent); z [b*h*w, n] the same, dense."""
        n, r = self.keys.shape
        h, w = hw
        b = len(ids)
        dev = z.device
        if self.maps is None:
            self.maps = torch.zeros(n, r, h, w, dtype=torch.float16, device=dev)
        on = vals > 0
        self.hist.index_add_(0, (idx * self.n_bins + hist_bin(vals))[on],
                             torch.ones(int(on.sum()), dtype=torch.int64, device=dev))
        z_img = z.reshape(b, h * w, n)
        img_max = z_img.amax(1).T  # [n, b]
        fired = img_max > 0
        self.image_count += fired.sum(1)
        self.n_images += b
        # reservoir: random key per (feature, image) it fires in; keep the r smallest keys
        new_keys = torch.where(fired, torch.rand(n, b, generator=self.gen, device=dev),
                               torch.full_like(img_max, float("inf")))
        self.keys, order = torch.cat([self.keys, new_keys], 1).topk(r, dim=1, largest=False)
        self.ids = torch.cat([self.ids, ids.to(dev)[None].expand(n, b)], 1).gather(1, order)
        self.values = torch.cat([self.values, img_max], 1).gather(1, order)
        chunk_maps = z_img.permute(2, 0, 1).reshape(n, b, h, w).half()
        self.maps = torch.cat([self.maps, chunk_maps], 1).gather(1, order[:, :, None, None].expand(n, r, h, w))

    def result(self) -> ActivationDistribution:
        n = self.keys.shape[0]
        maps = self.maps if self.maps is not None else torch.zeros(n, self.keys.shape[1], 1, 1, dtype=torch.float16)
        empty = torch.isinf(self.keys)
        ids = torch.where(empty, torch.full_like(self.ids, -1), self.ids)
        return ActivationDistribution(image_count=self.image_count.cpu(), n_images=self.n_images,
                                      hist=self.hist.reshape(n, self.n_bins).cpu(), sample_ids=ids.cpu(),
                                      sample_values=self.values.masked_fill(empty, 0).cpu(), sample_maps=maps.cpu())


def quantile_samples(dist: ActivationDistribution, feature: int, bands: int = 3, per_band: int = 4,
                     exclude: Iterable[int] = ()) -> list[dict]:
    """Examples from the `bands` lower quantile bands of the feature's per-image max activation.

    The sampled images (a uniform sample of those the feature fires in) are ranked by
    value and cut into `bands + 1` equal bands; the top band is left out (the top images
    show it), the others give `per_band` images each, evenly spread within the band.
    Returns, weakest band first: [{"band": (lo_q, hi_q), "slots": [reservoir slot, ...],
    "ids": [...], "values": [...]}]; `exclude` drops images already shown as top examples.
    """
    ids, shown = dist.sample_ids[feature], {int(i) for i in exclude}
    keep = [s for s in range(len(ids)) if int(ids[s]) >= 0 and int(ids[s]) not in shown]
    keep.sort(key=lambda s: float(dist.sample_values[feature, s]))
    out = []
    for band in range(bands):
        lo, hi = band * len(keep) // (bands + 1), (band + 1) * len(keep) // (bands + 1)
        slots = keep[lo:hi]
        if len(slots) > per_band:
            slots = [slots[round(i * (len(slots) - 1) / (per_band - 1))] for i in range(per_band)] if per_band > 1 else slots[:1]
        out.append({"band": (band / (bands + 1), (band + 1) / (bands + 1)), "slots": slots,
                    "ids": [int(ids[s]) for s in slots],
                    "values": [float(dist.sample_values[feature, s]) for s in slots]})
    return out


@torch.no_grad()
def step_means(sae: TopKSAE, updates: torch.Tensor, batch: int = 8192) -> torch.Tensor:
    """Mean activation per step over all positions (silent ones count as 0).

    updates: [steps, N, H, W, C] (one half of `capture_eval_updates`) -> [steps, n].
    """
    steps, c = updates.shape[0], updates.shape[-1]
    out = torch.zeros(steps, sae.cfg.n_features, dtype=torch.float64)
    for s in range(steps):
        tokens = updates[s].reshape(-1, c)
        for start in range(0, len(tokens), batch):
            vals, idx = sae.encode_topk(tokens[start:start + batch].to(device=sae.device, dtype=sae.dtype))
            vals = vals.float() * fires(sae.cfg, vals)
            out[s].index_add_(0, idx.flatten().cpu(), vals.flatten().double().cpu())
        out[s] /= max(len(tokens), 1)
    return out.float()


__all__ = ["HIST_EDGES", "ActivationDistribution", "DistributionAccumulator", "hist_bin", "quantile_samples",
           "step_means"]
