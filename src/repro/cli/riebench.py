"""`repro riebench`: run the representation-based image-editing benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from repro.cli.common import at_least, finite


def _floats(text: str) -> tuple[float, ...]:
    values = tuple(finite()(x) for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no number: give a comma list such as 1,2")
    return values


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(at_least(1)(x) for x in text.split(",") if x.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} holds no number: give a comma list such as 80,160")
    return values


def register(sub) -> None:
    p = sub.add_parser("riebench", help="edit images by transporting SAE features (and baselines), score the edits")
    p.add_argument("--model", default="shapes-turbo",
                   help="shapes-turbo, tiny-random, sdxl-turbo, a local pipeline folder or a hub id")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    p.add_argument("--saes", nargs="+", type=Path, default=[],
                   help="SAE folders, or folders holding one SAE folder per block (needed by transport/per_block)")
    p.add_argument("--blocks", default=None, help="comma-separated blocks (default: those of the SAEs)")
    p.add_argument("--edits", default="shapes",
                   help="'shapes' (the committed ShapesWorld RIEBench) or a RIEBench JSON file")
    p.add_argument("--limit", type=at_least(1), default=None, help="run only the first N edits of each category")
    p.add_argument("--categories", default=None, help="comma-separated categories to run (default: all nine)")
    p.add_argument("--masks", type=Path, default=None, help="folder of <id>_source.png/<id>_target.png or <id>.png masks")
    p.add_argument("--segmenter", type=Path, default=None, help="local CLIPSeg folder: segment edits without masks")
    p.add_argument("--clip", type=Path, default=None, help="local CLIP folder: report CLIP similarities")
    p.add_argument("--oracle", default=None,
                   help="ShapesWorld oracle folder ('auto' = the default one; used by default for --edits shapes)")
    p.add_argument("--methods", default="transport,per_block,steer,neurons",
                   help="comma-separated: transport, per_block, steer, neurons")
    p.add_argument("--toy-grid", action="store_true", help="start from the small ShapesWorld grid, not the paper's")
    p.add_argument("--k-transfer", type=_ints, default=None, help="e.g. 80,160,320,640 (paper)")
    p.add_argument("--m-transfer", type=_floats, default=None, help="e.g. 1,2 (paper)")
    p.add_argument("--m-steer", type=_floats, default=None, help="e.g. 0.25,0.5,1,2 (paper)")
    p.add_argument("--k-neurons", type=_ints, default=None, help="e.g. 5000,10000,20000,40000,80000")
    p.add_argument("--m-neurons", type=_floats, default=None, help="e.g. 1,2")
    p.add_argument("--steps", type=at_least(1), default=4, help="denoising steps of every generation (paper: 4)")
    p.add_argument("--mask-dilate-px", type=at_least(0), default=0, help="dilate masks by N pixels before pooling")
    p.add_argument("--mask-threshold", type=finite(), default=0.0, help="share of a cell's pixels needed (0: any)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="edited images per generation call")
    p.add_argument("--strict-sign", action="store_true", help="select only units with scores of the right sign")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="results .jsonl (one row per edit x method x setting)")
    p.set_defaults(run=run_riebench)

    ex = sub.add_parser("riebench-example", help="write a small RIEBench in the published layout, with drawn masks")
    ex.add_argument("out", type=Path, help="folder to write edits.json and masks/ into")
    ex.add_argument("--resolution", type=at_least(8), default=512, help="mask size in pixels (the generation resolution)")
    ex.add_argument("--per-category", type=int, default=2, choices=(1, 2), help="edits per category")
    ex.set_defaults(run=write_example)


def write_example(args: argparse.Namespace) -> int:
    from repro.riebench.example import write_example as write

    from repro.io import writable_folder

    writable_folder(args.out)
    edits, masks = write(args.out, resolution=args.resolution, per_category=args.per_category)
    print(f"wrote {edits} and {masks}/ (use: repro riebench --edits {edits} --masks {masks} ...)")
    return 0


def run_riebench(args: argparse.Namespace) -> int:
    import dataclasses

    from repro.errors import ReproError
    from repro.io import writable_file
    from repro.models.loading import load_pipeline
    from repro.riebench.data import CATEGORIES, attach_masks, load_edits
    from repro.riebench.methods import Grid
    from repro.riebench.runner import RIEBenchConfig, load_block_saes, run_benchmark, success_vs_preservation

    writable_file(args.out)  # before the model loads and every edit runs
    if args.edits == "shapes":
        from repro.riebench.shapes import shapes_riebench

        edits = shapes_riebench()
    else:
        edits = load_edits(args.edits)
    if args.categories:
        wanted = [c.strip() for c in args.categories.split(",")]
        bad = [c for c in wanted if c not in CATEGORIES]
        if bad:
            raise ReproError(f"unknown category {bad[0]!r}: use {', '.join(CATEGORIES)}")
        edits = [e for e in edits if e.category in wanted]
    if args.limit is not None:
        kept, seen = [], {}
        for e in edits:
            seen[e.category] = seen.get(e.category, 0) + 1
            if seen[e.category] <= args.limit:
                kept.append(e)
        edits = kept
    if not edits:
        raise ReproError("no edit is left to run: widen --categories or --limit")
    if args.masks is not None:
        edits = attach_masks(edits, args.masks)
    grid = Grid.toy() if args.toy_grid else Grid()
    overrides = {k: getattr(args, k) for k in ("k_transfer", "m_transfer", "m_steer", "k_neurons", "m_neurons")
                 if getattr(args, k) is not None}
    grid = dataclasses.replace(grid, **overrides)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    saes = load_block_saes(args.saes, device=str(pipe.device)) if args.saes else {}
    scorers = []
    oracle = args.oracle or ("auto" if args.edits == "shapes" else None)
    if oracle:
        from repro.riebench.score import ShapesScorer
        from repro.shapes.oracle import load_oracle

        scorers.append(ShapesScorer(load_oracle(None if oracle == "auto" else oracle, device=str(pipe.device))))
    if args.clip is not None:
        from repro.riebench.score import ClipScorer

        scorers.append(ClipScorer.from_pretrained(args.clip))
    segmenter = None
    if args.segmenter is not None:
        from repro.riebench.segment import ClipSegSegmenter

        segmenter = ClipSegSegmenter.from_pretrained(args.segmenter)
    config = RIEBenchConfig(steps=args.steps, mask_dilate_px=args.mask_dilate_px, mask_threshold=args.mask_threshold,
                            batch_size=args.batch_size, strict_sign=args.strict_sign)
    results = run_benchmark(pipe, saes, edits, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                            grid=grid, blocks=args.blocks, scorer=scorers, config=config, segmenter=segmenter,
                            progress=not args.no_progress)
    results.save_jsonl(args.out)
    done = len({r["id"] for r in results.rows if not r["skipped"]})
    print(f"{done} of {len(edits)} edits run, {len(results.rows)} rows written to {args.out}")
    for s in results.skipped:
        print(f"skipped {s['id']} ({s['category']}): {s['reason']}")
    if not done:
        raise ReproError(f"none of the {len(edits)} edits could run (first reason: {results.skipped[0]['reason']}); "
                         f"the reasons are in {args.out}")
    print(success_vs_preservation(results.frame()).to_string(index=False))
    return 0
