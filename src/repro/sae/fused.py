"""Fused training loss: `losses.reference_loss`'s numbers with a hand-written backward, capturable.

One `torch.autograd.Function` computes the loss, its diagnostics and all four parameter
gradients with only the GEMMs the loss needs, few passes over [B, n] tensors, no host sync
and no data-dependent shape (so `GraphedStep` can capture it). Weights keep their layouts:
W_enc [n, d], W_dec [d, n]; every GEMM reads the other layout as a transposed view.

forward   pre   = (x - b_pre) W_enc^T + b_lat          [B, n] GEMM 1, written into `codes`' last rows;
                                                       TopK_k; TopK_kaux after masking pre in place (`topk`)
          codes = [z; z_aux]                           [2B, n]: dense main codes, AuxK codes over pre
          dec   = z W_dec^T,  e_hat = z_aux W_dec^T    "stacked": one GEMM over codes, M = 2B
                  or dec = sum_j vals_j W_dec[:, idx_j] "gather": k decoder columns per row + bmm
          loss, nmse, auxk, ev, l0                     the tail of `losses.finish`, inside the Function,
                                                       which also forms G = dloss/ddec, H = dloss/de_hat
backward  gW_dec = [G; H]^T codes                      [d, B2] x [B2, n] GEMM, W_dec's own layout
          [g_z; g_zaux] = [G; H] W_dec                 "stacked" (or H W_dec, and g_top from the gathered
                                                       columns by bmm, "gather"); g_pre overwrites g_zaux
          gW_enc = g_pre^T (x - b_pre)                 GEMM (g_pre: k + k_aux nonzeros a row)
          gb_lat = sum_B g_pre;  gb_pre = sum_B G - gb_lat W_enc

`main_decode_mode` picks "stacked" or "gather" from a cost model in n, B, d and k. Matmuls and
[B, n] tensors are in the compute dtype (bf16 on CUDA); losses and the weight gradients are
float32 (the master weights' dtype).
"""

from __future__ import annotations

import functools

import torch
from torch.nn import functional as F

from repro.sae.losses import LossOutput, fired_and_dead
from repro.sae.metrics import fires, total_variance
from repro.sae.model import TopKSAE

_F32_OUT_GEMM = [True]  # cleared once if this torch's CUDA mm has no out_dtype (warm-up finds out, not capture)
_TRANSPOSE_BY_GEMM = [True]  # CUDA: transpose W_dec for the gather by a GEMM with the identity (benchmarks toggle)
MAIN_DECODE: list[str | None] = [None]  # force "stacked" or "gather" (tests, benchmarks); None: main_decode_mode

# Cost of the "gather" decode per gathered element, in GEMM flops of the same time. ~8 bytes moved
# (gather read + write, two bmm reads) at ~175 bf16 flops per byte of HBM traffic gave 1,400; the
# H200 measured "stacked" faster at 5,120 features and "gather" at 20,480 (issue #17,
# benchmarks/results/gpu_ceiling_h200_third/c_fused_check.json), which this value reproduces.
GATHER_FLOPS_PER_ELEMENT = 3400


def main_decode_mode(n: int, batch: int, d: int, k: int) -> str:
    """"stacked" or "gather": how the main (TopK) decode and its code gradient are computed.

    "stacked" puts the dense main codes beside the AuxK codes, so the decode and the code
    gradient are GEMMs with M = 2B instead of B: 4 B n d extra flops. "gather" reads the k
    selected decoder columns per row (W_dec transposed once by a GEMM with the identity,
    2 n d^2 flops, then B k d gathered elements and two bmm). The cheaper one by this count
    wins; the weight gradient is the same [G; H]^T codes GEMM in both. At d 1280, B 4096,
    k 10 the two cross near n = 10,000: "stacked" for 5,120 features, "gather" from 20,480;
    "stacked" for small batches (2B < d) and the CPU tests' sizes.
    """
    if MAIN_DECODE[0] is not None:
        return MAIN_DECODE[0]
    stacked = 4 * batch * n * d
    gather = 2 * n * d * d + GATHER_FLOPS_PER_ELEMENT * batch * k * d
    return "stacked" if stacked <= gather else "gather"


