"""Stages 2 and 3: the multi-step base model, then the 1-step turbo model derived from it.

Both train the UNet and both CLIP text encoders together (from scratch in the base stage),
conditioning exactly as `StableDiffusionXLPipeline` does at inference: the penultimate
hidden states of the two encoders concatenated ([B, 77, h1 + h2]), encoder 2's projected
EOS embedding as the pooled vector, and the size/crop ids (H, W, 0, 0, H, W). An empty
prompt is all zeros (the pipeline's `force_zeros_for_empty_prompt`), which is what caption
dropout substitutes.

base (the SDXL base analogue): epsilon prediction on SDXL's scaled_linear schedule, t
uniform in [0, 999], Min-SNR-5 loss weighting (faster convergence, same optimum per t),
offset noise (`BaseStage.noise_offset`: the schedule leaves 7% of the signal at t = 999 and
the toy latents' per-image mean is large, see there), 10% caption dropout so that
classifier-free guidance works. Sampled with Euler (leading
spacing) and guidance, like SDXL base.

turbo (the SDXL Turbo analogue), distilled from the trained base the way SDXL Turbo comes
from SDXL base: the student UNet starts as a copy of the base UNet and keeps the base's
text encoders (frozen, as SDXL Turbo keeps SDXL's); the base is the teacher. We do not
distil adversarially. A share `one_step_fraction` of every batch trains the exact 1-step
computation of the pipeline (EulerAncestral, trailing spacing): latents x = sigma_max * n
from unit noise n, the UNet sees x / sqrt(sigma_max^2 + 1) at t = 999, and
x0 = x - sigma_max * eps_pred is regressed (MSE) on a target: for a `teacher_fraction` of
them the teacher's own `teacher_steps`-step guided sample from the same noise n
(`teacher_pairs`, sampled once when the stage starts: knowledge distillation of the
teacher's noise -> image map, Luhman & Luhman 2021), for the rest the caption's render. The
rest of the batch keeps the ordinary epsilon loss at the other turbo timesteps 749, 499,
249, so the model also works at 4 steps (whose first step is the same 1-step prediction).

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
from repro.toymodels.loop import autocast


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

    def __init__(self, unet, text_encoder, text_encoder_2, resolution: int):
        self.unet, self.te1, self.te2 = unet, text_encoder, text_encoder_2
        self.resolution = resolution

    def modules(self):
        return (self.unet, self.te1, self.te2)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters()]

    def train(self, mode: bool = True, text_encoders: bool = True) -> "Denoiser":
        """Train mode and gradients for the UNet (and the text encoders unless `text_encoders=False`)."""
        for m in self.modules():
            on = mode and (m is self.unet or text_encoders)
            m.train(on).requires_grad_(on)
        return self

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def eps(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, 4, h, w] (already scaled as the scheduler's `scale_model_input`), t [B], ids [B, 77].

        keep: float [B], 0 where the caption is dropped (zero embeddings = empty prompt).
        """
        embeds, pooled = encode_text(self.te1, self.te2, ids)
        if keep is not None:
            embeds = embeds * keep[:, None, None].to(embeds.dtype)
            pooled = pooled * keep[:, None].to(pooled.dtype)
        added = {"text_embeds": pooled, "time_ids": time_ids(x.shape[0], self.resolution, x.device)}
        return self.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample


def _keep_mask(n: int, p_drop: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=gen.device) >= p_drop).float()


