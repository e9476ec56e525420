"""Are labelled features causal, and how local are their effects? (toy world: measured)

- switch on: in scenes that do not have a feature's attribute value, add the feature
  (`s * mean_f * W_dec[:, f]`, the paper's painting rule) where the attribute lives —
  inside the object masks for object attributes, everywhere for background and style —
  and ask the oracle whether the image now shows that value (success), and whether every
  *other* attribute it reads is unchanged from the unedited image (preservation); at
  several strengths `s`, so that the curve shows where a feature starts to act;
- switch off: in scenes that do have the value, remove the feature's own contribution
  (`FeatureOff`: `z_f(pos) * W_dec[:, f]` where it fires) and ask whether the value is gone;
- both against the unedited images (how often the value is read / absent anyway);
- timing (`causal_timing`): switch on with the edit acting only at some denoising steps
  (each step alone, and all of them, on the multi-step turbo), to see when an edit acts;
- locality: add the feature at one grid cell and measure the mean absolute pixel change
  as a function of the distance (in grid cells) from that cell; `locality_curve` does it
  at the same strengths as the causality curve, per image, so that the change at the cell
  and its spread beyond it carry bootstrap intervals.

Every rate comes with its counts (`hits` of `n`), for confidence intervals.
Controls: the same tests on `repro.features.controls.random_direction_twin(sae, ...)`, the
SAE with the feature's decoder direction replaced by a random one of the same norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from repro.features.interventions import FeatureAdd, FeatureOff
from repro.evaluate.in_loop import generate_variants
from repro.generate import Sampling
from repro.sae.model import TopKSAE

OBJECT_ATTRS = {"shape": "shape", "colour": "colour", "texture": "texture", "size": "size", "pose": "orientation"}
GLOBAL_ATTRS = {"background": "background", "style": "style"}


def reads_value(reading: dict, scene, label: str) -> bool:
    """Whether an oracle reading shows the labelled value (`colour=red`, `background=pink`...)
    — for object attributes, on at least one of the scene's object slots. A reading the oracle
    flags as damaged (`reading["damaged"]`: noise, blotches... off the image distribution) shows
    no value: damage must not pass for switching an attribute on."""
    if reading.get("damaged"):
        return False
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


def painting_edit(sae: TopKSAE, feature: int, s: float, mask: torch.Tensor | None = None,
                  steps: Sequence[int] | None = None) -> FeatureAdd:
    """The paper's painting rule: add `s * mean_f * W_dec[:, f]` (inside `mask`; mean_f from the
    feature stats, 1 without them) at the denoising `steps` (None: every step). Causality,
    locality and timing all intervene with it."""
    mean = float(sae.feature_stats.mean[feature]) if sae.feature_stats is not None else 1.0
    return FeatureAdd(sae=sae, features=feature, strength=s * mean, mask=mask, steps=steps)


def preserved(plain: dict, edited: dict, label: str) -> bool:
    """Whether two oracle readings agree on everything but the label's own attribute
    (global attributes, which slots hold objects, and every other object attribute). An edited
    image the oracle flags as damaged preserves nothing."""
    if edited.get("damaged"):
        return False
    family = label.split("=", 1)[0]
    for key in GLOBAL_ATTRS.values():
        if key != GLOBAL_ATTRS.get(family) and plain[key] != edited[key]:
            return False
    skip = OBJECT_ATTRS.get(family)
    for slot in set(plain["slots"]) | set(edited["slots"]):
        a, b = plain["slots"].get(slot), edited["slots"].get(slot)
        if (a is None) != (b is None):
            return False
        if a is not None and any(a.get(k) != b.get(k) for k in set(a) | set(b) if k != skip):
            return False
    return True


def scene_prompts(scenes: Sequence, seed: int) -> tuple[list[str], list[int]]:
    """(captions, seeds) the tests generate `scenes` with: scene i gets seed + i."""
    from repro.shapes.captions import caption

    return [caption(s, np.random.default_rng(seed + i)) for i, s in enumerate(scenes)], [seed + i for i in range(len(scenes))]


@dataclass
class SwitchOn:
    """Adding the feature at one strength, in the scenes without its value."""

    strength: float
    """s in s * mean_f * W_dec[:, f]."""
    hits: int
    """Scenes where the oracle then reads the value."""
    preserved: int
    """Scenes where every other attribute read is unchanged."""
    n: int
    success: tuple[bool, ...] = ()
    """Per scene (in order): the oracle reads the value (`causal_test` fills it, for paired tests)."""
    kept: tuple[bool, ...] = ()
    """Per scene: every other attribute read is unchanged."""

    @property
    def joint(self) -> tuple[bool, ...]:
        """Per scene: the value switched on AND the rest kept, the outcome paired tests compare."""
        return tuple(a and b for a, b in zip(self.success, self.kept))


@dataclass
class CausalResult:
    """Switch-on (per strength) and switch-off counts of one feature, with their no-edit baselines."""

    label: str
    n_on: int
    baseline_on: int
    """Scenes without the value where the unedited image reads it anyway."""
    on: list[SwitchOn] = field(default_factory=list)
    n_off: int = 0
    off_hits: int = 0
    """Scenes with the value where removing the feature made the oracle lose it."""
    baseline_off: int = 0
    """Scenes with the value where the unedited image already lacks it."""


def switch_on(plain: Sequence[dict], edited: Sequence[dict], scenes: Sequence, label: str, strength: float) -> SwitchOn:
    """Counts and per-scene outcomes of one switch-on edit, from the oracle's readings."""
    success = tuple(bool(reads_value(r, s, label)) for r, s in zip(edited, scenes))
    kept = tuple(bool(preserved(a, b, label)) for a, b in zip(plain, edited))
    return SwitchOn(float(strength), hits=sum(success), preserved=sum(kept), n=len(scenes), success=success, kept=kept)


