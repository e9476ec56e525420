"""Feature transport (the paper's RIEBench edit): joint scoring, selection, and the edits.

With codes z [H, W, n] of a block's update (SAE features, or GEGLU neurons as [HW, n]):

1. a(image) = mean of z over the image's mask at the FIRST step, per unit; all chosen
   blocks' units are concatenated ([U] = n_blocks x n_features) and normalised jointly,
   p = a / sum|a| (= a / sum a for SAE codes, which are >= 0; the neurons' GEGLU outputs
   can be negative, hence the absolute value);
2. score = p_src - p_tgt; the top k_transfer units are *added* (from the source), the
   bottom k_transfer *subtracted* (from the target);
3. while regenerating the target, at every step s:
       update += m * (z_src(s)[top] @ W_dec[:, top].T)      inside the source mask
       update -= m * (z_tgt(s)[bottom] @ W_dec[:, bottom].T) inside the target mask
   with z(s) the codes of the cached source / target update of that step.

Edits are batched: `weights` [B, n] carries m on the selected units of each batch
element (one element per grid setting), so one generation runs every setting. Under
classifier-free guidance each half (uncond / cond) gets the codes of its own cached half;
scoring reads the conditional half.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repro.errors import ReproError
from repro.features.interventions import tokens_to_update, update_to_tokens
from repro.hooks import Edit


def mask_mean(codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions: codes [..., P, n] (P = H*W, row-major), mask bool [H, W] -> [..., n]."""
    m = mask.to(device=codes.device, dtype=codes.dtype).flatten()  # [P]
    if m.numel() != codes.shape[-2]:
        raise ReproError(f"a {tuple(mask.shape)} mask does not fit codes of {codes.shape[-2]} positions")
    if m.sum() == 0:
        raise ReproError("the mask covers no position of the block's feature map; use a larger mask or dilate it")
    return (codes * m[:, None]).sum(-2) / m.sum()


def normalise(a: torch.Tensor) -> torch.Tensor:
    """a / sum|a| ([U]): sums to 1 for nonnegative activations; a zero vector stays zero."""
    total = a.abs().sum()
    return a / total if total > 0 else torch.zeros_like(a)


@dataclass
class JointScores:
    """Scores of all units of the chosen blocks, concatenated in `layout` order."""

    layout: list[tuple[object, int]]
    """[(block or (block, layer), n_units), ...]: how the [U] vectors split back."""
    p_src: torch.Tensor
    """[U] normalised mean activation inside the source mask (first step)."""
    p_tgt: torch.Tensor
    """[U] the same for the target."""

    @property
    def scores(self) -> torch.Tensor:
        """[U] p_src - p_tgt."""
        return self.p_src - self.p_tgt

    def split(self, x: torch.Tensor) -> dict[object, torch.Tensor]:
        """A [U] (or [..., U]) vector as {key: [..., n_key]}."""
        parts = x.split([n for _, n in self.layout], dim=-1)
        return {key: part for (key, _), part in zip(self.layout, parts)}


def joint_scores(src_means: dict, tgt_means: dict) -> JointScores:
    """Score every unit of every key jointly: {key: [n]} means inside each image's mask."""
    keys = list(src_means)
    layout = [(key, int(src_means[key].shape[-1])) for key in keys]
    a_src = torch.cat([src_means[k].float().cpu() for k in keys])
    a_tgt = torch.cat([tgt_means[k].float().cpu() for k in keys])
    return JointScores(layout=layout, p_src=normalise(a_src), p_tgt=normalise(a_tgt))


