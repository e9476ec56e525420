"""One optimisation step of one SAE: loss, decoder-gradient projection, Adam, renormalisation.

Shared by the trainer and `benchmarks/sae_speed.py`, so the benchmark times the real step.
"""

from __future__ import annotations

from typing import Callable

import torch

from repro.errors import ReproError, choices_hint
from repro.sae.fast import fast_loss
from repro.sae.fused import fused_loss
from repro.sae.losses import LossOutput, reference_loss
from repro.sae.model import TopKSAE

LOSS_IMPLS: dict[str, Callable[..., LossOutput]] = {"fast": fast_loss, "fused": fused_loss, "reference": reference_loss}


def loss_fn(impl: str) -> Callable[..., LossOutput]:
    """The loss function registered under `impl` ("fast", "fused" or "reference")."""
    if impl not in LOSS_IMPLS:
        raise ReproError(f"unknown SAE impl {impl!r}: use {choices_hint(LOSS_IMPLS)}")
    return LOSS_IMPLS[impl]


def auto_impl(device: torch.device, n_features: int) -> str:
    """The loss impl `impl="auto"` trains with: on CUDA the fused one (replayed from a CUDA graph it
    beat the dense and the sparse steps at every size measured on an H200: 2.54M / 1.22M / 0.41M
    tokens/s at 5,120 / 20,480 / 81,920 features, against 1.64M / 0.61M / 0.18M dense and
    0.74M / 0.56M / 0.22M sparse; benchmarks/investigations.md, "The SAE step"), the sparse one elsewhere."""
    return "fused" if device.type == "cuda" else "fast"


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on CUDA (the paper's mixed precision), float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def make_optimizer(
    sae: TopKSAE, lr: float = 1e-4, eps: float = 6.25e-10, betas: tuple[float, float] = (0.9, 0.999),
    *, capturable: bool = False,
) -> torch.optim.Adam:
    """Adam over the SAE's float32 master weights (fused kernel on CUDA; the deterministic loop on CPU).

    `capturable` (CUDA only) keeps Adam's step count on the GPU, so a CUDA graph can replay the
    update (`repro.sae.graphed.GraphedStep`)."""
    for name, p in sae.named_parameters():
        if p.dtype != torch.float32:
            raise ReproError(f"SAE parameter {name} is {p.dtype}; training needs float32 master weights: call sae.float()")
    cuda = sae.device.type == "cuda"
    return torch.optim.Adam(sae.parameters(), lr=lr, eps=eps, betas=betas, fused=cuda, capturable=capturable and cuda)


def train_step(
    sae: TopKSAE,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    *,
    impl: str = "fast",
    compute_dtype: torch.dtype = torch.float32,
    force_dead: torch.Tensor | None = None,
    loss_kw: dict | None = None,
) -> LossOutput:
    """Train `sae` one step on x [B, d]; returns the step's loss and diagnostics (before the update).

    Order (Gao et al.): backward; remove the gradient component parallel to each decoder
    column; Adam step; renormalise decoder columns; update the dead-latent counters.
    `loss_kw`: further arguments of the loss (the fused loss's `options`, for benchmarks).
    """
    out = loss_fn(impl)(sae, x, compute_dtype=compute_dtype, force_dead=force_dead, **(loss_kw or {}))
    out.loss.backward()
    apply_update(sae, opt, out.fired, x.shape[0])
    return out


def apply_update(sae: TopKSAE, opt: torch.optim.Optimizer, fired: torch.Tensor, n_tokens: int) -> None:
    """After backward: project the decoder gradient, Adam step, renormalise, count dead latents."""
    sae.remove_parallel_grad_()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sae.normalize_decoder_()
    sae.update_fire_counters_(fired, n_tokens)
