"""`repro export` and `repro release`: trained SAEs for other tools and for the Hugging Face Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("saelens", "sparsify", "original")
"""`repro.sae.export.FORMATS`, written out so that `repro --help` does not import torch (a test compares them)."""


def register(sub) -> None:
    p = sub.add_parser("export", help="write trained SAEs in SAELens', sparsify's or the original release's layout")
    p.add_argument("saes", type=Path, help="folder of block SAEs (OUT of `repro train`, artifacts/<profile>/saes)")
    p.add_argument("--to", required=True, choices=FORMATS, help="layout to write")
    p.add_argument("out", type=Path, help="output folder: one subfolder per block")
    p.set_defaults(run=run_export)

    r = sub.add_parser("release", help="a Hub-ready folder of block SAEs with a model card (README.md)")
    r.add_argument("saes", type=Path, help="folder of block SAEs")
    r.add_argument("out", type=Path, help="release folder: OUT/<block>/ and OUT/README.md")
    r.add_argument("--results", type=Path, default=None,
                   help="04_evaluate's results file with each block's held-out EV (default: results/04_evaluate.json)")
    r.add_argument("--command", default=None, help="the command that trained the SAEs, when cfg.json lacks it")
    r.add_argument("--allow-missing-ev", action="store_true", help="release blocks that have no held-out EV")
    r.set_defaults(run=run_release)


def run_export(args: argparse.Namespace) -> int:
    from repro.io import writable_folder
    from repro.sae.export import export_saes
    from repro.sae.sets import load_block_saes

    saes = load_block_saes(args.saes)
    writable_folder(args.out)
    folders, note = export_saes(saes, args.out, args.to)
    print(note)
    print(f"exported {', '.join(saes)} as {args.to} into {args.out} ({len(folders)} folders)")
    return 0


def run_release(args: argparse.Namespace) -> int:
    from repro.io import writable_folder
    from repro.sae.release import release_saes

    writable_folder(args.out)
    card = release_saes(args.saes, args.out, results=args.results, command=args.command,
                        allow_missing_ev=args.allow_missing_ev)
    print(f"release in {args.out} (model card {card}); upload it as a model repository, then "
          f"load_sae('hf:OWNER/NAME/<block>') opens a block")
    return 0
