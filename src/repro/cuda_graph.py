"""CUDA-graph capture and replay for `TrainStep`, `GraphedStep` and `UNetGraph`, as torch's docs ask.

The eager calls before a capture run on a side stream (`side_stream`). Capture records without running: a
`GraphedCall` runs at its first replay, which reads the inputs and writes the outputs of the capture (new
inputs are copied in first; the next replay overwrites the outputs). Off CUDA the callers run eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch


@contextmanager
def side_stream(stream: torch.cuda.Stream | None = None, device: torch.device | None = None) -> Iterator[None]:
    """The block on `stream` (else a fresh side stream), after the current stream's work and before its later work."""
    current = torch.cuda.current_stream(device)
    side = stream or torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)


class GraphedCall:
    """`fn(**inputs)` captured as a CUDA graph; `self(new)` copies `new` into its inputs, replays, returns outputs.

    inputs: {name: tensor or None}, cloned into those the graph reads. stream, pool (another graph's, to read
    its outputs), capture_error_mode: as `torch.cuda.graph` takes them."""

    def __init__(self, fn: Callable, inputs: Mapping[str, torch.Tensor | None] | None = None, *, stream=None,
                 pool: tuple | None = None, capture_error_mode: str = "global"):
        self.inputs = {name: None if t is None else t.clone() for name, t in (inputs or {}).items()}
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode=capture_error_mode):
            self.outputs = fn(**self.inputs)

    def fits(self, inputs: Mapping[str, torch.Tensor | None]) -> bool:
        """Whether `inputs` have the shapes, dtypes, devices and Nones of the captured ones (else run eagerly)."""
        def meta(tensors): return {k: None if t is None else (t.shape, t.dtype, t.device) for k, t in tensors.items()}
        return meta(inputs) == meta(self.inputs)

    def __call__(self, inputs: Mapping[str, torch.Tensor | None] | None = None):
        for name, new in (inputs or {}).items():
            if self.inputs[name] is not None:  # None at capture: None now (`fits`)
                self.inputs[name].copy_(new, non_blocking=True)
        self.graph.replay()
        return self.outputs
