"""Bare UNet throughput (images/s, 1 step) at several batch sizes: the ceiling collection is held to.

    python benchmarks/unet_speed.py --model standin-sdxl-turbo --batch-sizes 8 16 32 64 --out unet.json

Runs the pipeline's UNet alone on random latents and text embeddings at the model's own
resolution (SDXL Turbo: 64x64 latents, 77 x 2048 text states), in inference mode, with
and without our capture hooks on the paper's four blocks (kept on the GPU, no copy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from repro.blocks import PAPER_BLOCKS
    from repro.hooks import capture_updates
    from repro.io import provenance
    from repro.models.loading import load_pipeline

    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype)
    unet = pipe.unet
    dev, dt = unet.device, unet.dtype
    cfg = unet.config
    size = cfg.sample_size
    text_dim = cfg.cross_attention_dim
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {"model": args.model, "device": str(dev), "dtype": str(dt), "latent": size,
           "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None, "provenance": provenance()}

    def timed(fn):
        for _ in range(3):
            fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            fn()
        sync()
        return (time.perf_counter() - t0) / args.iters

    for b in args.batch_sizes:
        lat = torch.randn(b, 4, size, size, device=dev, dtype=dt)
        ehs = torch.randn(b, 77, text_dim, device=dev, dtype=dt)
        res = size * 8
        added = {"text_embeds": torch.randn(b, pooled, device=dev, dtype=dt),
                 "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * b, device=dev, dtype=dt)}
        t = torch.full((b,), 999, device=dev)

        def fwd():
            unet(lat, t, encoder_hidden_states=ehs, added_cond_kwargs=added)

        with torch.inference_mode():
            s = timed(fwd)
            with capture_updates(unet, PAPER_BLOCKS) as cap:
                def hooked():
                    cap.clear()
                    fwd()
                s_hooked = timed(hooked)
        out[f"B{b}"] = {"images_per_s": b / s, "hooked_images_per_s": b / s_hooked}
        print(b, out[f"B{b}"], flush=True)
        if dev.type == "cuda":
            out[f"B{b}"]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    best = max((v["images_per_s"], k) for k, v in out.items() if k.startswith("B"))
    out["best"] = {"batch": best[1], "images_per_s": best[0]}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
