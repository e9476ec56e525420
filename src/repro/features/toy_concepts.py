"""Ground-truth concepts of ShapesWorld scenes on the SAE's grid, and what features mean.

For each image and grid position (8x8 at 128 px) a concept is true or false:
- object concepts, true where an object covers most of the cell (majority of its pixels):
  `object`, `shape=<s>`, `colour=<c>`, `texture=<t>`, `size=<z>`, `pose=<o>`, `slot=<p>`;
- `background` and `background=<colour>`, true where no object covers the cell;
- `style=<s>`, true at every position of an image in that style (style is global).
Families group them: shape, colour, texture, size, pose, slot, background, style.

A feature's *label* is the concept with the highest F1 between "the feature fires here"
and "the concept holds here" over all positions of the evaluation images; its *purity* is
the precision of that label: the share of its firing positions where the label holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from repro.features.analysis import ConceptCounts
from repro.shapes.render import downsample_mask, render_batch
from repro.shapes.world import BACKGROUNDS, COLOURS, ORIENTATIONS, POSITIONS, SHAPES, SIZES, STYLES, TEXTURES, Scene

FAMILIES = ("shape", "colour", "texture", "size", "pose", "slot", "background", "style")


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


def scene_concepts(scenes: list[Scene], grid: int = 8) -> torch.Tensor:
    """bool [N, c, grid, grid] concept maps of `scenes` (rendered to get exact masks)."""
    names = concept_names()
    index = {n: i for i, n in enumerate(names)}
    batch = render_batch(scenes, with_masks=True)
    out = np.zeros((len(scenes), len(names), grid, grid), bool)
    for n, scene in enumerate(scenes):
        masks = downsample_mask(batch.masks(n), grid, mode="majority")  # [objects, g, g]
        covered = masks.any(0)
        out[n, index["object"]] = covered
        out[n, index["background"]] = ~covered
        out[n, index[f"background={scene.background}"]] = ~covered
        out[n, index[f"style={scene.style}"]] = True
        for obj, m in zip(scene.objects, masks):
            for concept in (f"shape={obj.shape}", f"colour={obj.colour}", f"texture={obj.texture}",
                            f"size={obj.size}", f"slot={obj.position}"):
                out[n, index[concept]] |= m
            if obj.orientation is not None:
                out[n, index[f"pose={obj.orientation}"]] |= m
    return torch.from_numpy(out)


@dataclass
class FeatureLabels:
    """Each feature's best concept and how pure it is (live features only are meaningful)."""

    label: list[str]
    purity: torch.Tensor
    """[n] precision of the label."""
    f1: torch.Tensor
    """[n] F1 of the label."""
    live: torch.Tensor
    """[n] bool: the feature fired on the evaluation images."""

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
    """Label = argmax F1 over concepts (the catch-alls `object`/`background` left out by default)."""
    keep = [i for i, n in enumerate(counts.names) if n not in exclude]
    f1 = counts.f1()[:, keep]
    best_f1, best = f1.max(1)
    precision = counts.precision()[:, keep].gather(1, best[:, None]).squeeze(1)
    names = [counts.names[keep[int(b)]] for b in best]
    return FeatureLabels(label=names, purity=precision.float(), f1=best_f1.float(), live=counts.fired > 0)
