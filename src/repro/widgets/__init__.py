"""Notebook widgets that also work in the built book, with no kernel and no network."""

from repro.widgets.encode import encode_images
from repro.widgets.gallery import Gallery, ImageCarousel
from repro.widgets.pages import FeaturePages

__all__ = ["FeaturePages", "Gallery", "ImageCarousel", "encode_images"]
