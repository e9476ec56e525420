"""Run RIEBench: every edit x method x grid setting, into one tidy table.

    results = run_benchmark(pipe, saes, edits, methods=("transport", "per_block"), grid=Grid.toy(),
                            scorer=ShapesScorer(load_oracle()))
    results.frame()                      # one row per edit x method x setting
    success_vs_preservation(results.frame())
    category_block_table(results.frame(), "n_selected")

    results.selected("transport")       # [(category, {block: feature ids})], one per edit

Rows: id, category, method, blocks ("all" or the one block of a per_block run), k, m,
n_top / n_bottom / n_selected ({block: count}), pixel_outside, the scorer's metrics
(success, preserved, clip_*, lpips_*), skipped (None, or why the edit was skipped).
Methods "source" and "target" are the unedited reference images, scored the same way
(the edit-prompt image is what a perfect edit would look like). An edit that fails
(bad category, mask of the wrong size, identical prompts, ...) gets one row with its
reason in `skipped`, and the run goes on.

`results.selections` records which SAE features each edit's transport moved: one entry
{id, category, method, k, blocks, top: {block: ids}, bottom: {block: ids}} per edit,
method (transport / per_block), scored group and k (the feature pages count them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from repro.blocks import by_short_name, resolve_blocks
from repro.errors import ReproError
from repro.generate import Sampling
from repro.hooks import batch_pieces, by_rows, intervene
from repro.riebench.data import RIEEdit, whole_image_masks
from repro.riebench.methods import METHODS, Grid, Setting, plans, reference_pass
from repro.riebench.neurons import edit_neurons
from repro.riebench.score import edit_region, pixel_outside
from repro.sae.sets import load_block_saes  # noqa: F401  (re-exported: where RIEBench users find it)


@dataclass(frozen=True)
class RIEBenchConfig:
    """How edits are generated and masked (the paper: 4-step SDXL Turbo, 16x16 masks)."""

    steps: int = 4
    """Denoising steps of every generation (the paper's 4-step Turbo; the toy too)."""
    guidance: float = 0.0
    """Classifier-free guidance (Turbo: 0)."""
    resolution: int | None = None
    """Image side in pixels, a multiple of 8; none takes the model's own."""
    mask_dilate_px: int = 0
    """Dilate full-resolution masks by this many pixels before pooling them onto a block's grid."""
    mask_threshold: float = 0.0
    """A grid cell is in the mask when more than this share of its pixels is (0: any pixel)."""
    batch_size: int = 8
    """Edited images per generation call (the settings of every method of an edit, side by side)."""
    strict_sign: bool = False
    """Select only units with positive (top) / negative (bottom) scores (paper: plain top/bottom k)."""
    keep_images: bool = False
    """Keep every edited image in `results.images` (row index -> uint8 [H, W, 3])."""

    def __post_init__(self):
        from repro.ranges import MAX_IMAGE_BATCH, MAX_RESOLUTION, check_float, check_int

        check_int("batch_size", self.batch_size, 1, MAX_IMAGE_BATCH, why="edited images generated in one call")
        check_float("mask_threshold", self.mask_threshold, 0.0, 1.0, high_open=True, why="a share of a cell's pixels")
        check_int("mask_dilate_px", self.mask_dilate_px, 0, MAX_RESOLUTION, why="pixels of the image")
        Sampling(steps=self.steps, guidance=self.guidance, resolution=self.resolution)  # validates

    @property
    def sampling(self) -> Sampling:
        return Sampling(steps=self.steps, guidance=self.guidance, resolution=self.resolution)


@dataclass
class RIEBenchResults:
    """Rows of the run, its skipped edits, optional images, and the settings it ran with."""

    rows: list[dict] = field(default_factory=list)
    images: dict[int, np.ndarray] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    selections: list[dict] = field(default_factory=list)
    """Features each edit moved (see the module docstring)."""

    def selected(self, method: str = "transport", k: int | None = None) -> list[tuple[str, dict[str, list[int]]]]:
        """[(category, {block: ids added or subtracted})], one per edit that `method` ran at `k`.

        k None: the largest k of the run. Top and bottom k grow with k (each smaller k picks
        a subset), so that counts every feature any setting of the method moved.
        """
        mine = [s for s in self.selections if s["method"] == method]
        if not mine:
            ran = sorted({s["method"] for s in self.selections})
            raise ReproError(f"no selections of method {method!r} in this run: it recorded {ran or 'none'} "
                             "(only transport and per_block select SAE features)")
        ks = sorted({s["k"] for s in mine})
        k = ks[-1] if k is None else k
        if k not in ks:
            raise ReproError(f"{method} never ran at k={k}: use one of {ks}")
        return [(s["category"], {b: s["top"].get(b, []) + s["bottom"].get(b, []) for b in s["blocks"]})
                for s in mine if s["k"] == k]

    @property
    def skipped(self) -> list[dict]:
        """[{id, category, reason}] of the edits that could not run."""
        return [{"id": r["id"], "category": r["category"], "reason": r["skipped"]} for r in self.rows if r["skipped"]]

    def frame(self):
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def save_jsonl(self, path: str | os.PathLike) -> Path:
        """One JSON object per row; a first line {"settings": ...} records how the run was made."""
        from repro.io import _json_default, atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write(json.dumps({"settings": self.settings}, default=_json_default) + "\n")
            for row in self.rows:
                f.write(json.dumps(row, default=_json_default) + "\n")
        return path


def _row(edit: RIEEdit, setting: Setting | None, method: str | None = None, skipped: str | None = None) -> dict:
    s = setting
    block = None if s is None else ("all" if s.method != "per_block" else s.blocks[0])
    n_top = {} if s is None else dict(s.n_top)
    n_bottom = {} if s is None else dict(s.n_bottom)
    return {"id": edit.id, "category": edit.category, "method": method or (s.method if s else None),
            "blocks": block, "k": None if s is None else s.k, "m": None if s is None else s.m,
            "n_top": n_top, "n_bottom": n_bottom,
            "n_selected": {b: n_top.get(b, 0) + n_bottom.get(b, 0) for b in set(n_top) | set(n_bottom)},
            "skipped": skipped}


def _scored(edit, images, ref, scorers) -> list[dict]:
    region = edit_region(edit)
    rows = [{"pixel_outside": float(d)} for d in pixel_outside(images, ref.images[1], region)]
    for scorer in scorers:
        for row, extra in zip(rows, scorer(edit, images, ref.images[0], ref.images[1])):
            row.update(extra)
    return rows


def run_benchmark(
    pipe, saes: dict, edits: Sequence[RIEEdit], methods: Sequence[str] = ("transport", "per_block", "steer", "neurons"),
    grid: Grid = Grid(), blocks: Sequence[str] | None = None, scorer: Callable | Sequence[Callable] | None = None,
    config: RIEBenchConfig = RIEBenchConfig(), segmenter=None, progress: bool = True,
) -> RIEBenchResults:
    """Run every edit with every method and grid setting; see the module docstring for the rows.

    saes: {block: TopKSAE} (needed by transport / per_block); blocks: default the SAEs'
    blocks (or the paper's four when no SAE is given). scorer: one scorer or a list.
    segmenter: segments edits that have no masks, in the generated reference images.
    """
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ReproError(f"unknown RIEBench method {unknown[0]!r}: use one of {', '.join(METHODS)}")
    saes = by_short_name(saes)
    blocks = resolve_blocks(pipe.unet, blocks if blocks is not None else (list(saes) or None))
    needs_sae = {"transport", "per_block"} & set(methods)
    missing = [b for b in blocks if b not in saes]
    if needs_sae and missing:
        raise ReproError(f"no SAE for block {missing[0]}: give saes for every block ({', '.join(blocks)}) "
                         "or drop the transport methods")
    check_sae_widths(pipe.unet, {b: saes[b] for b in blocks if b in saes})
    scorers = [] if scorer is None else list(scorer) if isinstance(scorer, (list, tuple)) else [scorer]
    resolution = config.resolution or _resolution(pipe)
    results = RIEBenchResults(settings={"methods": methods, "grid": grid.__dict__, "blocks": blocks,
                                        "config": {k: v for k, v in config.__dict__.items()}, "resolution": resolution,
                                        "model": getattr(pipe, "repro_source", None)})
    edits = whole_image_masks(list(edits), resolution)
    bar = tqdm(edits, desc="RIEBench", unit="edit", disable=not progress)
    for edit in bar:
        try:
            _run_edit(pipe, saes, edit, blocks, methods, grid, scorers, config, segmenter, resolution, results)
        except ReproError as exc:
            results.rows.append(_row(edit, None, skipped=str(exc)))
        bar.set_postfix(skipped=len(results.skipped), refresh=False)
    bar.close()
    return results


def check_sae_widths(unet, saes: dict) -> None:
    """Refuse, before any edit runs, an SAE whose width is not its block's channel count
    (otherwise every edit would be skipped one by one with the same complaint)."""
    from repro.blocks import get_block

    for block, sae in saes.items():
        channels = get_block(unet, block).config.in_channels
        if sae.cfg.d_model != channels:
            raise ReproError(f"the SAE for block {block} reads {sae.cfg.d_model} channels but this model's {block} has "
                             f"{channels}: give SAEs trained on this model's blocks (or another --model)")


def _run_edit(pipe, saes, edit, blocks, methods, grid, scorers, config, segmenter, resolution, results) -> None:
    """All rows of one edit; raises ReproError before adding any row if the edit cannot run."""
    from repro.generate import generate

    sampling = config.sampling
    edit.validate(resolution, check_masks=segmenter is None)
    ref, edit = reference_pass(pipe, edit, blocks, sampling, "neurons" in methods, config.mask_dilate_px,
                               config.mask_threshold, segmenter)
    edit_plans = plans(ref, saes, blocks, methods, grid, config.strict_sign)
    results.selections += [{"id": edit.id, "category": edit.category, **sel} for plan in edit_plans
                           for sel in plan.selections]
    for name, i in (("source", 0), ("target", 1)):
        row = _row(edit, None, method=name)
        row.update(_scored(edit, ref.images[i : i + 1], ref, scorers)[0])
        _keep(results, row, ref.images[i], config)
    # every method's settings side by side, `batch_size` edited images a call (each its own edits)
    for pieces in batch_pieces([len(plan.settings) for plan in edit_plans], config.batch_size):
        blocks_by_rows = by_rows([(a, b, edit_plans[p].block_edits(sl)) for a, b, p, sl in pieces])
        neurons_by_rows = by_rows([(a, b, edit_plans[p].neuron_edits(sl)) for a, b, p, sl in pieces])
        settings = [s for _, _, p, sl in pieces for s in edit_plans[p].settings[sl]]
        with intervene(pipe.unet, blocks_by_rows, cfg=sampling.cfg), \
                edit_neurons(pipe.unet, neurons_by_rows, cfg=sampling.cfg):
            images = generate(pipe, [edit.original_prompt] * len(settings), [edit.seed] * len(settings), sampling)
        for setting, image, scores in zip(settings, images, _scored(edit, images, ref, scorers)):
            row = _row(edit, setting)
            row.update(scores)
            _keep(results, row, image, config)


def _keep(results: RIEBenchResults, row: dict, image: np.ndarray, config: RIEBenchConfig) -> None:
    if config.keep_images:
        results.images[len(results.rows)] = image
    results.rows.append(row)


def _resolution(pipe) -> int:
    from repro.models.loading import default_resolution

    return default_resolution(pipe)


# ---------------------------------------------------------------------------------------
# Aggregates


def _done(df):
    return df[df["skipped"].isna() & df["method"].notna()]


def success_vs_preservation(df, metrics: Sequence[str] | None = None):
    """Mean of each metric per method and setting (method, blocks, k, m), plus the edit count.

    Default metrics: those present of success, preserved, pixel_outside, clip_*, lpips_*."""
    df = _done(df)
    if metrics is None:
        metrics = [c for c in df.columns if c in ("success", "preserved", "pixel_outside")
                   or c.startswith(("clip_", "lpips_"))]
    keys = ["method", "blocks", "k", "m"]
    table = df.assign(**{c: df[c].astype(float) for c in metrics})
    out = table.groupby(keys, dropna=False)[list(metrics)].mean()
    out["n_edits"] = table.groupby(keys, dropna=False)["id"].nunique()
    if "success" in metrics and "preserved" in metrics:
        both = table.assign(both=table["success"] * table["preserved"])
        out["success_and_preserved"] = both.groupby(keys, dropna=False)["both"].mean()
    return out.reset_index()


RATES = ("success", "preserved", "success_and_preserved")
"""Aggregated columns that are shares of edits (0/1 per edit), given Wilson intervals."""


def with_intervals(table):
    """`success_vs_preservation`'s table plus `<rate>_lo` / `<rate>_hi` (95% Wilson over its
    `n_edits`) for each of RATES present: every headline rate with its interval."""
    from repro.intervals import wilson

    table = table.copy()
    for col in RATES:
        if col not in table:
            continue
        bounds = [wilson(round(r * n), int(n)) if n == n and r == r else (float("nan"),) * 2
                  for r, n in zip(table[col], table["n_edits"])]
        table[f"{col}_lo"] = [lo for lo, _ in bounds]
        table[f"{col}_hi"] = [hi for _, hi in bounds]
    return table


def category_block_table(df, value: str = "success", method: str | None = None, k=None, m=None):
    """Category x block table.

    value="success" (or any metric): mean over edits of each per-block run (method
    per_block), one column per block. value="n_selected" / "n_top" / "n_bottom": mean number
    of units selected in each block by the joint runs (method "transport" by default).
    Restrict to one grid setting with k / m.
    """
    import pandas as pd

    df = _done(df)
    if value in ("n_selected", "n_top", "n_bottom"):
        df = df[df["method"] == (method or "transport")]
    else:
        df = df[df["method"] == (method or "per_block")]
    if k is not None:
        df = df[df["k"] == k]
    if m is not None:
        df = df[df["m"] == m]
    if value in ("n_selected", "n_top", "n_bottom"):
        long = pd.DataFrame([{"category": r["category"], "block": b, "value": n}
                             for r in df.to_dict("records") for b, n in r[value].items()])
    else:
        long = pd.DataFrame({"category": df["category"], "block": df["blocks"], "value": df[value].astype(float)})
    if long.empty:
        return pd.DataFrame()
    return long.pivot_table(index="category", columns="block", values="value", aggfunc="mean")
