"""Fused training loss: `losses.reference_loss`'s numbers with a hand-written backward, capturable.

One `torch.autograd.Function` computes the decodes and all four parameter gradients with
only the GEMMs the loss needs and few passes over [B, n] tensors, with no host sync and
no data-dependent shape (so `GraphedStep` can capture it):

forward   pre   = (x - b_pre) W_enc^T + b_lat       [B, n] GEMM 1; TopK_k; TopK_kaux after
                                                    masking pre *in place* by the dead mask
          dec   = sum_j vals_j W_dec[:, idx_j]      gather of k rows + bmm (no [B, n] codes)
          e_hat = z_aux W_dec^T                     GEMM 2, z_aux written over pre's buffer
backward  gW_dec = z_aux^T H + (sparse z^T G)       GEMM 3 + an index_add of B*k rows
          g_aux  = (H W_dec)[aux_idx]               GEMM 4, its buffer then holds g_pre
          gW_enc = g_pre^T (x - b_pre)              GEMM 5 (g_pre: k + k_aux nonzeros a row)
          gb_lat = sum_B g_pre;  gb_pre = -gb_lat W_enc (+ sum_B G, through x_hat)

G, H are the gradients of dec and e_hat. The reference runs 8 [B, n]-sized GEMMs: the dense
main decode and its two backward GEMMs, and the [B, n] x [n, d] one that only feeds b_pre.
Matmuls and [B, n] tensors are in the compute dtype (bf16 on CUDA), the weight gradients
are accumulated and returned in the master weights' dtype (float32).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from repro.sae.losses import LossOutput, fired_and_dead, finish
from repro.sae.model import TopKSAE

_F32_OUT_GEMM = [True]  # cleared once if this torch's CUDA mm has no out_dtype (warm-up finds out, not capture)


def _mm_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a [m, p] @ b [p, q] -> [m, q] in `dtype`; on CUDA a bf16 GEMM writes float32 directly (no cast pass)."""
    if a.dtype != dtype and a.is_cuda and dtype == torch.float32 and _F32_OUT_GEMM[0]:
        try:
            return torch.mm(a, b, out_dtype=dtype)
        except (TypeError, RuntimeError, NotImplementedError):
            _F32_OUT_GEMM[0] = False
    return torch.mm(a, b).to(dtype)


def _b_pre_grad(gb_lat: torch.Tensor, W_enc: torch.Tensor) -> torch.Tensor:
    """[n] gradient of b_lat, W_enc [n, d] -> [d] gradient of b_pre through x - b_pre (sum over B first)."""
    return -(gb_lat.to(W_enc.dtype) @ W_enc)


