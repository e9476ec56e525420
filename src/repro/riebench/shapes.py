"""The ShapesWorld RIEBench: the nine edit categories generated from the scene grammar.

| category | edit of the original scene |
|---|---|
| change_object | another shape (and pose, for oriented shapes) for one object |
| add_object | a second object in an empty slot (originals hold one object) |
| delete_object | one of two objects removed |
| change_content | one object's size flipped (small <-> large) |
| change_pose | another orientation for an oriented object |
| change_colour / change_material | another colour / texture for one object |
| change_background / change_style | another background colour / style |

Every original *and* every edited scene lies in the held-out "riebench" split of
`repro.shapes.splits`, so no edit shows the toy model a training scene. The benchmark is
a pure function of (n_per_category, seed); version 1 is committed as
`shapes_riebench_v1.json` beside this file (a test regenerates and compares it). Masks
are not stored: they come from the renderer when the file is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from repro.errors import ReproError
from repro.riebench.data import CATEGORIES, RIEEdit
from repro.shapes.captions import caption
from repro.shapes.render import IMAGE_SIZE, object_mask
from repro.shapes.splits import split_of, split_scenes
from repro.shapes.world import (
    BACKGROUNDS, COLOURS, ORIENTATIONS, ORIENTED_SHAPES, POSITIONS, SHAPE_VARIANTS, SIZES, STYLES, TEXTURES,
    Scene, ShapeObject,
)

VERSION = "shapes-riebench-v1"
SPLIT = "riebench"
DEFAULT_N = 32
DEFAULT_SEED = 0
POOL = 2000
"""Original scenes drawn from the split; each category walks them in its own order."""
COMMITTED = Path(__file__).with_name("shapes_riebench_v1.json")

_ATTR = {"change_content": ("size", SIZES), "change_colour": ("colour", tuple(COLOURS)),
         "change_material": ("texture", TEXTURES)}


def _candidates(category: str, scene: Scene) -> list[tuple[str | None, dict]]:
    """Every edit of `category` on `scene` as (slot, recipe); cheap: scenes are built later."""
    out: list[tuple[str | None, dict]] = []
    objs = scene.objects
    if category == "change_object":
        for o in objs:
            out += [(o.position, {"shape": s, "orientation": r}) for s, r in SHAPE_VARIANTS if s != o.shape]
    elif category in _ATTR:
        attr, values = _ATTR[category]
        for o in objs:
            out += [(o.position, {attr: v}) for v in values if v != getattr(o, attr)]
    elif category == "change_pose":
        for o in objs:
            if o.shape in ORIENTED_SHAPES:
                out += [(o.position, {"orientation": r}) for r in ORIENTATIONS if r != o.orientation]
    elif category == "add_object" and len(objs) == 1:
        for p in POSITIONS:
            if p != objs[0].position:
                out += [(p, {"add": (s, r, c, z, t)}) for s, r in SHAPE_VARIANTS for c in COLOURS
                        for z in SIZES for t in TEXTURES]
    elif category == "delete_object" and len(objs) == 2:
        out += [(o.position, {"delete": True}) for o in objs]
    elif category == "change_background":
        out += [(None, {"background": b}) for b in BACKGROUNDS if b != scene.background]
    elif category == "change_style":
        out += [(None, {"style": s}) for s in STYLES if s != scene.style]
    return out


def _apply(scene: Scene, slot: str | None, recipe: dict) -> Scene:
    if "background" in recipe or "style" in recipe:
        return Scene(scene.objects, recipe.get("background", scene.background), recipe.get("style", scene.style))
    if "delete" in recipe:
        return Scene(tuple(o for o in scene.objects if o.position != slot), scene.background, scene.style)
    if "add" in recipe:
        s, r, c, z, t = recipe["add"]
        new = ShapeObject(shape=s, orientation=r, colour=c, size=z, texture=t, position=slot)
        return Scene(scene.objects + (new,), scene.background, scene.style)
    index = next(i for i, o in enumerate(scene.objects) if o.position == slot)
    return scene.replace_object(index, **recipe)


def shape_masks(category: str, original: Scene, edited: Scene, slot: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) bool [128, 128] edited regions, from the renderer's object masks.

    Object edits: the slot's object in each image (where the slot is empty, the other
    image's object: where it appears or disappears). Background: the complement of all
    objects. Style: the whole image.
    """
    if category == "change_style":
        full = np.ones((IMAGE_SIZE, IMAGE_SIZE), bool)
        return full, full.copy()
    if category == "change_background":
        fg = lambda s: np.any([object_mask(o) for o in s.objects], axis=0)  # noqa: E731
        return ~fg(edited), ~fg(original)
    at = lambda s: next((object_mask(o).copy() for o in s.objects if o.position == slot), None)  # noqa: E731
    src, tgt = at(edited), at(original)
    return (src if src is not None else tgt.copy()), (tgt if tgt is not None else src.copy())


