"""ShapesWorld: a procedurally generated toy world whose ground truth is known exactly.

world.py (scene grammar, sampler), render.py (pixels + masks), captions.py (English
captions, their parser, the vocabulary), splits.py (held-out splits), degrade.py
(generator-like degradations), oracle.py / oracle_train.py (read images back into
attributes). This module only re-exports.
"""

from repro.shapes.captions import caption, parse_caption, tokenize, vocabulary
from repro.shapes.degrade import DegradeConfig, degrade
from repro.shapes.oracle import Oracle, compare, load_oracle
from repro.shapes.render import (
    IMAGE_SIZE,
    RenderBatch,
    Rendered,
    downsample_mask,
    object_mask,
    render,
    render_batch,
)
from repro.shapes.splits import SPLITS, split_of, split_scenes
from repro.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    ORIENTATIONS,
    ORIENTED_SHAPES,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
    TEXTURES,
    Scene,
    ShapeObject,
    sample_object,
    sample_scene,
)


def train_oracle(*args, **kwargs):
    """See `repro.shapes.oracle_train.train_oracle` (imported lazily: it pulls in training code)."""
    from repro.shapes.oracle_train import train_oracle as _train

    return _train(*args, **kwargs)


__all__ = [
    "BACKGROUNDS", "COLOURS", "DegradeConfig", "IMAGE_SIZE", "ORIENTATIONS", "ORIENTED_SHAPES", "Oracle",
    "POSITIONS", "RenderBatch", "Rendered", "SHAPES", "SIZES", "SPLITS", "STYLES", "Scene", "ShapeObject",
    "TEXTURES", "caption", "compare", "degrade", "downsample_mask", "load_oracle", "object_mask",
    "parse_caption", "render", "render_batch", "sample_object", "sample_scene",
    "split_of", "split_scenes", "tokenize", "train_oracle", "vocabulary",
]
