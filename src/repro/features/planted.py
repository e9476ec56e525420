"""Ground-truth directions on ShapesWorld, planted into an SAE: the causality test's positive control.

For a block and an attribute value (`colour=red`, `shape=circle`, `background=pink`...),
the *mean difference* direction is

    delta = mean(updates where the value holds) - mean(updates where another value of the
            same family holds)

over the block's real captured updates (object cells only for object attributes: cells an
object covers more than half of; background: cells no object covers more than half of;
style: every cell). `with_planted(sae, delta / |delta|, |delta|)` appends it to an SAE as
one more decoder column whose mean activation is |delta|, so that the painting rule
`s * mean_f * W_dec[:, f]` adds exactly `s * delta`, and `causal_test` / `locality_curve`
run on it unchanged. A direction computed this way is known to carry the value in the
block's own coordinates: if the causality test cannot find it, it cannot find anything.

The directions are computed on scenes the tests do not use (`dev_scenes`: the train split,
disjoint from the held-out test split by `repro.shapes.splits`' content hash).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from repro.errors import ReproError, choices_hint
from repro.features.causality import GLOBAL_ATTRS, OBJECT_ATTRS, scene_prompts
from repro.generate import Sampling
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats
from repro.shapes import world

FAMILIES: dict[str, tuple[str, ...]] = {
    "colour": tuple(world.COLOURS), "shape": world.SHAPES, "texture": world.TEXTURES, "size": world.SIZES,
    "pose": world.ORIENTATIONS, "background": tuple(world.BACKGROUNDS), "style": world.STYLES,
}
"""Attribute families the causality test can switch on, and their values."""

COVER = 0.5
"""A cell belongs to an object when the object covers more than this share of it."""


def dev_scenes(n: int, seed: int = 0) -> list:
    """n scenes for computing directions and calibrating strengths: the train split, which
    never shares a scene with the test split the causality tests draw from."""
    from repro.shapes.splits import split_scenes

    return split_scenes("train", n, seed=seed)


def parse_label(label: str) -> tuple[str, str]:
    """`colour=red` -> ("colour", "red"); unknown families or values raise ReproError."""
    family, _, value = label.partition("=")
    if family not in FAMILIES or value not in FAMILIES[family]:
        raise ReproError(f"cannot plant {label!r}: use family=value with family in {choices_hint(FAMILIES)} "
                         f"and a value of that family (colour=red, shape=circle, ...)")
    return family, value


def family_codes(scenes: Sequence, family: str, grid: int) -> np.ndarray:
    """int [N, grid, grid]: the index in FAMILIES[family] of the value each cell shows, -1 where
    the family is not shown (a cell of no object, for object families; an object cell, for background)."""
    from repro.shapes.render import downsample_mask, render_batch

    values = FAMILIES[family]
    codes = np.full((len(scenes), grid, grid), -1, dtype=np.int64)
    if family == "style":
        codes[:] = np.array([values.index(s.style) for s in scenes])[:, None, None]
        return codes
    batch = render_batch(list(scenes))
    for i, scene in enumerate(scenes):
        masks = batch.masks(i)  # [n_objects, H, W] bool
        cover = downsample_mask(masks, grid, "fraction") if len(masks) else np.zeros((0, grid, grid), np.float32)
        if family == "background":
            codes[i][cover.sum(0) <= COVER] = values.index(scene.background)
            continue
        key = OBJECT_ATTRS[family]
        for obj, c in zip(scene.objects, cover):
            value = getattr(obj, key)
            if value is not None:
                codes[i][c > COVER] = values.index(value)
    return codes


def capture_block(pipe, scenes: Sequence, block: str, sampling: Sampling, seed: int = 0,
                  batch_size: int = 16) -> torch.Tensor:
    """float32 [steps, N, H, W, C]: the block's updates while generating `scenes` with the
    captions and seeds the causality tests use (`scene_prompts`); cond half under guidance."""
    from repro.evaluate.capture import capture_eval_updates

    prompts, seeds = scene_prompts(scenes, seed)
    halves = capture_eval_updates(pipe, prompts, seeds, sampling, [block], batch_size, dtype=torch.float32)[block]
    return halves["cond" if sampling.cfg else "all"]


@dataclass
class GroundTruth:
    """A block's class-conditional mean difference for one attribute value."""

    block: str
    label: str
    direction: torch.Tensor
    """[C] unit vector along mean(value) - mean(other values of the family)."""
    scale: float
    """|mean(value) - mean(others)|: the painting rule's mean_f, so s = 1 adds the whole difference."""
    n_pos: int
    """Positions (x steps) where the value holds."""
    n_neg: int
    """Positions (x steps) showing another value of the family."""


