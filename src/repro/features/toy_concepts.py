"""Ground-truth concepts of ShapesWorld scenes on the SAE's grid, and what features mean.

Each image is cut into the SAE's grid (8x8 cells of 16 px at 128 px). For each image,
concept c and cell, `scene_coverage` gives the share of the cell's pixels where c holds,
from the rendered masks:
- object concepts (`object`, `shape=<s>`, `colour=<c>`, `texture=<t>`, `size=<z>`,
  `pose=<o>`, `slot=<p>`): the share covered by objects with that attribute;
- `background`: the share no object covers; `background=<colour>`: the same in images of
  that background colour, 0 in images of any other;
- `style=<s>`: 1 everywhere in an image of that style, else 0 (style is global).
Families group them: shape, colour, texture, size, pose, slot, background, style.

`scene_concepts` turns coverage into three-state labels, int8: POSITIVE (1), NEGATIVE (0)
or IGNORED (-1). Cells an object only clips are neither: counting them as negatives
punishes a detector for firing on an object that is there, counting them as positives
asks it to fire on a cell that is mostly something else. So (cov = coverage):
- object concepts and styles: positive where cov >= 0.5, negative where cov = 0, ignored
  for 0 < cov < 0.5 (a small object, 24 px, covers few of the 16-px cells by majority:
  under the old majority rule even a perfect colour detector scored precision 0.15-0.3);
- background concepts: positive where cov = 1 (no object pixel in the cell, background of
  that colour), negative where cov <= 0.5 (objects cover at least half the cell, or the
  image has another background), ignored for 0.5 < cov < 1 (a cell an object clips).
Precision and recall are counted over the labelled (positive or negative) cells of each
concept only: precision(f, c) = |F_f & P_c| / |F_f & (P_c | N_c)|, recall = |F_f & P_c| / |P_c|.

A feature's *label* is the concept with the highest such F1 between "the feature fires
here" and "the concept holds here" over the evaluation images; its *purity* is the
precision of that label. Per-concept detection scores (best feature, AUROC, lift, probe
ceiling) are in `repro.features.detection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repro.errors import ReproError
from repro.features.analysis import ConceptCounts
from repro.shapes.render import downsample_mask, render_batch
from repro.shapes.world import BACKGROUNDS, COLOURS, ORIENTATIONS, POSITIONS, SHAPES, SIZES, STYLES, TEXTURES, Scene

FAMILIES = ("shape", "colour", "texture", "size", "pose", "slot", "background", "style")
POSITIVE, NEGATIVE, IGNORED = 1, 0, -1
MIN_COVERAGE = 0.5
"""An object concept is positive in a cell it covers at least this share of."""


def concept_names() -> list[str]:
    names = ["object", "background"]
    names += [f"shape={v}" for v in SHAPES] + [f"colour={v}" for v in COLOURS]
    names += [f"texture={v}" for v in TEXTURES] + [f"size={v}" for v in SIZES]
    names += [f"pose={v}" for v in ORIENTATIONS] + [f"slot={v}" for v in POSITIONS]
    names += [f"background={v}" for v in BACKGROUNDS] + [f"style={v}" for v in STYLES]
    return names


def family(concept: str) -> str:
    """`colour=red` -> colour; `object` -> slot (where things are); `background` -> background."""
    if concept == "object":
        return "slot"
    return concept.split("=")[0]


def scene_coverage(scenes: list[Scene], grid: int = 8) -> torch.Tensor:
    """float32 [N, c, grid, grid]: share of each cell where each concept of `concept_names()` holds."""
    names = concept_names()
    index = {n: i for i, n in enumerate(names)}
    batch = render_batch(scenes, with_masks=True)
    out = np.zeros((len(scenes), len(names), grid, grid), np.float32)
    for n, scene in enumerate(scenes):
        cover = downsample_mask(batch.masks(n), grid, mode="fraction")  # [objects, g, g]
        free = downsample_mask(batch.labels[n] == 0, grid, mode="fraction")  # [g, g], exactly 1 where no object pixel
        out[n, index["object"]] = 1 - free
        out[n, index["background"]] = free
        out[n, index[f"background={scene.background}"]] = free
        out[n, index[f"style={scene.style}"]] = 1
        for obj, c in zip(scene.objects, cover):  # objects never overlap: shares add up
            for concept in (f"shape={obj.shape}", f"colour={obj.colour}", f"texture={obj.texture}",
                            f"size={obj.size}", f"slot={obj.position}"):
                out[n, index[concept]] += c
            if obj.orientation is not None:
                out[n, index[f"pose={obj.orientation}"]] += c
    return torch.from_numpy(out)


def coverage_labels(coverage: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """int8 [N, c, g, g] POSITIVE / NEGATIVE / IGNORED from coverage [N, c, g, g] (rules: module docstring)."""
    names = concept_names() if names is None else names
    if coverage.ndim != 4 or coverage.shape[1] != len(names):
        raise ReproError(f"coverage must be [N, {len(names)}, g, g] (one map per concept), got {tuple(coverage.shape)}")
    background = torch.tensor([family(n) == "background" for n in names])[None, :, None, None]
    out = torch.full(coverage.shape, IGNORED, dtype=torch.int8)
    obj_pos, obj_neg = coverage >= MIN_COVERAGE, coverage == 0
    bg_pos, bg_neg = coverage == 1, coverage <= 1 - MIN_COVERAGE
    out[torch.where(background, bg_pos, obj_pos)] = POSITIVE
    out[torch.where(background, bg_neg, obj_neg)] = NEGATIVE
    return out


def scene_concepts(scenes: list[Scene], grid: int = 8) -> torch.Tensor:
    """int8 [N, c, grid, grid] concept labels of `scenes`: POSITIVE, NEGATIVE or IGNORED per cell."""
    return coverage_labels(scene_coverage(scenes, grid))


@dataclass
class FeatureLabels:
    """Each feature's best concept and how pure it is (live features only are meaningful).

    All three scores count only the cells labelled for that concept (module docstring)."""

    label: list[str]
    purity: torch.Tensor
    """[n] precision of the label: share of the feature's firings on labelled cells that are positives."""
    f1: torch.Tensor
    """[n] F1 of the label."""
    live: torch.Tensor
    """[n] bool: the feature fired on the evaluation images."""
    recall: torch.Tensor | None = None
    """[n] recall of the label: share of its positive cells where the feature fires (None: not kept)."""

    def summary(self, threshold: float = 0.8) -> dict:
        """Share of live features with purity >= threshold, and the families of those features."""
        live = self.live.nonzero().flatten().tolist()
        pure = [f for f in live if float(self.purity[f]) >= threshold]
        fam = {name: 0 for name in FAMILIES}
        for f in pure:
            fam[family(self.label[f])] += 1
        return {
            "live": len(live),
            "pure": len(pure),
            "pure_share": len(pure) / max(len(live), 1),
            "threshold": threshold,
            "families": {k: v / max(len(pure), 1) for k, v in fam.items()},
            "mean_f1": float(self.f1[self.live].mean()) if live else 0.0,
        }


def label_features(counts: ConceptCounts, exclude: tuple[str, ...] = ("object", "background")) -> FeatureLabels:
    """Label = argmax F1 over concepts (the catch-alls `object`/`background` left out by default).

    `counts` from three-state labels (`scene_concepts`) score each concept on its labelled
    cells only; from bool maps every cell counts."""
    keep = [i for i, n in enumerate(counts.names) if n not in exclude]
    if not keep:
        raise ReproError(f"every concept of {counts.names} is excluded by {exclude}: exclude fewer")
    f1 = counts.f1()[:, keep]
    best_f1, best = f1.max(1)
    precision = counts.precision()[:, keep].gather(1, best[:, None]).squeeze(1)
    recall = counts.recall()[:, keep].gather(1, best[:, None]).squeeze(1)
    names = [counts.names[keep[int(b)]] for b in best]
    return FeatureLabels(label=names, purity=precision.float(), f1=best_f1.float(), live=counts.fired > 0,
                         recall=recall.float())
