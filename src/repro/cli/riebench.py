"""`repro riebench`: run the representation-based image-editing benchmark."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repro.cli.common import DEFAULT_MODEL, at_least
from repro.errors import ReproError
from repro.ranges import MIN_RESOLUTION


@dataclass
class RIEBenchRun:
    """What `repro riebench` runs: model, SAEs, edits, methods, scorers and grid (how each edit is
    generated and masked is a `RIEBenchConfig`; the grid's defaults are `Grid`'s, the paper's)."""

    out: Path
    """Results .jsonl (one row per edit x method x setting)."""
    model: str = DEFAULT_MODEL
    """The pipeline to edit with: shapes-turbo, shapes-base, tiny-random, sdxl-turbo, sdxl-base, a local
    pipeline folder or a hub id."""
    device: str = "auto"
    """Where to run: auto, cpu, cuda, cuda:N, mps."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Compute dtype of the pipeline: auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16."""
    saes: tuple[Path, ...] = ()
    """SAE folders, or folders holding one SAE folder per block (needed by transport / per_block)."""
    blocks: tuple[str, ...] | None = None
    """Blocks to edit (comma list; none: those of the SAEs, or the paper's four without SAEs)."""
    edits: str = "shapes"
    """'shapes' (the committed ShapesWorld RIEBench) or a RIEBench JSON file."""
    limit: int | None = None
    """Run only the first N edits of each category (none: all)."""
    categories: tuple[str, ...] | None = None
    """Categories to run (comma list; none: all nine)."""
    masks: Path | None = None
    """Folder of <id>_source.png / <id>_target.png or <id>.png masks."""
    segmenter: Path | None = None
    """Local CLIPSeg folder: segment the edits that have no masks."""
    clip: Path | None = None
    """Local CLIP folder: report CLIP similarities."""
    oracle: str | None = None
    """ShapesWorld oracle folder, or 'auto' for the default one (none: 'auto' for --edits shapes, else no oracle)."""
    methods: tuple[str, ...] = ("transport", "per_block", "steer", "neurons")
    """Methods to run (comma list): transport, per_block, steer, neurons."""
    toy_grid: bool = False
    """Start from the small ShapesWorld grid (`Grid.toy()`), not the paper's."""
    k_transfer: tuple[int, ...] | None = None
    """Transport's k (features added and subtracted), e.g. 80,160,320,640 (none: the grid's)."""
    m_transfer: tuple[float, ...] | None = None
    """Transport strengths, e.g. 1,2 (none: the grid's)."""
    m_steer: tuple[float, ...] | None = None
    """Steering strengths, e.g. 0.25,0.5,1,2 (none: the grid's)."""
    k_neurons: tuple[int, ...] | None = None
    """Neurons added and subtracted, e.g. 5000,10000,20000,40000,80000 (none: the grid's)."""
    m_neurons: tuple[float, ...] | None = None
    """Neuron transport strengths, e.g. 1,2 (none: the grid's)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        from repro.riebench.methods import METHODS

        from repro.ranges import check_float, check_int

        if self.limit is not None:
            check_int("limit", self.limit, 1, 1_000_000, why="edits per category")
        for name in ("k_transfer", "k_neurons"):  # units added and subtracted per block
            for value in getattr(self, name) or ():
                check_int(name, value, 1, 2**31)
        for name in ("m_transfer", "m_steer", "m_neurons"):
            for value in getattr(self, name) or ():
                check_float(name, value)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ReproError(f"unknown RIEBench method {unknown[0] if unknown else '(none)'!r}: "
                             f"use one or more of {', '.join(METHODS)}")

    def grid(self):
        """The `Grid` to run: the paper's or the toy one, with the values given here."""
        import dataclasses

        from repro.riebench.methods import Grid

        grid = Grid.toy() if self.toy_grid else Grid()
        names = ("k_transfer", "m_transfer", "m_steer", "k_neurons", "m_neurons")
        return dataclasses.replace(grid, **{k: getattr(self, k) for k in names if getattr(self, k) is not None})


def add_riebench_args(p) -> None:
    from repro.cli.dataclass_args import add_dataclass_args
    from repro.riebench.runner import RIEBenchConfig

    add_dataclass_args(p, RIEBenchRun, title="what to run (RIEBenchRun)")
    # keep_images: the command writes rows only, so there is nowhere to keep them.
    add_dataclass_args(p, RIEBenchConfig, exclude=("keep_images",), title="how edits are made (RIEBenchConfig)")


def register(sub) -> None:
    p = sub.add_parser("riebench", help="edit images by transporting SAE features (and baselines), score the edits",
                       description="Settings: every flag is a field of RIEBenchRun (repro.cli.riebench) or "
                                   "repro.riebench.runner.RIEBenchConfig, with its default and docstring.",
                       populate=add_riebench_args)
    p.set_defaults(run=run_riebench)

    ex = sub.add_parser("riebench-example", help="write a small RIEBench in the published layout, with drawn masks")
    ex.add_argument("out", type=Path, help="folder to write edits.json and masks/ into")
    ex.add_argument("--resolution", type=at_least(MIN_RESOLUTION), default=512,
                    help="mask size in pixels (the generation resolution; a multiple of 8 up to 4096)")
    ex.add_argument("--per-category", type=int, default=2, choices=(1, 2), help="edits per category")
    ex.set_defaults(run=write_example)


def write_example(args: argparse.Namespace) -> int:
    from repro.riebench.example import write_example as write

    from repro.io import writable_folder
    from repro.ranges import check_resolution

    check_resolution("--resolution", args.resolution)
    writable_folder(args.out)
    edits, masks = write(args.out, resolution=args.resolution, per_category=args.per_category)
    print(f"wrote {edits} and {masks}/ (use: repro riebench --edits {edits} --masks {masks} ...)")
    return 0


def run_riebench(args: argparse.Namespace) -> int:
    from repro.cli.dataclass_args import from_args
    from repro.io import writable_file
    from repro.models.loading import load_pipeline
    from repro.riebench.data import CATEGORIES, attach_masks, load_edits
    from repro.riebench.runner import RIEBenchConfig, load_block_saes, run_benchmark, success_vs_preservation

    run = from_args(RIEBenchRun, args)  # bad settings are refused before anything loads
    config = from_args(RIEBenchConfig, args)
    grid = run.grid()
    writable_file(run.out)  # before the model loads and every edit runs
    if run.edits == "shapes":
        from repro.riebench.shapes import shapes_riebench

        edits = shapes_riebench()
    else:
        edits = load_edits(run.edits)
    if run.categories:
        bad = [c for c in run.categories if c not in CATEGORIES]
        if bad:
            raise ReproError(f"unknown category {bad[0]!r}: use {', '.join(CATEGORIES)}")
        edits = [e for e in edits if e.category in run.categories]
    if run.limit is not None:
        kept, seen = [], {}
        for e in edits:
            seen[e.category] = seen.get(e.category, 0) + 1
            if seen[e.category] <= run.limit:
                kept.append(e)
        edits = kept
    if not edits:
        raise ReproError("no edit is left to run: widen --categories or --limit")
    if run.masks is not None:
        edits = attach_masks(edits, run.masks)
    pipe = load_pipeline(run.model, device=run.device, dtype=run.dtype)
    saes = load_block_saes(list(run.saes), device=str(pipe.device)) if run.saes else {}
    scorers = []
    oracle = run.oracle or ("auto" if run.edits == "shapes" else None)
    if oracle:
        from repro.riebench.score import ShapesScorer
        from repro.shapes.oracle import load_oracle

        scorers.append(ShapesScorer(load_oracle(None if oracle == "auto" else oracle, device=str(pipe.device))))
    if run.clip is not None:
        from repro.riebench.score import ClipScorer

        scorers.append(ClipScorer.from_pretrained(run.clip))
    segmenter = None
    if run.segmenter is not None:
        from repro.riebench.segment import ClipSegSegmenter

        segmenter = ClipSegSegmenter.from_pretrained(run.segmenter)
    results = run_benchmark(pipe, saes, edits, methods=list(run.methods), grid=grid, blocks=run.blocks,
                            scorer=scorers, config=config, segmenter=segmenter, progress=run.progress)
    results.save_jsonl(run.out)
    done = len({r["id"] for r in results.rows if not r["skipped"]})
    print(f"{done} of {len(edits)} edits run, {len(results.rows)} rows written to {run.out}")
    for s in results.skipped:
        print(f"skipped {s['id']} ({s['category']}): {s['reason']}")
    if not done:
        raise ReproError(f"none of the {len(edits)} edits could run (first reason: {results.skipped[0]['reason']}); "
                         f"the reasons are in {run.out}")
    print(success_vs_preservation(results.frame()).to_string(index=False))
    return 0
