"""RIEBench edits: what one edit is, the published format, and masks on the block grid.

An edit asks to turn the *original* image into the *edit* one. The paper's names: the
**source** image is generated from the edit prompt (features are taken from it), the
**target** image from the original prompt (it is regenerated with the features added).
Each image has a bool mask of the edited region at full resolution:

| category | edited region |
|---|---|
| change_style | the whole image |
| change_background | the complement of the named (foreground) objects |
| every other category | the named objects |

The published RIEBench file is a JSON list (or {"edits": [...]}, or {id: edit}) of
objects; accepted key spellings (first found wins):

| field | keys |
|---|---|
| id | id, edit_id, key, image_id (default: the position in the list) |
| original prompt | original_prompt, source_prompt, prompt, original |
| edit prompt | editing_prompt, edit_prompt, target_prompt, edited_prompt |
| category | category, editing_type, edit_type, editing_type_id (PIE-Bench ids 1-9) |
| segmenter prompts | mask_prompts, segment_prompts, segmenter_prompts, mask_prompt, segment_prompt |
| seed | seed (default 0) |

Segmenter prompts are a string, a list (used for both images), or
{"source": [...], "target": [...]} (also "edit"/"original").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from repro.errors import ReproError, choices_hint

CATEGORIES: tuple[str, ...] = (
    "change_object", "add_object", "delete_object", "change_content", "change_pose",
    "change_colour", "change_material", "change_background", "change_style",
)
"""The paper's nine RIEBench categories (PIE-Bench's editing types 1-9)."""

_ALIASES = {
    "change_color": "change_colour", "change_attribute_color": "change_colour",
    "change_attribute_colour": "change_colour", "change_attribute_content": "change_content",
    "change_attribute_pose": "change_pose", "change_attribute_material": "change_material",
    **{str(i + 1): c for i, c in enumerate(CATEGORIES)},  # PIE-Bench editing_type_id
}

KEYS = {
    "id": ("id", "edit_id", "key", "image_id"),
    "original_prompt": ("original_prompt", "source_prompt", "prompt", "original"),
    "edit_prompt": ("editing_prompt", "edit_prompt", "target_prompt", "edited_prompt"),
    "category": ("category", "editing_type", "edit_type", "editing_type_id"),
    "mask_prompts": ("mask_prompts", "segment_prompts", "segmenter_prompts", "mask_prompt", "segment_prompt"),
}
"""Accepted key spellings of the published format, per field (first found wins)."""


def normalise_category(name: Any) -> str:
    """`"Change Color"`, `"change_color"`, `6` -> `"change_colour"`; unknown names pass through."""
    text = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(text, text)


@dataclass
class RIEEdit:
    """One edit. Masks are bool [H, W] of the edited region at full image resolution."""

    id: str
    """Unique name of the edit (mask files are named after it)."""
    category: str
    """One of CATEGORIES (validated by `validate`, not on construction, so loading never stops)."""
    original_prompt: str
    """Prompt of the image to edit: the *target* image, regenerated with the edit."""
    edit_prompt: str
    """Prompt describing the result: the *source* image the features come from."""
    source_mask_prompts: tuple[str, ...] = ()
    """Segmenter text prompts naming the region in the source (edit-prompt) image."""
    target_mask_prompts: tuple[str, ...] = ()
    """Segmenter text prompts naming the region in the target (original-prompt) image."""
    source_mask: np.ndarray | None = None
    """bool [H, W]: edited region in the source image (None: not known yet)."""
    target_mask: np.ndarray | None = None
    """bool [H, W]: edited region in the target image."""
    seed: int = 0
    """Seed of both generations."""
    original_scene: Any = None
    """ShapesWorld only: the Scene of the original prompt."""
    edit_scene: Any = None
    """ShapesWorld only: the Scene of the edit prompt."""
    slot: str | None = None
    """ShapesWorld only: the position slot an object edit acts on (None for global edits)."""
    problem: str | None = None
    """Set by loaders when something about this edit failed (e.g. an unreadable mask)."""
    meta: dict = field(default_factory=dict)
    """Anything else the source file held."""

    def validate(self, resolution: int | None = None, check_masks: bool = True) -> None:
        """Raise ReproError saying what is wrong with this edit (the runner skips it).

        `check_masks=False` checks only what is known before generating (category, prompts)."""
        where = f"edit {self.id!r}"
        if self.problem:
            raise ReproError(f"{where}: {self.problem}")
        if self.category not in CATEGORIES:
            raise ReproError(f"{where} has unknown category {self.category!r}: use {choices_hint(CATEGORIES)}")
        if not self.original_prompt.strip() or not self.edit_prompt.strip():
            raise ReproError(f"{where} has an empty prompt: give both the original and the edit prompt")
        if " ".join(self.original_prompt.lower().split()) == " ".join(self.edit_prompt.lower().split()):
            raise ReproError(f"{where}: the edit prompt is identical to the original prompt; nothing to edit")
        for name in ("source_mask", "target_mask") if check_masks else ():
            mask = getattr(self, name)
            if mask is None:
                raise ReproError(f"{where} has no {name}: give a mask directory or a segmenter")
            if mask.ndim != 2:
                raise ReproError(f"{where}: {name} has shape {mask.shape}; masks are [H, W]")
            if resolution is not None and mask.shape != (resolution, resolution):
                raise ReproError(f"{where}: {name} is {mask.shape[1]}x{mask.shape[0]} px but the images are "
                                 f"{resolution}x{resolution}; give masks at the generation resolution")
            if not mask.any():
                raise ReproError(f"{where}: {name} is empty; the edited region must cover some pixels")

    def block_masks(self, grid: int, dilate_px: int = 0, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, target) masks as bool [grid, grid] on a block's feature map: see `grid_mask`."""
        return (grid_mask(self.source_mask, grid, dilate_px, threshold),
                grid_mask(self.target_mask, grid, dilate_px, threshold))

    def to_dict(self) -> dict:
        """JSON-able description (no masks: they come from the renderer or a mask folder)."""
        d = {"id": self.id, "category": self.category, "original_prompt": self.original_prompt,
             "edit_prompt": self.edit_prompt, "seed": self.seed,
             "mask_prompts": {"source": list(self.source_mask_prompts), "target": list(self.target_mask_prompts)}}
        if self.original_scene is not None:
            d.update(original_scene=self.original_scene.to_dict(), edit_scene=self.edit_scene.to_dict(),
                     slot=self.slot)
        return d


