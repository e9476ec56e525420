"""Degrade clean renders the way small generators degrade images: the oracle's augmentations.

A small diffusion model's samples are softer, noisier, slightly shifted and colour-cast
versions of renders. `degrade` draws, per image: a shift of up to `shift` px, a per-channel
gain and offset (colour jitter), a Gaussian blur of sigma in [0, blur], with probability
`p_downup` a 2x down-and-up resampling, additive Gaussian noise of sigma up to `noise`
(in 0..255 units), and with probability `p_jpeg` a JPEG round trip at quality 30-90.
Deterministic given the torch Generator.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class DegradeConfig:
    """How hard `degrade` hits an image (defaults: the oracle's training and "degraded" test)."""

    shift: int = 3
    """Largest translation in pixels, each axis (edges replicated)."""
    gain: float = 0.10
    """Per-channel multiplicative colour jitter: gain in [1 - gain, 1 + gain]."""
    offset: float = 12.0
    """Per-channel additive colour jitter in 0..255 units."""
    blur: float = 1.2
    """Largest Gaussian blur sigma in pixels (drawn uniformly from [0, blur])."""
    p_downup: float = 0.3
    """Probability of a 2x average-pool then bilinear upsampling (latent-like softness)."""
    noise: float = 6.0
    """Largest additive Gaussian noise sigma in 0..255 units."""
    p_jpeg: float = 0.3
    """Probability of a JPEG round trip at a quality drawn from 30..90."""


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur. x: float [B, C, H, W]; sigma: [B] (0 = unchanged)."""
    b, c, h, w = x.shape
    r = 4
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    s = sigma.clamp(min=1e-3)[:, None]
    k1 = torch.exp(-0.5 * (t[None] / s) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)  # [B, 2r+1]
    k1 = k1.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k1[:, None, None, :], groups=b * c)  # separable: rows then columns
    y = F.conv2d(y, k1[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def degrade(images: torch.Tensor, gen: torch.Generator, cfg: DegradeConfig = DegradeConfig()) -> torch.Tensor:
    """Degraded copies of uint8 images [B, H, W, 3] -> uint8 [B, H, W, 3], on the images' device.

    Random draws come from `gen` (a CPU generator), so results do not depend on the device
    beyond float rounding.
    """
    b, h, w, _ = images.shape
    dev = images.device
    x = images.permute(0, 3, 1, 2).float()  # [B, 3, H, W], 0..255

    def u(*shape):
        return torch.rand(*shape, generator=gen).to(dev)

    if cfg.shift:
        s = cfg.shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dx = torch.randint(0, 2 * s + 1, (b,), generator=gen).to(dev)
        dy = torch.randint(0, 2 * s + 1, (b,), generator=gen).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
        x = padded.permute(0, 2, 3, 1)[torch.arange(b, device=dev)[:, None, None], rows, cols]  # [B, H, W, 3]
        x = x.permute(0, 3, 1, 2)
    gain = 1 + cfg.gain * (2 * u(b, 3, 1, 1) - 1)
    x = x * gain + cfg.offset * (2 * u(b, 3, 1, 1) - 1)
    if cfg.blur > 0:
        x = _blur(x, cfg.blur * u(b))
    down = u(b) < cfg.p_downup
    if down.any():
        small = F.avg_pool2d(x[down], 2)
        x[down] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    x = x + cfg.noise * u(b, 1, 1, 1) * torch.randn(x.shape, generator=gen).to(dev)
    out = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    jpeg = (u(b) < cfg.p_jpeg).cpu()
    quality = torch.randint(30, 91, (b,), generator=gen)
    idx = torch.nonzero(jpeg).flatten().tolist()
    if idx:
        cpu = out[idx].cpu().numpy()
        done = np.stack([_jpeg(img, int(quality[i])) for img, i in zip(cpu, idx)])
        out[idx] = torch.from_numpy(done).to(dev)
    return out


# ---------------------------------------------------------------------------------------
# Damage: what strong interventions do to images (the `damaged` head's positives)


@dataclass(frozen=True)
class DamageConfig:
    """How `damage` wrecks an image: each image gets `min_ops`..`max_ops` of the operations below.

    Every operation is far stronger than `DegradeConfig`'s (its noise stops at sigma 6) and
    than the "grainy" style (luminance grain sigma 30 in 2x2 blocks), so clean, mildly
    degraded and grainy renders stay "not damaged"."""

    noise: tuple[float, float] = (45.0, 130.0)
    """Additive noise sigma range (0..255 units); white, blurred or blocky, colour or luminance."""
    field: tuple[float, float] = (35.0, 110.0)
    """Amplitude range of a random low-frequency colour field (4..16 cells, upsampled)."""
    blotches: tuple[int, int] = (3, 12)
    """Number range of random coloured blobs painted over the image."""
    saturate: tuple[float, float] = (2.0, 5.0)
    """Contrast gain range around the image mean (clipped: saturated colours)."""
    cast: tuple[float, float] = (50.0, 120.0)
    """Per-channel offset range of a strong colour cast (sign random per channel)."""
    blur_factor: tuple[int, int] = (4, 16)
    """Large blur: average-pool by this factor (4, 8 or 16) and upsample back."""
    mix: tuple[float, float] = (0.35, 0.85)
    """Weight range of a blend with a random noise image."""
    min_ops: int = 1
    """Fewest operations per image."""
    max_ops: int = 3
    """Most operations per image (at most len(DAMAGE_OPS))."""


def _lowfreq(b: int, c: int, h: int, w: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """[b, c, h, w] smooth random field of unit std (Gaussian cells upsampled bicubically)."""
    f = torch.randn(b, c, cells, cells, generator=gen)
    f = F.interpolate(f, size=(h, w), mode="bicubic", align_corners=False)
    return f / f.flatten(1).std(1).clamp(min=1e-6)[:, None, None, None]


def _uniform(b: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    """[b, 1, 1, 1] uniform in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(b, 1, 1, 1, generator=gen)


def _choice(b: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, k, (b,), generator=gen)


def _damage_op(x: torch.Tensor, op: str, gen: torch.Generator, cfg: DamageConfig) -> torch.Tensor:
    """One operation on a batch: float [b, 3, H, W] in 0..255 -> float [b, 3, H, W] (per-image draws)."""
    b, _, h, w = x.shape
    if op == "noise":
        kind = _choice(b, 3, gen)
        white = torch.randn(b, 3, h, w, generator=gen)
        k = (2, 4, 8)[int(_choice(1, 3, gen))]  # one block size per call: the batch is re-drawn every call
        blocky = torch.randn(b, 3, h // k, w // k, generator=gen).repeat_interleave(k, 2).repeat_interleave(k, 3)
        smooth = _blur(torch.randn(b, 3, h, w, generator=gen), 0.8 + 1.7 * torch.rand(b, generator=gen))
        smooth = smooth / smooth.flatten(1).std(1).clamp(min=1e-6)[:, None, None, None]
        kind = kind[:, None, None, None]
        n = torch.where(kind == 0, white, torch.where(kind == 1, blocky, smooth))
        luminance = (_choice(b, 3, gen) == 0)[:, None, None, None]  # mostly colour noise, as real damage
        n = torch.where(luminance, n[:, :1].expand_as(n), n)
        return x + _uniform(b, *cfg.noise, gen) * n
    if op == "field":
        return x + _uniform(b, *cfg.field, gen) * _lowfreq(b, 3, h, w, (4, 8, 16)[int(_choice(1, 3, gen))], gen)
    if op == "blotches":
        ys = torch.arange(h, dtype=torch.float32)[None, :, None]
        xs = torch.arange(w, dtype=torch.float32)[None, None, :]
        count = torch.randint(cfg.blotches[0], cfg.blotches[1] + 1, (b,), generator=gen)
        for j in range(cfg.blotches[1]):
            cy, cx = torch.rand(b, generator=gen) * h, torch.rand(b, generator=gen) * w
            r = 3 + (h / 5 - 3) * torch.rand(b, generator=gen)
            strength = (0.6 + 0.4 * torch.rand(b, generator=gen)) * (j < count)
            d2 = (ys - cy[:, None, None]) ** 2 + (xs - cx[:, None, None]) ** 2  # [b, H, W]
            alpha = (torch.exp(-d2 / (2 * r[:, None, None] ** 2)) * strength[:, None, None])[:, None]
            x = x * (1 - alpha) + alpha * torch.rand(b, 3, 1, 1, generator=gen) * 255
        return x
    if op == "saturate":
        m = x.mean((2, 3), keepdim=True)
        return m + _uniform(b, *cfg.saturate, gen) * (x - m)
    if op == "cast":
        sign = torch.randint(0, 2, (b, 3, 1, 1), generator=gen).float() * 2 - 1
        return x + sign * (cfg.cast[0] + (cfg.cast[1] - cfg.cast[0]) * torch.rand(b, 3, 1, 1, generator=gen))
    if op == "blur":
        k = (4, 8, 16)[int(_choice(1, 3, gen))]
        k = max(cfg.blur_factor[0], min(k, cfg.blur_factor[1]))
        return F.interpolate(F.avg_pool2d(x, k), size=(h, w), mode="bilinear", align_corners=False)
    if op == "mix":
        noise = (128 + 64 * _lowfreq(b, 3, h, w, (8, 32, h)[int(_choice(1, 3, gen))], gen)).clamp(0, 255)
        a = _uniform(b, *cfg.mix, gen)
        return (1 - a) * x + a * noise
    raise ValueError(op)


DAMAGE_OPS = ("noise", "field", "blotches", "saturate", "cast", "blur", "mix")
ALONE_OPS = ("noise", "field", "blotches", "blur", "mix")
"""Operations an image may get on its own: a colour cast or more contrast alone can look like a
legitimate colour edit, so those two only come on top of another operation."""


def damage(images: torch.Tensor, gen: torch.Generator, cfg: DamageConfig = DamageConfig()) -> torch.Tensor:
    """Strongly damaged copies of uint8 images [B, H, W, 3] -> uint8 [B, H, W, 3] (on CPU).

    Each image gets `min_ops`..`max_ops` distinct operations of `DAMAGE_OPS` (at least one of
    `ALONE_OPS`), the way an edit far off the model's distribution leaves it: noise of several
    spectra, colour fields, blotches, saturation, colour casts, large blur, blends with noise.
    Operations run batched in a random order per call. Deterministic given the (CPU) generator."""
    x = images.cpu().permute(0, 3, 1, 2).float()  # [B, 3, H, W]
    b = x.shape[0]
    k = torch.randint(cfg.min_ops, cfg.max_ops + 1, (b,), generator=gen)
    rank = torch.rand(b, len(DAMAGE_OPS), generator=gen).argsort(1).argsort(1)  # a random ranking of the ops
    chosen = rank < k[:, None]  # [B, ops]
    alone = torch.tensor([op in ALONE_OPS for op in DAMAGE_OPS])
    lacking = ~(chosen & alone).any(1)  # picked only cast / saturate: add one op that can stand alone
    extra = torch.tensor([DAMAGE_OPS.index(ALONE_OPS[i]) for i in _choice(b, len(ALONE_OPS), gen)])
    chosen[lacking, extra[lacking]] = True
    for j in torch.randperm(len(DAMAGE_OPS), generator=gen).tolist():
        sel = chosen[:, j].nonzero().flatten()
        if len(sel):
            x[sel] = _damage_op(x[sel], DAMAGE_OPS[j], gen, cfg)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