def switch_on_curves(pipe, directions: Mapping[str, tuple[TopKSAE, int]], block: str, label: str, scenes: Sequence,
                     oracle, sampling: Sampling, grid: int, strengths: Sequence[float], seed: int = 0,
                     batch_size: int = 16) -> tuple[list[dict], dict[str, list[SwitchOn]]]:
    """Switch each of `directions` ({name: (sae, feature)}) on in `scenes` (without the value) at
    every strength, all in one batched generation (`generate_variants`) with the unedited images:
    (the unedited images' readings, {name: [SwitchOn per strength]})."""
    prompts, seeds = scene_prompts(scenes, seed)
    masks = _masks(scenes, label, grid)  # [N, grid, grid], sliced per batch by generate_variants
    runs = [(name, s) for name in directions for s in strengths]
    variants = [{block: painting_edit(*directions[name], s, masks)} for name, s in runs]
    plain, *edited = generate_variants(pipe, prompts, seeds, sampling, [None, *variants], batch_size)
    plain = oracle.read(plain)
    curves: dict[str, list[SwitchOn]] = {name: [] for name in directions}
    for (name, s), images in zip(runs, edited):
        curves[name].append(switch_on(plain, oracle.read(images), scenes, label, s))
    return plain, curves


def causal_test(pipe, sae: TopKSAE, block: str, feature: int, label: str, on_scenes: Sequence, off_scenes: Sequence,
                oracle, sampling: Sampling, grid: int, strengths: Sequence[float] = (1.0,), seed: int = 0,
                batch_size: int = 16) -> CausalResult:
    """Switch `feature` on in `on_scenes` (without the value) at each strength, and off in
    `off_scenes` (with it); `oracle.read(images [N, H, W, 3]) -> readings`."""
    result = CausalResult(label, n_on=len(on_scenes), baseline_on=0, n_off=len(off_scenes))
    if on_scenes:
        plain, curves = switch_on_curves(pipe, {"feature": (sae, feature)}, block, label, on_scenes, oracle, sampling,
                                         grid, strengths, seed, batch_size)
        result.baseline_on = sum(reads_value(r, s, label) for r, s in zip(plain, on_scenes))
        result.on = curves["feature"]
    if off_scenes:
        prompts, seeds = scene_prompts(off_scenes, seed + 10_000)
        plain, edited = (oracle.read(images) for images in generate_variants(
            pipe, prompts, seeds, sampling, [None, {block: FeatureOff(sae=sae, features=feature)}], batch_size))
        result.baseline_off = sum(not reads_value(r, s, label) for r, s in zip(plain, off_scenes))
        result.off_hits = sum(not reads_value(r, s, label) for r, s in zip(edited, off_scenes))
    return result


def window_name(steps: Sequence[int]) -> str:
    """"0", "2-3" or "0,2": how the chapters name the steps an edit acts at (0 = the first step)."""
    steps = sorted(int(t) for t in steps)
    if not steps:
        return "none"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
    return ",".join(map(str, steps))


@dataclass
class TimingResult:
    """Switching a feature on when the edit acts only at some denoising steps: counts per window."""

    label: str
    n: int
    baseline: int
    """Scenes whose unedited image reads the value anyway."""
    windows: dict[str, SwitchOn] = field(default_factory=dict)
    """Window name (`window_name`) -> success and preservation counts of the edit acting there."""


def causal_timing(pipe, sae: TopKSAE, block: str, feature: int, label: str, scenes: Sequence, oracle,
                  sampling: Sampling, grid: int, strength: float, windows: Sequence[Sequence[int]], seed: int = 0,
                  batch_size: int = 16) -> TimingResult:
    """Switch `feature` on in `scenes` (without its value), the painting edit acting only at the
    steps of each window (e.g. [[0], [1], [2], [3], [0, 1, 2, 3]] on 4-step turbo): does the
    oracle read the value, and is everything else kept? One unedited generation serves all
    windows. The paper: early steps change the image strongly, late ones subtly."""
    prompts, seeds = scene_prompts(scenes, seed)
    masks = _masks(scenes, label, grid)  # [N, grid, grid]
    variants = [{block: painting_edit(sae, feature, strength, masks, steps=list(w))} for w in windows]
    plain, *edited = (oracle.read(images) for images in
                      generate_variants(pipe, prompts, seeds, sampling, [None, *variants], batch_size))
    result = TimingResult(label, n=len(scenes), baseline=sum(reads_value(r, s, label) for r, s in zip(plain, scenes)))
    for window, readings in zip(windows, edited):
        result.windows[window_name(window)] = switch_on(plain, readings, scenes, label, strength)
    return result


