"""SAE-feature interventions on a block's update, as `repro.hooks.Edit`s.

A block's update is [B, C, H, W]; the SAE reads it as B*H*W tokens of width C. With
`W_dec[:, f]` the decoder direction of feature f, `z_f(pos)` its activation on the
update at a position, and `mean_f` its mean activation when it fires (feature stats):

| edit | new update | paper |
|---|---|---|
| `SAEReconstruct` | x_hat = SAE(update) (optionally + the SAE's error, a no-op check) | reconstruction in the loop |
| `FeatureIcon` | `strength * mean_f * k * W_dec[:, f]` everywhere (cond half only under guidance) | feature icon from the empty prompt |
| `FeatureAdd` | update + `strength * W_dec[:, f]` inside the mask | painting (strength = s * mean_f) |
| `FeatureModulate` | update + `s * z_f(pos) * W_dec[:, f]` | activation modulation where f fires |
| `FeatureOff` | update - `z_f(pos) * W_dec[:, f]` | switching a feature off |
| `InRegion` | another edit, inside a named region (`region_mask`) at the block's own size | painting into a region |

Under classifier-free guidance the additive edits follow the paper's rule (add to the
conditional half, subtract from the unconditional one); the icon replaces the conditional
half's update only, as the original project does (`cfg_rule="both"`: both halves);
`FeatureOff` and `SAEReconstruct` act on each half's own activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from repro.errors import ReproError, choices_hint
from repro.hooks import Edit
from repro.sae.model import TopKSAE

REGIONS = ("all", "left", "right", "top", "bottom", "centre")


def update_to_tokens(update: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H, W, C] (positions as tokens for the SAE)."""
    return update.permute(0, 2, 3, 1)


def tokens_to_update(tokens: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> [B, C, H, W]."""
    return tokens.permute(0, 3, 1, 2)


def _features(features: int | Sequence[int]) -> list[int]:
    return [int(features)] if isinstance(features, int) else [int(f) for f in features]


def _directions(sae: TopKSAE, features: list[int], like: torch.Tensor) -> torch.Tensor:
    """Decoder directions [C, F] of `features`, on the update's device and dtype."""
    return sae.W_dec[:, features].to(device=like.device, dtype=like.dtype)


def _codes(sae: TopKSAE, update: torch.Tensor, features: list[int]) -> torch.Tensor:
    """Activations z_f(pos) of `features` on the update: [B, H, W, F] (TopK applied)."""
    with torch.no_grad():
        z = sae.encode(update_to_tokens(update).to(device=sae.device, dtype=sae.dtype))
    return z[..., features].to(device=update.device, dtype=update.dtype)


def _sign(half: str, cfg_rule: str) -> float:
    if half != "uncond":
        return 1.0
    return {"signed": -1.0, "both": 1.0, "cond": 0.0}[cfg_rule]


@dataclass
class SAEReconstruct(Edit):
    """Replace the update by its SAE reconstruction x_hat (`keep_error=True` adds x - x_hat back)."""

    sae: TopKSAE | None = None
    keep_error: bool = False

    def edited(self, update, step, half):
        with torch.no_grad():
            tokens = update_to_tokens(update)
            x_hat = self.sae(tokens.to(device=self.sae.device, dtype=self.sae.dtype))
            x_hat = x_hat.to(device=update.device, dtype=update.dtype)
            if self.keep_error:
                x_hat = x_hat + (tokens - x_hat)
        return tokens_to_update(x_hat)


@dataclass
class FeatureIcon(Edit):
    """Replace the update everywhere by `strength * mean_f * k * W_dec[:, f]` (summed over features);
    under guidance only in the conditional half (`cfg_rule="cond"`, the original project's) or in both."""

    sae: TopKSAE | None = None
    features: int | Sequence[int] = 0
    strength: float = 1.0
    mean: torch.Tensor | None = None
    """[F] activation means of the features; default: the SAE's feature stats."""
    cfg_rule: Literal["cond", "both"] = "cond"

    def edited(self, update, step, half):
        if half == "uncond" and self.cfg_rule == "cond":
            return update
        feats = _features(self.features)
        mean = self.mean if self.mean is not None else self.sae.feature_stats.mean[feats]
        coef = self.strength * self.sae.cfg.k * mean.to(device=update.device, dtype=update.dtype)
        direction = _directions(self.sae, feats, update) @ coef  # [C]
        return direction[None, :, None, None].expand_as(update).clone()


@dataclass
class FeatureAdd(Edit):
    """Add `strength * W_dec[:, f]` (inside `mask`): painting with strength = s * mean_f."""

    sae: TopKSAE | None = None
    features: int | Sequence[int] = 0
    strength: float | Sequence[float] = 1.0
    cfg_rule: Literal["signed", "both", "cond"] = "signed"

    def edited(self, update, step, half):
        feats = _features(self.features)
        strengths = torch.as_tensor(self.strength, dtype=update.dtype, device=update.device).expand(len(feats))
        direction = _directions(self.sae, feats, update) @ strengths  # [C]
        return update + _sign(half, self.cfg_rule) * direction[None, :, None, None]


@dataclass
class FeatureModulate(Edit):
    """Add `factor * z_f(pos) * W_dec[:, f]`: strengthen (factor > 0) or weaken f where it fires."""

    sae: TopKSAE | None = None
    features: int | Sequence[int] = 0
    factor: float = 5.0
    cfg_rule: Literal["signed", "both", "cond"] = "signed"

    def edited(self, update, step, half):
        feats = _features(self.features)
        z = _codes(self.sae, update, feats)  # [B, H, W, F]
        delta = tokens_to_update(z @ _directions(self.sae, feats, update).T)  # [B, C, H, W]
        return update + _sign(half, self.cfg_rule) * self.factor * delta


@dataclass
class FeatureOff(Edit):
    """Remove `z_f(pos) * W_dec[:, f]` of each feature from the update where it fires."""

    sae: TopKSAE | None = None
    features: int | Sequence[int] = 0

    def edited(self, update, step, half):
        feats = _features(self.features)
        z = _codes(self.sae, update, feats)
        return update - tokens_to_update(z @ _directions(self.sae, feats, update).T)


def region_mask(region: str, h: int, w: int) -> torch.Tensor:
    """A fixed [h, w] 0/1 mask: all, left/right/top/bottom half, or the centre (middle half)."""
    m = torch.zeros(h, w)
    if region == "all":
        m[:] = 1
    elif region == "left":
        m[:, : max(1, w // 2)] = 1
    elif region == "right":
        m[:, w // 2:] = 1
    elif region == "top":
        m[: max(1, h // 2)] = 1
    elif region == "bottom":
        m[h // 2:] = 1
    elif region == "centre":
        m[h // 4: max(h // 4 + 1, h - h // 4), w // 4: max(w // 4 + 1, w - w // 4)] = 1
    else:
        raise ReproError(f"unknown region {region!r}: use {choices_hint(REGIONS)}")
    return m


@dataclass
class InRegion(Edit):
    """Apply `inner` only inside a named region, the mask made at the block's own size."""

    inner: Edit | None = None
    region: str = "all"

    def apply(self, update, step, half):
        new = self.inner.apply(update, step, half)
        mask = region_mask(self.region, *update.shape[-2:]).to(device=update.device, dtype=update.dtype)
        return update + mask[None, None] * (new - update)
