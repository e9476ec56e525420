"""One optimiser step, run eagerly or captured once as a CUDA graph and replayed.

The toy networks are small, so on a large GPU a step is bound by kernel launches (about
5 steps/s eager on an H200, see benchmarks/toy_training.md), not by arithmetic. A
`TrainStep` in graph mode captures forward, backward, gradient clipping and the AdamW
update as one CUDA graph and replays it with one launch per step. Both modes run the same
function, `loss_fn(batch) -> scalar`, which must be pure: every random draw happens in the
stage's `make_batch(gen)` outside the step, so that resuming from a saved generator state
continues exactly, and the step holds no host synchronisation (tests/host_sync.py checks that
on the CPU; a sync inside a CUDA graph capture is an error).

Data-parallel (several GPUs under torchrun): `grad_sync` averages the gradients over the
ranks between backward and the update (`average_gradients`). In graph mode the step is then
two graphs - forward+backward, then clip+AdamW - with the all-reduce run eagerly between
them, so every rank applies the same update to the same weights.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from repro.cuda_graph import GraphedCall, side_stream

ACCELS = ("auto", "eager", "graph", "compile")
WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS/cuDNN handles, autotuning)


def resolve_accel(accel: str, device: torch.device) -> str:
    """auto -> graph on CUDA, eager elsewhere; graph/compile on a CPU fall back to eager."""
    if device.type != "cuda":
        return "eager"
    return "graph" if accel == "auto" else accel


def make_adamw(params: list[torch.nn.Parameter], lr: float, device: torch.device, weight_decay: float,
               graph: bool) -> torch.optim.AdamW:
    """AdamW, fused on CUDA; under a CUDA graph capturable with a tensor learning rate (set by `set_lr`)."""
    cuda = device.type == "cuda"
    return torch.optim.AdamW(params, lr=torch.tensor(lr, device=device) if graph else lr, betas=(0.9, 0.99),
                             weight_decay=weight_decay, fused=cuda, capturable=graph)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(lr)  # in place: the captured graph reads this tensor
        else:
            group["lr"] = lr


def average_gradients(params: list[torch.nn.Parameter], group=None) -> None:
    """Replace every gradient by its mean over the ranks: one all-reduce of all of them, flattened."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    flat.div_(dist.get_world_size(group))
    torch._foreach_copy_(grads, list(torch._utils._unflatten_dense_tensors(flat, grads)))


class TrainStep:
    """`step(batch, lr) -> loss` (a device scalar): zero grads, loss, backward, clip, AdamW.

    batch: dict of tensors with the same shapes every step (the graph's static inputs).
    mode "graph": the first `WARMUP_STEPS` calls run eagerly on a side stream, the next
    captures the graph and every later call copies the batch in and replays it. Each call
    is one real optimiser step in every mode. grad_sync(params): called between backward
    and clipping (data-parallel: `average_gradients`); the loss returned stays this rank's.
    """

    def __init__(self, loss_fn: Callable[[dict], torch.Tensor], params: list[torch.nn.Parameter],
                 opt: torch.optim.Optimizer, grad_clip: float = 1.0, mode: str = "eager",
                 grad_sync: Callable[[list[torch.nn.Parameter]], None] | None = None):
        if mode not in ("eager", "graph", "compile"):
            raise ValueError(f"unknown step mode {mode!r}")
        self.loss_fn = torch.compile(loss_fn) if mode == "compile" else loss_fn
        self.params, self.opt, self.grad_clip, self.mode = params, opt, grad_clip, mode
        self.grad_sync = grad_sync
        self.calls = 0
        self.graph: GraphedCall | None = None  # batch -> loss, gradients (and the update without grad_sync)
        self.update_graph: GraphedCall | None = None  # clip + AdamW, when grad_sync splits the step

    def _update(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.opt.step()

    def _loss_and_grads(self, batch: dict) -> torch.Tensor:
        """Loss and backward, and the update too unless grad_sync runs first: the step's first graph."""
        loss = self.loss_fn(batch)
        loss.backward()
        if self.grad_sync is None:
            self._update()
        return loss

    def _eager(self, batch: dict) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss_and_grads(batch)
        if self.grad_sync is not None:
            self.grad_sync(self.params)
            self._update()
        return loss.detach()

    def __call__(self, batch: dict, lr: float) -> torch.Tensor:
        set_lr(self.opt, lr)
        self.calls += 1
        if self.mode != "graph":
            return self._eager(batch)
        if self.calls <= WARMUP_STEPS:
            with side_stream():
                return self._eager(batch)
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)
            self.graph = GraphedCall(lambda **static: self._loss_and_grads(static), batch)
            if self.grad_sync is not None:  # the update graph reads the first graph's outputs, the grads, from its pool
                self.update_graph = GraphedCall(self._update, pool=self.graph.graph.pool())
        loss = self.graph(batch)
        if self.update_graph is not None:
            self.grad_sync(self.params)
            self.update_graph()
        return loss.detach().clone()  # the graph overwrites its loss on the next replay
