"""A dev / test split of RIEBench edits: grid cells are chosen on dev, numbers reported on test.

    split = split_edits(shapes_riebench())          # {"dev": [...], "test": [...]}
    dev, test = choose_edits(shapes_riebench(), 16)   # 16 dev and 16 test edits of each category

Every category is halved (dev gets the smaller half of an odd count). Edits that share a
scene or a caption (the ShapesWorld generator can draw one held-out scene for two
categories) are kept in one split, so no image or prompt of a test edit was seen while
choosing a cell. Within a category edits are ordered by a hash of their id, so the split
and the first n of each half are a pure function of the edit set, not of file order.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict

from repro.errors import ReproError
from repro.riebench.data import RIEEdit

SPLITS = ("dev", "test")


def _rank(edit_id: str) -> str:
    return hashlib.sha256(f"riebench-split:{edit_id}".encode()).hexdigest()


def _keys(edit: RIEEdit) -> list[str]:
    """What two edits must not share across splits: captions and (ShapesWorld) scenes."""
    keys = [f"prompt:{edit.original_prompt}", f"prompt:{edit.edit_prompt}"]
    for scene in (edit.original_scene, edit.edit_scene):
        if scene is not None:
            keys.append("scene:" + json.dumps(scene.to_dict(), sort_keys=True))
    return keys


def _groups(edits: list[RIEEdit]) -> list[list[int]]:
    """Indices of edits connected by a shared key (union-find), each group in rank order."""
    parent = list(range(len(edits)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, edit in enumerate(edits):
        for key in _keys(edit):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(edits)):
        groups[find(i)].append(i)
    return [sorted(g, key=lambda i: _rank(edits[i].id)) for g in groups.values()]


def split_edits(edits: list[RIEEdit]) -> dict[str, list[RIEEdit]]:
    """{"dev": edits, "test": edits}: each category halved (dev floor(n/2)), no shared scene or caption.

    Groups of edits tied by a shared scene or caption are placed first (largest first), each
    in the split with more room left for its categories; single edits then fill dev's quota
    of each category in hash order and the rest go to test. Raises ReproError on repeated ids
    or when the ties leave no balanced split."""
    ids = [e.id for e in edits]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ReproError(f"edit id {dup!r} appears twice: give every edit its own id before splitting")
    total: dict[str, int] = defaultdict(int)
    for e in edits:
        total[e.category] += 1
    quota = {"dev": {c: n // 2 for c, n in total.items()}, "test": {c: n - n // 2 for c, n in total.items()}}
    groups = sorted(_groups(edits), key=lambda g: (-len(g), _rank(edits[g[0]].id)))
    side: dict[int, str] = {}
    for group in groups:
        need: dict[str, int] = defaultdict(int)
        for i in group:
            need[edits[i].category] += 1
        room = {s: min(quota[s][c] - n for c, n in need.items()) for s in SPLITS}
        best = "dev" if room["dev"] > room["test"] else "test"
        if len(group) == 1:  # singles fill dev first, so dev gets exactly its quota
            best = "dev" if room["dev"] >= 0 else "test"
        if room[best] < 0:
            raise ReproError(f"edits {[edits[i].id for i in group]} share a scene or caption and fit in neither "
                             "half of their categories: generate more edits per category")
        for i in group:
            side[i] = best
            quota[best][edits[i].category] -= 1
    return {s: sorted((edits[i] for i in side if side[i] == s), key=lambda e: (e.category, _rank(e.id)))
            for s in SPLITS}


def choose_edits(edits: list[RIEEdit], per_category: int = 0) -> tuple[list[RIEEdit], list[RIEEdit]]:
    """(dev, test): `per_category` edits of each category in each split (0: all of the split).

    Categories are in the order the edits come in. Raises ReproError when a split holds fewer
    than `per_category` edits of a category."""
    if per_category < 0:
        raise ReproError(f"per_category must be at least 0 (0: all), got {per_category}")
    split = split_edits(edits)
    order = list(dict.fromkeys(e.category for e in edits))
    out = []
    for name in SPLITS:
        chosen = []
        for cat in order:
            of_cat = [e for e in split[name] if e.category == cat]
            if per_category and len(of_cat) < per_category:
                raise ReproError(f"only {len(of_cat)} {cat} edits in the {name} split, {per_category} asked: ask for "
                                 f"at most {len(of_cat)} per category or generate more edits")
            chosen += of_cat[:per_category] if per_category else of_cat
        out.append(chosen)
    return out[0], out[1]
