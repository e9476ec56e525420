"""Fast training loss: the same numbers as `losses.reference_loss`, with sparse work.

The only dense [B, n] work is the encoder matmul and the TopK on its output (done
without autograd, so the [B, n] pre-activations are freed at once). Everything else
touches the k selected latents per row, or only the dead latents:

* Main path. The TopK values come out of the dense no-grad pass; `_SelectedPreacts`
  gives them a sparse backward: grad x uses `embedding_bag` over the k selected encoder
  rows, grad W_enc is the transposed sparse product (the weight gradient of an
  `embedding_bag`, computed by sorting indices rather than by a dense [B, n] matmul),
  grad b_lat an `index_add`. The decoder is `embedding_bag` over the k selected columns
  of W_dec (stored transposed, [n, d]) with the latent values as per-sample weights, with
  a hand-written sparse backward (`_SparseDecode`).
* AuxK path. Dead latents are gathered first (one host sync for their count); their
  pre-activations, TopK and decode are dense over [B, n_dead] only (~10% of n late in
  training, 0 most of the time, when the whole path is skipped).

Autocast is not relied upon: matmuls and gathers run in `compute_dtype` explicitly,
losses and gradients of the float32 master weights are float32.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from repro.sae.losses import WHOLE, Batch, LossOutput, fired_and_dead, finish
from repro.sae.model import TopKSAE


def _embedding_bag_weight_grad(idx: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """[n, d] = sum over (b, j) of weights[b, j] * rows[b] added into row idx[b, j].

    This is S^T @ rows for the sparse S [B, n] given by (idx [B, k], weights [B, k]):
    exactly the weight gradient of `embedding_bag(idx, table, per_sample_weights=weights)`
    for output gradient `rows` [B, d], so we let autograd's embedding_bag backward (sort
    and segment-sum, no [B*k, d] buffer) compute it.
    """
    with torch.enable_grad():
        table = torch.zeros(n, rows.shape[1], dtype=rows.dtype, device=rows.device, requires_grad=True)
        out = F.embedding_bag(idx, table, per_sample_weights=weights.to(rows.dtype), mode="sum")
        (grad,) = torch.autograd.grad(out, table, grad_outputs=rows)
    return grad


class _SelectedPreacts(torch.autograd.Function):
    """vals [B, k] = (xc @ W_enc.T + b_lat)[b, idx[b, j]], values already computed densely; sparse backward."""

    @staticmethod
    def forward(ctx, xc, W_enc, b_lat, idx, vals):  # xc [B, d] f32, W_enc [n, d], b_lat [n], idx/vals [B, k]
        ctx.save_for_backward(xc, W_enc, idx)
        return vals.clone()

    @staticmethod
    def backward(ctx, grad_vals):
        xc, W_enc, idx = ctx.saved_tensors
        g = grad_vals.float()  # [B, k]
        n = W_enc.shape[0]
        grad_xc = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_xc = F.embedding_bag(idx, W_enc, per_sample_weights=g.to(W_enc.dtype), mode="sum").to(xc.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = _embedding_bag_weight_grad(idx, g, xc, n).to(W_enc.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(n, dtype=torch.float32, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1))
            grad_b = grad_b.to(W_enc.dtype)
        return grad_xc, grad_W, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    """x_hat [B, d] = sum_j vals[b, j] * W_dec_t[idx[b, j]]: decode from the k selected latents.

    Forward is an `embedding_bag`; the backward is written out because CUDA's embedding_bag
    has no bf16 kernel for the gradient of its per-sample weights. grad vals is a batched
    dot product with the k selected rows; grad W_dec_t the sparse transposed product,
    accumulated in float32.
    """

    @staticmethod
    def forward(ctx, vals, idx, W_dec_t):  # vals [B, k], idx [B, k], W_dec_t [n, d]
        ctx.save_for_backward(vals, idx, W_dec_t)
        return F.embedding_bag(idx, W_dec_t, per_sample_weights=vals.to(W_dec_t.dtype), mode="sum")

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [B, d]
        vals, idx, W_dec_t = ctx.saved_tensors
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:
            rows = W_dec_t[idx]  # [B, k, d]
            grad_vals = torch.bmm(rows, grad_out.to(rows.dtype).unsqueeze(-1)).squeeze(-1).to(vals.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = _embedding_bag_weight_grad(idx, vals.float(), grad_out.float(), W_dec_t.shape[0]).to(W_dec_t.dtype)
        return grad_vals, None, grad_W


def fast_loss(
    sae: TopKSAE,
    x: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
    force_dead: torch.Tensor | None = None,
    batch: Batch = WHOLE,
) -> LossOutput:
    """Sparse loss of `sae` on x [B, d]; same arguments and result as `reference_loss`."""
    cfg = sae.cfg
    cdt = compute_dtype
    x = x.float()
    xc = x - sae.b_pre  # [B, d] float32, carries grad to b_pre
    with torch.no_grad():
        pre = F.linear(xc.to(cdt), sae.W_enc.to(cdt), sae.b_lat.to(cdt))  # [B, n], the one dense matmul
        top_vals, idx = pre.topk(cfg.k, dim=-1)  # [B, k]
        del pre
    top_vals = _SelectedPreacts.apply(xc, sae.W_enc, sae.b_lat, idx, top_vals)
    vals = torch.relu(top_vals)
    # W_dec [d, n] -> [n, d] table of feature directions, cast and transposed in one copy.
    W_dec_t = sae.W_dec.t().to(dtype=cdt, memory_format=torch.contiguous_format)
    x_hat = _SparseDecode.apply(vals, idx, W_dec_t).float() + sae.b_pre  # [B, d]

    fired, dead = fired_and_dead(sae, top_vals.detach(), idx, force_dead, batch)
    e_hat, n_dead = None, dead.sum()
    if cfg.k_aux > 0 and cfg.auxk_coef > 0:
        dead_idx = dead.nonzero().squeeze(1)  # [m]; host sync: the sizes below depend on it
        m = dead_idx.numel()
        if m > 0:
            W_e = sae.W_enc.index_select(0, dead_idx).to(cdt)  # [m, d]
            pre_d = F.linear(xc.to(cdt), W_e, sae.b_lat.index_select(0, dead_idx).to(cdt))  # [B, m]
            aux_vals, aux_pos = pre_d.topk(min(cfg.k_aux, m), dim=-1)  # [B, k_aux]
            z_aux = torch.zeros_like(pre_d).scatter(-1, aux_pos, torch.relu(aux_vals))  # [B, m]
            e_hat = z_aux @ W_dec_t.index_select(0, dead_idx)  # [B, d]
    return finish(sae, x, x_hat, e_hat, n_dead, vals, idx, fired, dead, batch)
