"""Notebook widgets that also work in the built book, with no kernel and no network."""

from repro.widgets.browser import FeatureBrowser
from repro.widgets.encode import decode_image, encode_images
from repro.widgets.gallery import Gallery, ImageCarousel
from repro.widgets.pages import FeaturePages

__all__ = ["FeatureBrowser", "FeaturePages", "Gallery", "ImageCarousel", "decode_image", "encode_images"]
