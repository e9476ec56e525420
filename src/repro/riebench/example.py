"""A small RIEBench in the published layout, with masks drawn as shapes: for trying the
real-model path (and the stand-ins) without the paper's file or a segmenter.

`write_example(folder, resolution)` writes `folder/edits.json` (the published key
spellings: `original_prompt`, `editing_prompt`, `editing_type_id`, `mask_prompts`) and
`folder/masks/<id>_source.png` / `<id>_target.png` marking the named objects, exactly what
a user supplies with `--edits FILE --masks FOLDER`. The masks are ellipses where such a
caption's object would typically sit, not segmentations of generated images: good for
exercising the benchmark's path and cost, not for scoring a real model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from repro.io import atomic_path, write_json_atomic
from repro.riebench.data import CATEGORIES

# (original prompt, edit prompt, segmenter prompt, ellipse centre x, y, radii x, y as fractions)
EXAMPLES: dict[str, list[tuple[str, str, str, tuple[float, float, float, float]]]] = {
    "change_object": [
        ("a cat sitting on a wooden bench in a park", "a dog sitting on a wooden bench in a park", "animal", (0.5, 0.5, 0.22, 0.25)),
        ("an apple on a white plate", "an orange on a white plate", "fruit", (0.5, 0.55, 0.18, 0.18)),
    ],
    "add_object": [
        ("an empty table in a bright kitchen", "a vase of flowers on a table in a bright kitchen", "vase", (0.5, 0.4, 0.12, 0.2)),
        ("a quiet beach at sunset", "a sailing boat at a quiet beach at sunset", "boat", (0.35, 0.45, 0.15, 0.15)),
    ],
    "delete_object": [
        ("a red car parked in front of a house", "a house with an empty driveway", "car", (0.5, 0.7, 0.3, 0.14)),
        ("a man with a hat walking in the snow", "a man walking in the snow", "hat", (0.5, 0.2, 0.12, 0.08)),
    ],
    "change_content": [
        ("a woman smiling at the camera", "a woman crying at the camera", "face", (0.5, 0.35, 0.16, 0.2)),
        ("a clock showing three o'clock", "a clock showing nine o'clock", "clock", (0.5, 0.5, 0.3, 0.3)),
    ],
    "change_pose": [
        ("a horse standing in a meadow", "a horse galloping in a meadow", "horse", (0.5, 0.55, 0.3, 0.22)),
        ("a cat lying on a sofa", "a cat jumping off a sofa", "cat", (0.5, 0.5, 0.25, 0.2)),
    ],
    "change_colour": [
        ("a blue bicycle leaning against a wall", "a yellow bicycle leaning against a wall", "bicycle", (0.5, 0.6, 0.3, 0.2)),
        ("a green umbrella on a rainy street", "a red umbrella on a rainy street", "umbrella", (0.5, 0.35, 0.25, 0.15)),
    ],
    "change_material": [
        ("a wooden chair in an empty room", "a metal chair in an empty room", "chair", (0.5, 0.55, 0.18, 0.28)),
        ("a glass vase on a shelf", "a ceramic vase on a shelf", "vase", (0.5, 0.45, 0.12, 0.22)),
    ],
    "change_background": [
        ("a dog sitting on green grass", "a dog sitting on a sandy beach", "dog", (0.5, 0.55, 0.2, 0.25)),
        ("a lighthouse under a clear sky", "a lighthouse under a stormy sky", "lighthouse", (0.5, 0.55, 0.1, 0.35)),
    ],
    "change_style": [
        ("a photo of a mountain lake", "a watercolour painting of a mountain lake", "", (0.5, 0.5, 0.5, 0.5)),
        ("a photo of a city street at night", "a pencil sketch of a city street at night", "", (0.5, 0.5, 0.5, 0.5)),
    ],
}


def ellipse_mask(resolution: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """bool [resolution, resolution]: an ellipse with centre and radii in fractions of the side."""
    y, x = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def example_records(per_category: int = 2) -> list[dict]:
    """The example edits as published-layout records (PIE-Bench editing type ids 1-9)."""
    records = []
    for type_id, category in enumerate(CATEGORIES, start=1):
        for i, (original, edit, named, _) in enumerate(EXAMPLES[category][:per_category]):
            record = {"id": f"{category}-{i}", "original_prompt": original, "editing_prompt": edit,
                      "editing_type_id": str(type_id), "seed": i}
            if named:
                record["mask_prompts"] = [named]
            records.append(record)
    return records


def write_example(folder: str | os.PathLike, resolution: int = 512, per_category: int = 2) -> tuple[Path, Path]:
    """Write `edits.json` and `masks/` under `folder`; returns (edits file, mask folder)."""
    from PIL import Image

    folder = Path(folder)
    masks = folder / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    records = example_records(per_category)
    for category in CATEGORIES:
        for i, (*_, ellipse) in enumerate(EXAMPLES[category][:per_category]):
            if category == "change_style":
                continue  # the whole image: no file needed
            mask = ellipse_mask(resolution, *ellipse)
            for side in ("source", "target"):
                with atomic_path(masks / f"{category}-{i}_{side}.png") as tmp:
                    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
    edits = write_json_atomic(folder / "edits.json", records)
    return edits, masks