def grid_mask(mask: np.ndarray, grid: int, dilate_px: int = 0, threshold: float = 0.0) -> torch.Tensor:
    """bool [H, W] -> bool [grid, grid]: dilate by `dilate_px` pixels (square), then a cell is
    in the mask when more than `threshold` of its pixels are (0: any pixel). Any H, W."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]  # [1, 1, H, W]
    if dilate_px > 0:
        m = F.max_pool2d(m, 2 * dilate_px + 1, stride=1, padding=dilate_px)
    frac = F.adaptive_avg_pool2d(m, grid)[0, 0]  # [grid, grid]
    return frac > threshold


def edited_region(category: str, named: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The edited region from the mask of the named objects: whole image for style edits,
    the complement for background edits, the mask itself otherwise."""
    if category == "change_style":
        return np.ones(shape, bool)
    if named is None:
        return None
    return ~named if category == "change_background" else named


# ---------------------------------------------------------------------------------------
# The published format


def _get(item: dict, field_name: str, default=None):
    for key in KEYS[field_name]:
        if key in item and item[key] is not None:
            return item[key]
    return default


def _prompts(value) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if value is None:
        return (), ()
    if isinstance(value, str):
        return (value,), (value,)
    if isinstance(value, dict):
        src = value.get("source", value.get("edit", ()))
        tgt = value.get("target", value.get("original", ()))
        src = (src,) if isinstance(src, str) else tuple(src)
        tgt = (tgt,) if isinstance(tgt, str) else tuple(tgt)
        return src or tgt, tgt or src
    return tuple(map(str, value)), tuple(map(str, value))


