"""ShapesWorld's scene grammar: what a scene is, what values each attribute takes, and a sampler.

A scene is one or two objects on a plain background, drawn in one global style:

    Scene(objects=(ShapeObject(shape, colour, size, texture, position, orientation), ...),
          background, style)

Positions are five named slots on a 3x3 grid of the 128x128 canvas (left, right, top,
bottom, centre are the middle-left, middle-right, top-middle, bottom-middle and middle
cells). An object never leaves its cell, so two objects in different slots never overlap:
the only impossible pair is two objects in the same slot.

Scenes are canonical: `Scene` sorts its objects by slot, so two scenes describing the same
picture compare equal whatever order their objects were given in (captions vary the order,
the scene does not).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repro.errors import ReproError, choices_hint

# --- the attribute values ------------------------------------------------------------------
# Orientation is the "pose" attribute: only the shapes in ORIENTED_SHAPES carry one.
SHAPES = ("circle", "square", "diamond", "cross", "triangle", "semicircle")
ORIENTED_SHAPES = ("triangle", "semicircle")
ORIENTATIONS = ("up", "down", "left", "right")
# Well separated in hue so a small model (and the oracle) can tell them apart.
COLOURS = {
    "red": (215, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
}
# Disjoint from the object colours, so no object is ever invisible on its background.
BACKGROUNDS = {
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "grey": (125, 125, 125),
    "pink": (250, 185, 200),
}
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "dotted", "checkered")
STYLES = ("flat", "outline", "grainy")
POSITIONS = ("top", "left", "centre", "right", "bottom")  # canonical order = reading order
MAX_OBJECTS = 2

# Every (shape, orientation) pair an object can have: 4 plain shapes + 2 x 4 oriented = 12.
SHAPE_VARIANTS: tuple[tuple[str, str | None], ...] = tuple(
    (s, o) for s in SHAPES for o in (ORIENTATIONS if s in ORIENTED_SHAPES else (None,))
)


def _check(value: Any, valid, what: str) -> None:
    if value not in valid:
        raise ReproError(f"unknown {what} {value!r}: use {choices_hint(valid)}")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene; every field is one of the module's value lists."""

    shape: str
    """One of SHAPES."""
    colour: str
    """One of COLOURS."""
    size: str
    """One of SIZES."""
    texture: str
    """One of TEXTURES (the "material" attribute)."""
    position: str
    """One of POSITIONS (the slot the object sits in)."""
    orientation: str | None = None
    """One of ORIENTATIONS for shapes in ORIENTED_SHAPES (the "pose"), else None."""

    def __post_init__(self) -> None:
        _check(self.shape, SHAPES, "shape")
        _check(self.colour, COLOURS, "colour")
        _check(self.size, SIZES, "size")
        _check(self.texture, TEXTURES, "texture")
        _check(self.position, POSITIONS, "position")
        if self.shape in ORIENTED_SHAPES:
            if self.orientation not in ORIENTATIONS:
                raise ReproError(
                    f"a {self.shape} needs an orientation, {choices_hint(ORIENTATIONS)}; got {self.orientation!r}"
                )
        elif self.orientation is not None:
            raise ReproError(
                f"a {self.shape} has no orientation (only {', '.join(ORIENTED_SHAPES)} do); drop {self.orientation!r}"
            )

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "texture": self.texture,
            "position": self.position,
            "orientation": self.orientation,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeObject":
        return cls(
            shape=d["shape"],
            colour=d["colour"],
            size=d["size"],
            texture=d["texture"],
            position=d["position"],
            orientation=d.get("orientation"),
        )


