"""Plain-English captions for ShapesWorld scenes, their exact inverse, and the vocabulary.

`caption(scene, rng)` picks one of several sentence templates, object-phrase templates,
synonyms and object orders, so a text encoder has to parse the caption rather than read
attributes off fixed word positions:

    "a large red striped triangle pointing left on the right and at the top is a little
     blue plain circle, against a pink background, drawn in outline style"

`parse_caption(text)` inverts every caption `caption` can produce (and tolerates other
orders of the same words). It works on word classes, not templates: background and style
words are disjoint from object words, so they are read from anywhere in the sentence;
"and" and "," split the rest into one segment per object; inside a segment the word after
"pointing"/"facing" is the pose and any other left/right/top/bottom/centre word is the slot.
Anything impossible or unknown raises ReproError with one sentence saying why.
"""

from __future__ import annotations

import re

import numpy as np

from repro.errors import ReproError, choices_hint
from repro.shapes.world import (
    MAX_OBJECTS,
    ORIENTED_SHAPES,
    Scene,
    ShapeObject,
    _as_rng,
)

# --- lexicon: canonical value -> the phrases that may say it --------------------------------
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLOUR_WORDS = {c: (c,) for c in ("red", "orange", "yellow", "green", "blue", "purple")}
BACKGROUND_WORDS = {"white": ("white",), "black": ("black",), "grey": ("grey", "gray"), "pink": ("pink",)}
SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus"),
    "triangle": ("triangle",),
    "semicircle": ("semicircle",),
}
TEXTURE_ADJECTIVES = {
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
    "checkered": ("checkered", "chequered", "checked"),
}
TEXTURE_NOUNS = {  # "... with stripes"
    "solid": ("no pattern",),
    "striped": ("stripes",),
    "dotted": ("dots", "spots"),
    "checkered": ("checks", "a checkerboard pattern"),
}
ORIENTATION_MARKERS = ("pointing", "facing")
ORIENTATION_WORDS = {d: (d,) for d in ("up", "down", "left", "right")}
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "to the left"),
    "right": ("on the right", "at the right", "to the right"),
    "top": ("at the top", "on top"),
    "bottom": ("at the bottom", "along the bottom"),
    "centre": ("in the centre", "in the center", "in the middle"),
}
POSITION_WORDS = {"left": ("left",), "right": ("right",), "top": ("top",), "bottom": ("bottom",),
                  "centre": ("centre", "center", "middle")}
STYLE_WORDS = {"flat": ("flat",), "outline": ("outline", "outlined"), "grainy": ("grainy", "noisy")}

# --- templates: {o} = object phrase parts, {objs}/{bg}/{st} = scene parts --------------------
OBJECT_TEMPLATES = (
    "a {size} {colour} {tex} {shape}{pose} {pos}",
    "a {colour} {size} {tex} {shape}{pose} {pos}",
    "a {size} {tex} {colour} {shape}{pose} {pos}",
    "a {size} {colour} {shape}{pose} with {texnoun} {pos}",
    "{pos} is a {size} {colour} {tex} {shape}{pose}",
)
OBJECT_JOINS = ("{a} and {b}", "{a}, {b}", "{a}, and {b}")
BACKGROUND_TEMPLATES = ("on a {bg} background", "against a {bg} background", "the background is {bg}")
STYLE_TEMPLATES = ("{st} style", "in {st} style", "drawn in {st} style", "in a {st} style")
SCENE_TEMPLATES = (
    "{objs}, {bgp}, {stp}",
    "{objs} {bgp}, {stp}",
    "{objs}, {stp}, {bgp}",
    "a {st} style {picture} of {objs} {bgp}",
    "a {bg} background with {objs}, {stp}",
    "{stp}, {objs}, {bgp}",
)
PICTURE_WORDS = ("image", "picture", "drawing")

_VOWEL_START = re.compile(r"^[aeiou]")


def tokenize(text: str) -> list[str]:
    """Lower-case words and commas: "A red circle, flat" -> ["a", "red", "circle", ",", "flat"]."""
    text = text.strip().lower().rstrip(".")
    return text.replace(",", " , ").replace(":", " : ").split()


def _choose(rng: np.random.Generator, options):
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


def _fix_articles(words: list[str]) -> list[str]:
    # "a orange" -> "an orange", after the words are chosen.
    out = list(words)
    for i, w in enumerate(out[:-1]):
        if w in ("a", "an"):
            out[i] = "an" if _VOWEL_START.match(out[i + 1]) else "a"
    return out


