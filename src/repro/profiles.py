"""Profiles: which models and settings a whole reproduction runs on.

`toy` (the default) runs every chapter on the embedded ShapesWorld models on a CPU in
minutes; `paper` points the same notebooks at SDXL Turbo / SDXL base as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.errors import ReproError, choices_hint
from repro.generate import Sampling


@dataclass(frozen=True)
class Profile:
    """Models and settings for one reproduction."""

    name: str
    turbo_model: str
    """The 1-step model the SAEs are trained on (SDXL Turbo's role)."""
    base_model: str
    """The multi-step model of the transfer chapter (SDXL base's role)."""
    turbo: Sampling
    """Sampling of the turbo model (paper: 1 step, no guidance)."""
    turbo_multistep: Sampling
    """The turbo model at several steps (paper: 4)."""
    base: Sampling
    """Sampling of the base model (paper: ~25 steps, guidance ~8)."""
    dtype: str = "auto"
    """Inference dtype (auto: fp16 on GPU, fp32 on CPU)."""
    collect_prompts: int = 2000
    """Training prompts whose updates are collected (paper: 1.5M LAION-COCO captions)."""
    prompts: str = "shapes"
    """Prompt source of the collection (a file, `hf:NAME`, or a generator such as `shapes`)."""
    eval_prompts: str = "shapes-test"
    """Held-out prompt source for evaluation chapters (never in SAE training)."""
    sae_expansion: int = 4
    """SAE features per channel (paper: 4, i.e. 5120 for 1280 channels)."""
    sae_k: int = 10
    """TopK of the SAEs (paper's released SAEs: 10)."""
    sae_batch: int = 4096
    """SAE training batch in tokens (paper: 4096)."""
    sae_steps: int = 2000
    """SAE training steps."""
    dead_tokens: int = 10_000_000
    """Tokens without firing after which a latent counts as dead (paper: 10M)."""
    description: str = ""


PROFILES: dict[str, Profile] = {
    "toy": Profile(
        name="toy",
        turbo_model="shapes-turbo",
        base_model="shapes-base",
        turbo=Sampling(steps=1, guidance=0.0),
        turbo_multistep=Sampling(steps=4, guidance=0.0),
        base=Sampling(steps=20, guidance=5.0),
        collect_prompts=2000,
        sae_batch=1024,
        sae_steps=1500,
        dead_tokens=200_000,
        description="embedded ShapesWorld models (shapes-turbo, shapes-base) on the CPU",
    ),
    "paper": Profile(
        name="paper",
        turbo_model="stabilityai/sdxl-turbo",
        base_model="stabilityai/stable-diffusion-xl-base-1.0",
        turbo=Sampling(steps=1, guidance=0.0, resolution=512),
        turbo_multistep=Sampling(steps=4, guidance=0.0, resolution=512),
        base=Sampling(steps=25, guidance=8.0, resolution=1024),
        collect_prompts=1_500_000,
        prompts="hf:laion/laion-coco",
        eval_prompts="hf:laion/laion-coco:validation",
        sae_steps=93_750,
        description="SDXL Turbo and SDXL base as in the paper (GPU strongly advised)",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ReproError(f"unknown profile {name!r}: use {choices_hint(PROFILES)}")
    return PROFILES[name]
