"""The gallery widget: its state carries the images, losslessly; bad input fails clearly."""

import json

import numpy as np
import pytest

from repro.errors import ReproError
from repro.widgets import Gallery, ImageCarousel, encode_images
from repro.widgets.gallery import display_width


def images(n=3, h=8, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def decode_image(data: str) -> np.ndarray:
    """One base64 string from `encode_images` -> uint8 [H, W, 3]."""
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.asarray(image.convert("RGB"))


def test_state_holds_every_image_and_caption():
    ims = images(5)
    widget = ImageCarousel(ims, [f"image {i}" for i in range(5)])
    state = widget.get_state()
    assert len(state["images"]) == 5 and state["captions"] == [f"image {i}" for i in range(5)]
    assert state["mime"] == "image/png" and state["index"] == 0 and state["per_page"] == 1
    assert "export default" in state["_esm"]  # the front-end travels in the state too
    json.dumps(state)  # JSON only: nothing that needs a kernel or binary buffers


@pytest.mark.parametrize("format", ["png", "webp"])
def test_encoding_round_trips(format):
    ims = images(4, 16, 9)
    for data, image in zip(encode_images(ims, format), ims):
        np.testing.assert_array_equal(decode_image(data), image)


def test_widget_images_decode_to_the_input():
    ims = images(2)
    widget = ImageCarousel(ims, ["a", "b"])
    for data, image in zip(widget.images, ims):
        np.testing.assert_array_equal(decode_image(data), image)


def test_defaults_and_pages():
    widget = Gallery(images(5), per_page=2, title="t")
    assert widget.captions == ["1", "2", "3", "4", "5"] and widget.per_page == 2
    assert widget.width == display_width(12) == 264  # small images are upscaled by an integer factor
    assert display_width(512) == 512


@pytest.mark.parametrize(
    "bad, message",
    [
        (images().astype(np.float32), "must be uint8"),
        (images()[..., 0], r"shape \[N, H, W, 3\]"),
        (np.zeros((2, 4, 4, 4), np.uint8), r"shape \[N, H, W, 3\]"),
        (np.zeros((0, 4, 4, 3), np.uint8), r"N >= 1"),
        ([np.zeros((4, 4, 3), np.uint8)], "numpy array"),
    ],
)
def test_bad_images_raise(bad, message):
    with pytest.raises(ReproError, match=message):
        ImageCarousel(bad, None)


def test_caption_count_must_match():
    with pytest.raises(ReproError, match="got 3 images but 2 captions"):
        ImageCarousel(images(3), ["a", "b"])


def test_bad_options_raise():
    with pytest.raises(ReproError, match="per_page must be at least 1"):
        Gallery(images(), per_page=0)
    with pytest.raises(ReproError, match="unknown image format 'jpeg': use one of: png, webp"):
        encode_images(images(), "jpeg")
