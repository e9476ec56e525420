"""Stage 1: train the 4x AutoencoderKL on renders as a plain autoencoder with a small KL term.

Loss per image: MSE + `l1_weight` * L1 on pixels in [-1, 1], plus `kl_weight` times the
posterior's KL per latent element. Afterwards `latent_scale` measures the latents' standard
deviation and the VAE's `scaling_factor` is set to its inverse, so diffusion sees unit-scale
latents (SDXL's VAE carries 0.13025 for the same reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.toymodels.config import VaeStage
from repro.toymodels.data import ToyData, to_model_images
from repro.toymodels.loop import autocast


def vae_batch(data: ToyData, cfg: VaeStage, gen: torch.Generator) -> dict:
    """Every random draw of one VAE step: scene indices [B] and the posterior's unit noise [B, 4, h, w]."""
    idx, _ids = data.sample(gen, cfg.batch_size)
    h = data.images.shape[1] // 4
    return {"idx": idx, "noise": torch.randn((cfg.batch_size, 4, h, h), generator=gen, device=gen.device)}


def vae_loss(vae, data: ToyData, cfg: VaeStage, use_autocast: bool = True):
    """`loss(batch) -> scalar`: MSE + L1 on pixels in [-1, 1] + `kl_weight` x KL per latent element."""
    device = data.device

    def loss(batch: dict) -> torch.Tensor:
        x = to_model_images(data.images[batch["idx"]])  # [B, 3, H, W]
        with autocast(device, use_autocast):
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * batch["noise"].to(posterior.mean.dtype)
            rec = vae.decode(z).sample.float()
        kl = posterior.kl().float().sum() / posterior.mean.numel()
        return F.mse_loss(rec, x) + cfg.l1_weight * F.l1_loss(rec, x) + cfg.kl_weight * kl

    return loss


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int = 512, use_autocast: bool = True) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 posterior means [N, 4, H/4, W/4], times the VAE's scaling_factor."""
    out = []
    scale = float(vae.config.scaling_factor)
    for a in range(0, images.shape[0], batch_size):
        with autocast(images.device, use_autocast):
            z = vae.encode(to_model_images(images[a : a + batch_size]).to(vae.dtype)).latent_dist.mean
        out.append(z.float() * scale)
    return torch.cat(out)


@torch.no_grad()
def latent_scale(vae, images: torch.Tensor, use_autocast: bool = True) -> float:
    """1 / std of the unscaled posterior means of `images`: the `scaling_factor` to store."""
    vae.register_to_config(scaling_factor=1.0)
    z = encode_images(vae, images, use_autocast=use_autocast)
    return float(1.0 / z.std().clamp_min(1e-6))


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 512, use_autocast: bool = True) -> torch.Tensor:
    """Scaled latents [N, 4, h, w] -> uint8 images [N, H, W, 3] (as the pipeline decodes)."""
    out = []
    scale = float(vae.config.scaling_factor)
    for a in range(0, latents.shape[0], batch_size):
        with autocast(latents.device, use_autocast):
            x = vae.decode((latents[a : a + batch_size] / scale).to(vae.dtype)).sample.float()
        out.append(((x / 2 + 0.5).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out)