def mean_difference(updates: torch.Tensor, codes: np.ndarray, value_index: int) -> tuple[torch.Tensor, int, int]:
    """(delta [C], n_pos, n_neg): mean update where `codes == value_index` minus the mean where
    codes holds another value (>= 0). updates [steps, N, H, W, C] (or [N, H, W, C]), codes [N, H, W]."""
    x = updates if updates.dim() == 5 else updates[None]
    code = torch.as_tensor(codes).expand(x.shape[:-1])  # [steps, N, H, W]
    pos, neg = code == value_index, (code >= 0) & (code != value_index)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if not n_pos or not n_neg:
        raise ReproError(f"no positions {'with' if not n_pos else 'without'} the value among the scenes: "
                         "give more (or more varied) dev scenes")
    x = x.double()
    return (x[pos].mean(0) - x[neg].mean(0)).float(), n_pos, n_neg


def ground_truth(updates: torch.Tensor, scenes: Sequence, block: str, label: str, grid: int) -> GroundTruth:
    """The mean-difference direction of `label` in `block` from its captured `updates`
    ([steps, N, H, W, C] on `scenes`, e.g. from `capture_block`)."""
    family, value = parse_label(label)
    if updates.shape[-3] != grid:
        raise ReproError(f"updates of {tuple(updates.shape)} are not on a {grid}x{grid} grid: pass the block's grid")
    delta, n_pos, n_neg = mean_difference(updates, family_codes(scenes, family, grid), FAMILIES[family].index(value))
    scale = float(delta.norm())
    return GroundTruth(block, label, delta / scale, scale, n_pos, n_neg)


def carrier_sae(d_model: int, seed: int = 0) -> TopKSAE:
    """A minimal SAE (two random unit features, k = 1) to plant directions into when no trained
    SAE of the block is at hand; its feature 0 is never intervened on."""
    # SAEConfig needs k < n_features: two random features, k = 1
    sae = TopKSAE(SAEConfig(d_model=d_model, n_features=2, k=1, k_aux=0), seed=seed)
    sae.feature_stats = FeatureStats(mean=torch.ones(2), std=torch.zeros(2))
    sae.metadata = {"control": f"carrier SAE (2 random features, seed {seed}) for planted directions"}
    return sae


@torch.no_grad()
def with_planted(sae: TopKSAE, direction: torch.Tensor, mean_activation: float) -> TopKSAE:
    """A copy of `sae` (same class, TopKSAE) with one more feature, index `sae.cfg.n_features`,
    whose decoder column is `direction` normalised to unit norm and whose mean activation
    (feature stats) is `mean_activation`: painting it at strength s adds
    `s * mean_activation * direction / |direction|`. Its encoder row is the unit direction
    (b_lat 0), so it also fires, and `FeatureOff` removes it, where updates point along it.
    Existing features keep their weights and stats (mean 1 where the SAE had no stats).
    """
    d = torch.as_tensor(direction).reshape(-1)
    if d.numel() != sae.cfg.d_model or not torch.isfinite(d).all() or float(d.norm()) == 0:
        raise ReproError(f"a planted direction must be a finite nonzero vector of width d_model={sae.cfg.d_model}, "
                         f"got shape {tuple(torch.as_tensor(direction).shape)}")
    if not mean_activation > 0:
        raise ReproError(f"the planted feature's mean activation must be > 0, got {mean_activation}")
    n = sae.cfg.n_features
    cfg = copy.deepcopy(sae.cfg)
    cfg.n_features = n + 1
    out = TopKSAE(cfg, dtype=sae.dtype).to(sae.device)
    unit = (d.double() / d.double().norm()).to(device=sae.device, dtype=sae.dtype)
    out.W_enc.copy_(torch.cat([sae.W_enc, unit[None]], 0))
    out.W_dec.copy_(torch.cat([sae.W_dec, unit[:, None]], 1))
    out.b_lat.copy_(torch.cat([sae.b_lat, sae.b_lat.new_zeros(1)]))
    out.b_pre.copy_(sae.b_pre)
    out.tokens_since_fired.copy_(torch.cat([sae.tokens_since_fired, sae.tokens_since_fired.new_zeros(1)]))
    stats = sae.feature_stats
    mean = stats.mean.float().cpu() if stats is not None else torch.ones(n)
    std = stats.std.float().cpu() if stats is not None else torch.zeros(n)
    out.feature_stats = FeatureStats(mean=torch.cat([mean, torch.tensor([float(mean_activation)])]),
                                     std=torch.cat([std, torch.zeros(1)]))
    out.metadata = {**sae.metadata, "planted": {"feature": n, "mean_activation": float(mean_activation)}}
    return out


def planted_feature(sae: TopKSAE) -> int:
    """The index of the feature `with_planted` added (its last one)."""
    if "planted" not in sae.metadata:
        raise ReproError("this SAE has no planted feature: build it with repro.features.planted.with_planted")
    return int(sae.metadata["planted"]["feature"])


__all__ = ["COVER", "FAMILIES", "GroundTruth", "capture_block", "carrier_sae", "dev_scenes", "family_codes",
           "ground_truth", "mean_difference", "parse_label", "planted_feature", "with_planted"]
