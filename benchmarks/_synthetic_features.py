"""Synthetic feature pages in the shapes the chapter produces (`synthetic_blocks`: random numbers)
and photo-like images, for benchmarks/feature_pages.py and the tests (which load this file with
tests/benchmark_script.py: the benchmark must not import from tests/)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from repro.features.distribution import HIST_EDGES, ActivationDistribution
from repro.features.neighbours import decoder_neighbours
from repro.features.records import BlockFeatures


def synthetic_image(image_id: int, size: int = 64) -> np.ndarray:
    """A deterministic photo-like uint8 [size, size, 3] image (colour waves, a disc, grain).

    Its WebP thumbnails are about as large as those of real photographs.
    """
    r = np.random.default_rng(int(image_id))
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3))
    for c in range(3):
        a, b, d = r.uniform(-9, 9, 3)
        img[..., c] = 0.5 + 0.4 * np.sin(a * xx + b * yy + d)
    cy, cx, rad = r.uniform(0.2, 0.8), r.uniform(0.2, 0.8), r.uniform(0.1, 0.35)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < rad ** 2] = r.uniform(0, 1, 3)
    img += r.normal(0, 0.07, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthetic_analyses(
    blocks: Sequence[str] = ("down.2.1", "up.0.1"),
    n_features: int = 40,
    m: int = 16,
    grid: int = 16,
    n_images: int = 200,
    dead: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """FeatureAnalysis-like objects with random stats, top images and blob-shaped maps.

    A share `dead` of the features never fired (count 0, no top images); top image ids are
    drawn from `n_images` with a skew, so popular images recur across features.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid]
    popularity = 1.0 / np.arange(1, n_images + 1) ** 0.5
    popularity /= popularity.sum()
    out = {}
    for block in blocks:
        n = n_features
        live = rng.random(n) >= dead
        freq = np.where(live, rng.uniform(1e-4, 0.05, n), 0.0)
        mean = np.where(live, rng.uniform(0.5, 5.0, n), 0.0)
        ids = np.stack([rng.choice(n_images, m, replace=False, p=popularity) for _ in range(n)])
        values = np.sort(rng.uniform(0.5, 10.0, (n, m)), 1)[:, ::-1].copy()
        cy, cx = rng.uniform(0, grid, (2, n, m, 1, 1))
        s = rng.uniform(grid / 10, grid / 4, (n, m, 1, 1))
        maps = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        maps = maps * (1 + 0.1 * rng.standard_normal(maps.shape))
        maps = np.where(maps > 0.15, maps, 0.0) * values[:, :, None, None]
        ids[~live], values[~live], maps[~live] = -1, 0.0, 0.0
        stats = SimpleNamespace(
            mean=torch.tensor(mean, dtype=torch.float32), std=torch.tensor(mean / 3, dtype=torch.float32),
            frequency=torch.tensor(freq, dtype=torch.float32), count=torch.tensor(np.ceil(freq * 1e6), dtype=torch.int64),
        )
        top = SimpleNamespace(image_ids=torch.tensor(ids), values=torch.tensor(values, dtype=torch.float32),
                              maps=torch.tensor(maps, dtype=torch.float16))
        out[block] = SimpleNamespace(stats=stats, top=top, concepts=None)
    return out


def synthetic_blocks(blocks=("down.2.1", "mid.0", "up.0.0", "up.0.1"), n_features: int = 40, m: int = 16,
                     grid: int = 16, n_images: int = 200, sample: int = 32, d_model: int = 64, dead: float = 0.1,
                     labels: bool = True, seed: int = 0) -> dict[str, BlockFeatures]:
    """BlockFeatures with the shapes the chapter produces, from random numbers (`synthetic_analyses`
    for stats and top images, a random activation distribution, random unit decoders for the neighbours,
    two settings of per-step means; ShapesWorld-like labels if `labels`)."""
    rng = np.random.default_rng(seed)
    analyses = synthetic_analyses(blocks, n_features=n_features, m=m, grid=grid, n_images=n_images, dead=dead, seed=seed)
    decoders = {b: type("D", (), {"W_dec": torch.from_numpy(rng.standard_normal((d_model, n_features)).astype(np.float32))})()
                for b in blocks}
    nbrs = decoder_neighbours(decoders, k=5)
    n_bins = len(HIST_EDGES) - 1
    out = {}
    for b, a in analyses.items():
        live = a.stats.count.numpy() > 0
        peak = rng.integers(n_bins // 3, 2 * n_bins // 3, n_features)
        bins = np.arange(n_bins)
        hist = np.rint(1e4 * np.exp(-0.5 * ((bins[None] - peak[:, None]) / 4.0) ** 2)).astype(np.int64) * live[:, None]
        ids = rng.integers(0, n_images, (n_features, sample))
        ids[~live] = -1
        values = rng.uniform(0.1, 5.0, (n_features, sample)).astype(np.float32) * live[:, None]
        maps = np.clip(rng.standard_normal((n_features, sample, grid, grid)), 0, None) * values[:, :, None, None]
        image_count = torch.from_numpy(np.rint(a.stats.frequency.numpy() * 40 * n_images).astype(np.int64))
        distribution = ActivationDistribution(
            image_count=image_count, n_images=n_images, hist=torch.from_numpy(hist), sample_ids=torch.from_numpy(ids),
            sample_values=torch.from_numpy(values), sample_maps=torch.from_numpy(maps).half())
        names = ["colour=red", "shape=circle", "texture=striped", "style=watercolour", "size=large"]
        purity = rng.uniform(0.2, 1.0, n_features)
        causal = {int(f): {"label": names[f % 5], "s": 10.0, "on": float(p), "off": 0.5, "control_on": 0.1,
                           "effect": round(float(p) - 0.1, 4)} for f, p in zip(np.flatnonzero(live)[:8], purity)}
        out[b] = BlockFeatures(
            stats=a.stats, top=a.top, distribution=distribution,
            labels=[names[f % 5] if live[f] else "" for f in range(n_features)] if labels else None,
            purity=purity.tolist() if labels else None, f1=(purity * 0.8).tolist() if labels else None,
            causal=causal if labels else None,
            steps={"turbo, 4 steps": {"all": torch.from_numpy(rng.uniform(0, 1, (4, n_features)).astype(np.float32))},
                   "base": {h: torch.from_numpy(rng.uniform(0, 1, (20, n_features)).astype(np.float32))
                            for h in ("cond", "uncond")}},
            neighbours=nbrs[b])
    return out

