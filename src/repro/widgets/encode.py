"""Images as base64 strings, the form in which widgets carry pixels in their state.

A widget's state is JSON: it is saved in the executed notebook (nbclient's
`store_widget_state`) and embedded in the book's pages, so images travel as compressed
base64 (lossless PNG by default, or lossless WebP) that the browser shows as a data URL.
"""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np

from repro.errors import ReproError, choices_hint

Format = Literal["png", "webp"]
FORMATS: dict[str, str] = {"png": "image/png", "webp": "image/webp"}


def check_images(images) -> np.ndarray:
    """`images` as uint8 [N, H, W, 3] with N >= 1, or a ReproError saying what is wrong."""
    if not isinstance(images, np.ndarray):
        raise ReproError(
            f"images must be a numpy array of shape [N, H, W, 3], got {type(images).__name__}: "
            "convert with np.stack([np.asarray(im) for im in images])"
        )
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        raise ReproError(f"images must have shape [N, H, W, 3] (N >= 1, RGB), got {list(images.shape)}")
    if images.dtype != np.uint8:
        raise ReproError(
            f"images must be uint8 (0..255), got {images.dtype}: "
            "for floats in [0, 1] use (images * 255).round().clip(0, 255).astype(np.uint8)"
        )
    return images


def encode_images(images: np.ndarray, format: Format = "png") -> list[str]:
    """uint8 [N, H, W, 3] -> N base64 strings of lossless `format` files."""
    from PIL import Image

    if format not in FORMATS:
        raise ReproError(f"unknown image format {format!r}: use {choices_hint(FORMATS)}")
    out = []
    for image in check_images(images):
        buf = io.BytesIO()
        options = {"optimize": True} if format == "png" else {"lossless": True, "quality": 100, "method": 6}
        Image.fromarray(np.ascontiguousarray(image)).save(buf, format=format.upper(), **options)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out
