"""The `repro` command line: a thin face on the library.

Each area registers its subcommands from its own module in this package (listed in
AREAS). A `ReproError`, the machine refusing a file (read-only, full, no permission) or an
allocation that does not fit in memory becomes one line on stderr and exit status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import re
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
        if exc.errno not in ENVIRONMENT_ERRORS:
            raise
        # The machine refused a file (read-only, full, no permission): the user's to fix, not a bug.
        print(f"repro: error: {environment_message(exc)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if (why := out_of_memory(exc)) is None:
            raise
        print(f"repro: error: out of memory ({why}): lower --batch-size, --shard-size, --resolution or "
              "--expansion, or run on a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("repro: interrupted", file=sys.stderr)
        return 130


def environment_message(exc: OSError) -> str:
    """One line for an OSError whose errno is in ENVIRONMENT_ERRORS (with or without a file name)."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device while writing{where} ({exc.strerror}): nothing half-written was kept; "
                "free space or choose another output folder, then run the same command again")
    return (f"cannot write or read{where or ' a file'} ({exc.strerror}): fix its permissions or choose another "
            "path, then run the same command again")


_ALLOCATOR_WORDS = ("can't allocate memory", "not enough memory", "out of memory", "Cannot allocate memory")


def out_of_memory(exc: BaseException) -> str | None:
    """Why, in a few words, when `exc` is an allocation that failed (MemoryError, torch's
    OutOfMemoryError, the CPU allocator's RuntimeError); None for anything else."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (text.splitlines()[0][:160] if text else type(exc).__name__)
    if isinstance(exc, RuntimeError) and any(word in text for word in _ALLOCATOR_WORDS):
        tried = re.search(r"allocate (\d+) bytes", text)
        return f"tried to allocate {int(tried.group(1)) / 2**30:.1f} GiB" if tried else text.splitlines()[0][:160]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
