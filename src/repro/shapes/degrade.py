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
