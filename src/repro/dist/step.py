"""One data-parallel SAE step: each rank holds a slice of the batch, the maths is the full batch's.

The loss normalises by statistics of the whole batch (nmse by Var_B(x), AuxK by Var_B(e)),
the AuxK dead mask depends on which latents fired anywhere in the batch, and the dead
counters advance by the global batch size. A plain DDP all-reduce of per-rank losses would
get all three wrong, so this step mirrors `repro.sae.losses.reference_loss` with the
batch-wide quantities all-reduced (small vectors, 3 collectives) and the gradients summed
(1 collective per parameter):

    rank r, rows x_r [b_r, d]; B = sum b_r (global rows)
    loss_r = sum((x_hat_r - x_r)^2) / (B d Var_B(x)) + auxk_coef * sum((e_hat_r - e_r)^2) / (B d Var_B(e))
    sum over r of loss_r = the full-batch loss; sum over r of grad(loss_r) = its gradient.

The summed gradient is identical on every rank, so the decoder-gradient projection, Adam
and the renormalisation run on the averaged gradient and keep every replica equal. The
result equals one process on the full batch up to float summation order (tested: rtol
1e-5 / atol 1e-6 on fp32 weights after 30 steps, `tests/test_distributed.py`). Dense maths
only (the "reference" loss); `impl` is accepted and ignored.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch.nn import functional as F

from repro.sae.losses import LossOutput, compute_dtype_context
from repro.sae.metrics import fires
from repro.sae.model import TopKSAE
from repro.sae.step import apply_update


def _sum(t: torch.Tensor, group=None) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def dp_loss(sae: TopKSAE, x: torch.Tensor, *, compute_dtype: torch.dtype = torch.float32, group=None) -> tuple[LossOutput, int]:
    """This rank's share of the full-batch loss on its rows x [b, d]; metrics are the full batch's.

    Returns (LossOutput whose `loss` is this rank's share, global batch rows B).
    """
    cfg = sae.cfg
    x = x.float()
    b, d = x.shape
    # 1. global rows and mean of x
    s1 = _sum(torch.cat([x.sum(0), x.new_tensor([b])]), group)  # [d + 1]
    B = int(s1[-1].item())
    mean_x = s1[:d] / B
    with compute_dtype_context(x.device, compute_dtype):
        pre = F.linear(x - sae.b_pre, sae.W_enc, sae.b_lat)  # [b, n]
        top_vals, idx = pre.topk(cfg.k, dim=-1)  # [b, k]
        vals = torch.relu(top_vals)
        z = torch.zeros_like(pre).scatter(-1, idx, vals)  # [b, n]
        x_hat = z @ sae.W_dec.T + sae.b_pre  # [b, d]
    x_hat = x_hat.float()
    e = (x - x_hat).detach()  # [b, d]
    # 2. which latents fired anywhere, mean of e, squared deviation of x
    hits = torch.zeros(cfg.n_features, dtype=torch.float32, device=x.device)
    hits.index_add_(0, idx.reshape(-1), fires(cfg, top_vals.detach()).reshape(-1).float())
    s2 = _sum(torch.cat([hits, e.sum(0), (x - mean_x).pow(2).sum().reshape(1)]), group)
    fired = s2[: cfg.n_features] > 0
    mean_e = s2[cfg.n_features : cfg.n_features + d] / B
    var_x = s2[-1] / (B * d)
    dead = (sae.tokens_since_fired + B > cfg.dead_tokens_threshold) & ~fired
    e_hat = None
    if cfg.k_aux > 0 and cfg.auxk_coef > 0:
        with compute_dtype_context(x.device, compute_dtype):
            masked = pre * dead.to(pre.dtype)
            aux_vals, aux_idx = masked.topk(min(cfg.k_aux, cfg.n_features), dim=-1)  # [b, k_aux]
            z_aux = torch.zeros_like(pre).scatter(-1, aux_idx, torch.relu(aux_vals))
            e_hat = (z_aux @ sae.W_dec.T).float()  # [b, d]
    # 3. squared deviation of e, and the full batch's metrics
    sq_err = (x_hat - x).pow(2).sum()
    aux_err = (e_hat - e).pow(2).sum() if e_hat is not None else x.new_zeros(())
    nonzero = fires(cfg, vals).sum().float()
    s3 = _sum(torch.stack([(e - mean_e).pow(2).sum(), sq_err.detach(), aux_err.detach(), nonzero]), group)
    var_e = s3[0] / (B * d)
    n_dead = dead.sum()
    nmse_share = sq_err / (B * d * var_x)
    if e_hat is None:
        aux_share = x.new_zeros(())
        auxk = x.new_zeros(())
    else:
        aux_share = (aux_err / (B * d * var_e)).nan_to_num(0.0) * (n_dead > 0)
        auxk = ((s3[2] / (B * d)) / var_e).nan_to_num(0.0) * (n_dead > 0)
    loss = nmse_share + cfg.auxk_coef * aux_share
    nmse = s3[1] / (B * d) / var_x
    # var_e / var_x over the whole batch: `repro.sae.metrics.explained_variance`, from all-reduced sums
    out = LossOutput(
        loss=loss, nmse=nmse, auxk=auxk, ev=1 - var_e / var_x, l0=s3[3] / B,
        x_hat=x_hat.detach(), vals=vals.detach(), idx=idx, fired=fired, dead=dead,
    )
    return out, B


def dp_train_step(
    sae: TopKSAE,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    *,
    impl: str = "reference",
    compute_dtype: torch.dtype = torch.float32,
    group=None,
) -> LossOutput:
    """`repro.sae.step.train_step` for a rank holding rows x [b, d] of a batch split across `group`;
    returns the full batch's loss and metrics (detached).

    Same order: backward; sum gradients over ranks; remove the decoder-gradient component
    parallel to each column; Adam; renormalise; dead counters by the global batch size.
    """
    out, B = dp_loss(sae, x, compute_dtype=compute_dtype, group=group)
    out.loss.backward()
    for p in sae.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # keep the collectives in step across ranks
        _sum(p.grad, group)
    apply_update(sae, opt, out.fired, B)
    # what the logs see: the full batch's loss, not this rank's share of it
    return dataclasses.replace(out, loss=out.nmse + sae.cfg.auxk_coef * out.auxk)
