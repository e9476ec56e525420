"""Held-out splits of ShapesWorld that never overlap.

The rule: a scene's split is decided by its content alone. Take the canonical description
`scene.key()` (sorted JSON of its attributes; object order does not matter), hash it with
SHA-256 under the salt "shapesworld-split-v1", read the first 8 bytes as an integer h and
put the scene in

    train     if h mod 1000 <  900   (90 %)
    test      if 900 <= h mod 1000 < 950   (5 %)
    riebench  if h mod 1000 >= 950  (5 %)

So a test or riebench scene (and hence every caption of it) is never a training scene,
whichever seed or sampler produced it, and the split of any scene can be checked later.
`split_scenes(split, n, seed)` draws scenes with `sample_scene` from `seed` and keeps those
that fall in `split`: the same arguments always give the same list, without duplicates.
"""

from __future__ import annotations

import hashlib

import numpy as np

from repro.errors import ReproError, choices_hint
from repro.shapes.world import Scene, sample_scene

SPLITS = {"train": (0, 900), "test": (900, 950), "riebench": (950, 1000)}
SALT = "shapesworld-split-v1"


def split_of(scene: Scene) -> str:
    """The split ("train", "test" or "riebench") that `scene` belongs to."""
    h = int.from_bytes(hashlib.sha256(f"{SALT}:{scene.key()}".encode()).digest()[:8], "big") % 1000
    return next(name for name, (lo, hi) in SPLITS.items() if lo <= h < hi)


def split_scenes(split: str, n: int, seed: int = 0, max_tries: int | None = None, **constraints) -> list[Scene]:
    """n distinct scenes of `split`, deterministic in (split, n, seed, constraints).

    constraints go to `sample_scene` (n_objects, background, style, positions, shape, ...).
    The first k scenes of a longer list equal the list for n = k.
    """
    if split not in SPLITS:
        raise ReproError(f"unknown split {split!r}: use {choices_hint(SPLITS)}")
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    max_tries = max_tries or 200 * n + 1000
    out: list[Scene] = []
    seen: set[str] = set()
    for _ in range(max_tries):
        if len(out) == n:
            return out
        s = sample_scene(rng, **constraints)
        if split_of(s) == split and s.key() not in seen:
            seen.add(s.key())
            out.append(s)
    if len(out) == n:
        return out
    raise ReproError(
        f"found only {len(out)} of {n} distinct {split} scenes under constraints {constraints}; "
        "ask for fewer scenes or loosen the constraints"
    )
