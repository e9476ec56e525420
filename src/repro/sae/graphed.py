"""One SAE's training step captured as a CUDA graph and replayed: the same kernels, no launch cost.

A training step of a 1280 x 5120 SAE on 4,096 tokens is ~150 small kernels (TopK, scatter,
two matmuls each way, AuxK, the decoder projection, Adam, renormalisation, counters). On an
H200 the GPU finishes them faster than Python can launch them, so the eager step runs at the
CPU's pace. `GraphedStep` records the whole step once and replays it: one launch per step.

    step = GraphedStep(sae, opt, impl="fused", compute_dtype=torch.bfloat16)
    out = step(x)          # x [B, d]; same LossOutput as train_step (tensors reused per call)

What makes the step capturable: no host sync inside it (`reference` and `fused` have none;
the sparse `fast` loss reads its dead-latent count on the host, so it stays eager), a constant
learning rate, and an Adam built with `capturable=True` (`make_optimizer(capturable=True)`).
The first `warmup` calls run eagerly on a side stream (what capture needs: cuBLAS and the
allocator warmed), the next one is captured; every later call copies x into the captured
input and replays. A batch of another shape, a CPU device, or `impl="fast"` fall back to the
eager `train_step`. The `LossOutput` tensors of a replay are overwritten by the next one:
read or accumulate them (on the GPU, in stream order) before the next call.
"""

from __future__ import annotations

import torch

from repro.sae.losses import LossOutput
from repro.sae.model import TopKSAE
from repro.sae.step import loss_fn, train_step

CAPTURABLE_IMPLS = ("reference", "fused")  # no host sync, no data-dependent shape


def graph_capturable(impl: str, device: torch.device) -> bool:
    """Whether `GraphedStep` captures steps of `impl` on `device` (else it runs them eagerly)."""
    return device.type == "cuda" and impl in CAPTURABLE_IMPLS


class GraphedStep:
    """`train_step(sae, opt, x, ...)` for a fixed [B, d] shape, replayed from a CUDA graph after `warmup` steps."""

    def __init__(self, sae: TopKSAE, opt: torch.optim.Optimizer, *, impl: str, compute_dtype: torch.dtype,
                 force_dead: torch.Tensor | None = None, warmup: int = 3):
        self.sae, self.opt, self.impl, self.cdt = sae, opt, impl, compute_dtype
        self.force_dead = force_dead
        self.warmup = warmup
        self.enabled = graph_capturable(impl, sae.device)
        if self.enabled and not all(g.get("capturable") for g in opt.param_groups):
            raise ValueError("GraphedStep needs an Adam built with capturable=True (make_optimizer(capturable=True))")
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.x: torch.Tensor | None = None  # [B, d] float32, the captured input
        self.out: LossOutput | None = None  # the captured outputs, rewritten by each replay

    def __call__(self, x: torch.Tensor) -> LossOutput:
        if not self.enabled or (self.x is not None and x.shape != self.x.shape):
            return self._eager(x)
        if self.graph is None and self.eager_steps < self.warmup:
            return self._warm(x)
        if self.graph is None:
            self._capture(x)  # the captured run is this step's update
            return self.out
        self.x.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.out

    def _step(self, x: torch.Tensor) -> LossOutput:
        return train_step(self.sae, self.opt, x, impl=self.impl, compute_dtype=self.cdt, force_dead=self.force_dead)

    def _eager(self, x: torch.Tensor) -> LossOutput:
        self.opt.zero_grad(set_to_none=True)  # after a replay the grads still hold its values
        return self._step(x)

    def _warm(self, x: torch.Tensor) -> LossOutput:
        """An eager step on a side stream, as capture asks of the steps before it."""
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            out = self._eager(x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.eager_steps += 1
        return out

    def _capture(self, x: torch.Tensor) -> None:
        self.x = x.detach().float().clone()
        self.opt.zero_grad(set_to_none=True)  # backward then allocates the grads from the graph's pool
        graph = torch.cuda.CUDAGraph()
        # thread_local: a generating thread (StreamSource(prefetch=1)) may allocate or wait meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = loss_fn(self.impl)(self.sae, self.x, compute_dtype=self.cdt, force_dead=self.force_dead)
            out.loss.backward()
            # apply_update without its zero_grad: the captured grads must stay where the graph wrote them
            self.sae.remove_parallel_grad_()
            self.opt.step()
            self.sae.normalize_decoder_()
            self.sae.update_fire_counters_(out.fired, self.x.shape[0])
        self.graph, self.out = graph, out
        graph.replay()  # capture records without running: this is the step's update


__all__ = ["CAPTURABLE_IMPLS", "GraphedStep", "graph_capturable"]
