"""The `repro` command line: a thin face on the library.

Each area registers its subcommands from its own module in this package (listed in
AREAS). A `ReproError`, or the machine refusing a file (read-only, full, no permission),
becomes one line on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from repro import __version__
from repro.errors import ReproError

ENVIRONMENT_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
AREAS = ("models", "notebooks", "collect", "train", "toy", "riebench", "export")


def build_parser() -> argparse.ArgumentParser:
    from repro.cli.common import Parser

    parser = Parser(
        prog="repro",
        description="Reproduce 'Unpacking SDXL Turbo' (Surkov et al.): collect block updates, "
        "train sparse autoencoders, evaluate, analyse features, run RIEBench.",
    )
    parser.add_argument("--version", action="version", version=f"repro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in AREAS:
        importlib.import_module(f"repro.cli.{area}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ReproError as exc:
        print(f"repro: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRORS or not exc.filename:
            raise
        # The machine refused a file (read-only, full, no permission): the user's to fix, not a bug.
        print(f"repro: error: cannot write or read {exc.filename} ({exc.strerror}): free space, fix its permissions "
              "or choose another path, then run the same command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