def _object_phrase(obj: ShapeObject, rng: np.random.Generator, lead: bool = True) -> str:
    # lead=False: the phrase follows "of"/"with", where "on the left is a ..." reads badly.
    template = _choose(rng, OBJECT_TEMPLATES if lead else OBJECT_TEMPLATES[:-1])
    pose = ""
    if obj.orientation is not None:
        pose = f" {_choose(rng, ORIENTATION_MARKERS)} {_choose(rng, ORIENTATION_WORDS[obj.orientation])}"
    return template.format(
        size=_choose(rng, SIZE_WORDS[obj.size]),
        colour=_choose(rng, COLOUR_WORDS[obj.colour]),
        tex=_choose(rng, TEXTURE_ADJECTIVES[obj.texture]),
        texnoun=_choose(rng, TEXTURE_NOUNS[obj.texture]),
        shape=_choose(rng, SHAPE_WORDS[obj.shape]),
        pose=pose,
        pos=_choose(rng, POSITION_PHRASES[obj.position]),
    )


def caption(scene: Scene, rng: np.random.Generator | int | None = None) -> str:
    """One random English caption of `scene`; same rng state -> same caption."""
    rng = _as_rng(rng)
    objects = list(scene.objects)
    order = rng.permutation(len(objects))  # object order in the caption is free
    template = _choose(rng, SCENE_TEMPLATES)
    embedded = "of {objs}" in template or "with {objs}" in template
    phrases = [_object_phrase(objects[i], rng, lead=(k > 0 or not embedded)) for k, i in enumerate(order)]
    objs = phrases[0]
    if len(phrases) == 2:
        objs = _choose(rng, OBJECT_JOINS).format(a=phrases[0], b=phrases[1])
    bg = _choose(rng, BACKGROUND_WORDS[scene.background])
    st = _choose(rng, STYLE_WORDS[scene.style])
    # "the background is pink" needs a comma before it; the other two forms run on.
    bg_templates = BACKGROUND_TEMPLATES if "{objs} {bgp}" not in template else BACKGROUND_TEMPLATES[:2]
    text = template.format(
        objs=objs,
        bg=bg,
        st=st,
        bgp=_choose(rng, bg_templates).format(bg=bg),
        stp=_choose(rng, STYLE_TEMPLATES).format(st=st),
        picture=_choose(rng, PICTURE_WORDS),
    )
    return " ".join(_fix_articles(tokenize(text))).replace(" ,", ",")


# --- the inverse ----------------------------------------------------------------------------
def _lexicon(table: dict) -> dict[str, str]:
    """word -> canonical value, for tables whose phrases are single words."""
    return {w: value for value, words in table.items() for w in words}


_SIZE = _lexicon(SIZE_WORDS)
_COLOUR = _lexicon(COLOUR_WORDS)
_BACKGROUND = _lexicon(BACKGROUND_WORDS)
_SHAPE = _lexicon(SHAPE_WORDS)
_TEXTURE = {**_lexicon(TEXTURE_ADJECTIVES), "stripes": "striped", "dots": "dotted", "spots": "dotted",
            "checks": "checkered", "checkerboard": "checkered", "no": "solid"}
_ORIENTATION = _lexicon(ORIENTATION_WORDS)
_POSITION = _lexicon(POSITION_WORDS)
_STYLE = _lexicon(STYLE_WORDS)
_SEPARATORS = {",", "and"}


def vocabulary() -> list[str]:
    """Every token `caption` can emit (words and ","), sorted: the toy tokenizer's word list."""
    phrases: list[str] = []
    for table in (SIZE_WORDS, COLOUR_WORDS, BACKGROUND_WORDS, SHAPE_WORDS, TEXTURE_ADJECTIVES,
                  TEXTURE_NOUNS, ORIENTATION_WORDS, POSITION_PHRASES, STYLE_WORDS):
        phrases += [p for ps in table.values() for p in ps]
    phrases += list(ORIENTATION_MARKERS) + list(PICTURE_WORDS) + ["a an"]
    for t in OBJECT_TEMPLATES + OBJECT_JOINS + BACKGROUND_TEMPLATES + STYLE_TEMPLATES + SCENE_TEMPLATES:
        phrases.append(re.sub(r"\{\w+\}", " ", t))
    return sorted({w for p in phrases for w in tokenize(p)})


def _fail(text: str, why: str) -> ReproError:
    return ReproError(f"cannot read caption {text!r}: {why}")


