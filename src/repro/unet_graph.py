"""The UNet's forward replayed from a CUDA graph, with chosen blocks' updates as extra outputs.

One 512 px SDXL UNet call is ~1,500 kernels. Launched from Python they take tens of ms of
host time per call, time that the thread preparing the next batch (text towers, noise)
needs too: the two share the GIL, and on an H200 the GPU then waits for the host.
`UNetGraph` records one call as a CUDA graph and replays it: one launch per UNet call.

    graphed = UNetGraph(unet, blocks=["down.2.1", "up.0.1"])
    pred, updates = graphed(sample, t, embeds, added)   # updates {block: [B, C, H, W]}

A block's update is its output minus its input (as `repro.hooks` records it), computed
inside the graph. The first `warmup` calls run eagerly (what capture needs: cuDNN/cuBLAS
and the allocator warmed), the next one is captured, every later one copies its inputs
into the captured ones and replays. Inputs of another shape or dtype run eagerly, as does
everything off CUDA. The outputs of a replay live in graph memory that the next replay
overwrites: copy what you keep before the next call (in stream order, no host sync needed).

Only a UNet without other forward hooks may be replayed (a hook would run at capture
only): `unhooked` checks that, and `DirectSampler` runs eagerly otherwise.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from repro.hooks import block_hooks


def unhooked(unet: nn.Module) -> bool:
    """Whether no module of `unet` has a forward (pre-)hook: only then is a replay the same call."""
    return not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


def _signature(tensors: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors)


class UNetGraph:
    """`unet(sample, t, encoder_hidden_states=..., added_cond_kwargs=...)` plus block updates, for fixed shapes."""

    def __init__(self, unet: nn.Module, blocks: Sequence[str] = (), warmup: int = 1):
        self.unet = unet
        self.blocks = list(blocks)
        self.warmup = warmup
        self.eager_calls = 0
        self.replays = 0
        self.stream: torch.cuda.Stream | None = None  # warm-up and capture run on it
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None  # input signature of the captured call
        self.inputs: list[torch.Tensor | None] = []  # the captured inputs, refilled each replay
        self.outputs: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def _forward(self, sample, t, embeds, text_embeds, time_ids, timestep_cond):
        """One eager UNet call -> (noise prediction, {block: output - input})."""
        updates: dict[str, torch.Tensor] = {}

        def record(name):
            def fn(update, inp, step):
                updates[name] = update
                return None
            return fn

        with block_hooks(self.unet, {b: record(b) for b in self.blocks}):
            pred = self.unet(sample, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
                             cross_attention_kwargs=None,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                             return_dict=False)[0]
        return pred, updates

    @torch.no_grad()
    def eager(self, sample, t, embeds, added, timestep_cond=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The same call run eagerly (no graph), e.g. while the UNet carries other hooks."""
        return self._forward(sample, t, embeds, added["text_embeds"], added["time_ids"], timestep_cond)

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict[str, torch.Tensor],
                 timestep_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """sample [B, 4, h, w], t [] or [B], embeds [B, 77, D], added {text_embeds [B, P], time_ids [B, 6]}
        -> (prediction [B, 4, h, w], {block: [B, C, H, W]})."""
        args = [sample, t, embeds, added["text_embeds"], added["time_ids"], timestep_cond]
        key = _signature(args)
        if sample.device.type != "cuda" or (self.key is not None and key != self.key):
            return self._forward(*args)
        if self.graph is None:
            current = torch.cuda.current_stream(sample.device)
            self.stream = self.stream or torch.cuda.Stream(device=sample.device)
            self.stream.wait_stream(current)
            if self.eager_calls < self.warmup:  # on the capture stream, as capture needs (torch docs)
                self.eager_calls += 1
                with torch.cuda.stream(self.stream):
                    out = self._forward(*args)
                current.wait_stream(self.stream)
                return out
            self._capture(args, key)
            current.wait_stream(self.stream)
        for static, new in zip(self.inputs, args):
            if static is not None:
                static.copy_(new)
        self.graph.replay()
        self.replays += 1
        return self.outputs

    def _capture(self, args: list, key: tuple) -> None:
        with torch.cuda.stream(self.stream):
            self.inputs = [None if a is None else a.clone() for a in args]
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the next batch's text towers, SAE steps) go on launching meanwhile
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            self.outputs = self._forward(*self.inputs)
        self.graph, self.key = graph, key
