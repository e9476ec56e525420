"""Fused training loss: `losses.reference_loss`'s numbers with a hand-written backward, capturable.

One `torch.autograd.Function` computes the loss, its diagnostics and all four parameter
gradients with only the GEMMs the loss needs, few passes over [B, n] tensors and no
data-dependent shape (so `GraphedStep` can capture it). Weights keep their layouts:
W_enc [n, d], W_dec [d, n]; every GEMM reads the other layout as a transposed view.

AuxK only ever looks at the dead latents, so it works on them alone: their indices are packed
into `slots` [C] (C >= the number of dead latents, padded with latent 0 whose pre-activation
is then masked to 0, as the reference masks alive latents), and its TopK, decode and
gradients are [B, C]-sized instead of [B, n] (`dead_slots`). With 10 % dead latents that is a
tenth of AuxK's work. C is a Python number, so a captured graph holds one C: eagerly it is
the dead count rounded up (`slot_capacity`, one host sync); `GraphedStep` passes a C that
is known to bound the count without a sync.

forward   pre   = (x - b_pre) W_enc^T + b_lat          [B, n] GEMM 1; TopK_k of pre
          pre_d = pre[:, slots] * valid                [B, C] the dead latents' pre-activations
          z_aux = ReLU(TopK_kaux(pre_d))               [B, C]; e_hat = z_aux W_dec[:, slots]^T
          z     = scatter(TopK_k)                      [B, n] written over pre
          dec   = z W_dec^T                            "dense": a GEMM over z
                  or dec = sum_j vals_j W_dec[:, idx_j] "gather": k decoder columns per row + bmm
          loss, nmse, auxk, ev, l0                     the tail of `losses.finish`, inside the Function,
                                                       which also forms G = dloss/ddec, H = dloss/de_hat
backward  gW_dec = G^T z, + H^T z_aux at slots         [d, B] x [B, n] GEMM in W_dec's own layout
          g_z    = G W_dec ("dense") or, at the TopK only, by bmm with the gathered columns ("gather")
          g_zaux = H W_dec[:, slots]                   [B, C]
          g_pre  = both scattered into [B, n]          (k + k_aux nonzeros a row)
          gW_enc = g_pre^T (x - b_pre)                 GEMM
          gb_lat = sum_B g_pre;  gb_pre = sum_B G - gb_lat W_enc

`main_decode_mode` picks "dense" or "gather" from a cost model in n, B, d and k; `FusedOptions`
forces this and the other choices (tests and benchmarks try each). Matmuls and
[B, n] tensors are in the compute dtype (bf16 on CUDA); losses and the weight gradients are
float32 (the master weights' dtype).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from repro.sae.losses import WHOLE, Batch, LossOutput, fired_and_dead
from repro.sae.metrics import ev_from, fires, nmse_from
from repro.sae.model import TopKSAE


@dataclass(frozen=True)
class FusedOptions:
    """How the fused loss computes: by its own rules unless forced (tests and benchmarks try each way)."""

    main_decode: str | None = None
    """"dense" or "gather"; None: `main_decode_mode`'s cost model."""
    topk: str | None = None
    """"torch" or "chunked"; None: `topk_chunk`'s rule."""
    transpose_by_gemm: bool = True
    """CUDA: transpose W_dec for the gather by a GEMM with the identity (else by a copy)."""
    f32_out_gemm: bool = True
    """CUDA: bf16 GEMMs of the weight gradients write float32 directly, where this torch can."""


DEFAULT = FusedOptions()

# Cost of the "gather" decode per gathered element, in GEMM flops of the same time. ~8 bytes moved
# (gather read + write, two bmm reads) at ~175 bf16 flops per byte of HBM traffic gave 1,400; the
# H200 measured the dense decode faster at 5,120 features and "gather" at 20,480 (issue #17,
# benchmarks/results/gpu_ceiling_h200_third/c_fused_check.json), which this value reproduces.
GATHER_FLOPS_PER_ELEMENT = 3400


def main_decode_mode(n: int, batch: int, d: int, k: int, force: str | None = None) -> str:
    """"dense" or "gather": how the main (TopK) decode and its code gradient are computed.

    "dense" decodes the [B, n] codes z by a GEMM and forms their gradient by another:
    4 B n d flops. "gather" reads the k selected decoder columns per row (W_dec transposed
    once by a GEMM with the identity, 2 n d^2 flops, then B k d gathered elements and two
    bmm). The cheaper one by this count wins; the weight gradient is the same G^T z GEMM in
    both. At d 1280, B 4096, k 10 the two cross near n = 10,000: "dense" for 5,120 features,
    "gather" from 20,480; "dense" for small batches (2B < d) and the CPU tests' sizes.
    `force` ("dense" or "gather", `FusedOptions.main_decode`) overrides the count.
    """
    if force is not None:
        return force
    dense = 4 * batch * n * d
    gather = 2 * n * d * d + GATHER_FLOPS_PER_ELEMENT * batch * k * d
    return "dense" if dense <= gather else "gather"


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


