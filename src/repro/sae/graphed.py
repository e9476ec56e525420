"""One SAE's training step captured as a CUDA graph and replayed: the same kernels, no launch cost.

A training step of a 1280 x 5120 SAE on 4,096 tokens is ~150 small kernels (TopK, scatter,
two matmuls each way, AuxK, the decoder projection, Adam, renormalisation, counters). On an
H200 the GPU finishes them faster than Python can launch them, so the eager step runs at the
CPU's pace. `GraphedStep` records the whole step once and replays it: one launch per step.

    step = GraphedStep(sae, opt, impl="fused", compute_dtype=torch.bfloat16)
    out = step(x)          # x [B, d]; same LossOutput as train_step (tensors reused per call)

What makes the step capturable: no host sync inside it (`reference` has none; the sparse
`fast` loss reads its dead-latent count on the host, so it stays eager), a constant learning
rate, and an Adam built with `capturable=True` (`make_optimizer(capturable=True)`).

The `fused` loss packs AuxK's dead latents into C slots, and a graph holds one C. The host
learns a C that is large enough without waiting for the GPU (`DeadBound`): a latent's counter
grows by at most B tokens a step, so the latents that can be dead two steps after step s are
among those with counter_s + 2B > threshold. Each replay counts these into pinned memory; the
host reads step s's count before launching step s + 2, when step s has long finished. A C that
changes by more than its rounding captures another graph (kept, one per C).

The first `warmup` calls run eagerly, the next is captured, later ones replay (`repro.cuda_graph`).
A batch of another shape, a CPU device, or `impl="fast"` run the eager `train_step`. A replay's
`LossOutput` is overwritten by the next one: read or accumulate it (in stream order) before then.
"""

from __future__ import annotations

import torch

from repro.cuda_graph import GraphedCall, side_stream
from repro.errors import ReproError
from repro.sae.fused import slot_capacity
from repro.sae.losses import LossOutput
from repro.sae.model import TopKSAE
from repro.sae.step import loss_fn, train_step

CAPTURABLE_IMPLS = ("reference", "fused")  # no host sync, no data-dependent shape


def graph_capturable(impl: str, device: torch.device) -> bool:
    """Whether `GraphedStep` captures steps of `impl` on `device` (else it runs them eagerly)."""
    return device.type == "cuda" and impl in CAPTURABLE_IMPLS


class DeadBound:
    """Bounds, known on the host without a sync, on the number of dead latents of the next steps.

    After step s (counters c_s): dead at step s + j (j <= LAG) is a subset of
    {c_s + LAG B > threshold}, since dead_t = (c_{t-1} + B > threshold) & ~fired and c_{t-1} <= c_s
    + (t - 1 - s) B. `record` counts that set on the GPU (in the captured step) and copies it to
    pinned memory; `next_bound` reads the count of LAG steps ago, which the GPU has finished
    unless the host runs more than LAG steps ahead (then it waits, which keeps LAG steps queued).
    Any change of the counters outside the step (another batch size, a reload) must `reset`.
    """

    LAG = 2

    def __init__(self, sae: TopKSAE, batch: int):
        self.sae, self.batch = sae, batch
        self.cuda = sae.device.type == "cuda"  # elsewhere the same bookkeeping runs synchronously (tests)
        self.count = torch.zeros(2, dtype=torch.int64, device=sae.device)  # [bound, overflow], written by the step
        self.pending: list[tuple[int, torch.cuda.Event | None, torch.Tensor]] = []  # (step, done, host copy)
        self.spare: list[torch.Tensor] = []
        self.steps = 0

    def candidates(self, steps_ahead: int) -> torch.Tensor:
        """[n] bool: the latents that can be dead within `steps_ahead` steps (a superset of them)."""
        return self.sae.tokens_since_fired + steps_ahead * self.batch > self.sae.cfg.dead_tokens_threshold

    @torch.no_grad()
    def record(self, overflow: torch.Tensor | None) -> None:
        """On the GPU, in stream order (captured with the step): this step's bound and overflow flag."""
        self.count[0] = self.candidates(self.LAG).sum()
        self.count[1] = overflow if overflow is not None else 0

    def sent(self) -> None:
        """After the step is launched: copy its count to the host, asynchronously."""
        host = self.spare.pop() if self.spare else torch.empty(2, dtype=torch.int64, pin_memory=self.cuda)
        host.copy_(self.count, non_blocking=self.cuda)
        done = torch.cuda.Event() if self.cuda else None
        if done is not None:
            done.record()
        self.pending.append((self.steps, done, host))
        self.steps += 1

    def next_bound(self) -> int:
        """An upper bound on the next step's dead latents (ReproError if an earlier step overflowed)."""
        while self.pending and self.pending[0][0] < self.steps - self.LAG:
            self.spare.append(self.pending.pop(0)[2])
        if self.pending and self.pending[0][0] == self.steps - self.LAG:
            step, done, host = self.pending[0]
            if done is not None:
                done.synchronize()
            bound, overflow = host.tolist()
            if overflow:
                raise ReproError(f"SAE step {step}: more dead latents than AuxK's slots; the dead counters "
                                 "changed outside the step without DeadBound.reset()")
            return bound
        return int(self.candidates(1).sum())  # no history: the next step's candidates, read now (a sync)

    def reset(self) -> None:
        """Forget the history (the counters moved by other than this batch size)."""
        self.spare += [host for _, _, host in self.pending]
        self.pending.clear()