def epsilon_loss(model: Denoiser, z0: torch.Tensor, ids: torch.Tensor, t: torch.Tensor, keep: torch.Tensor | None,
                 noise: torch.Tensor, acp: torch.Tensor, min_snr_gamma: float | None = None) -> torch.Tensor:
    """Per-sample epsilon MSE [B] at timesteps t [B] for the given unit noise (optionally Min-SNR weighted)."""
    a = acp[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
    pred = model.eps(x_t, t, ids, keep).float()
    per = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
    if min_snr_gamma is not None:
        snr = acp[t] / (1 - acp[t])
        per = per * torch.clamp(snr, max=min_snr_gamma) / snr
    return per


def base_batch(data: ToyData, latents: torch.Tensor, cfg: BaseStage, gen: torch.Generator) -> dict:
    """Every random draw of one base step: scenes, captions, timesteps, kept captions, noise."""
    idx, ids = data.sample(gen, cfg.batch_size)
    t = torch.randint(0, 1000, (cfg.batch_size,), generator=gen, device=gen.device)
    keep = _keep_mask(cfg.batch_size, cfg.caption_dropout, gen)
    noise = torch.randn((cfg.batch_size, *latents.shape[1:]), generator=gen, device=gen.device)
    if cfg.noise_offset:  # offset noise: the model may not read the latent's mean from x_t at high t
        c = latents.shape[1]
        noise = noise + cfg.noise_offset * torch.randn((cfg.batch_size, c, 1, 1), generator=gen, device=gen.device)
    return {"idx": idx, "ids": ids, "t": t, "keep": keep, "noise": noise}


def base_loss(model: Denoiser, latents: torch.Tensor, cfg: BaseStage, use_autocast: bool = True):
    """`loss(batch) -> scalar`: the epsilon objective on the scaled render latents [N, 4, h, w]."""
    acp = alphas_cumprod(latents.device)

    def loss(batch: dict) -> torch.Tensor:
        with autocast(latents.device, use_autocast):
            per = epsilon_loss(model, latents[batch["idx"]], batch["ids"], batch["t"], batch["keep"],
                               batch["noise"], acp, cfg.min_snr_gamma)
        return per.mean()

    return loss


def one_step_sigma(acp: torch.Tensor, t: int = 999) -> float:
    """sigma of the Euler schedulers at timestep t: sqrt((1 - acp) / acp) (14.6 at t = 999)."""
    return float(((1 - acp[t]) / acp[t]).sqrt())


def one_step_input(noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The UNet's input [B, 4, h, w] at t = 999 of the pipeline's 1-step sample from unit noise: x = sigma n, scaled."""
    return sigma * noise / (sigma**2 + 1) ** 0.5


def one_step_x0(noise: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The pipeline's 1-step sample [B, 4, h, w]: x0 = x - sigma eps, eps the UNet's on `one_step_input`."""
    return sigma * noise - sigma * eps


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


@torch.no_grad()
def euler_sample(model: Denoiser, noise: torch.Tensor, ids: torch.Tensor, steps: int, guidance: float,
                 use_autocast: bool = True) -> torch.Tensor:
    """The base pipeline's sample (Euler, leading spacing, guidance with zero-embedding negatives) as latents.

    noise: unit noise [B, 4, h, w] (the pipeline's `latents` before `init_noise_sigma`);
    ids [B, 77]. Returns the final scaled latents [B, 4, h, w], as `output_type="latent"`.
    """
    from diffusers import EulerDiscreteScheduler

    from repro.models.build import scheduler_config

    sched = EulerDiscreteScheduler(**scheduler_config("base"))
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.tolist()
    x = noise.float() * float(sched.init_noise_sigma)
    b = noise.shape[0]
    keep = torch.cat([torch.zeros(b), torch.ones(b)]).to(noise.device)  # [uncond ; cond]
    for i, t in enumerate(sched.timesteps.tolist()):
        xin = (x / (sigmas[i] ** 2 + 1) ** 0.5).repeat(2, 1, 1, 1)
        tt = torch.full((2 * b,), int(t), device=noise.device, dtype=torch.long)
        with autocast(noise.device, use_autocast):
            eps_u, eps_c = model.eps(xin, tt, ids.repeat(2, 1), keep).float().chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (eps_u + guidance * (eps_c - eps_u))
    return x


@torch.no_grad()
def teacher_pairs(teacher: Denoiser, data: ToyData, latent_shape: tuple[int, ...], cfg: TurboStage,
                  gen: torch.Generator, use_autocast: bool = True, batch_size: int = 1024) -> dict:
    """`cfg.teacher_samples` (noise, teacher sample) pairs for random training captions.

    Returns {"ids": [P, 77], "noise": [P, 4, h, w] unit noise, "z": [P, 4, h, w] the base's
    `teacher_steps`-step guided sample from that noise}: the map the 1-step student learns.
    """
    n = cfg.teacher_samples
    idx, ids = data.sample(gen, n)
    noise = torch.randn((n, *latent_shape), generator=gen, device=gen.device)
    z = torch.cat([euler_sample(teacher, noise[a : a + batch_size], ids[a : a + batch_size], cfg.teacher_steps,
                                cfg.teacher_guidance, use_autocast) for a in range(0, n, batch_size)])
    return {"ids": ids, "noise": noise, "z": z}


def turbo_batch(data: ToyData, latents: torch.Tensor, cfg: TurboStage, gen: torch.Generator,
                pairs: dict | None, grain: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """Every random draw of one turbo step, gathered: [1-step part ; 4-step part] of the batch.

    1-step part (`one_step_fraction` of the batch): unit noise `noise1` and its target latent
    `target1` - the teacher's sample from that noise for a `teacher_fraction` share (rows of
    `pairs`), the caption's render latent for the rest (grainy renders with grain made from
    the noise, `grain`). 4-step part: render latents `z_rest`, timesteps 749/499/249, noise.
    """
    n_one = round(cfg.batch_size * cfg.one_step_fraction)
    n_teacher = round(n_one * cfg.teacher_fraction) if pairs is not None else 0
    n_gt, n_rest = n_one - n_teacher, cfg.batch_size - n_one
    device = latents.device
    rows = torch.randint(pairs["z"].shape[0], (n_teacher,), generator=gen, device=gen.device) if n_teacher else None
    idx, ids = data.sample(gen, n_gt + n_rest)
    noise_gt = torch.randn((n_gt, *latents.shape[1:]), generator=gen, device=gen.device)
    target_gt = latents[idx[:n_gt]]
    if grain is not None and n_gt:
        flat_rows = data.flat_index[idx[:n_gt]]
        grainy = (flat_rows >= 0)[:, None, None, None]
        safe = flat_rows.clamp_min(0)
        noise_gt = torch.where(grainy, grain[0][safe], noise_gt)
        target_gt = torch.where(grainy, grain[1][safe], target_gt)
    other_t = torch.tensor(TURBO_TIMESTEPS[1:], device=device)
    t_rest = other_t[torch.randint(len(other_t), (n_rest,), generator=gen, device=gen.device)]
    noise_rest = torch.randn((n_rest, *latents.shape[1:]), generator=gen, device=gen.device)
    parts_ids = [ids]
    noise1, target1 = [noise_gt], [target_gt]
    if n_teacher:
        parts_ids.insert(0, pairs["ids"][rows])
        noise1.insert(0, pairs["noise"][rows])
        target1.insert(0, pairs["z"][rows])
    return {"ids": torch.cat(parts_ids), "noise1": torch.cat(noise1), "target1": torch.cat(target1),
            "z_rest": latents[idx[n_gt:]], "t_rest": t_rest, "noise_rest": noise_rest}


def turbo_loss(model: Denoiser, acp: torch.Tensor, use_autocast: bool = True):
    """`loss(batch) -> scalar`: x0 MSE of the pipeline's 1-step sample + epsilon MSE at 749/499/249.

    One UNet call for both parts (a small model is launch-bound: two calls cost twice one).
    """
    sigma = one_step_sigma(acp)

    def loss(batch: dict) -> torch.Tensor:
        noise1, target1 = batch["noise1"], batch["target1"]
        n_one, n_rest = noise1.shape[0], batch["noise_rest"].shape[0]
        a = acp[batch["t_rest"]].view(-1, 1, 1, 1)
        x_rest = a.sqrt() * batch["z_rest"] + (1 - a).sqrt() * batch["noise_rest"]
        x = torch.cat([one_step_input(noise1, sigma), x_rest])
        t = torch.cat([torch.full((n_one,), 999, device=x.device, dtype=torch.long), batch["t_rest"]])
        with autocast(x.device, use_autocast):
            eps = model.eps(x, t, batch["ids"]).float()
        x0 = one_step_x0(noise1, eps[:n_one], sigma)
        total = F.mse_loss(x0, target1, reduction="sum") / target1[0].numel()
        if n_rest:
            total = total + F.mse_loss(eps[n_one:], batch["noise_rest"], reduction="sum") / x_rest[0].numel()
        return total / (n_one + n_rest)

    return loss
