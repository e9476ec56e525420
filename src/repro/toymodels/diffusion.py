"""Stages 2 and 3: the multi-step base model, then the 1-step turbo model derived from it.

Both train the UNet and both CLIP text encoders together (from scratch in the base stage),
conditioning exactly as `StableDiffusionXLPipeline` does at inference: the penultimate
hidden states of the two encoders concatenated ([B, 77, h1 + h2]), encoder 2's projected
EOS embedding as the pooled vector, and the size/crop ids (H, W, 0, 0, H, W). An empty
prompt is all zeros (the pipeline's `force_zeros_for_empty_prompt`), which is what caption
dropout substitutes.

base (the SDXL base analogue): epsilon prediction on SDXL's scaled_linear schedule, t
uniform in [0, 999], Min-SNR-5 loss weighting (faster convergence, same optimum per t),
10% caption dropout so that classifier-free guidance works. Sampled with Euler (leading
spacing) and guidance, like SDXL base.

turbo (the SDXL Turbo analogue): the base fine-tuned for EulerAncestral with trailing
spacing. We do not distil adversarially as SDXL Turbo does; a share `one_step_fraction`
of every batch trains the exact 1-step computation of the pipeline: latents x = sigma_max
* n from unit noise n, the UNet sees x / sqrt(sigma_max^2 + 1) at t = 999, and
x0 = x - sigma_max * eps_pred is regressed (MSE) on the render's latent. The rest of the
batch keeps the ordinary epsilon loss at the other turbo timesteps 749, 499, 249, so the
model also works at 4 steps (whose first step is the same 1-step prediction).

Grain: a 1-step generator regressed on targets whose grain is independent of its input
can only learn the grain's mean (none), and grainy scenes would come out flat. With
`couple_grain`, a grainy scene's target is its flat render plus grain made from the very
noise n the generator starts from (`data.add_grain`: same N(0, 30) on 2x2 blocks as the
renderer, only seeded by n instead of the scene), so the generator learns to draw grain.
Each grainy scene gets one such (noise, latent) pair, encoded once when the stage starts
(`grain_pairs`; encoding in the loop would cost as much as the UNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repro.toymodels.config import TURBO_TIMESTEPS, BaseStage, TurboStage
from repro.toymodels.data import ToyData, add_grain, to_model_images
from repro.toymodels.loop import MetricLog, autocast, make_optimizer, run_steps


def alphas_cumprod(device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [1000]: SDXL's scaled_linear schedule (beta 0.00085 -> 0.012), cumulative alphas."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float().to(device)


def encode_text(text_encoder, text_encoder_2, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, 77] -> (prompt embeds [B, 77, h1 + h2], pooled [B, h2]), as SDXL's encode_prompt."""
    out1 = text_encoder(ids, output_hidden_states=True)
    out2 = text_encoder_2(ids, output_hidden_states=True)
    embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return embeds, out2.text_embeds


_TIME_IDS: dict = {}


def time_ids(batch: int, resolution: int, device: torch.device) -> torch.Tensor:
    """[B, 6]: original size, crop top-left, target size, as the pipeline passes them.

    Cached per (resolution, device): a host-to-device copy every step would make the host
    wait for the GPU each step.
    """
    key = (resolution, str(device))
    if key not in _TIME_IDS:
        _TIME_IDS[key] = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]],
                                      dtype=torch.float32, device=device)
    return _TIME_IDS[key].expand(batch, 6)


