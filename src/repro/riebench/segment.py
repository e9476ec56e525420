"""Masks of the edited region from a text-prompted segmenter (CLIPSeg through transformers).

The paper segments the region its text prompts name in each generated image. With local
CLIPSeg weights (e.g. a downloaded `CIDAS/clipseg-rd64-refined` folder):

    seg = ClipSegSegmenter.from_pretrained("/models/clipseg")
    edits = segment_edits(edits, seg, source_images, target_images)

Images are preprocessed here (resize + CLIP normalisation) so only a tokenizer is needed
beside the model. Nothing is downloaded: a missing folder is a ReproError.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from repro.errors import ReproError
from repro.riebench.data import RIEEdit, edited_region

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocessing(folder: str | os.PathLike | None) -> tuple[tuple, tuple]:
    """(mean, std) from a model folder's preprocessor_config.json, else CLIP's."""
    path = Path(folder) / "preprocessor_config.json" if folder else None
    if path is not None and path.is_file():
        cfg = json.loads(path.read_text())
        return tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def pixel_values(images: np.ndarray, size: int, mean=CLIP_MEAN, std=CLIP_STD, device=None, dtype=None) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised float [N, 3, size, size] (bicubic resize, antialiased)."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.to(device=device, dtype=dtype or torch.float32)


def _load_local(cls, folder: str | os.PathLike, what: str):
    folder = Path(folder)
    if not folder.is_dir():
        raise ReproError(f"{what} folder {folder} does not exist: download the weights where there is internet "
                         "and pass the folder (nothing is downloaded here)")
    from transformers import AutoTokenizer

    return cls.from_pretrained(folder, local_files_only=True), AutoTokenizer.from_pretrained(folder, local_files_only=True)


class ClipSegSegmenter:
    """`seg(image, prompts) -> bool [H, W]`: union over prompts of sigmoid(logits) > threshold."""

    def __init__(self, model, tokenizer, threshold: float = 0.4, mean=CLIP_MEAN, std=CLIP_STD):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.mean, self.std = mean, std

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, threshold: float = 0.4) -> "ClipSegSegmenter":
        from transformers import CLIPSegForImageSegmentation

        model, tok = _load_local(CLIPSegForImageSegmentation, folder, "CLIPSeg")
        return cls(model, tok, threshold, *preprocessing(folder))

    @torch.no_grad()
    def probabilities(self, image: np.ndarray, prompts: list[str]) -> torch.Tensor:
        """float [len(prompts), H, W]: per prompt, the probability each pixel is what it names."""
        p = self.model.parameters().__next__()
        size = self.model.config.vision_config.image_size
        pix = pixel_values(image[None], size, self.mean, self.std, p.device, p.dtype).expand(len(prompts), -1, -1, -1)
        tok = self.tokenizer(list(prompts), padding=True, return_tensors="pt").to(p.device)
        logits = self.model(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"),
                            pixel_values=pix).logits
        logits = logits.reshape(len(prompts), *logits.shape[-2:])  # CLIPSeg squeezes a batch of one
        up = F.interpolate(logits[:, None].float(), size=image.shape[:2], mode="bilinear", align_corners=False)
        return torch.sigmoid(up[:, 0]).cpu()

    def __call__(self, image: np.ndarray, prompts) -> np.ndarray:
        if not prompts:
            raise ReproError("the segmenter needs at least one text prompt naming the region")
        return (self.probabilities(image, list(prompts)) > self.threshold).any(0).numpy()


def segment_edit(edit: RIEEdit, segmenter, source: np.ndarray, target: np.ndarray) -> RIEEdit:
    """`edit` with masks segmented in its generated source / target images (uint8 [H, W, 3]).

    The prompts name objects; the edited region follows the category (see data.py)."""
    shape = source.shape[:2]
    if edit.category == "change_style":
        return replace(edit, source_mask=edited_region(edit.category, None, shape),
                       target_mask=edited_region(edit.category, None, shape))
    if not edit.source_mask_prompts and not edit.target_mask_prompts:
        return replace(edit, problem=edit.problem or "no segmenter prompts and no mask: cannot find the edited region")
    src = segmenter(source, edit.source_mask_prompts or edit.target_mask_prompts)
    tgt = segmenter(target, edit.target_mask_prompts or edit.source_mask_prompts)
    return replace(edit, source_mask=edited_region(edit.category, src, shape),
                   target_mask=edited_region(edit.category, tgt, shape))
