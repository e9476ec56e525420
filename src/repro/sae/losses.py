"""Training loss of the TopK SAE: the dense, obviously-correct reference implementation.

    loss = nmse + auxk_coef * auxk

* nmse = mean((x_hat - x)^2) / mean((x - mean_B(x))^2): MSE normalised by the batch's
  mean squared deviation from its own mean (per batch, a constant w.r.t. the weights).
* auxk (Gao et al. 2024, OpenAI `sparse_autoencoder`): the residual e = x - x_hat
  (detached) is reconstructed from the top `k_aux` pre-activations among the *dead*
  latents, e_hat = W_dec ReLU(TopK_kaux(pre * dead)), and
  auxk = mean((e_hat - e)^2) / mean((e - mean_B(e))^2), i.e. normalised by the residual's
  own variance, as OpenAI's `normalized_mse(decode(auxk), e)`. What we chose where the
  OpenAI code is ambiguous or quirky:
    - e_hat carries no b_pre (OpenAI adds b_pre to both sides; with its gradient live
      that quietly trains b_pre on the AuxK loss too). Here AuxK trains W_enc, b_lat,
      W_dec and (through x - b_pre) b_pre only via the dead latents' pre-activations.
    - With no dead latent the AuxK loss is 0 (OpenAI reports a constant ~1 there).
    - Alive latents are masked by multiplying their pre-activations by 0 (as OpenAI):
      after ReLU they contribute nothing, so at most min(k_aux, n_dead) latents count.
* A latent fires when it is among the TopK with value > `fire_threshold` (`metrics.fires`,
  the same rule as the feature statistics and the evaluation). The dead mask
  used by AuxK is computed *after* this batch's firing is counted (OpenAI's order):
  dead = (tokens_since_fired + B > dead_tokens_threshold) & ~fired_now.

`reference_loss` does everything densely ([B, n] codes, `z @ W_dec.T`); `fast.py` gives
the same numbers with sparse work. Both return a `LossOutput`.

Every loss takes a `Batch`: what the batch-wide quantities above (row count, mean_B, which
latents fired) range over. The default `WHOLE` is the rows x given; `repro.dist.step.RankSlice`
makes x one rank's slice of a batch split across ranks, and the loss is then that slice's share
of the whole batch's (the shares sum to it, and so do their gradients), its metrics the whole
batch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from repro.sae.metrics import ev_from, fires, nmse_from, total_variance
from repro.sae.model import TopKSAE


@dataclass
class LossOutput:
    """One batch's loss and diagnostics; only `loss` carries gradients."""

    loss: torch.Tensor
    """Scalar total loss nmse + auxk_coef * auxk (float32, with grad)."""
    nmse: torch.Tensor
    """Scalar normalised MSE (detached)."""
    auxk: torch.Tensor
    """Scalar normalised AuxK loss before its coefficient (detached; 0 without dead latents)."""
    ev: torch.Tensor
    """Scalar explained variance 1 - Var(x - x_hat) / Var(x) over the batch (`metrics.explained_variance`)."""
    l0: torch.Tensor
    """Scalar mean number of firing latents per input (`metrics.fires`)."""
    x_hat: torch.Tensor
    """[B, d] reconstruction (detached, float32)."""
    vals: torch.Tensor
    """[B, k] latent values after ReLU (detached)."""
    idx: torch.Tensor
    """[B, k] latent indices."""
    fired: torch.Tensor
    """[n] bool: latents that fired in this batch (for the dead-latent counters)."""
    dead: torch.Tensor
    """[n] bool: latents treated as dead in this step's AuxK loss."""
    overflow: torch.Tensor | None = None
    """Scalar bool (fused loss only): more dead latents than AuxK's slots, so some were left out."""


class Batch:
    """The batch a loss normalises over: here the rows it is given, all of them (`WHOLE`).

    A subclass for a batch split across ranks (`repro.dist.step.RankSlice`) sums over the ranks.
    Every method takes quantities that carry no gradient."""

    def rows(self, b: int) -> int:
        """The batch's rows, for a slice of b."""
        return b

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """t summed over the batch's slices (here: t)."""
        return t

    def variance(self, v: torch.Tensor) -> torch.Tensor:
        """`metrics.total_variance` of the batch's rows, for this slice's rows v [b, d]."""
        return total_variance(v)


WHOLE = Batch()


def compute_dtype_context(device: torch.device, compute_dtype: torch.dtype):
    """Autocast to `compute_dtype` where it is lower than float32; a no-op for float32 (CPU default)."""
    return torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32)