def make_edit(edit_id: str, category: str, original: Scene, edited: Scene, slot: str | None, seed: int) -> RIEEdit:
    """A ShapesWorld RIEEdit with captions (same caption rng for both) and renderer masks."""
    src, tgt = shape_masks(category, original, edited, slot)
    return RIEEdit(
        id=edit_id, category=category, original_prompt=caption(original, seed), edit_prompt=caption(edited, seed),
        source_mask=src, target_mask=tgt, seed=seed, original_scene=original, edit_scene=edited, slot=slot,
        source_mask_prompts=(slot,) if slot else (), target_mask_prompts=(slot,) if slot else (),
    )


def generate_shapes_riebench(n_per_category: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[RIEEdit]:
    """`n_per_category` edits of each of the nine categories, deterministic in (n, seed).

    Ids are `<category>_<NN>`; edit i of the benchmark is generated with seed i.
    """
    if n_per_category < 1:
        raise ReproError(f"n_per_category must be at least 1, got {n_per_category}")
    pool = split_scenes(SPLIT, POOL, seed=seed)
    edits: list[RIEEdit] = []
    for c, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, c])
        found = 0
        for scene_index in rng.permutation(len(pool)):
            original = pool[int(scene_index)]
            cands = _candidates(category, original)
            for j in rng.permutation(len(cands)):
                slot, recipe = cands[int(j)]
                edited = _apply(original, slot, recipe)
                if split_of(edited) == SPLIT:
                    edits.append(make_edit(f"{category}_{found:02d}", category, original, edited, slot, len(edits)))
                    found += 1
                    break
            if found == n_per_category:
                break
        else:
            raise ReproError(f"only {found} of {n_per_category} {category} edits found in {POOL} held-out scenes; "
                             "ask for fewer edits per category")
    return edits


def to_json(edits: list[RIEEdit], n_per_category: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> dict:
    """The benchmark as the JSON object of the committed file."""
    return {"version": VERSION, "split": SPLIT, "n_per_category": n_per_category, "seed": seed,
            "categories": list(CATEGORIES), "edits": [e.to_dict() for e in edits]}


def edits_from_json(raw: dict) -> list[RIEEdit]:
    """RIEEdits (with renderer masks) from a ShapesWorld RIEBench JSON object."""
    if raw.get("version") != VERSION:
        raise ReproError(f"ShapesWorld RIEBench version {raw.get('version')!r} is not {VERSION!r}; regenerate it")
    return [make_edit(d["id"], d["category"], Scene.from_dict(d["original_scene"]), Scene.from_dict(d["edit_scene"]),
                      d.get("slot"), int(d["seed"])) for d in raw["edits"]]


def shapes_riebench(path: str | Path | None = None) -> list[RIEEdit]:
    """The committed ShapesWorld RIEBench v1 (or another file written by `write_shapes_riebench`)."""
    path = Path(path) if path else COMMITTED
    if not path.is_file():
        raise ReproError(f"{path} is missing; write it with `python -m repro.riebench.shapes`")
    return edits_from_json(json.loads(path.read_text()))


def write_shapes_riebench(path: str | Path = COMMITTED, n_per_category: int = DEFAULT_N,
                          seed: int = DEFAULT_SEED) -> Path:
    """Generate and write the benchmark file: sorted keys, one edit per line (reviewable diffs)."""
    from repro.io import write_bytes_atomic

    obj = to_json(generate_shapes_riebench(n_per_category, seed), n_per_category, seed)
    head = {k: v for k, v in obj.items() if k != "edits"}
    lines = [json.dumps(e, sort_keys=True) for e in obj["edits"]]
    text = json.dumps(head, sort_keys=True)[:-1] + ', "edits": [\n' + ",\n".join(lines) + "\n]}\n"
    path = write_bytes_atomic(path, text.encode())
    path.chmod(0o644)
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_shapes_riebench())
