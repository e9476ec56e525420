"""One data-parallel SAE step: each rank holds a slice of the batch, the maths is the full batch's.

The loss normalises by statistics of the whole batch (nmse by Var_B(x), AuxK by Var_B(e)),
the AuxK dead mask depends on which latents fired anywhere in the batch, and the dead
counters advance by the global batch size. A plain DDP all-reduce of per-rank losses would
get all three wrong, so the step runs the trainer's own loss (`repro.sae.step.loss_fn(impl)`)
over a `RankSlice`: the batch-wide quantities are all-reduced inside it (small vectors) and
the gradients summed after it (1 collective per parameter):

    rank r, rows x_r [b_r, d]; B = sum b_r (global rows)
    loss_r = sum((x_hat_r - x_r)^2) / (B d Var_B(x)) + auxk_coef * sum((e_hat_r - e_r)^2) / (B d Var_B(e))
    sum over r of loss_r = the full-batch loss; sum over r of grad(loss_r) = its gradient.

The summed gradient is identical on every rank, so the decoder-gradient projection, Adam
and the renormalisation run on the averaged gradient and keep every replica equal. The
result equals one process on the full batch up to float summation order (tested: rtol
1e-5 / atol 1e-6 on fp32 weights after 30 steps, `tests/test_distributed.py`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from repro.sae.losses import Batch, LossOutput
from repro.sae.model import TopKSAE
from repro.sae.step import apply_update, loss_fn


def _sum(t: torch.Tensor, group=None) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class RankSlice(Batch):
    """This rank's b rows as a slice of a batch split across the ranks of `group` (one collective to count it)."""

    def __init__(self, b: int, device: torch.device, group=None):
        self.group = group
        self.total = int(_sum(torch.tensor([b], device=device), group).item())

    def rows(self, b: int) -> int:
        return self.total

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return _sum(t.detach().clone(), self.group)

    def variance(self, v: torch.Tensor) -> torch.Tensor:
        # two passes (the batch mean, then the deviations from it): no cancellation of large sums
        v = v.detach().float()
        mean = self.sum(v.sum(0)) / self.total  # [d]
        return self.sum((v - mean).pow(2).sum()) / (self.total * v.shape[1])


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

    Same loss (`impl`) and order: backward; sum gradients over ranks; remove the decoder-gradient
    component parallel to each column; Adam; renormalise; dead counters by the global batch size.
    """
    batch = RankSlice(x.shape[0], x.device, group)
    out = loss_fn(impl)(sae, x, compute_dtype=compute_dtype, batch=batch)
    out.loss.backward()
    for p in sae.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # keep the collectives in step across ranks
        _sum(p.grad, group)
    apply_update(sae, opt, out.fired, batch.total)
    # what the logs see: the full batch's loss, not this rank's share of it
    return dataclasses.replace(out, loss=out.nmse + sae.cfg.auxk_coef * out.auxk)
