"""Prompt sources: where the captions of a collection come from, each with a fixed seed.

A `PromptSource` hands out prompts by global index (`get(start, stop)`); prompt `i` is
generated with seed `base_seed + i` (`seeds_for`), so an image depends only on its index,
never on the batch or the run that produced it. Sources, picked by `open_prompts(spec)`:

* a text file (`.txt`, or any other suffix): one prompt a line, blank lines skipped;
* a JSON-lines (`.jsonl`/`.ndjson`) or parquet (`.parquet`) file with a `prompt` column
  (another column by `column=`);
* `hf:NAME[:SPLIT]`: a Hugging Face dataset (needs the `datasets` package, and the
  network or its local cache);
* a registered generator (`shapes`: captions of ShapesWorld training scenes; `shapes-test`:
  of held-out test scenes), endless, prompt `i` a pure
  function of (`i`, generator seed). `register_generator(name, fn)` adds or replaces one.

Anything missing, empty or unreadable raises one `ReproError` that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from repro.errors import ReproError, choices_hint

PromptFn = Callable[[int, int], str]
"""A generator: `fn(index, seed) -> prompt`, a pure function of its two arguments."""

_GENERATORS: dict[str, PromptFn] = {}


def register_generator(name: str, fn: PromptFn) -> None:
    """Make `name` usable as a prompt spec (`--prompts NAME`); replaces an earlier entry."""
    _GENERATORS[name] = fn


def generator_names() -> list[str]:
    return sorted(_GENERATORS)


def _shapes_generator(split: str) -> PromptFn:
    def prompt(index: int, seed: int) -> str:
        # ShapesWorld captions of scenes of one split (train for SAE data, test for held-out
        # evaluation): a random scene and one random caption of it, both drawn from an RNG
        # keyed by (seed, index) so that prompt i never depends on the range asked for.
        import numpy as np

        from repro.shapes.captions import caption
        from repro.shapes.splits import split_of
        from repro.shapes.world import sample_scene

        rng = np.random.default_rng([int(seed), int(index)])
        scene = sample_scene(rng)
        while split_of(scene) != split:
            scene = sample_scene(rng)
        return caption(scene, rng)

    return prompt


register_generator("shapes", _shapes_generator("train"))
register_generator("shapes-test", _shapes_generator("test"))


def seeds_for(start: int, stop: int, base_seed: int = 0) -> list[int]:
    """Seeds of prompts [start, stop): `base_seed + index`."""
    return [int(base_seed) + i for i in range(start, stop)]


def prompts_digest(prompts: Sequence[str]) -> str:
    """sha256 of a prompt list (stored per shard: a resumed run checks it sees the same prompts)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


class PromptSource:
    """Prompts by global index. `len()` is None for endless generators."""

    def __init__(self, kind: str, prompts: list[str] | None = None, fn: PromptFn | None = None,
                 seed: int = 0, **info: Any):
        self.kind = kind
        self._prompts = prompts
        self._fn = fn
        self.seed = seed
        self.info = info

    @property
    def length(self) -> int | None:
        return None if self._prompts is None else len(self._prompts)

    def get(self, start: int, stop: int) -> list[str]:
        """Prompts [start, stop); asking past the end of a finite source is a ReproError."""
        if self._prompts is not None:
            if stop > len(self._prompts):
                raise ReproError(
                    f"asked for prompts up to {stop} but {self.describe_short()} holds only "
                    f"{len(self._prompts)}: lower --n-prompts or give more prompts"
                )
            return self._prompts[start:stop]
        return [self._fn(i, self.seed) for i in range(start, stop)]

    def describe(self) -> dict[str, Any]:
        """Saved in manifests: what the prompts were (not their content; shards carry a digest)."""
        d = {"kind": self.kind, **self.info}
        if self._prompts is not None:
            d["count"] = len(self._prompts)
        else:
            d["generator_seed"] = self.seed
        return d

    def describe_short(self) -> str:
        where = self.info.get("path") or self.info.get("name") or self.kind
        return f"{self.kind} prompts {where}"


def open_prompts(spec: str | os.PathLike | Sequence[str], *, column: str = "prompt", seed: int = 0) -> PromptSource:
    """A prompt source from a file path, `hf:NAME[:SPLIT]`, a generator name, or a list of strings.

    `seed` keys a generator's prompts (ignored for files and datasets).
    """
    if isinstance(spec, (list, tuple)):
        prompts = [str(p) for p in spec]
        if not prompts:
            raise ReproError("the prompt list is empty: give at least one prompt")
        return PromptSource("list", prompts)
    spec = os.fspath(spec)
    if spec in _GENERATORS:
        return PromptSource("generator", fn=_GENERATORS[spec], seed=seed, name=spec)
    if spec.startswith("hf:"):
        return _hf_prompts(spec[3:], column)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ReproError(
            f"prompt source {spec!r} is neither a file nor a generator: give a text, .jsonl or "
            f".parquet file, hf:DATASET[:SPLIT], or {choices_hint(generator_names())}"
        )
    if path.is_dir():
        raise ReproError(f"prompt source {path} is a folder: give a text, .jsonl or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            prompts, kind = _read_jsonl(path, column), "jsonl"
        elif suffix == ".parquet":
            prompts, kind = _read_parquet(path, column), "parquet"
        else:
            prompts, kind = _read_text(path), "text"
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReproError(f"cannot read prompt file {path}: {type(exc).__name__}: {exc}") from exc
    if not prompts:
        raise ReproError(f"prompt file {path} holds no prompts: write one prompt a line (or a {column!r} column)")
    return PromptSource(kind, prompts, path=str(path.resolve()), column=column if kind != "text" else None)


def _read_text(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _read_jsonl(path: Path, column: str) -> list[str]:
    prompts = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number} is not JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or column not in row:
                raise ValueError(f"line {number} has no {column!r} field (pass the right column name)")
            prompts.append(str(row[column]))
    return prompts


def _read_parquet(path: Path, column: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for non-parquet files
        raise ValueError(f"not a parquet file ({exc})") from exc
    if column not in schema.names:
        raise ValueError(f"no {column!r} column; columns are {schema.names}")
    return [str(p) for p in pq.read_table(path, columns=[column]).column(column).to_pylist()]


def _hf_prompts(spec: str, column: str) -> PromptSource:
    name, _, split = spec.partition(":")
    try:
        import datasets  # noqa: F401  (optional: not a dependency of this project)
    except ImportError:
        raise ReproError(
            f"reading the Hugging Face dataset {name!r} needs the `datasets` package: "
            "`pip install datasets`, or export its prompts to a .txt/.jsonl/.parquet file and pass that"
        ) from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise ReproError(f"cannot load the Hugging Face dataset {name!r} ({type(exc).__name__}: {exc}): "
                         "check its name and your network, or export its prompts to a file") from exc
    if column not in ds.column_names:
        raise ReproError(f"dataset {name!r} has no {column!r} column: pass one of {ds.column_names}")
    prompts = [str(p) for p in ds[column]]
    if not prompts:
        raise ReproError(f"dataset {name!r} split {split or 'train'!r} holds no prompts")
    return PromptSource("hf", prompts, name=name, split=split or "train", column=column)