def select(scores: torch.Tensor, k: int, strict_sign: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, bottom) unit indices: the k highest and the k lowest scores (k capped at U // 2).

    The paper takes plain top/bottom k; `strict_sign` keeps only scores > 0 in the top and
    < 0 in the bottom (units inactive in both images then are never picked).
    """
    k = max(0, min(int(k), scores.numel() // 2))
    top = scores.topk(k).indices
    bottom = (-scores).topk(k).indices
    if strict_sign:
        top, bottom = top[scores[top] > 0], bottom[scores[bottom] < 0]
    return top, bottom


def selected_units(scores: JointScores, k: int, strict_sign: bool = False) -> tuple[dict, dict]:
    """The units `select` picks, split back per key: ({key: top ids}, {key: bottom ids}), ids ascending."""
    top, bottom = select(scores.scores, k, strict_sign)
    out = []
    for chosen in (top, bottom):
        picked = torch.zeros(scores.p_src.numel(), dtype=torch.bool)
        picked[chosen] = True
        out.append({key: part.nonzero().flatten() for key, part in scores.split(picked).items()})
    return out[0], out[1]


def selection_weights(scores: JointScores, k: int, ms, strict_sign: bool = False) -> tuple[dict, dict, dict]:
    """Per key: add-weights [len(ms), n] (m on the top units), subtract-weights (m on the
    bottom units), and the number of selected units {key: {"top": t, "bottom": b}}."""
    top, bottom = select(scores.scores, k, strict_sign)
    total = scores.p_src.numel()
    ms_t = torch.as_tensor(list(ms), dtype=torch.float32)[:, None]  # [M, 1]
    is_top = torch.zeros(total).index_fill_(0, top, 1.0)
    is_bottom = torch.zeros(total).index_fill_(0, bottom, 1.0)
    add = scores.split(ms_t * is_top)
    sub = scores.split(ms_t * is_bottom)
    counts = {key: {"top": int(t.sum()), "bottom": int(b.sum())}
              for (key, t), b in zip(scores.split(is_top).items(), scores.split(is_bottom).values())}
    return add, sub, counts


def sae_codes(sae, updates: torch.Tensor) -> torch.Tensor:
    """Updates [S, C, H, W] (one image, S steps) -> codes z [S, H, W, n] (TopK applied)."""
    with torch.no_grad():
        return sae.encode(update_to_tokens(updates).to(device=sae.device, dtype=sae.dtype))


@dataclass
class FeatureTransport(Edit):
    """At step s: update + sign * (codes[half][s] * weights) @ W_dec.T, inside `mask`.

    codes: {half: [steps, H, W, n]} of the cached source (adding) or target (subtracting)
    image; weights: [B, n], m on the selected features of each batch element;
    W_dec: [C, n] the SAE's decoder.
    """

    codes: dict | None = None
    weights: torch.Tensor | None = None
    W_dec: torch.Tensor | None = None
    sign: float = 1.0

    def delta(self, step: int, half: str, like: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] to add at `step` (before the mask)."""
        codes = self.codes[half]
        if step >= len(codes):
            raise ReproError(f"feature transport cached {len(codes)} steps but the sampler ran step {step}; "
                             "regenerate with the same number of steps as the reference images")
        z = codes[step].to(device=like.device, dtype=like.dtype)  # [H, W, n]
        w = self.weights.to(device=like.device, dtype=like.dtype)  # [B, n]
        zw = z[None] * w[:, None, None, :]  # [B, H, W, n]
        return tokens_to_update(zw @ self.W_dec.to(device=like.device, dtype=like.dtype).T)  # [B, C, H, W]

    def edited(self, update, step, half):
        return update + self.sign * self.delta(step, half, update)


@dataclass
class StepAdd(Edit):
    """At step s: update + sign * scale[b] * value[half][s] (the whole-update steering baseline).

    value: {half: [steps, C, H, W]} cached updates; scale: [B] one m per batch element.
    """

    value: dict | None = None
    scale: torch.Tensor | None = None
    sign: float = 1.0

    def edited(self, update, step, half):
        v = self.value[half][step].to(device=update.device, dtype=update.dtype)  # [C, H, W]
        s = self.scale.to(device=update.device, dtype=update.dtype)[:, None, None, None]  # [B, 1, 1, 1]
        return update + self.sign * s * v[None]
