"""`repro blocks`, `repro generate`, `repro build-model`: look at and use a pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

from repro.cli.common import add_model_args, at_least, finite
from repro.ranges import MIN_RESOLUTION


def register(sub) -> None:
    p = sub.add_parser("blocks", help="list the transformer blocks of a model with their update shapes")
    add_model_args(p)
    p.add_argument("--resolution", type=at_least(MIN_RESOLUTION), default=None,
                   help="image side in pixels, a multiple of 8 up to 4096 (default: the model's)")
    p.set_defaults(run=run_blocks)

    p = sub.add_parser("generate", help="generate images for prompts, one fixed seed per prompt")
    add_model_args(p)
    p.add_argument("prompts", nargs="+", help="prompts (quote each)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first prompt; the i-th gets seed+i")
    p.add_argument("--steps", type=at_least(1), default=1)
    p.add_argument("--guidance", type=finite(), default=0.0)
    p.add_argument("--resolution", type=at_least(MIN_RESOLUTION), default=None,
                   help="image side in pixels, a multiple of 8 up to 4096 (default: the model's)")
    p.add_argument("--out", type=Path, default=Path("generated"), help="folder for the PNG files")
    p.set_defaults(run=run_generate)

    p = sub.add_parser("build-model", help="write a random-weight SDXL-format pipeline (tests, stand-ins)")
    p.add_argument("out", type=Path, help="folder to write (save_pretrained layout)")
    p.add_argument("--like", choices=("tiny", "sdxl-turbo", "sdxl-base"), default="tiny",
                   help="tiny (64 px test pipeline) or a stand-in of SDXL's exact architecture")
    p.add_argument("--kind", choices=("turbo", "base"), default="turbo", help="scheduler of the tiny pipeline")
    p.add_argument("--device", default="auto", help="where to create the weights (auto, cpu, cuda)")
    p.add_argument("--dtype", default="float16", help="dtype of the saved stand-in weights")
    p.add_argument("--seed", type=at_least(0), default=0)
    p.set_defaults(run=run_build)


def run_blocks(args: argparse.Namespace) -> int:
    from repro.blocks import describe_blocks
    from repro.models.loading import default_resolution, load_pipeline, vae_factor
    from repro.ranges import check_resolution

    check_resolution("--resolution", args.resolution)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    resolution = args.resolution or default_resolution(pipe)
    print(f"{'block':<10} {'module':<28} {'channels':>8} {'map':>7} {'layers':>6}  paper")
    for b in describe_blocks(pipe.unet, resolution, vae_factor(pipe)):
        print(f"{b.name:<10} {b.module_path:<28} {b.channels:>8} {b.height:>3}x{b.width:<3} {b.n_layers:>6}  {'*' if b.in_paper else ''}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from PIL import Image

    from repro.generate import Sampling, generate
    from repro.io import atomic_path, writable_folder
    from repro.models.loading import load_pipeline
    from repro.ranges import check_seed

    sampling = Sampling(steps=args.steps, guidance=args.guidance, resolution=args.resolution)
    check_seed("--seed", args.seed, count=len(args.prompts))  # prompt i gets seed + i
    writable_folder(args.out)  # before the model loads and generates
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    seeds = [args.seed + i for i in range(len(args.prompts))]
    images = generate(pipe, args.prompts, seeds, sampling)
    for seed, image in zip(seeds, images):
        path = args.out / f"{seed:06d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        print(path)
    return 0


def run_build(args: argparse.Namespace) -> int:
    from repro.models.build import build_pipeline, save_pipeline
    from repro.models.loading import quiet_libraries

    from repro.ranges import check_seed

    check_seed("--seed", args.seed)
    quiet_libraries()
    if args.out.exists() and any(args.out.iterdir()):
        from repro.errors import ReproError

        raise ReproError(f"{args.out} exists and is not empty: choose a new folder or remove it first")
    if args.like == "tiny":
        save_pipeline(build_pipeline(seed=args.seed, kind=args.kind), args.out)
    else:
        from repro.devices import pick_device, pick_dtype
        from repro.models.standin import write_standin

        device = pick_device(args.device)
        write_standin(args.like, args.out, device=device, dtype=pick_dtype(args.dtype, device), seed=args.seed)
    print(args.out)
    return 0
