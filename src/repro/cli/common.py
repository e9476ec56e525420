"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser, default: str = "tiny-random") -> None:
    parser.add_argument(
        "--model",
        default=default,
        help="shapes-turbo, shapes-base, tiny-random, sdxl-turbo, sdxl-base, a local pipeline folder or a hub id",
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
