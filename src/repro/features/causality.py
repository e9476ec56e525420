"""Are labelled features causal, and how local are their effects? (toy world: measured)

- switch on: in scenes that do not have a feature's attribute value, add the feature
  (`s * mean_f * k * W_dec[:, f]`) where the attribute lives — inside the object masks
  for object attributes, everywhere for background and style — and ask the oracle whether
  the image now shows that value (success rate);
- switch off: in scenes that do have the value (where the feature fires), remove the
  feature's own contribution (`FeatureOff`) and ask whether the value is gone;
- locality: add the feature at one grid cell and measure the mean absolute pixel change
  as a function of the distance (in grid cells) from that cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from repro.features.interventions import FeatureAdd, FeatureOff
from repro.evaluate.in_loop import generate_with
from repro.generate import Sampling
from repro.sae.model import TopKSAE

OBJECT_ATTRS = {"shape": "shape", "colour": "colour", "texture": "texture", "size": "size", "pose": "orientation"}
GLOBAL_ATTRS = {"background": "background", "style": "style"}


def reads_value(reading: dict, scene, label: str) -> bool:
    """Whether an oracle reading shows the labelled value (`colour=red`, `background=pink`...)
    — for object attributes, on at least one of the scene's object slots."""
    family, value = label.split("=", 1)
    if family in GLOBAL_ATTRS:
        return reading[GLOBAL_ATTRS[family]] == value
    key = OBJECT_ATTRS[family]
    return any((reading["slots"].get(o.position) or {}).get(key) == value for o in scene.objects)


def has_value(scene, label: str) -> bool:
    family, value = label.split("=", 1)
    if family in GLOBAL_ATTRS:
        return getattr(scene, GLOBAL_ATTRS[family]) == value
    return any(getattr(o, OBJECT_ATTRS[family]) == value for o in scene.objects)


def is_testable(label: str) -> bool:
    return label.split("=", 1)[0] in OBJECT_ATTRS or label.split("=", 1)[0] in GLOBAL_ATTRS


def _masks(scenes, label: str, grid: int) -> torch.Tensor:
    """[N, grid, grid] float: where to add the feature (object cells, or all for global attributes)."""
    from repro.shapes.render import downsample_mask, render_batch

    if label.split("=", 1)[0] in GLOBAL_ATTRS:
        return torch.ones(len(scenes), grid, grid)
    batch = render_batch(scenes)
    return torch.stack([torch.from_numpy(downsample_mask(batch.masks(i).any(0), grid, "fraction") > 0.25).float()
                        for i in range(len(scenes))])


@dataclass
class CausalResult:
    label: str
    on_success: float
    """Share of scenes without the value where adding the feature made the oracle read it."""
    off_success: float
    """Share of scenes with the value where removing the feature made the oracle lose it."""
    n_on: int
    n_off: int
    baseline_on: float
    """Share of the 'on' scenes that read the value without any edit (should be ~0)."""


def causal_test(pipe, sae: TopKSAE, block: str, feature: int, label: str, on_scenes: Sequence, off_scenes: Sequence,
                oracle, sampling: Sampling, grid: int, strength: float = 1.0, seed: int = 0,
                batch_size: int = 16) -> CausalResult:
    """Switch `feature` on in `on_scenes` (without the value) and off in `off_scenes` (with it)."""
    from repro.shapes.captions import caption

    mean = float(sae.feature_stats.mean[feature]) if sae.feature_stats is not None else 1.0
    on_rate = off_rate = base_rate = float("nan")
    if on_scenes:
        prompts = [caption(s, np.random.default_rng(seed + i)) for i, s in enumerate(on_scenes)]
        seeds = [seed + i for i in range(len(on_scenes))]
        masks = _masks(on_scenes, label, grid)
        edit = FeatureAdd(sae=sae, features=feature, strength=strength * mean * sae.cfg.k, mask=masks)
        plain = oracle.read(generate_with(pipe, prompts, seeds, sampling, None, batch_size=len(prompts)))
        edited = oracle.read(generate_with(pipe, prompts, seeds, sampling, {block: edit}, batch_size=len(prompts)))
        base_rate = float(np.mean([reads_value(r, s, label) for r, s in zip(plain, on_scenes)]))
        on_rate = float(np.mean([reads_value(r, s, label) for r, s in zip(edited, on_scenes)]))
    if off_scenes:
        prompts = [caption(s, np.random.default_rng(seed + 10_000 + i)) for i, s in enumerate(off_scenes)]
        seeds = [seed + 10_000 + i for i in range(len(off_scenes))]
        edited = oracle.read(generate_with(pipe, prompts, seeds, sampling, {block: FeatureOff(sae=sae, features=feature)},
                                           batch_size=batch_size))
        off_rate = float(np.mean([not reads_value(r, s, label) for r, s in zip(edited, off_scenes)]))
    return CausalResult(label, on_rate, off_rate, len(on_scenes), len(off_scenes), base_rate)


def locality(pipe, sae: TopKSAE, block: str, feature: int, prompts: Sequence[str], seeds: Sequence[int],
             sampling: Sampling, grid: int, cell: tuple[int, int] | None = None, strength: float = 1.0,
             batch_size: int = 16) -> np.ndarray:
    """Mean absolute pixel change (0..1) against distance from `cell` in grid cells: [max_dist + 1].

    The feature is added (strength * mean_f * k) at one cell (default: the centre) only.
    """
    cell = cell or (grid // 2, grid // 2)
    mask = torch.zeros(grid, grid)
    mask[cell] = 1.0
    mean = float(sae.feature_stats.mean[feature]) if sae.feature_stats is not None else 1.0
    edit = FeatureAdd(sae=sae, features=feature, strength=strength * mean * sae.cfg.k, mask=mask)
    plain = generate_with(pipe, prompts, seeds, sampling, None, batch_size).astype(np.float32)
    edited = generate_with(pipe, prompts, seeds, sampling, {block: edit}, batch_size).astype(np.float32)
    change = np.abs(edited - plain).mean(axis=(0, 3)) / 255.0  # [H, W]
    h, w = change.shape
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = (cell[0] + 0.5) * h / grid, (cell[1] + 0.5) * w / grid
    dist = np.sqrt((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2) / (h / grid)  # in grid cells
    bins = np.floor(dist).astype(int)
    return np.array([change[bins == d].mean() for d in range(bins.max() + 1)])
