"""A CPU check that a training step never reads a tensor's value on the host (a sync that would
break CUDA-graph capture): `with no_host_sync(): step(...)` raises `HostSync` at the first read."""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode


class HostSync(RuntimeError):
    """A tensor's value was read on the host inside a training step."""


_SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
            torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.cpu, torch.Tensor.numpy,
            torch.masked_select, torch.Tensor.masked_select, torch.unique, torch.Tensor.unique}


class _SyncDetector(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            raise HostSync(f"{getattr(func, '__qualname__', func)} reads a tensor on the host")
        if func is torch.Tensor.__getitem__ and any(
                torch.is_tensor(a) and a.dtype == torch.bool for a in _flat(args[1:])):
            raise HostSync("boolean-mask indexing needs the mask's count on the host")
        return func(*args, **(kwargs or {}))


def _flat(items):
    for item in items:
        if isinstance(item, (tuple, list)):
            yield from _flat(item)
        else:
            yield item


@contextlib.contextmanager
def no_host_sync():
    """Raise `HostSync` where code inside reads a tensor's value on the host (CPU check of a graphable step)."""
    with _SyncDetector():
        yield