class GraphedStep:
    """`train_step(sae, opt, x, ...)` for a fixed [B, d] shape, replayed from a CUDA graph after `warmup` steps."""

    MAX_GRAPHS = 2  # graphs kept for different AuxK slot counts (each holds its own [B, n] buffers)

    def __init__(self, sae: TopKSAE, opt: torch.optim.Optimizer, *, impl: str, compute_dtype: torch.dtype,
                 force_dead: torch.Tensor | None = None, warmup: int = 3, loss_kw: dict | None = None):
        self.sae, self.opt, self.impl, self.cdt = sae, opt, impl, compute_dtype
        self.force_dead = force_dead
        self.loss_kw = loss_kw or {}  # further arguments of the loss (`train_step`'s)
        self.warmup = warmup
        self.enabled = graph_capturable(impl, sae.device)
        if self.enabled and not all(g.get("capturable") for g in opt.param_groups):
            raise ValueError("GraphedStep needs an Adam built with capturable=True (make_optimizer(capturable=True))")
        cfg = sae.cfg
        self.slotted = impl == "fused" and cfg.k_aux > 0 and cfg.auxk_coef > 0  # AuxK over C slots
        self.eager_steps = 0
        self.captures = 0
        self.graphs: dict[int | None, GraphedCall] = {}  # by AuxK slots C; each returns its LossOutput
        self.capacity: int | None = None  # the C of the graph last replayed
        self.bound: DeadBound | None = None
        self.forced_dead: int | None = None  # force_dead's count
        self.x: torch.Tensor | None = None  # [B, d] float32, the captured input (shared by the graphs)
        self.out: LossOutput | None = None  # the captured outputs, rewritten by each replay

    @property
    def graph(self) -> torch.cuda.CUDAGraph | None:
        """The graph last replayed (None before the first capture)."""
        return self.graphs[self.capacity].graph if self.capacity in self.graphs else None

    def __call__(self, x: torch.Tensor) -> LossOutput:
        if not self.enabled or (self.x is not None and x.shape != self.x.shape):
            if self.bound is not None:
                self.bound.reset()  # another batch size moves the counters by other than B
            return self._eager(x)
        if not self.graphs and self.eager_steps < self.warmup:
            self.eager_steps += 1
            with side_stream(device=x.device):  # an eager step, as capture asks of the steps before it
                return self._eager(x)
        if self.x is None:
            self.x = x.detach().float().clone()
            self.bound = DeadBound(self.sae, x.shape[0]) if self.slotted and self.force_dead is None else None
        else:
            self.x.copy_(x, non_blocking=True)
        capacity = self._slots()
        if capacity not in self.graphs:
            self._capture(capacity)
        self.capacity, self.out = capacity, self.graphs[capacity]()  # the first replay is the captured step's run
        if self.bound is not None:
            self.bound.sent()
        return self.out

    def _slots(self) -> int | None:
        """AuxK's slots C for this step: the last C while it holds the dead latents and is under twice what they
        need (fewer captures), else what they need."""
        if not self.slotted:
            return None
        cfg = self.sae.cfg
        k_aux = min(cfg.k_aux, cfg.n_features)
        if self.bound is None and self.forced_dead is None:
            self.forced_dead = int(self.force_dead.sum())  # a constant mask: counted once
        n_dead = self.forced_dead if self.bound is None else self.bound.next_bound()
        need = slot_capacity(n_dead, cfg.n_features, k_aux)
        if self.capacity is not None and need <= self.capacity < 2 * need:
            return self.capacity
        return need

    def _eager(self, x: torch.Tensor) -> LossOutput:
        self.opt.zero_grad(set_to_none=True)  # after a replay the grads still hold its values
        return train_step(self.sae, self.opt, x, impl=self.impl, compute_dtype=self.cdt, force_dead=self.force_dead,
                          loss_kw=self.loss_kw)

    def _capture(self, capacity: int | None) -> None:
        """Capture the step with `capacity` AuxK slots from `self.x` (it runs at the graph's first replay)."""
        if len(self.graphs) >= self.MAX_GRAPHS:
            self.graphs.pop(next(iter(self.graphs)))  # the oldest
        self.opt.zero_grad(set_to_none=True)  # backward then allocates the grads from the graph's pool
        kw = {**self.loss_kw, **({"aux_capacity": capacity} if capacity is not None else {})}

        def step() -> LossOutput:  # apply_update without its zero_grad: the grads must stay where the graph wrote them
            out = loss_fn(self.impl)(self.sae, self.x, compute_dtype=self.cdt, force_dead=self.force_dead, **kw)
            out.loss.backward()
            self.sae.remove_parallel_grad_()
            self.opt.step()
            self.sae.normalize_decoder_()
            self.sae.update_fire_counters_(out.fired, self.x.shape[0])
            if self.bound is not None:
                self.bound.record(out.overflow)
            return out

        # thread_local: a generating thread (StreamSource(prefetch=1)) may allocate or wait meanwhile
        self.graphs[capacity] = GraphedCall(step, capture_error_mode="thread_local")
        self.captures += 1


__all__ = ["CAPTURABLE_IMPLS", "DeadBound", "GraphedStep", "graph_capturable"]
