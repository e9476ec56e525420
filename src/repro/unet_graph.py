"""The UNet's forward replayed from a CUDA graph, with chosen blocks' updates as extra outputs.

One 512 px SDXL UNet call is ~1,500 kernels. Launched from Python they take tens of ms of
host time per call, time that the thread preparing the next batch (text towers, noise)
needs too: the two share the GIL, and on an H200 the GPU then waits for the host.
`UNetGraph` records one call as a CUDA graph and replays it: one launch per UNet call.

    graphed = UNetGraph(unet, blocks=["down.2.1", "up.0.1"])
    pred, updates = graphed(sample, t, embeds, added)   # updates {block: [B, C, H, W]}

A block's update is its output minus its input (as `repro.hooks` records it), computed inside
the graph. The first `warmup` calls run eagerly, the next is captured, later ones replay
(`repro.cuda_graph`); inputs of another shape or dtype, and all off CUDA, run eagerly. The next
replay overwrites a replay's outputs: copy what you keep before then (in stream order, no sync).

Only a UNet without other forward hooks may be replayed (a hook would run at capture
only): `unhooked` checks that, and `DirectSampler` runs eagerly otherwise.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from repro.cuda_graph import GraphedCall, side_stream
from repro.hooks import block_hooks


def unhooked(unet: nn.Module) -> bool:
    """Whether no module of `unet` has a forward (pre-)hook: only then is a replay the same call."""
    return not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())


class UNetGraph:
    """`unet(sample, t, encoder_hidden_states=..., added_cond_kwargs=...)` plus block updates, for fixed shapes."""

    def __init__(self, unet: nn.Module, blocks: Sequence[str] = (), warmup: int = 1):
        self.unet = unet
        self.blocks = list(blocks)
        self.warmup = warmup
        self.eager_calls = 0
        self.replays = 0
        self.stream: torch.cuda.Stream | None = None  # warm-up and capture run on it
        self.graph: GraphedCall | None = None  # inputs -> (prediction, updates), refilled / rewritten each replay

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
        args = dict(sample=sample, t=t, embeds=embeds, text_embeds=added["text_embeds"], time_ids=added["time_ids"],
                    timestep_cond=timestep_cond)
        if sample.device.type != "cuda" or (self.graph is not None and not self.graph.fits(args)):
            return self._forward(**args)
        if self.graph is None:
            self.stream = self.stream or torch.cuda.Stream(device=sample.device)
            with side_stream(self.stream, sample.device):  # warm-up and capture, as capture needs (torch docs)
                if self.eager_calls < self.warmup:
                    self.eager_calls += 1
                    return self._forward(**args)
                # thread_local: other threads (the next batch's text towers, SAE steps) go on launching meanwhile
                self.graph = GraphedCall(self._forward, args, stream=self.stream, capture_error_mode="thread_local")
        self.replays += 1
        return self.graph(args)