def pooled_timing(results: Sequence[TimingResult]) -> dict:
    """Counts of several features pooled into Wilson rates: {"on": {window: rate},
    "preserved": {window: rate}, "baseline_on": rate}."""
    from repro.intervals import rate

    names = list(dict.fromkeys(w for res in results for w in res.windows))
    rows = {w: [res.windows[w] for res in results if w in res.windows] for w in names}
    return {
        "on": {w: rate(sum(r.hits for r in rs), sum(r.n for r in rs)) for w, rs in rows.items()},
        "preserved": {w: rate(sum(r.preserved for r in rs), sum(r.n for r in rs)) for w, rs in rows.items()},
        "baseline_on": rate(sum(res.baseline for res in results), sum(res.n for res in results)),
    }


def _distance_bins(h: int, w: int, grid: int, cell: tuple[int, int]) -> np.ndarray:
    """[h, w] int: each pixel's distance from the centre of `cell`, in whole grid cells."""
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = (cell[0] + 0.5) * h / grid, (cell[1] + 0.5) * w / grid
    return np.floor(np.sqrt((ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2) / (h / grid)).astype(int)


def _change_by_distance(plain: np.ndarray, edited: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Per-image mean absolute pixel change (0..1) at each distance: images [N, H, W, 3] -> [N, D]."""
    change = np.abs(edited.astype(np.float32) - plain.astype(np.float32)).mean(axis=3) / 255.0  # [N, H, W]
    return np.stack([change[:, bins == d].mean(axis=1) for d in range(bins.max() + 1)], axis=1)


@dataclass
class LocalityCurve:
    """Pixel change against distance from one edited cell, at several strengths, per image.

    Summaries per strength (`summary`): *near*, the mean change at distance 0 (within one
    cell of the edited cell's centre: does the edit act at all); *far*, the mean change at distance >= `far_from`
    cells; *spread* = far / near (0: only the cell changes; 1: the whole image changes as
    much as the cell). Each with a 95% bootstrap interval over the images."""

    strengths: list[float]
    change: np.ndarray
    """[S, N, D] mean |pixel change| (0..1) of image n at distance d (grid cells) at strength s."""
    far_from: int = 2

    def summary(self, n_boot: int = 1000, seed: int = 0) -> dict[float, dict]:
        """{s: {"near": {"value", "lo", "hi"}, "far": ..., "spread": ...}} with intervals over images."""
        from repro.intervals import bootstrap

        out = {}
        for s, prof in zip(self.strengths, self.change):  # prof [N, D]
            stats = {"near": lambda p: float(p[:, 0].mean()),
                     "far": lambda p: float(p[:, self.far_from:].mean()),
                     "spread": lambda p: float(p[:, self.far_from:].mean() / max(p[:, 0].mean(), 1e-12))}
            row = {}
            for name, stat in stats.items():
                lo, hi = bootstrap(prof, stat, n_boot=n_boot, seed=seed) if n_boot and len(prof) > 1 else (float("nan"),) * 2
                row[name] = {"value": stat(prof), "lo": lo, "hi": hi}
            out[float(s)] = row
        return out

    def to_dict(self, n_boot: int = 1000) -> dict:
        return {"strengths": self.strengths, "far_from": self.far_from,
                "mean_change": self.change.mean(axis=1).tolist(), "summary": self.summary(n_boot)}


def locality_curve(pipe, sae: TopKSAE, block: str, feature: int, prompts: Sequence[str], seeds: Sequence[int],
                   sampling: Sampling, grid: int, strengths: Sequence[float], cell: tuple[int, int] | None = None,
                   batch_size: int = 16, plain: np.ndarray | None = None, far_from: int = 2) -> LocalityCurve:
    """Add the feature (the painting rule, `s * mean_f * W_dec[:, f]`) at one grid cell (default:
    the centre) at each strength `s`, and measure each image's pixel change by distance from it.
    `plain` (the unedited images [N, H, W, 3], if already generated) saves one generation."""
    cell = cell or (grid // 2, grid // 2)
    mask = torch.zeros(grid, grid)
    mask[cell] = 1.0
    variants = [{block: painting_edit(sae, feature, s, mask)} for s in strengths]
    edited = generate_variants(pipe, prompts, seeds, sampling, ([None] if plain is None else []) + variants, batch_size)
    if plain is None:
        plain = edited.pop(0)
    bins = _distance_bins(plain.shape[1], plain.shape[2], grid, cell)
    change = [_change_by_distance(plain, images, bins) for images in edited]
    return LocalityCurve([float(s) for s in strengths], np.stack(change), far_from=far_from)