def _one(text: str, found: list[str], what: str, valid, where: str) -> str:
    values = sorted(set(found))
    if not values:
        return ""
    if len(values) > 1:
        raise _fail(text, f"{where} names more than one {what} ({', '.join(values)}); give exactly one")
    return values[0]


def _parse_object(text: str, seg: list[str]) -> ShapeObject:
    where = f"'{' '.join(seg)}'"
    shape_w, colour_w, size_w, tex_w, pos_w, pose_w = [], [], [], [], [], []
    i = 0
    while i < len(seg):
        w = seg[i]
        if w in ORIENTATION_MARKERS:
            nxt = seg[i + 1] if i + 1 < len(seg) else None
            if nxt not in _ORIENTATION:
                raise _fail(text, f"'{w}' must be followed by a direction, {choices_hint(ORIENTATION_WORDS)}")
            pose_w.append(_ORIENTATION[nxt])
            i += 2
            continue
        for lex, bucket in ((_SHAPE, shape_w), (_COLOUR, colour_w), (_SIZE, size_w), (_TEXTURE, tex_w),
                            (_POSITION, pos_w)):
            if w in lex:
                bucket.append(lex[w])
        i += 1
    shape = _one(text, shape_w, "shape", SHAPE_WORDS, where)
    fields = {"colour": (colour_w, COLOUR_WORDS), "size": (size_w, SIZE_WORDS),
              "texture": (tex_w, TEXTURE_ADJECTIVES), "position": (pos_w, POSITION_WORDS)}
    values = {}
    for name, (found, valid) in fields.items():
        values[name] = _one(text, found, name, valid, where)
        if not values[name]:
            raise _fail(text, f"the {shape} in {where} has no {name}; add {choices_hint(valid)}")
    orientation = _one(text, pose_w, "direction", ORIENTATION_WORDS, where) or None
    if shape in ORIENTED_SHAPES and orientation is None:
        raise _fail(text, f"the {shape} in {where} needs a direction, e.g. 'pointing up'")
    if shape not in ORIENTED_SHAPES and orientation is not None:
        raise _fail(text, f"a {shape} has no direction (only {', '.join(ORIENTED_SHAPES)} do); drop 'pointing {orientation}'")
    return ShapeObject(shape=shape, orientation=orientation, **values)


def parse_caption(text: str) -> Scene:
    """The Scene a caption describes; raises ReproError for unknown words or impossible scenes."""
    tokens = tokenize(text)
    vocab = set(vocabulary())
    unknown = sorted({w for w in tokens if w not in vocab})
    if unknown:
        raise _fail(text, f"unknown word(s) {', '.join(unknown)}; captions use only words from "
                          "repro.shapes.vocabulary(), e.g. colours " + ", ".join(COLOUR_WORDS))
    background = _one(text, [_BACKGROUND[w] for w in tokens if w in _BACKGROUND], "background colour",
                      BACKGROUND_WORDS, "the caption")
    if not background:
        raise _fail(text, f"it names no background colour; add e.g. 'on a white background' ({choices_hint(BACKGROUND_WORDS)})")
    style = _one(text, [_STYLE[w] for w in tokens if w in _STYLE], "style", STYLE_WORDS, "the caption")
    if not style:
        raise _fail(text, f"it names no style; add e.g. 'flat style' ({choices_hint(STYLE_WORDS)})")

    # Split on "and" / "," into segments; a segment with a shape word is one object.
    segments, cur = [], []
    for w in tokens + [","]:
        if w in _SEPARATORS:
            if cur:
                segments.append(cur)
            cur = []
        else:
            cur.append(w)
    n_shapes = sum(w in _SHAPE for w in tokens)
    if n_shapes == 0:
        raise _fail(text, f"it names no shape; add one of {', '.join(SHAPE_WORDS)}")
    if n_shapes > MAX_OBJECTS:
        raise _fail(text, f"it names {n_shapes} objects but a scene holds at most {MAX_OBJECTS}")
    objects = []
    for seg in segments:
        shapes = [w for w in seg if w in _SHAPE]
        if len(shapes) > 1:
            raise _fail(text, f"'{' '.join(seg)}' names {len(shapes)} shapes; separate objects with 'and' or ','")
        if shapes:
            objects.append(_parse_object(text, seg))
            continue
        stray = [w for w in seg if w in _COLOUR or w in _SIZE or w in _TEXTURE or w in _POSITION
                 or w in ORIENTATION_MARKERS]
        if stray:
            raise _fail(text, f"'{' '.join(seg)}' describes no shape (words {', '.join(stray)}); "
                              "put each object's words next to its shape")
    return Scene(objects=tuple(objects), background=background, style=style)
