"""`repro notebook run|list|params`: execute the book's chapters with checked parameters."""

from __future__ import annotations

import argparse
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("notebook", help="run the book's notebooks (papermill) with checked parameters")
    nsub = p.add_subparsers(dest="notebook_command", metavar="ACTION", required=True)

    run = nsub.add_parser("run", help="execute chapters into book/chapters/")
    run.add_argument("names", nargs="*", help="chapter names (default: all, in order)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a papermill parameter, checked against the chapter's defaults")
    run.add_argument("--profile", default=None, help="shortcut for -p profile NAME (toy or paper)")
    run.set_defaults(run=run_notebooks)

    ls = nsub.add_parser("list", help="list chapters and their parameters")
    ls.set_defaults(run=list_chapters)
    register_book(sub)


def run_notebooks(args: argparse.Namespace) -> int:
    from repro.notebooks import list_notebooks, run_notebook, split_parameters

    names = args.names or list_notebooks()
    given = dict(args.parameter)
    if args.profile is not None:
        given["profile"] = args.profile
    per_chapter = split_parameters(names, given)  # every name and value checked before anything runs
    times: list[tuple[str, float]] = []
    for i, name in enumerate(names, 1):
        started = time.time()
        print(f"[repro] chapter {i}/{len(names)}: {name} ...", file=sys.stderr, flush=True)
        path = run_notebook(name, per_chapter[name])
        times.append((name, time.time() - started))
        print(f"[repro] {name}: done in {times[-1][1]:.0f} s -> {path}", file=sys.stderr, flush=True)
    if len(times) > 1:
        print("[repro] chapter times: " + ", ".join(f"{n} {s:.0f} s" for n, s in times)
              + f"; total {sum(s for _, s in times):.0f} s", file=sys.stderr, flush=True)
    return 0


def list_chapters(args: argparse.Namespace) -> int:
    from repro.chapter_fields import profile_fields
    from repro.notebooks import default_parameters, list_notebooks

    for name in list_notebooks():
        fields = profile_fields(name)  # None there: the profile's value of the field
        params = ", ".join(f"{k}=<profile's {fields[k]}>" if k in fields else f"{k}={v!r}"
                           for k, v in default_parameters(name).items())
        print(f"{name}: {params}")
    return 0


def register_book(sub) -> None:
    p = sub.add_parser("book", help="build the book from executed chapters")
    bsub = p.add_subparsers(dest="book_command", metavar="ACTION", required=True)
    b = bsub.add_parser("build", help="build book/_build/html (jupyter-book v1)")
    b.add_argument("--strict", action="store_true", help="fail if a chapter has not been executed")
    b.set_defaults(run=lambda args: print(__import__("repro.book", fromlist=["build_book"]).build_book(strict=args.strict)) or 0)