def topk_chunk(n: int, k: int, rule: str | None = None) -> int | None:
    """Group size s of `topk`'s two-stage form for rows of n, or None for plain torch.topk.

    The two-stage form costs one bandwidth-bound pass of `amax` over the row plus TopKs over
    the G = n / s group maxima and the k s candidates; G is the divisor of n (at least k) that
    minimises G + k s (near sqrt(k n)). By default
    (`rule` None) it is used for k <= TOPK_MAX_K and n >= TOPK_MIN_N only, where it measured faster;
    `rule` "torch" never uses it, "chunked" wherever n has such a divisor (`FusedOptions.topk`).
    """
    if rule == "torch" or k < 1 or (rule is None and (k > TOPK_MAX_K or n < TOPK_MIN_N)):
        return None
    groups = _best_groups(n, k)
    return None if groups is None else n // groups


def topk(x: torch.Tensor, k: int, sorted: bool = True, rule: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, n] -> (values [B, k], indices [B, k]) of each row's k largest: torch.topk's values exactly,
    its indices up to the order among tied values.

    Two-stage form (`topk_chunk`): split each row into G groups of s, take the k groups with
    the largest maxima, then the TopK of their k s elements. Exact for any split into groups: if
    an element of the row's top k lies in a group left out, each of the k chosen groups holds an
    element (its maximum) at least as large, so the i-th largest candidate is never below the
    row's i-th largest. `rule`: as `topk_chunk`'s.
    """
    s = topk_chunk(x.shape[1], k, rule)
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


@functools.cache
def f32_out_gemm_works(device: torch.device) -> bool:
    """Whether this torch's mm on `device` takes out_dtype=float32 for bf16 inputs. Probed once per device,
    by the first (eager) step: a captured graph never meets the probe."""
    a = torch.ones(1, 1, dtype=torch.bfloat16, device=device)
    try:
        torch.mm(a, a, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def _mm_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, f32_out: bool = True) -> torch.Tensor:
    """a [m, p] @ b [p, q] -> [m, q] in `dtype`; on CUDA (`f32_out`, where it works) a bf16 GEMM writes
    float32 directly (no cast pass)."""
    if f32_out and a.dtype != dtype and a.is_cuda and dtype == torch.float32 and f32_out_gemm_works(a.device):
        return torch.mm(a, b, out_dtype=dtype)
    return torch.mm(a, b).to(dtype)


_EYES: dict[tuple, torch.Tensor] = {}


def transposed(w: torch.Tensor, by_gemm: bool | None = None) -> torch.Tensor:
    """Contiguous copy of w.t() for w [d, n]: on CUDA (`by_gemm` None) by a GEMM w^T I_d, which reads
    and writes coalesced tiles where a transposed copy is strided on one side. Exact: each output is
    one product by 1 plus zeros, in float32 accumulation (finite weights)."""
    if by_gemm is None:
        by_gemm = w.is_cuda
    if not by_gemm:
        return w.t().contiguous()
    key = (w.shape[0], w.dtype, w.device)
    if key not in _EYES:  # made by the eager warm-up steps, a constant of any captured graph
        _EYES[key] = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return torch.mm(w.t(), _EYES[key])


def _b_pre_grad(gb_lat: torch.Tensor, W_enc: torch.Tensor) -> torch.Tensor:
    """[n] gradient of b_lat, W_enc [n, d] -> [d] gradient of b_pre through x - b_pre (sum over B first)."""
    return -(gb_lat.to(W_enc.dtype) @ W_enc)


def slot_capacity(n_dead: int, n: int, k_aux: int) -> int:
    """Slots C for `n_dead` dead latents: the count rounded up to a 32nd of n (so a captured graph
    serves a range of counts), at least k_aux (AuxK's TopK needs k_aux candidates), at most n."""
    granule = max(64, n // 32)
    return min(n, max(k_aux, -(-n_dead // granule) * granule))


def dead_slots(dead: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dead [n] bool -> (slots [C] int64, valid [C] bool, overflow scalar bool), no host sync.

    slots holds the dead latents' indices in increasing order, then 0 in the C - n_dead padding
    slots (valid False). overflow: more dead latents than C (those past C are left out)."""
    n = dead.shape[0]
    count = dead.sum()
    where = torch.where(dead, dead.cumsum(0) - 1, capacity).clamp_(max=capacity)  # [n]: slot, or the bin C
    slots = torch.zeros(capacity + 1, dtype=torch.int64, device=dead.device)
    slots.scatter_(0, where, torch.arange(n, device=dead.device))  # bin C takes every alive latent: dropped
    valid = torch.arange(capacity, device=dead.device) < count
    return slots[:capacity], valid, count > capacity  # padding slots were never written: still 0


class _FusedSAE(torch.autograd.Function):
    """(W_enc, b_lat, W_dec, b_pre; x) -> loss (differentiable) and the non-differentiable nmse, auxk,
    ev, l0 (scalars), x_hat [B, d], vals [B, k], idx [B, k], fired [n], dead [n], overflow (scalar
    bool: more dead latents than AuxK's slots). x gets no gradient. Over a `Batch` split across
    ranks the loss and its gradients are this slice's share (as `losses.finish`), the rest the
    whole batch's."""

    @staticmethod
    def forward(ctx, W_enc, b_lat, W_dec, b_pre, x, sae, force_dead, cdt, k_aux, mode, capacity, options, batch):
        cfg, f32 = sae.cfg, torch.float32  # losses in float32 as `finish`, whatever the weights' dtype
        (B, d), n = x.shape, W_enc.shape[0]
        xc = (x - b_pre).to(cdt)  # [B, d]
        pre = torch.addmm(b_lat.to(cdt), xc, W_enc.to(cdt).t())  # [B, n], becomes z below
        top_vals, idx = topk(pre, cfg.k, rule=options.topk)  # [B, k]
        vals = torch.relu(top_vals)
        fired, dead = fired_and_dead(sae, top_vals, idx, force_dead, batch)
        W_dec_c = W_dec.to(cdt)  # [d, n]
        slots = z_aux = W_dead = aux_vals = aux_pos = None
        overflow = torch.zeros((), dtype=torch.bool, device=x.device)
        if k_aux:
            if capacity is None:  # eager: the count decides (one host sync)
                capacity = slot_capacity(int(dead.sum()), n, k_aux)
            slots, valid, overflow = dead_slots(dead, capacity)
            pre_d = pre.index_select(1, slots).mul_(valid.to(cdt))  # [B, C]; padding -> 0 as masked alive latents
            # unsorted: the same set (only exact ties at the boundary could differ), without sorting k_aux per row
            aux_vals, aux_pos = topk(pre_d, min(k_aux, capacity), sorted=False, rule=options.topk)  # [B, k_aux]
            z_aux = pre_d.zero_().scatter_(-1, aux_pos, torch.relu(aux_vals))  # [B, C]
            W_dead = W_dec_c.index_select(1, slots)  # [d, C]
        z = pre.zero_().scatter_(-1, idx, vals)  # [B, n] dense main codes
        rows = None
        if mode == "dense":
            dec = torch.mm(z, W_dec_c.t())  # [B, d]
        else:
            rows = F.embedding(idx, transposed(W_dec_c, W_dec_c.is_cuda and options.transpose_by_gemm))  # [B, k, d]
            dec = torch.bmm(vals.unsqueeze(1), rows).squeeze(1)  # [B, d]

        # the loss tail (as losses.finish) and its gradients G, H w.r.t. dec, e_hat
        x_hat = (dec.to(b_pre.dtype) + b_pre).to(f32)  # [B, d]
        e = x - x_hat  # [B, d] residual
        rows_all = batch.rows(B)
        size = rows_all * d  # elements of the whole batch: the means are over it
        var_x, var_e = batch.variance(x), batch.variance(e)
        sq_err = e.pow(2).sum()
        G32 = e * (-2 / size / var_x)  # [B, d] float32
        g_sum = G32.sum(0)  # [d] b_pre's direct gradient (x_hat = dec + b_pre)
        G, H = G32.to(cdt), None
        any_dead = dead.any()
        aux_err = torch.zeros((), device=x.device)
        if k_aux:
            a = torch.mm(z_aux, W_dead.t()).to(f32) - e  # [B, d]: e_hat - e
            aux_err = a.pow(2).sum()
            raw = nmse_from(var_e, aux_err / size)
            live = (raw.isfinite() & any_dead).to(f32)  # nan_to_num's gradient is 0 where raw is not finite
            H = (a * (2 * cfg.auxk_coef / size * live / var_e.where(live > 0, 1))).to(cdt)  # [B, d]
        # this slice's share; no dead latent -> no AuxK loss (no host sync to decide)
        auxk_share = nmse_from(var_e, aux_err / size).nan_to_num(0.0) * any_dead
        loss = nmse_from(var_x, sq_err / size) + cfg.auxk_coef * auxk_share
        totals = batch.sum(torch.stack([sq_err, aux_err, fires(cfg, vals).sum().float()]))
        nmse = nmse_from(var_x, totals[0] / size)
        auxk = nmse_from(var_e, totals[1] / size).nan_to_num(0.0) * any_dead
        ev = ev_from(var_x, var_e)
        l0 = totals[2] / rows_all
        ctx.save_for_backward(W_enc, xc, W_dec_c, z, G, H, g_sum, rows, top_vals, idx, slots, z_aux, W_dead,
                              aux_vals, aux_pos)
        ctx.mode, ctx.f32_out = mode, options.f32_out_gemm
        ctx.mark_non_differentiable(nmse, auxk, ev, l0, x_hat, vals, idx, fired, dead, overflow)
        return loss, nmse, auxk, ev, l0, x_hat, vals, idx, fired, dead, overflow

    @staticmethod
    def backward(ctx, g_loss, *_):  # g_loss: scalar
        W_enc, xc, W_dec_c, z, G, H, g_sum, rows, top_vals, idx, slots, z_aux, W_dead, aux_vals, aux_pos = (
            ctx.saved_tensors)
        acc, cdt = W_enc.dtype, xc.dtype
        g = g_loss.to(cdt)
        G = G * g  # [B, d]
        gW_dec = _mm_to(G.t(), z, acc, ctx.f32_out)  # [d, n] = G^T z
        if ctx.mode == "dense":
            g_top = torch.mm(G, W_dec_c).gather(1, idx)  # [B, k] grad of z at the TopK
        else:
            g_top = torch.bmm(rows, G.unsqueeze(-1)).squeeze(-1)  # [B, k]
        # z is zero but at idx: zeroing those k a row frees it to hold grad pre (no [B, n] fill; z is
        # not read again, and a second backward through this graph would fail autograd's version check)
        g_pre = z.scatter_(1, idx, 0)  # [B, n]
        g_top = torch.where(top_vals > 0, g_top, 0)  # through ReLU
        if slots is not None:
            H = H * g  # [B, d]
            # [d, C] at the slots; padding adds exact zeros
            gW_dec.index_add_(1, slots, _mm_to(H.t(), z_aux, acc, ctx.f32_out))
            g_aux = torch.mm(H, W_dead).gather(1, aux_pos)  # [B, k_aux] grad of z_aux at its TopK
            g_aux = torch.where(aux_vals > 0, g_aux, 0)  # ReLU; padding has value 0: no gradient
            g_pre.scatter_add_(1, slots[aux_pos], g_aux)  # add: padding repeats latent 0 with zeros
        g_pre.scatter_add_(1, idx, g_top)  # add: a latent may be both in the TopK and in AuxK's top
        gW_enc = _mm_to(g_pre.t(), xc, acc, ctx.f32_out)  # [n, d]
        gb_lat = g_pre.sum(0, dtype=acc)  # [n]
        gb_pre = g_sum * g_loss + _b_pre_grad(gb_lat, W_enc)  # [d]
        return gW_enc, gb_lat, gW_dec, gb_pre, None, None, None, None, None, None, None, None, None


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
    batch: Batch = WHOLE,
    aux_capacity: int | None = None,
    options: FusedOptions = DEFAULT,
) -> LossOutput:
    """Fused loss of `sae` on x [B, d]; same arguments and result as `reference_loss`.

    `aux_capacity`: AuxK's slots C (>= this step's dead latents; `GraphedStep` knows one without
    a sync); None: the count rounded up (`slot_capacity`), which reads it on the host. With a C
    given the loss is CUDA-graph capturable; `LossOutput.overflow` says if C was too small.
    `options`: choices forced instead of the module's rules (`FusedOptions`)."""
    cfg = sae.cfg
    x = x.float()
    k_aux = min(cfg.k_aux, cfg.n_features) if cfg.k_aux > 0 and cfg.auxk_coef > 0 else 0
    mode = main_decode_mode(cfg.n_features, x.shape[0], cfg.d_model, cfg.k, options.main_decode)
    loss, nmse, auxk, ev, l0, x_hat, vals, idx, fired, dead, overflow = _FusedSAE.apply(
        sae.W_enc, sae.b_lat, sae.W_dec, sae.b_pre, x, sae, force_dead, work_dtype(sae, compute_dtype), k_aux, mode,
        aux_capacity, options, batch,
    )
    return LossOutput(loss=loss, nmse=nmse, auxk=auxk, ev=ev, l0=l0, x_hat=x_hat, vals=vals, idx=idx, fired=fired,
                      dead=dead, overflow=overflow)