class Denoiser:
    """UNet + text encoders called the pipeline's way; `eps(x, t, ids, keep)` -> epsilon prediction."""

    def __init__(self, unet, text_encoder, text_encoder_2, resolution: int, compiled_unet=None):
        self.unet, self.te1, self.te2 = unet, text_encoder, text_encoder_2
        self.forward_unet = compiled_unet or unet
        self.resolution = resolution

    def modules(self):
        return (self.unet, self.te1, self.te2)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()]

    def train(self, mode: bool = True) -> "Denoiser":
        for m in self.modules():
            m.train(mode).requires_grad_(mode)
        return self

    def eps(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, 4, h, w] (already scaled as the scheduler's `scale_model_input`), t [B], ids [B, 77].

        keep: float [B], 0 where the caption is dropped (zero embeddings = empty prompt).
        """
        embeds, pooled = encode_text(self.te1, self.te2, ids)
        if keep is not None:
            embeds = embeds * keep[:, None, None].to(embeds.dtype)
            pooled = pooled * keep[:, None].to(pooled.dtype)
        added = {"text_embeds": pooled, "time_ids": time_ids(x.shape[0], self.resolution, x.device)}
        return self.forward_unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample


def _keep_mask(n: int, p_drop: float, gen: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=device) >= p_drop).float()


def epsilon_loss(model: Denoiser, z0: torch.Tensor, ids: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None,
                 gen: torch.Generator, acp: torch.Tensor, min_snr_gamma: float | None = None) -> torch.Tensor:
    """Per-sample epsilon MSE [B] at timesteps t [B] (optionally Min-SNR weighted)."""
    noise = torch.randn(z0.shape, generator=gen, device=z0.device)
    a = acp[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    pred = model.eps(x_t, t, ids, keep).float()
    per = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
    if min_snr_gamma is not None:
        snr = acp[t] / (1 - acp[t])
        per = per * torch.clamp(snr, max=min_snr_gamma) / snr
    return per


def train_base(model: Denoiser, latents: torch.Tensor, data: ToyData, cfg: BaseStage, gen: torch.Generator,
               log: MetricLog, use_autocast: bool = True, log_every: int = 50, progress: bool = True) -> dict:
    """Train `model` from scratch with the epsilon objective; `latents` [N, 4, h, w] are the scaled renders."""
    device = latents.device
    acp = alphas_cumprod(device)
    model.train()
    params = model.parameters()
    opt, sched = make_optimizer(params, cfg.lr, cfg.steps, device, max_seconds=cfg.max_seconds)

    def step(_: int) -> torch.Tensor:
        idx, ids = data.sample(gen, cfg.batch_size)
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=gen, device=device)
        keep = _keep_mask(cfg.batch_size, cfg.caption_dropout, gen, device)
        with autocast(device, use_autocast):
            return epsilon_loss(model, latents[idx], ids, t, keep, gen, acp, cfg.min_snr_gamma).mean()

    summary = run_steps("base", cfg.steps, step, opt, sched, params, log, log_every, progress=progress)
    model.train(False)
    return summary


def one_step_sigma(acp: torch.Tensor, t: int = 999) -> float:
    """sigma of the Euler schedulers at timestep t: sqrt((1 - acp) / acp) (14.6 at t = 999)."""
    return float(((1 - acp[t]) / acp[t]).sqrt())


def one_step_x0(model: Denoiser, noise: torch.Tensor, ids: torch.Tensor, sigma: float,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """The pipeline's 1-step sample from unit noise [B, 4, h, w]: x = sigma n; x0 = x - sigma eps(x / sqrt(sigma^2+1), 999)."""
    x = sigma * noise
    t = torch.full((noise.shape[0],), 999, device=noise.device, dtype=torch.long)
    eps = model.eps(x / (sigma**2 + 1) ** 0.5, t, ids, keep).float()
    return x - sigma * eps


@torch.no_grad()
def grain_pairs(vae, data: ToyData, gen: torch.Generator, use_autocast: bool = True,
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """One (noise, target latent) pair per grainy scene: unit noise [G, 4, h, w] and the scaled
    latent [G, 4, h, w] of the scene's flat render plus grain made from that noise (`add_grain`)."""
    g = data.flat.shape[0]
    h = data.images.shape[1] // 4
    noise = torch.randn((g, 4, h, h), generator=gen, device=data.device)
    z = []
    for a in range(0, g, batch_size):
        images = add_grain(data.flat[a : a + batch_size], noise[a : a + batch_size])
        with autocast(data.device, use_autocast):
            z.append(vae.encode(to_model_images(images).to(vae.dtype)).latent_dist.mean.float())
    scale = float(vae.config.scaling_factor)
    return noise, (torch.cat(z) * scale if z else torch.zeros_like(noise))


def turbo_inputs(data: ToyData, idx: torch.Tensor, latents: torch.Tensor, gen: torch.Generator,
                 pairs: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit noise, target latents) [B, 4, h, w] for 1-step training of scenes `idx`.

    Fresh noise and the render's latent, except grainy scenes under `pairs`: their fixed
    noise and the latent whose grain was made from it.
    """
    noise = torch.randn((idx.shape[0], *latents.shape[1:]), generator=gen, device=latents.device)
    z0 = latents[idx]
    if pairs is None:
        return noise, z0
    rows = data.flat_index[idx]
    grainy = (rows >= 0)[:, None, None, None]
    safe = rows.clamp_min(0)
    return torch.where(grainy, pairs[0][safe], noise), torch.where(grainy, pairs[1][safe], z0)


def train_turbo(model: Denoiser, vae, latents: torch.Tensor, data: ToyData, cfg: TurboStage, gen: torch.Generator,
                log: MetricLog, use_autocast: bool = True, log_every: int = 50, progress: bool = True) -> dict:
    """Fine-tune a base `model` into the 1-step/4-step turbo model (see the module docstring)."""
    device = latents.device
    acp = alphas_cumprod(device)
    sigma = one_step_sigma(acp)
    other_t = torch.tensor(TURBO_TIMESTEPS[1:], device=device)
    n_one = round(cfg.batch_size * cfg.one_step_fraction)
    n_rest = cfg.batch_size - n_one
    model.train()
    params = model.parameters()
    opt, sched = make_optimizer(params, cfg.lr, cfg.steps, device, max_seconds=cfg.max_seconds)
    pairs = grain_pairs(vae, data, gen, use_autocast) if cfg.couple_grain and n_one else None

    def step(_: int) -> torch.Tensor:
        # One UNet call for both parts of the batch (a small model is launch-bound: two
        # calls cost twice the time of one): [1-step inputs at t=999 ; noised latents at 749/499/249].
        idx, ids = data.sample(gen, cfg.batch_size)
        keep = _keep_mask(cfg.batch_size, cfg.caption_dropout, gen, device) if cfg.caption_dropout else None
        noise1, z0 = turbo_inputs(data, idx[:n_one], latents, gen, pairs)
        t_rest = other_t[torch.randint(len(other_t), (n_rest,), generator=gen, device=device)]
        noise2 = torch.randn((n_rest, *latents.shape[1:]), generator=gen, device=device)
        a = acp[t_rest].view(-1, 1, 1, 1)
        x_rest = a.sqrt() * latents[idx[n_one:]] + (1 - a).sqrt() * noise2
        x = torch.cat([sigma * noise1 / (sigma**2 + 1) ** 0.5, x_rest])
        t = torch.cat([torch.full((n_one,), 999, device=device, dtype=torch.long), t_rest])
        with autocast(device, use_autocast):
            eps = model.eps(x, t, ids, keep).float()
        x0 = sigma * noise1 - sigma * eps[:n_one]  # the pipeline's 1-step sample (`one_step_x0`)
        total = F.mse_loss(x0, z0, reduction="sum") / z0[0].numel() if n_one else 0.0
        if n_rest:
            total = total + F.mse_loss(eps[n_one:], noise2, reduction="sum") / noise2[0].numel()
        return total / cfg.batch_size

    summary = run_steps("turbo", cfg.steps, step, opt, sched, params, log, log_every, progress=progress)
    model.train(False)
    return summary