class _FusedSAE(torch.autograd.Function):
    """(W_enc, b_lat, W_dec, b_pre; x) -> dec [B, d], e_hat [B, d] or None, and the non-differentiable
    vals [B, k], idx [B, k], fired [n], dead [n]. x gets no gradient."""

    @staticmethod
    def forward(ctx, W_enc, b_lat, W_dec, b_pre, x, sae, force_dead, cdt, k_aux):
        xc = (x - b_pre).to(cdt)  # [B, d]
        pre = F.linear(xc, W_enc.to(cdt), b_lat.to(cdt))  # [B, n]
        top_vals, idx = pre.topk(sae.cfg.k, dim=-1)  # [B, k]
        vals = torch.relu(top_vals)
        W_dec_t = W_dec.t().to(dtype=cdt, memory_format=torch.contiguous_format)  # [n, d], one cast+transpose
        rows = F.embedding(idx, W_dec_t)  # [B, k, d] the selected feature directions (reused by backward)
        dec = torch.bmm(vals.unsqueeze(1), rows).squeeze(1)  # [B, d]
        fired, dead = fired_and_dead(sae, top_vals, idx, force_dead)
        e_hat = z_aux = aux_vals = aux_idx = None
        if k_aux:
            masked = pre.mul_(dead.to(cdt))  # in place: the main TopK is done with pre; alive -> 0 as the reference
            # unsorted: the same set (only exact ties at the boundary could differ), without sorting k_aux per row
            aux_vals, aux_idx = masked.topk(k_aux, dim=-1, sorted=False)  # [B, k_aux]
            z_aux = masked.zero_().scatter_(-1, aux_idx, torch.relu(aux_vals))  # [B, n] over pre's buffer
            e_hat = z_aux @ W_dec_t  # [B, d]
        del pre
        ctx.save_for_backward(W_enc, xc, W_dec_t, rows, top_vals, idx, z_aux, aux_vals, aux_idx)
        ctx.mark_non_differentiable(vals, idx, fired, dead)
        return dec, e_hat, vals, idx, fired, dead

    @staticmethod
    def backward(ctx, g_dec, g_ehat, *_):  # g_dec, g_ehat [B, d]
        W_enc, xc, W_dec_t, rows, top_vals, idx, z_aux, aux_vals, aux_idx = ctx.saved_tensors
        acc, cdt = W_enc.dtype, xc.dtype
        (B, d), n = xc.shape, W_dec_t.shape[0]
        G = g_dec.to(cdt)
        g_top = torch.bmm(rows, G.unsqueeze(-1)).squeeze(-1)  # [B, k] grad of the selected codes
        g_top = torch.where(top_vals > 0, g_top, 0)  # through ReLU
        if z_aux is not None:
            H = g_ehat.to(cdt)
            gW_dec_t = _mm_to(z_aux.t(), H, acc)  # [n, d] AuxK part
            g_pre = torch.mm(H, W_dec_t.t())  # [B, n] grad of z_aux, read at aux_idx only
            g_aux = torch.where(aux_vals > 0, g_pre.gather(1, aux_idx), 0)  # ReLU; > 0 implies dead (mask grad 1)
            g_pre.zero_().scatter_(1, aux_idx, g_aux)  # the same buffer now holds grad pre
        else:
            gW_dec_t = torch.zeros(n, d, dtype=acc, device=xc.device)
            g_pre = torch.zeros(B, n, dtype=cdt, device=xc.device)
        g_pre.scatter_add_(1, idx, g_top)  # add: a latent may be both in the TopK and in AuxK's top
        # main decode's weight gradient: row idx[b, j] of W_dec^T gets vals[b, j] * G[b]
        main = torch.relu(top_vals).to(acc).unsqueeze(-1) * g_dec.to(acc).unsqueeze(1)  # [B, k, d]
        gW_dec_t.index_add_(0, idx.reshape(-1), main.reshape(-1, d))
        gW_enc = _mm_to(g_pre.t(), xc, acc)  # [n, d]
        gb_lat = g_pre.sum(0, dtype=acc)  # [n]
        gb_pre = _b_pre_grad(gb_lat, W_enc)  # [d]
        return gW_enc, gb_lat, gW_dec_t.t().contiguous(), gb_pre, None, None, None, None, None


def work_dtype(sae: TopKSAE, compute_dtype: torch.dtype) -> torch.dtype:
    """The dtype of matmuls and [B, n] tensors: `compute_dtype`, or the weights' own dtype when that is
    float32 (as autocast, which `reference_loss` uses, is then off)."""
    return sae.W_enc.dtype if compute_dtype == torch.float32 else compute_dtype


def fused_loss(
    sae: TopKSAE,
    x: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
    force_dead: torch.Tensor | None = None,
) -> LossOutput:
    """Fused loss of `sae` on x [B, d]; same arguments and result as `reference_loss`, CUDA-graph capturable."""
    cfg = sae.cfg
    x = x.float()
    k_aux = min(cfg.k_aux, cfg.n_features) if cfg.k_aux > 0 and cfg.auxk_coef > 0 else 0
    dec, e_hat, vals, idx, fired, dead = _FusedSAE.apply(
        sae.W_enc, sae.b_lat, sae.W_dec, sae.b_pre, x, sae, force_dead, work_dtype(sae, compute_dtype), k_aux
    )
    x_hat = dec.float() + sae.b_pre  # [B, d]; b_pre's direct gradient flows here
    return finish(sae, x, x_hat, e_hat, dead.sum(), vals, idx, fired, dead)
