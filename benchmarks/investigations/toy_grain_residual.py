"""Why a 1-step ShapesWorld model draws flat scenes grainy: the fine-grained residual of its samples.

    python benchmarks/investigations/toy_grain_residual.py [MODEL] [N] [--out FILE]     # default shapes-turbo, 120 captions

For N held-out captions, the pipeline's 1-step sample x0 = sigma (n - eps(sigma n, 999)) from unit
noise n (sigma = 14.6), decoded. Per asked style it reports: the high-pass residual of the image's
2x2-block luminance (block minus its 3x3 mean, pixel units; the renderer's grain lives on 2x2
blocks), its correlation with the grain the coupling would draw from n (`add_grain`), the oracle's
style reading, and the same residual of the renders through the VAE (what a perfect model would
give). In latent space: the high-pass std of x0 for flat captions, in fp32 and under bf16
autocast, against the render latents' - eps must cancel n to ~1/sigma of a latent unit, so any
error in eps reaches the image 14.6 times larger.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def highpass(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] minus its 3x3 mean (edges replicated)."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    return x - torch.nn.functional.avg_pool2d(padded, 3, 1)


def block_residual(images: torch.Tensor) -> torch.Tensor:
    """uint8-range float images [N, 3, H, W] -> high-pass of their 2x2-block luminance [N, H/2, W/2]."""
    return highpass(torch.nn.functional.avg_pool2d(images.mean(1, keepdim=True), 2))[:, 0]


@torch.no_grad()
def main() -> None:
    from repro.io import provenance, write_json_atomic
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle
    from repro.shapes.render import render_batch
    from repro.toymodels.data import tokenize_captions
    from repro.toymodels.diffusion import Denoiser, alphas_cumprod, one_step_sigma
    from repro.shapes.scoring import heldout_captions
    from repro.toymodels.vae import decode_latents, encode_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="shapes-turbo")
    ap.add_argument("n", nargs="?", type=int, default=120)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pipe = load_pipeline(args.model, device="cpu", dtype=torch.float32)
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.default_sample_size * pipe.vae_scale_factor)
    scenes, captions = heldout_captions(args.n, one_stream=True)
    ids = tokenize_captions(pipe.tokenizer, captions)
    noise = torch.randn((args.n, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    sigma = one_step_sigma(alphas_cumprod())
    t = torch.full((args.n,), 999)

    def x0(bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            eps = torch.cat([model.eps(sigma * noise[a : a + 40] / (sigma**2 + 1) ** 0.5, t[a : a + 40], ids[a : a + 40])
                             for a in range(0, args.n, 40)]).float()
        return sigma * (noise - eps)

    z = {"fp32": x0(False), "bf16": x0(True)}
    renders = torch.from_numpy(render_batch(scenes, with_masks=False).images)
    z["renders"] = encode_images(pipe.vae, renders, use_autocast=False)
    images = {k: decode_latents(pipe.vae, z[k]) for k in ("fp32", "renders")}  # uint8 [N, H, W, 3]
    grain = highpass(torch.nn.functional.pixel_shuffle(noise, 2))[:, 0]  # what `add_grain` draws from n
    reads = load_oracle(device="cpu").read(images["fp32"].numpy())
    flat = torch.tensor([s.style == "flat" for s in scenes])
    result = {"model": args.model, "n": args.n, "sigma": sigma, "styles": {},
              "flat_latent_highpass_std": {k: round(float(highpass(v[flat]).std()), 4) for k, v in z.items()}}
    res = {k: block_residual(v.permute(0, 3, 1, 2).float()) for k, v in images.items()}
    for style in sorted({s.style for s in scenes}):
        rows = [i for i, s in enumerate(scenes) if s.style == style]
        corr = [float(torch.corrcoef(torch.stack([res["fp32"][i].flatten(), grain[i].flatten()]))[0, 1]) for i in rows]
        result["styles"][style] = {
            "n": len(rows),
            "residual_std": round(float(np.mean([float(res["fp32"][i].std()) for i in rows])), 2),
            "render_residual_std": round(float(np.mean([float(res["renders"][i].std()) for i in rows])), 2),
            "corr_with_grain_of_noise": round(float(np.mean(corr)), 3),
            "style_right": round(float(np.mean([reads[i]["style"] == style for i in rows])), 3),
        }
    print(json.dumps(result, indent=1))
    if args.out:
        write_json_atomic(args.out, {**result, "provenance": provenance()})


if __name__ == "__main__":
    main()