def edits_from_records(records) -> list[RIEEdit]:
    """Edits from parsed JSON (a list, {"edits": [...]}, or {id: edit}). Bad records become
    edits with `problem` set (so a run reports them), never an exception here."""
    if isinstance(records, dict) and "edits" in records:
        records = records["edits"]
    if isinstance(records, dict):
        records = [{"id": key, **value} for key, value in records.items()]
    if not isinstance(records, list):
        raise ReproError("a RIEBench file holds a JSON list of edits (or {'edits': [...]}); got "
                         f"{type(records).__name__}")
    edits = []
    for i, item in enumerate(records):
        if not isinstance(item, dict):
            edits.append(RIEEdit(str(i), "?", "", "", problem=f"record {i} is a {type(item).__name__}, not an object"))
            continue
        src_p, tgt_p = _prompts(_get(item, "mask_prompts"))
        missing = [f for f in ("original_prompt", "edit_prompt", "category") if _get(item, f) is None]
        problem = None
        if missing:
            problem = (f"record {i} lacks {', '.join(missing)} (accepted keys: "
                       + "; ".join(f"{m}: {', '.join(KEYS[m])}" for m in missing) + ")")
        known = {k for keys in KEYS.values() for k in keys} | {"seed"}
        edits.append(RIEEdit(
            id=str(_get(item, "id", i)), category=normalise_category(_get(item, "category", "?")),
            original_prompt=str(_get(item, "original_prompt", "")), edit_prompt=str(_get(item, "edit_prompt", "")),
            source_mask_prompts=src_p, target_mask_prompts=tgt_p, seed=int(item.get("seed", 0)), problem=problem,
            meta={k: v for k, v in item.items() if k not in known},
        ))
    ids = [e.id for e in edits]
    for e in edits:
        if ids.count(e.id) > 1 and e.problem is None:
            e.problem = f"id {e.id!r} is used by {ids.count(e.id)} edits; give every edit its own id"
    return edits


def load_edits(path: str | os.PathLike) -> list[RIEEdit]:
    """Edits from a published-format RIEBench JSON file (or our ShapesWorld file, with scenes)."""
    path = Path(path)
    if not path.is_file():
        raise ReproError(f"RIEBench file {path} does not exist; give the JSON file of edits or 'shapes'")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReproError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from exc
    if isinstance(raw, dict) and str(raw.get("version", "")).startswith("shapes-riebench"):
        from repro.riebench.shapes import edits_from_json

        return edits_from_json(raw)
    return edits_from_records(raw)


# ---------------------------------------------------------------------------------------
# Masks: a folder of PNGs, or a segmenter


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A PNG (any mode) as bool [H, W]: pixels brighter than half are in the mask."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def attach_masks(edits: list[RIEEdit], folder: str | os.PathLike) -> list[RIEEdit]:
    """Copies of `edits` with masks from `folder`: `<id>_source.png` + `<id>_target.png`, or
    one `<id>.png` for both. A file marks the named objects (see the module docstring for
    the edited region); style edits need no file. A missing or unreadable file sets `problem`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReproError(f"mask folder {folder} does not exist; give the folder holding <id>_source.png files")
    out = []
    for e in edits:
        pair = [folder / f"{e.id}_source.png", folder / f"{e.id}_target.png"]
        single = folder / f"{e.id}.png"
        named: list[np.ndarray | None] = [None, None]
        problem = e.problem
        try:
            if all(p.is_file() for p in pair):
                named = [read_mask(p) for p in pair]
            elif single.is_file():
                named = [read_mask(single)] * 2
            elif e.category != "change_style" and problem is None:
                problem = f"no mask in {folder}: expected {pair[0].name} and {pair[1].name}, or {single.name}"
        except OSError as exc:
            problem = f"cannot read its mask ({exc})"
        shape = next((m.shape for m in named if m is not None), None)
        if shape is None and e.category == "change_style":
            out.append(replace(e, problem=problem))  # sized later, once the resolution is known
            continue
        out.append(replace(e, problem=problem,
                           source_mask=edited_region(e.category, named[0], shape) if shape else None,
                           target_mask=edited_region(e.category, named[1], shape) if shape else None))
    return out


def whole_image_masks(edits: list[RIEEdit], resolution: int) -> list[RIEEdit]:
    """Style edits without masks get whole-image masks of `resolution` (others unchanged)."""
    full = np.ones((resolution, resolution), bool)
    return [replace(e, source_mask=full, target_mask=full)
            if e.category == "change_style" and e.source_mask is None else e for e in edits]
