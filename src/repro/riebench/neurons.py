"""The neuron baseline's hooks: the GEGLU outputs of the blocks' feed-forward layers.

Each transformer layer `i` of a block has a feed-forward net `ff.net = [GEGLU, Dropout,
Linear]`; the GEGLU output `h` [B, HW, inner] (HW = the block's positions in row-major
order, inner = 4 x channels in SDXL: 5120) is what the paper calls the neurons. SDXL's
four blocks hold 10 layers each: 4 x 10 x 5120 = 204,800 neurons.

A neuron is addressed by `(block, layer)` plus its index in `inner`. Both context
managers count UNet calls (steps) themselves and remove every hook on exit, also when
the generation inside raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from repro.blocks import get_block, short_name
from repro.hooks import Half, StepCounter, capture, split_halves, step_hooks

NeuronKey = tuple[str, int]
"""(block short name, transformer layer index)."""


def ff_modules(unet: nn.Module, blocks: Iterable[str]) -> dict[NeuronKey, nn.Module]:
    """The GEGLU module (`transformer_blocks[i].ff.net[0]`) of every layer of `blocks`, in order."""
    out = {}
    for block in blocks:
        name = short_name(block)
        for i, layer in enumerate(get_block(unet, name).transformer_blocks):
            out[(name, i)] = layer.ff.net[0]
    return out


def ff_width(module: nn.Module) -> int:
    """Neurons of one GEGLU (or GELU) module: its projection's width (halved for GEGLU's gate)."""
    gated = type(module).__name__ in ("GEGLU", "SwiGLU")
    return module.proj.out_features // (2 if gated else 1)


def _module_hooks(unet: nn.Module, hooks: dict[nn.Module, Callable]):
    """`hooks[module](output, step)` on GEGLU modules (see `repro.hooks.step_hooks`)."""
    return step_hooks(unet, {m: (lambda args, kwargs, out, step, fn=fn: fn(out, step)) for m, fn in hooks.items()})


def _output(args, kwargs, output) -> torch.Tensor:
    return output


def capture_neurons(
    unet: nn.Module, blocks: Iterable[str], *, cfg: bool = False, steps: Iterable[int] | None = None,
    device: torch.device | str | None = None,
):
    """`repro.hooks.capture` of every GEGLU output of `blocks` at every step (or only `steps`), [B, HW, inner]
    each, keyed by (block, layer): `cap.acts(key, half)` is [steps, B, HW, inner]."""
    taps = {key: (mod, _output) for key, mod in ff_modules(unet, blocks).items()}
    return capture(unet, taps, cfg=cfg, steps=steps, device=device)


@dataclass
class NeuronTransport:
    """At step s add `sign * (acts[half][s] * weights)` inside `mask` to a GEGLU output.

    acts: {half: [steps, HW, inner]} cached activations (of the source or target image);
    weights: [B, inner] per batch element (m on the selected neurons, 0 elsewhere);
    mask: [H, W] or [B, H, W] on the block grid (None: everywhere).
    """

    acts: dict[str, torch.Tensor]
    weights: torch.Tensor
    mask: torch.Tensor | None = None
    sign: float = 1.0

    def apply(self, out: torch.Tensor, step: int, half: Half) -> torch.Tensor:
        """out [B, HW, inner] -> edited [B, HW, inner]."""
        a = self.acts[half][step].to(device=out.device, dtype=out.dtype)  # [HW, inner]
        delta = a[None] * self.weights.to(device=out.device, dtype=out.dtype)[:, None, :]  # [B, HW, inner]
        if self.mask is not None:
            m = self.mask.to(device=out.device, dtype=out.dtype)
            m = m.reshape(-1, m.shape[-2] * m.shape[-1])  # [B|1, HW], row-major like diffusers
            delta = delta * m[..., None]
        return out + self.sign * delta


@contextlib.contextmanager
def edit_neurons(
    unet: nn.Module, edits: dict[NeuronKey, NeuronTransport | list[NeuronTransport]], *, cfg: bool = False
) -> Iterator[StepCounter]:
    """Apply `edits[(block, layer)]` to those GEGLU outputs while generating (halves apart under guidance)."""
    blocks = sorted({key[0] for key in edits})
    modules = ff_modules(unet, blocks)
    missing = [key for key in edits if key not in modules]
    if missing:
        raise KeyError(f"no feed-forward layer {missing[0]}; valid: {sorted(modules)}")

    def editor(edit_list):
        def fn(out, step):
            parts = []
            for half, part in split_halves(out, cfg).items():
                for edit in edit_list:
                    part = edit.apply(part, step, half)
                parts.append(part)
            return torch.cat(parts) if len(parts) > 1 else parts[0]

        return fn

    hooks = {modules[key]: editor(e if isinstance(e, list) else [e]) for key, e in edits.items()}
    with _module_hooks(unet, hooks) as counter:
        yield counter
