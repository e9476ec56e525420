"""Why a ShapesWorld base model trained without offset noise cannot sample: the schedule's mean leak.

    python benchmarks/investigations/toy_base_leak.py MODELS_DIR [N]

Samples shapes-base (25 Euler steps, leading spacing, as the pipeline) for N held-out
captions three ways and scores them with the oracle: guidance 5, guidance 1, and guidance 5
from noise that carries the render latent's per-channel mean at the first timestep's signal
level (a cheat that gives the model what SDXL's schedule leaks at t ~ 999 during training,
sqrt(alpha_bar) = 0.07 of the signal). A model that reads colours from that leak follows
prompts only in the third case. CPU, ~1 min per case at N = 48 on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main() -> None:
    from diffusers import EulerDiscreteScheduler

    from repro.models.build import scheduler_config
    from repro.models.loading import load_pipeline
    from repro.shapes.oracle import load_oracle
    from repro.shapes.render import render_batch
    from repro.toymodels.data import tokenize_captions
    from repro.toymodels.diffusion import Denoiser, alphas_cumprod
    from repro.shapes.scoring import heldout_captions, rounded, score_readings
    from repro.toymodels.vae import decode_latents, encode_images

    models, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 48
    pipe = load_pipeline(f"{models}/shapes-base", device="cpu")
    oracle = load_oracle(device="cpu")
    scenes, caps = heldout_captions(n, one_stream=True)
    z0 = encode_images(pipe.vae, torch.from_numpy(render_batch(scenes, with_masks=False).images))
    print(json.dumps({"latent_abs_channel_mean": round(z0.mean((2, 3)).abs().mean().item(), 3),
                      "latent_std": round(z0.std().item(), 3)}))
    model = Denoiser(pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.unet.config.sample_size * 4)
    ids = tokenize_captions(pipe.tokenizer, caps)

    def sample(guidance: float, leak: bool) -> dict:
        sched = EulerDiscreteScheduler(**scheduler_config("base"))
        sched.set_timesteps(25)
        sig = sched.sigmas.tolist()
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        if leak:  # the render's channel mean, scaled as it sits in x_t at the first timestep
            acp = alphas_cumprod()[int(sched.timesteps[0])]
            noise = noise + (acp.sqrt() / (1 - acp).sqrt()) * z0.mean((2, 3), keepdim=True)
        x = noise * float(sched.init_noise_sigma)
        keep = torch.cat([torch.zeros(n), torch.ones(n)])
        with torch.no_grad():
            for i, t in enumerate(sched.timesteps.tolist()):
                xin = (x / (sig[i] ** 2 + 1) ** 0.5).repeat(2, 1, 1, 1)
                eu, ec = model.eps(xin, torch.full((2 * n,), int(t)), ids.repeat(2, 1), keep).float().chunk(2)
                x = x + (sig[i + 1] - sig[i]) * (eu + guidance * (ec - eu))
        return rounded(score_readings(oracle.read(decode_latents(pipe.vae, x).numpy()), scenes))

    for name, guidance, leak in (("guidance 5", 5.0, False), ("guidance 1", 1.0, False),
                                 ("guidance 5, noise carrying the mean leak", 5.0, True)):
        t0 = time.time()
        r = sample(guidance, leak)
        print(json.dumps({"case": name, "n": n, "seconds": round(time.time() - t0),
                          **{k: r[k] for k in ("all", "colour", "background", "shape", "texture", "style")}}), flush=True)


if __name__ == "__main__":
    main()
