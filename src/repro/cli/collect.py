"""`repro collect`, `repro store info`, `repro store verify`: build and check activation stores."""

from __future__ import annotations

import argparse
from pathlib import Path

from repro.cli.common import at_least


COLLECT_FLAGS = {"dtype": ("--store-dtype",), "model_dtype": ("--dtype", "--model-dtype")}
"""`--dtype` is the dtype the model computes in, as in every command; the stored updates' is --store-dtype."""


def add_collect_args(p) -> None:
    from repro.cli.dataclass_args import add_dataclass_args
    from repro.collect import CollectConfig

    add_dataclass_args(p, CollectConfig, flags=COLLECT_FLAGS, title="settings (CollectConfig)")
    # Not a setting of the store: how the run is shown (an argument of `collect`, not part of CollectConfig).
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")


def register(sub) -> None:
    p = sub.add_parser("collect", help="generate images and store the updates of chosen blocks (resumes automatically)",
                       description="Settings: every flag but --progress is a field of repro.collect.CollectConfig, "
                                   "with its default and docstring.", populate=add_collect_args)
    p.set_defaults(run=run_collect)

    store = sub.add_parser("store", help="look at or check an activation store")
    ssub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = ssub.add_parser("info", help="settings, size and progress of a store")
    p.add_argument("store", type=Path)
    p.set_defaults(run=run_info)
    p = ssub.add_parser("verify", help="check the sha256 of every shard against the manifest, several at once "
                                       "(then `repro train --no-verify` can skip the check)")
    p.add_argument("store", type=Path)
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="shards hashed at once (default: the usable cores, at most 8)")
    p.add_argument("--repair", action="store_true",
                   help="forget and delete damaged shards, so that the same `repro collect` command rewrites them")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run_verify)


def run_collect(args: argparse.Namespace) -> int:
    from repro.cli.dataclass_args import from_args
    from repro.collect import CollectConfig, collect
    from repro.dist import env
    from repro.io import writable_folder

    cfg = from_args(CollectConfig, args)  # bad settings are refused before anything is made
    writable_folder(cfg.out)  # before the model loads
    env.init_from_env()  # under torchrun: one rank of a sharded collection
    try:
        store = collect(cfg, progress=args.progress)
        if env.rank() == 0:
            print(store.summary())
    finally:
        env.shutdown()
    return 0


def run_info(args: argparse.Namespace) -> int:
    from repro.store import ActivationStore

    print(ActivationStore(args.store).summary())
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from repro.errors import ReproError
    from repro.store import ActivationStore, StoreWriter

    store = ActivationStore(args.store)
    bad = store.verify_all(progress=not args.no_progress, threads=args.threads)
    if bad and args.repair:
        n_prompts = int(store.manifest.get("n_prompts") or store.n_images)
        with StoreWriter(args.store, store.settings, store.info, n_prompts) as writer:  # the lock: no collection runs
            writer.drop_shards(bad)
        print(f"removed {len(bad)} damaged shards of {args.store} ({', '.join(bad)}): run the same `repro collect` "
              "command again to rewrite them")
        return 0
    if bad:
        raise ReproError(f"{len(bad)} of {len(store.shards)} shards of {args.store} are missing or corrupt: "
                         f"{', '.join(bad)}; run `repro store verify --repair {args.store}`, then the same "
                         "`repro collect` command to rewrite them")
    print(f"{len(store.shards)} shards of {args.store} verified")
    return 0
