"""Scoring RIEBench edits: exact on ShapesWorld (the oracle), CLIP/LPIPS on real models.

A scorer is called as `scorer(edit, edited, source, target) -> list[dict]` with uint8
images (edited [N, H, W, 3]; the reference source / target [H, W, 3]) and returns one dict
of metrics per edited image. `run_benchmark` always adds `pixel_outside` (below).

ShapesWorld (`ShapesScorer`), read by the oracle:
- success: the edited region holds what the edit prompt asks for:
  change_object: the slot's object has the new shape (and pose, for oriented shapes);
  change_content / change_pose / change_colour / change_material: the slot's object has
  the new size / orientation / colour / texture; add_object: the slot holds an object of
  the added shape; delete_object: the slot is empty; change_background / change_style:
  the global attribute is the new one.
- preserved: every *other* attribute the oracle reads (each slot's presence, shape, pose,
  colour, texture, size; background; style) equals its reading of the unedited target
  image (so the toy model's own mistakes are not counted against the edit).

Real models (`ClipScorer`): CLIP image-image similarity of the edited image to the source
and to the target, CLIP text-image similarity to the edit and the original prompt, and
LPIPS to both when an LPIPS function is given (the `lpips` package and its weights are not
part of this project: without one the metric is reported as unavailable, value None).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from repro.riebench.data import RIEEdit
from repro.riebench.segment import _load_local, pixel_values, preprocessing

OBJECT_ATTRS = ("shape", "orientation", "colour", "texture", "size")
EDITED_ATTRS = {"change_object": ("shape", "orientation"), "change_content": ("size",),
                "change_pose": ("orientation",), "change_colour": ("colour",), "change_material": ("texture",)}
"""Object attributes each object-level category changes."""


def pixel_outside(edited: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean |edited - target| in [0, 1] over pixels outside `region` (bool [H, W]), per image [N].

    NaN where nothing lies outside (style edits: the region is the whole image)."""
    outside = ~np.asarray(region, bool)
    if not outside.any():
        return np.full(len(edited), np.nan, np.float32)
    diff = np.abs(edited.astype(np.float32) - target[None].astype(np.float32)).mean(-1)  # [N, H, W]
    return diff[:, outside].mean(-1) / 255.0


def edit_region(edit: RIEEdit) -> np.ndarray:
    """Union of the source and target regions (bool [H, W]): where an edit may change pixels."""
    return np.asarray(edit.source_mask, bool) | np.asarray(edit.target_mask, bool)


def _flat(reading: dict) -> dict:
    """An oracle reading as {attribute key: value}: ("slot", p, attr) and ("background",), ("style",)."""
    out = {("background",): reading["background"], ("style",): reading["style"]}
    for p, obj in reading["slots"].items():
        out[("slot", p, "present")] = obj is not None
        for a in OBJECT_ATTRS:
            out[("slot", p, a)] = None if obj is None else obj[a]
    return out


def edited_keys(edit: RIEEdit) -> set:
    """The reading keys an edit is allowed to change."""
    if edit.category in ("change_background", "change_style"):
        return {(edit.category.split("_")[1],)}
    if edit.category in ("add_object", "delete_object"):
        return {("slot", edit.slot, a) for a in ("present",) + OBJECT_ATTRS}
    return {("slot", edit.slot, a) for a in EDITED_ATTRS[edit.category]}


def edit_success(edit: RIEEdit, reading: dict) -> bool:
    """Whether the oracle's reading shows what the edit prompt asks for (see the module docstring)."""
    if edit.category == "change_background":
        return reading["background"] == edit.edit_scene.background
    if edit.category == "change_style":
        return reading["style"] == edit.edit_scene.style
    got = reading["slots"].get(edit.slot)
    if edit.category == "delete_object":
        return got is None
    want = next(o for o in edit.edit_scene.objects if o.position == edit.slot)
    if got is None:
        return False
    if edit.category == "add_object":
        return got["shape"] == want.shape
    return all(got[a] == getattr(want, a) for a in EDITED_ATTRS[edit.category])


def preserved(edit: RIEEdit, reading: dict, reference: dict) -> bool:
    """Every attribute outside `edited_keys(edit)` reads the same as in `reference`."""
    a, b, skip = _flat(reading), _flat(reference), edited_keys(edit)
    return all(a[key] == b[key] for key in a if key not in skip)


class ShapesScorer:
    """Oracle-based success and preservation for ShapesWorld edits (needs `edit.edit_scene`)."""

    def __init__(self, oracle):
        self.oracle = oracle

    def __call__(self, edit: RIEEdit, edited: np.ndarray, source: np.ndarray, target: np.ndarray) -> list[dict]:
        readings = self.oracle.read(np.concatenate([edited, target[None]]))
        ref = readings[-1]
        return [{"success": edit_success(edit, r), "preserved": preserved(edit, r, ref)} for r in readings[:-1]]


def _features(out) -> torch.Tensor:
    """CLIP get_*_features output (a tensor, or a model output with a projected pooler_output)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """CLIP similarities (and LPIPS when given) of edited images to both references.

    lpips: optional `fn(a uint8 [N, H, W, 3], b uint8 [N, H, W, 3]) -> [N]`; without it the
    lpips_* values are None and `unavailable["lpips"]` says why.
    """

    def __init__(self, model, tokenizer, mean=None, std=None, lpips: Callable | None = None):
        from repro.riebench.segment import CLIP_MEAN, CLIP_STD

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mean, self.std = mean or CLIP_MEAN, std or CLIP_STD
        self.lpips = lpips
        self.unavailable = {} if lpips else {
            "lpips": "LPIPS needs pretrained network weights (the lpips package's), which this project does not ship "
                     "or download; pass lpips=fn to ClipScorer to report it"}

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, lpips: Callable | None = None) -> "ClipScorer":
        """A CLIPModel and its tokenizer from a local folder (nothing is downloaded)."""
        from transformers import CLIPModel

        model, tok = _load_local(CLIPModel, folder, "CLIP")
        return cls(model, tok, *preprocessing(folder), lpips=lpips)

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> unit-norm [N, D]."""
        p = next(self.model.parameters())
        pix = pixel_values(images, self.model.config.vision_config.image_size, self.mean, self.std, p.device, p.dtype)
        e = _features(self.model.get_image_features(pixel_values=pix)).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """[N] prompts -> unit-norm [N, D] (truncated to the model's context)."""
        p = next(self.model.parameters())
        tok = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings,
                             return_tensors="pt").to(p.device)
        e = _features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                   attention_mask=tok.get("attention_mask"))).float()
        return torch.nn.functional.normalize(e, dim=-1).cpu()

    def __call__(self, edit: RIEEdit, edited: np.ndarray, source: np.ndarray, target: np.ndarray) -> list[dict]:
        img = self.image_embeddings(np.concatenate([edited, source[None], target[None]]))
        e, s, t = img[:-2], img[-2], img[-1]
        txt = self.text_embeddings([edit.edit_prompt, edit.original_prompt])
        cols = {"clip_image_source": e @ s, "clip_image_target": e @ t,
                "clip_text_edit": e @ txt[0], "clip_text_original": e @ txt[1]}
        if self.lpips is not None:
            n = len(edited)
            cols["lpips_source"] = np.asarray(self.lpips(edited, np.repeat(source[None], n, 0)))
            cols["lpips_target"] = np.asarray(self.lpips(edited, np.repeat(target[None], n, 0)))
        rows = [{k: float(v[i]) for k, v in cols.items()} for i in range(len(edited))]
        if self.lpips is None:
            for r in rows:
                r.update(lpips_source=None, lpips_target=None)
        return rows