TOPK: list[str | None] = [None]  # force "torch" or "chunked" (tests, benchmarks); None: topk_chunk's rule
# Where the two-stage form is used by default, from the H200's measurements (issue #17,
# benchmarks/results/gpu_ceiling_h200_third/c_topk.json, rows of 4,096 bf16): torch.topk won at
# k 256 at every n and at k 10 for n 5,120; the chunk form won at k 10 from n 20,480 (2-3x).
TOPK_MAX_K = 16
TOPK_MIN_N = 16_384


@functools.lru_cache(maxsize=None)
def _best_groups(n: int, k: int) -> int | None:
    """The divisor G of n with k <= G < n that minimises G + k n / G, or None."""
    divisors = [g for g in range(max(k, 2), n) if n % g == 0]
    return min(divisors, key=lambda g: g + k * (n // g)) if divisors else None


def topk_chunk(n: int, k: int) -> int | None:
    """Group size s of `topk`'s two-stage form for rows of n, or None for plain torch.topk.

    The two-stage form costs one bandwidth-bound pass of `amax` over the row plus TopKs over
    the G = n / s group maxima and the k s candidates; G is the divisor of n (at least k) that
    minimises G + k s (near sqrt(k n)). By default
    (TOPK None) it is used for k <= TOPK_MAX_K and n >= TOPK_MIN_N only, where it measured faster.
    """
    if TOPK[0] == "torch" or k < 1 or (TOPK[0] is None and (k > TOPK_MAX_K or n < TOPK_MIN_N)):
        return None
    groups = _best_groups(n, k)
    return None if groups is None else n // groups


def topk(x: torch.Tensor, k: int, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, n] -> (values [B, k], indices [B, k]) of each row's k largest: torch.topk's values exactly,
    its indices up to the order among tied values.

    Two-stage form (`topk_chunk`): split each row into G groups of s, take the k groups with
    the largest maxima, then the TopK of their k s elements. Exact for any split into groups: if
    an element of the row's top k lies in a group left out, each of the k chosen groups holds an
    element (its maximum) at least as large, so the i-th largest candidate is never below the
    row's i-th largest.
    """
    s = topk_chunk(x.shape[1], k)
    return x.topk(k, dim=-1, sorted=sorted) if s is None else topk_chunked(x, k, s, sorted)


def topk_chunked(x: torch.Tensor, k: int, s: int, sorted: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`topk`'s two-stage form with groups of s (s divides n, n / s >= k); x [B, n] contiguous.

    Group g holds the strided elements g, g + G, g + 2G, ... (G = n / s groups): their maxima are
    a reduction over the outer axis of x viewed as [B, s, G], which reads the row in coalesced,
    vectorised loads (a reduction over contiguous chunks of s measured ~10x slower on an H200)."""
    B, n = x.shape
    G = n // s
    maxima = x.view(B, s, G).amax(1)  # [B, G]
    groups = maxima.topk(k, dim=-1, sorted=False).indices  # [B, k]
    cand = torch.arange(0, n, G, device=x.device).add(groups.unsqueeze(-1)).view(B, k * s)  # [B, k s] indices
    vals, pos = x.gather(1, cand).topk(k, dim=-1, sorted=sorted)
    return vals, cand.gather(1, pos)


def _mm_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """a [m, p] @ b [p, q] -> [m, q] in `dtype`; on CUDA a bf16 GEMM writes float32 directly (no cast pass)."""
    if a.dtype != dtype and a.is_cuda and dtype == torch.float32 and _F32_OUT_GEMM[0]:
        try:
            return torch.mm(a, b, out_dtype=dtype)
        except (TypeError, RuntimeError, NotImplementedError):
            _F32_OUT_GEMM[0] = False
    return torch.mm(a, b).to(dtype)


_EYES: dict[tuple, torch.Tensor] = {}


def transposed(w: torch.Tensor, by_gemm: bool | None = None) -> torch.Tensor:
    """Contiguous copy of w.t() for w [d, n]: on CUDA by a GEMM w^T I_d, which reads and writes
    coalesced tiles where a transposed copy is strided on one side. Exact: each output is one
    product by 1 plus zeros, in float32 accumulation (finite weights)."""
    if by_gemm is None:
        by_gemm = w.is_cuda and _TRANSPOSE_BY_GEMM[0]
    if not by_gemm:
        return w.t().contiguous()
    key = (w.shape[0], w.dtype, w.device)
    if key not in _EYES:  # made by the eager warm-up steps, a constant of any captured graph
        _EYES[key] = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return torch.mm(w.t(), _EYES[key])


def _b_pre_grad(gb_lat: torch.Tensor, W_enc: torch.Tensor) -> torch.Tensor:
    """[n] gradient of b_lat, W_enc [n, d] -> [d] gradient of b_pre through x - b_pre (sum over B first)."""
    return -(gb_lat.to(W_enc.dtype) @ W_enc)


class _FusedSAE(torch.autograd.Function):
    """(W_enc, b_lat, W_dec, b_pre; x) -> loss (differentiable) and the non-differentiable nmse, auxk,
    ev, l0 (scalars), x_hat [B, d], vals [B, k], idx [B, k], fired [n], dead [n]. x gets no gradient."""

    @staticmethod
    def forward(ctx, W_enc, b_lat, W_dec, b_pre, x, sae, force_dead, cdt, k_aux, mode):
        cfg, f32 = sae.cfg, torch.float32  # losses in float32 as `finish`, whatever the weights' dtype
        (B, d), n = x.shape, W_enc.shape[0]
        parts = 2 if k_aux else 1
        xc = (x - b_pre).to(cdt)  # [B, d]
        codes = torch.empty(parts * B, n, dtype=cdt, device=x.device)  # [z; z_aux]
        pre = torch.addmm(b_lat.to(cdt), xc, W_enc.to(cdt).t(), out=codes[-B:])  # [B, n]
        top_vals, idx = topk(pre, cfg.k)  # [B, k]
        vals = torch.relu(top_vals)
        fired, dead = fired_and_dead(sae, top_vals, idx, force_dead)
        aux_vals = aux_idx = None
        if k_aux:
            masked = pre.mul_(dead.to(cdt))  # in place: alive -> 0 as the reference
            # unsorted: the same set (only exact ties at the boundary could differ), without sorting k_aux per row
            aux_vals, aux_idx = topk(masked, k_aux, sorted=False)  # [B, k_aux]
            masked.zero_().scatter_(-1, aux_idx, torch.relu(aux_vals))  # z_aux over pre
        z = codes[:B].zero_().scatter_(-1, idx, vals)  # [B, n] (over pre without AuxK: TopK is done)
        W_dec_c = W_dec.to(cdt)  # [d, n]
        rows = None
        if mode == "stacked":
            out = torch.mm(codes, W_dec_c.t())  # [parts B, d]
            dec, e_hat = out[:B], out[B:]
        else:
            rows = F.embedding(idx, transposed(W_dec_c))  # [B, k, d] the selected decoder columns
            dec = torch.bmm(vals.unsqueeze(1), rows).squeeze(1)  # [B, d]
            e_hat = torch.mm(codes[B:], W_dec_c.t()) if k_aux else None
        del z

        # the loss tail (as losses.finish) and its gradients G, H w.r.t. dec, e_hat
        x_hat = (dec.to(b_pre.dtype) + b_pre).to(f32)  # [B, d]
        e = x - x_hat  # [B, d] residual
        var_x, var_e = total_variance(x), total_variance(e)
        nmse = e.pow(2).mean() / var_x
        GH = torch.empty(parts * B, d, dtype=cdt, device=x.device)  # [G; H]
        G = e * (-2 / (B * d) / var_x)  # [B, d] float32
        g_sum = G.sum(0)  # [d] b_pre's direct gradient (x_hat = dec + b_pre)
        GH[:B] = G
        if k_aux:
            a = e_hat.to(f32) - e  # [B, d]
            raw = a.pow(2).mean() / var_e
            any_dead = dead.any()
            auxk = raw.nan_to_num(0.0) * any_dead  # no dead latent -> no AuxK loss (no host sync to decide)
            live = (raw.isfinite() & any_dead).to(f32)  # nan_to_num's gradient is 0 where raw is not finite
            GH[B:] = a * (2 * cfg.auxk_coef / (B * d) * live / var_e.where(live > 0, 1))
        else:
            auxk = torch.zeros((), device=x.device)
        loss = nmse + cfg.auxk_coef * auxk
        ev = 1 - var_e / var_x
        l0 = fires(cfg, vals).sum(-1).float().mean()
        ctx.save_for_backward(W_enc, xc, W_dec_c, codes, GH, g_sum, rows, top_vals, idx, aux_vals, aux_idx)
        ctx.mode = mode
        ctx.mark_non_differentiable(nmse, auxk, ev, l0, x_hat, vals, idx, fired, dead)
        return loss, nmse, auxk, ev, l0, x_hat, vals, idx, fired, dead

    @staticmethod
    def backward(ctx, g_loss, *_):  # g_loss: scalar
        W_enc, xc, W_dec_c, codes, GH, g_sum, rows, top_vals, idx, aux_vals, aux_idx = ctx.saved_tensors
        acc, cdt = W_enc.dtype, xc.dtype
        B = xc.shape[0]
        GH = GH * g_loss.to(cdt)  # [parts B, d]
        gW_dec = _mm_to(GH.t(), codes, acc)  # [d, n] = G^T z + H^T z_aux
        if ctx.mode == "stacked":
            g_codes = torch.mm(GH, W_dec_c)  # [parts B, n] grads of z and z_aux
            g_top = g_codes[:B].gather(1, idx)  # [B, k]
        else:
            g_top = torch.bmm(rows, GH[:B].unsqueeze(-1)).squeeze(-1)  # [B, k]
            g_codes = torch.mm(GH[B:], W_dec_c) if aux_idx is not None else torch.empty_like(codes)
        g_top = torch.where(top_vals > 0, g_top, 0)  # through ReLU
        g_pre = g_codes[-B:]  # [B, n]: the grad of z_aux, read at aux_idx, then overwritten by grad pre
        if aux_idx is not None:
            g_aux = torch.where(aux_vals > 0, g_pre.gather(1, aux_idx), 0)  # ReLU; > 0 implies dead (mask grad 1)
            g_pre.zero_().scatter_(1, aux_idx, g_aux)
        else:
            g_pre.zero_()
        g_pre.scatter_add_(1, idx, g_top)  # add: a latent may be both in the TopK and in AuxK's top
        gW_enc = _mm_to(g_pre.t(), xc, acc)  # [n, d]
        gb_lat = g_pre.sum(0, dtype=acc)  # [n]
        gb_pre = g_sum * g_loss + _b_pre_grad(gb_lat, W_enc)  # [d]
        return gW_enc, gb_lat, gW_dec, gb_pre, None, None, None, None, None, None


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
    mode = main_decode_mode(cfg.n_features, x.shape[0], cfg.d_model, cfg.k)
    loss, nmse, auxk, ev, l0, x_hat, vals, idx, fired, dead = _FusedSAE.apply(
        sae.W_enc, sae.b_lat, sae.W_dec, sae.b_pre, x, sae, force_dead, work_dtype(sae, compute_dtype), k_aux, mode
    )
    return LossOutput(loss=loss, nmse=nmse, auxk=auxk, ev=ev, l0=l0, x_hat=x_hat, vals=vals, idx=idx, fired=fired,
                      dead=dead)
