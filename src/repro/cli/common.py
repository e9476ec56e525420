"""Arguments shared by several subcommands, the argument types that check them, and a parser
whose errors are one line like every other error of the command line."""

from __future__ import annotations

import argparse
import math
import sys

MODEL_HELP = "shapes-turbo, shapes-base, tiny-random, sdxl-turbo, sdxl-base, a local pipeline folder or a hub id"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (the usage is one `--help` away), exit 2.

    `populate(parser)`, if given, adds the arguments when this parser is first used (parsing
    or help): flags generated from a config dataclass import its module (and torch), which
    `repro --help` and the other subcommands need not wait for."""

    def __init__(self, *args, populate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populated(self) -> "Parser":
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        return super(Parser, self.populated()).parse_known_args(args, namespace)

    def format_help(self) -> str:
        return super(Parser, self.populated()).format_help()

    def format_usage(self) -> str:
        return super(Parser, self.populated()).format_usage()

    def error(self, message: str):
        print(f"repro: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


DEFAULT_MODEL = "shapes-turbo"
"""The default profile's 1-step model (what a new user expects a bare command to use);
a constant so that `repro --help` does not import torch. tests/test_bad_inputs.py checks it."""


def at_least(low: int):
    """argparse type: an integer >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def finite(positive: bool = False):
    """argparse type: a finite float (and > 0 when `positive`); refuses nan and inf."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or (positive and value <= 0):
            raise argparse.ArgumentTypeError(f"must be a finite{' positive' if positive else ''} number, got {text}")
        return value

    return parse


def add_model_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--model", default=default or DEFAULT_MODEL, help=f"{MODEL_HELP} (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