@dataclass(frozen=True)
class Scene:
    """One or two objects in distinct slots, a background colour and a global style."""

    objects: tuple[ShapeObject, ...]
    """The objects, sorted into POSITIONS order on construction."""
    background: str
    """One of BACKGROUNDS."""
    style: str = "flat"
    """One of STYLES."""
    _key: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise ReproError(
                f"a scene holds 1 or {MAX_OBJECTS} objects, not {len(objects)}; describe at most {MAX_OBJECTS} objects"
            )
        slots = [o.position for o in objects]
        if len(set(slots)) != len(slots):
            dup = next(s for s in slots if slots.count(s) > 1)
            raise ReproError(
                f"two objects are in the same slot ({dup}); put each object in a different position, "
                f"{choices_hint(POSITIONS)}"
            )
        _check(self.background, BACKGROUNDS, "background colour")
        _check(self.style, STYLES, "style")
        objects = tuple(sorted(objects, key=lambda o: POSITIONS.index(o.position)))
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "_key", json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")))

    def key(self) -> str:
        """Canonical one-line JSON description: equal scenes have equal keys."""
        return self._key

    def digest(self) -> int:
        """A stable 64-bit hash of `key()` (Python's `hash` is salted per process; this is not)."""
        return int.from_bytes(hashlib.sha256(self._key.encode()).digest()[:8], "big")

    def to_dict(self) -> dict:
        return {
            "objects": [o.to_dict() for o in self.objects],
            "background": self.background,
            "style": self.style,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(
            objects=tuple(ShapeObject.from_dict(o) for o in d["objects"]),
            background=d["background"],
            style=d.get("style", "flat"),
        )

    def replace_object(self, index: int, **changes: Any) -> "Scene":
        """A copy with object `index` changed (an edit); the result is validated again."""
        objs = list(self.objects)
        d = objs[index].to_dict()
        d.update(changes)
        if "shape" in changes and changes["shape"] not in ORIENTED_SHAPES and "orientation" not in changes:
            d["orientation"] = None
        objs[index] = ShapeObject.from_dict(d)
        return Scene(tuple(objs), self.background, self.style)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick(rng: np.random.Generator, values, fixed=None):
    values = tuple(values)
    return fixed if fixed is not None else values[int(rng.integers(len(values)))]


def sample_object(rng: np.random.Generator | int | None, position: str, **fixed: Any) -> ShapeObject:
    """A uniformly random object in slot `position`; keyword arguments pin attributes."""
    rng = _as_rng(rng)
    unknown = set(fixed) - {"shape", "colour", "size", "texture", "orientation"}
    if unknown:
        raise ReproError(f"unknown object constraint {sorted(unknown)}: use shape, colour, size, texture, orientation")
    shape = _pick(rng, SHAPES, fixed.get("shape"))
    orientation = None
    if shape in ORIENTED_SHAPES:
        orientation = _pick(rng, ORIENTATIONS, fixed.get("orientation"))
    return ShapeObject(
        shape=shape,
        colour=_pick(rng, COLOURS, fixed.get("colour")),
        size=_pick(rng, SIZES, fixed.get("size")),
        texture=_pick(rng, TEXTURES, fixed.get("texture")),
        position=position,
        orientation=orientation,
    )


def sample_scene(
    rng: np.random.Generator | int | None = None,
    n_objects: int | None = None,
    background: str | None = None,
    style: str | None = None,
    positions: tuple[str, ...] | None = None,
    **object_fixed: Any,
) -> Scene:
    """A random scene. `rng` is a numpy Generator or a seed: same seed -> same scene.

    n_objects: 1 or 2 (default: either, with equal probability). background, style: pin
    them. positions: the slots to use (length sets n_objects). Other keywords (shape,
    colour, size, texture, orientation) pin that attribute on every object.
    """
    rng = _as_rng(rng)
    if positions is not None:
        positions = tuple(positions)
        for p in positions:
            _check(p, POSITIONS, "position")
        if n_objects is not None and n_objects != len(positions):
            raise ReproError(f"n_objects={n_objects} disagrees with {len(positions)} positions; give one or the other")
    else:
        if n_objects is None:
            n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
        if not 1 <= n_objects <= MAX_OBJECTS:
            raise ReproError(f"n_objects must be 1 or {MAX_OBJECTS}, not {n_objects}")
        positions = tuple(rng.choice(POSITIONS, size=n_objects, replace=False).tolist())
    objects = tuple(sample_object(rng, p, **object_fixed) for p in positions)
    return Scene(
        objects=objects,
        background=_pick(rng, BACKGROUNDS, background),
        style=_pick(rng, STYLES, style),
    )
