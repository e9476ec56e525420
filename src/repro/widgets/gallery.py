"""A paged image gallery (anywidget): the carousel of the overview.

All the widget's logic is in `gallery.js` (its ESM) and all its data in its state, so
the executed notebook's saved widget state is enough to show it in the static book.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import anywidget
import numpy as np
import traitlets as t

from repro.errors import ReproError
from repro.widgets.encode import FORMATS, Format, check_images, encode_images

HERE = Path(__file__).parent


def display_width(width: int, target: int = 256) -> int:
    """Width in CSS px to show an image `width` pixels wide: an integer upscale to about `target`."""
    return width * max(1, math.ceil(target / width)) if width < target else width


class Gallery(anywidget.AnyWidget):
    """Pages of `per_page` images with a caption each; prev/next buttons and a page label.

    images: uint8 [N, H, W, 3]; captions: N strings (default "1", "2", ...).
    """

    _esm = HERE / "gallery.js"
    _css = HERE / "gallery.css"

    images = t.List(t.Unicode(), help="base64 image files, one per image (see encode_images)").tag(sync=True)
    mime = t.Unicode("image/png", help="MIME type of the files in `images`").tag(sync=True)
    captions = t.List(t.Unicode(), help="one caption per image").tag(sync=True)
    per_page = t.Int(1, help="images shown at a time").tag(sync=True)
    index = t.Int(0, help="page shown (0-based)").tag(sync=True)
    title = t.Unicode("", help="text beside the buttons").tag(sync=True)
    width = t.Int(256, help="display width of each image, CSS px").tag(sync=True)

    def __init__(self, images: np.ndarray, captions: Sequence[str] | None = None, *, per_page: int = 1,
                 title: str = "", width: int | None = None, format: Format = "png", **kwargs) -> None:
        images = check_images(images)
        n = len(images)
        captions = [str(i + 1) for i in range(n)] if captions is None else [str(c) for c in captions]
        if len(captions) != n:
            raise ReproError(f"got {n} images but {len(captions)} captions: give one caption per image")
        if per_page < 1:
            raise ReproError(f"per_page must be at least 1, got {per_page}")
        super().__init__(
            images=encode_images(images, format), mime=FORMATS[format], captions=captions, per_page=per_page,
            title=title, width=width or display_width(images.shape[2]), **kwargs,
        )


class ImageCarousel(Gallery):
    """One image at a time with its caption: `ImageCarousel(images, captions)`."""

    def __init__(self, images: np.ndarray, captions: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(images, captions, per_page=1, **kwargs)
