"""Prompt following of the ShapesWorld models, read back by the oracle.

`prompt_following(pipe, oracle, n, steps, guidance)` captions n held-out test-split scenes,
generates one image per caption through the ordinary pipeline (`repro.generate`, seed i
for caption i) and scores what the oracle reads against the scene each caption asked for
(`repro.shapes.oracle.compare`): the share of images with each attribute right, and "all".
`vae_ceiling` scores the VAE's reconstructions of the same scenes' renders (and the
renders themselves): no generator can follow prompts better than its VAE lets it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from repro.shapes.captions import caption
from repro.shapes.oracle import compare
from repro.shapes.render import render_batch
from repro.shapes.splits import split_scenes

ATTRIBUTES = ("layout", "shape", "pose", "colour", "texture", "size", "background", "style", "all")


def heldout_prompts(n: int = 500, seed: int = 0) -> tuple[list, list[str]]:
    """n distinct test-split scenes and one caption of each (deterministic in n, seed)."""
    scenes = split_scenes("test", n, seed=seed)
    rng = np.random.default_rng([seed, 2])
    return scenes, [caption(s, rng) for s in scenes]


def score(readings: list[dict], scenes: list) -> dict[str, float]:
    """Share of images with each attribute right (pose over scenes with an oriented shape)."""
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for r, s in zip(readings, scenes):
        for k, v in compare(r, s).items():
            hits[k].append(bool(v))
    return {k: round(float(np.mean(v)), 4) for k, v in hits.items() if v}


def prompt_following(pipe, oracle, n: int = 500, steps: int = 1, guidance: float = 0.0, seed: int = 0,
                     batch_size: int = 250) -> dict:
    """Generate for n held-out captions and score with the oracle: {attribute: share right, ...}."""
    from repro.generate import Sampling, generate

    scenes, captions = heldout_prompts(n, seed)
    sampling = Sampling(steps=steps, guidance=guidance)
    t0 = time.time()
    images = np.concatenate([
        generate(pipe, captions[a : a + batch_size], list(range(a, min(a + batch_size, n))), sampling)
        for a in range(0, n, batch_size)
    ])
    seconds = time.time() - t0
    result = score(oracle.read(images), scenes)
    result.update(n=n, steps=steps, guidance=guidance, seconds=round(seconds, 1))
    return result


@torch.no_grad()
def vae_ceiling(vae, oracle, n: int = 500, seed: int = 0) -> dict:
    """Oracle scores of the renders of the test scenes and of their VAE reconstructions."""
    from repro.toymodels.vae import decode_latents, encode_images

    scenes, _ = heldout_prompts(n, seed)
    renders = render_batch(scenes, with_masks=False).images
    device = next(vae.parameters()).device
    x = torch.from_numpy(renders).to(device)
    rec = decode_latents(vae, encode_images(vae, x)).cpu().numpy()
    mse = float(((rec.astype(np.float32) - renders.astype(np.float32)) / 255.0).__pow__(2).mean())
    return {"renders": score(oracle.read(renders), scenes), "reconstructions": score(oracle.read(rec), scenes),
            "reconstruction_mse": round(mse, 6), "n": n}