def fired_and_dead(
    sae: TopKSAE, vals: torch.Tensor, idx: torch.Tensor, force_dead: torch.Tensor | None, batch: Batch = WHOLE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre-ReLU TopK values [B, k], indices [B, k]) -> (fired [n] bool, dead [n] bool) over the whole
    `batch`; no host sync."""
    n = sae.cfg.n_features
    hits = torch.zeros(n, dtype=torch.int32, device=idx.device)
    hits.index_add_(0, idx.reshape(-1), fires(sae.cfg, vals).reshape(-1).to(torch.int32))
    fired = batch.sum(hits) > 0
    if force_dead is not None:
        return fired, force_dead.to(device=idx.device, dtype=torch.bool)
    since = sae.tokens_since_fired + batch.rows(idx.shape[0])
    return fired, (since > sae.cfg.dead_tokens_threshold) & ~fired


def finish(
    sae: TopKSAE,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    e_hat: torch.Tensor | None,
    n_dead: torch.Tensor,
    vals: torch.Tensor,
    idx: torch.Tensor,
    fired: torch.Tensor,
    dead: torch.Tensor,
    batch: Batch = WHOLE,
) -> LossOutput:
    """Shared tail of both implementations: losses and diagnostics from x [B, d], x_hat [B, d], e_hat [B, d]."""
    x = x.float()
    x_hat = x_hat.float()
    rows = batch.rows(x.shape[0])
    size = rows * x.shape[1]  # elements of the whole batch: the means below are over it
    var_x = batch.variance(x)
    e = (x - x_hat).detach()  # [B, d] residual the dead latents try to explain
    var_e = batch.variance(e)
    sq_err = (x_hat - x).pow(2).sum()
    nmse = nmse_from(var_x, sq_err / size)
    aux_err = torch.zeros((), device=x.device) if e_hat is None else (e_hat.float() - e).pow(2).sum()
    # no dead latent -> no AuxK loss (and no host sync to decide)
    auxk = nmse_from(var_e, aux_err / size).nan_to_num(0.0) * (n_dead > 0)
    loss = nmse + sae.cfg.auxk_coef * auxk
    with torch.no_grad():
        totals = batch.sum(torch.stack([sq_err, aux_err, fires(sae.cfg, vals).sum().float()]))
        nmse_all = nmse_from(var_x, totals[0] / size)
        auxk_all = nmse_from(var_e, totals[1] / size).nan_to_num(0.0) * (n_dead > 0)
        ev = ev_from(var_x, var_e)
        l0 = totals[2] / rows
    return LossOutput(
        loss=loss,
        nmse=nmse_all,
        auxk=auxk_all,
        ev=ev,
        l0=l0,
        x_hat=x_hat.detach(),
        vals=vals.detach(),
        idx=idx,
        fired=fired,
        dead=dead,
    )


def reference_loss(
    sae: TopKSAE,
    x: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
    force_dead: torch.Tensor | None = None,
    batch: Batch = WHOLE,
) -> LossOutput:
    """Dense reference loss of `sae` on x [B, d] (float32 master weights, autocast to `compute_dtype`).

    `force_dead` [n] bool, if given, replaces the dead mask (benchmarks and tests use it
    to switch AuxK on). `batch`: what x is (`Batch`). The SAE is not modified: the caller
    updates the fire counters.
    """
    cfg = sae.cfg
    x = x.float()
    with compute_dtype_context(x.device, compute_dtype):
        pre = F.linear(x - sae.b_pre, sae.W_enc, sae.b_lat)  # [B, n]
        top_vals, idx = pre.topk(cfg.k, dim=-1)  # [B, k]
        vals = torch.relu(top_vals)
        z = torch.zeros_like(pre).scatter(-1, idx, vals)  # [B, n] dense codes
        x_hat = z @ sae.W_dec.T + sae.b_pre  # [B, d]
        fired, dead = fired_and_dead(sae, top_vals.detach(), idx, force_dead, batch)
        e_hat = None
        if cfg.k_aux > 0 and cfg.auxk_coef > 0:
            masked = pre * dead.to(pre.dtype)  # alive latents -> 0, as OpenAI's auxk_mask_fn
            aux_vals, aux_idx = masked.topk(min(cfg.k_aux, cfg.n_features), dim=-1)  # [B, k_aux]
            z_aux = torch.zeros_like(pre).scatter(-1, aux_idx, torch.relu(aux_vals))
            e_hat = z_aux @ sae.W_dec.T  # [B, d], no b_pre: it reconstructs a residual
    return finish(sae, x, x_hat, e_hat, dead.sum(), vals, idx, fired, dead, batch)
