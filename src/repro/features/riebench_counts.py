"""How often RIEBench selected each feature, per category: written beside the feature pages.

`06_riebench` runs after `05_features` wrote its pages, so the counts travel in their own
small file per block, `<folder>/<block>/riebench.js`, that the page loads lazily:

    {"ran": true, "method": "transport", "k": 32, "sae": "saes (k = 10)",
     "edits": {category: edits run}, "counts": {category: {"<feature>": times selected}}}

(sparse: features never selected are left out), or {"ran": false, "note": why} — what
`FeatureSite.write` puts there until RIEBench has run on the pages' SAEs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repro.errors import ReproError, choices_hint

NOT_RUN = "RIEBench has not run on these SAEs yet (06_riebench writes these counts)"
PART = "riebench"
"""Name of the per-block part: `<block>/riebench`."""


@dataclass
class RIEBenchCounts:
    """Times each feature was selected, per block and category, and what was run."""

    counts: dict[str, dict[str, torch.Tensor]]
    """block -> category -> int64 [n_features] times selected (added or subtracted)."""
    edits: dict[str, int] = field(default_factory=dict)
    """category -> edits the method ran (the most a count can be)."""
    method: str = "transport"
    k: int | None = None
    sae: str = ""
    """Which SAEs the run transported (a set name): they must be the pages' SAEs."""

    def part(self, block: str) -> dict:
        """The JSON of `<block>/riebench` (layout in the module docstring)."""
        if block not in self.counts:
            return not_run(f"RIEBench ran without an SAE of {block}")
        sparse = {cat: {str(f): int(c[f]) for f in torch.nonzero(c).flatten().tolist()}
                  for cat, c in self.counts[block].items()}
        return {"ran": True, "method": self.method, "k": self.k, "sae": self.sae, "edits": dict(self.edits),
                "counts": sparse}


def not_run(note: str = NOT_RUN) -> dict:
    return {"ran": False, "note": note}


def selection_counts(selections: Iterable[tuple[str, Mapping[str, Sequence[int] | torch.Tensor]]],
                     n_features: Mapping[str, int]) -> dict[str, dict[str, torch.Tensor]]:
    """RIEBench selections [(category, {block: selected feature ids}), ...] -> {block: {category: [n] counts}}."""
    out = {b: {} for b in n_features}
    for category, chosen in selections:
        for b, ids in chosen.items():
            if b not in out:
                raise ReproError(f"selection names block {b!r}: use {choices_hint(out)}")
            counts = out[b].setdefault(category, torch.zeros(n_features[b], dtype=torch.int64))
            counts.index_add_(0, torch.as_tensor(ids, dtype=torch.int64).flatten(),
                              torch.ones(len(torch.as_tensor(ids).flatten()), dtype=torch.int64))
    return out


def riebench_counts(results, n_features: Mapping[str, int], method: str = "transport", k: int | None = None,
                    sae: str = "") -> RIEBenchCounts:
    """Count `results.selections` (a RIEBenchResults) per block and category, at one k
    (None: the largest, i.e. every feature any setting of `method` moved)."""
    chosen = results.selected(method, k)
    k = k if k is not None else max(s["k"] for s in results.selections if s["method"] == method)
    edits: dict[str, set] = {}
    for s in results.selections:
        if s["method"] == method and s["k"] == k:
            edits.setdefault(s["category"], set()).add(s["id"])
    counts = selection_counts(chosen, n_features)
    for cat in edits:  # every category that ran gets a row, even where it selected nothing in a block
        for b, by_cat in counts.items():
            by_cat.setdefault(cat, torch.zeros(n_features[b], dtype=torch.int64))
    return RIEBenchCounts(counts=counts, edits={c: len(ids) for c, ids in sorted(edits.items())}, method=method,
                          k=k, sae=sae)


def write_riebench(folder: str | os.PathLike, rc: RIEBenchCounts) -> list[Path]:
    """Write `<block>/riebench.js` for every block of the feature pages in `folder`, replacing
    the placeholders `FeatureSite.write` left; refuses counts of SAEs of another width."""
    from repro.features.site import part_file, read_part
    from repro.io import write_bytes_atomic

    folder = Path(folder)
    if not (folder / "manifest.js").is_file():
        raise ReproError(f"no feature pages in {folder}: run 05_features first (it writes them there)")
    blocks = read_part(folder, "manifest")["blocks"]
    unknown = [b for b in rc.counts if b not in blocks]
    if unknown:
        raise ReproError(f"RIEBench counts for block {unknown[0]!r}, which the pages lack: they show "
                         f"{choices_hint(blocks)}")
    for b, by_cat in rc.counts.items():
        for cat, c in by_cat.items():
            if len(c) != blocks[b]["n_features"]:
                raise ReproError(f"RIEBench counts of {b} ({cat}) have {len(c)} features, the pages' SAE "
                                 f"{blocks[b]['n_features']}: count the run made with the pages' SAEs")
    out = []
    for b in blocks:
        path = folder / b / f"{PART}.js"
        write_bytes_atomic(path, part_file(f"{b}/{PART}", rc.part(b)))
        out.append(path)
    return out


__all__ = ["NOT_RUN", "RIEBenchCounts", "not_run", "riebench_counts", "selection_counts", "write_riebench"]
