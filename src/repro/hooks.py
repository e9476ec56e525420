"""Hooks on transformer blocks: capture their updates, or change them, during generation.

A block's *update* is `output - input` of its `Transformer2DModel`: what it writes into
the residual stream, shape [B, C, H, W] per UNet call. One UNet call is one denoising
step; under classifier-free guidance diffusers runs both halves in one call, the
unconditional half first: `[uncond; cond]` along the batch.

Everything here is a context manager that removes its hooks on exit, also when the
generation inside raises. Hooks run in the order they were installed: a capture opened
inside an `intervene` block sees the edited updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from repro.blocks import get_block, short_name

Half = Literal["cond", "uncond", "all"]


class StepCounter:
    """Counts UNet forward calls since the context opened: `step` is 0 during the first."""

    def __init__(self) -> None:
        self.step = -1

    def __call__(self, module, args, kwargs=None) -> None:
        self.step += 1


def _block_io(args, kwargs, output):
    """(input, output tensor, rebuild) for a Transformer2DModel call, whatever its return type."""
    inp = args[0] if args else kwargs["hidden_states"]
    if isinstance(output, tuple):
        return inp, output[0], lambda new: (new,) + tuple(output[1:])
    return inp, output.sample, lambda new: type(output)(sample=new)


@contextlib.contextmanager
def step_hooks(unet: nn.Module, hooks: dict[nn.Module, Callable]) -> Iterator[StepCounter]:
    """Install `hooks[module](args, kwargs, output, step) -> new output | None` as forward
    hooks, with `step` counted from the UNet's calls; all removed on exit, also on errors."""
    counter = StepCounter()
    handles = [unet.register_forward_pre_hook(counter)]
    try:
        for module, fn in hooks.items():
            hook = lambda module, args, kwargs, output, fn=fn: fn(args, kwargs, output, counter.step)  # noqa: E731
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        yield counter
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def block_hooks(unet: nn.Module, hooks: dict[str, Callable]) -> Iterator[StepCounter]:
    """Install `hooks[block](update, inp, step) -> new_update | None` on each block.

    Returning None leaves the block's output exactly as it was. Yields the step counter.
    """
    with step_hooks(unet, {get_block(unet, name): _on_update(fn) for name, fn in hooks.items()}) as counter:
        yield counter


def _on_update(fn: Callable):
    def hook(args, kwargs, output, step):
        inp, out, rebuild = _block_io(args, kwargs, output)
        new_update = fn(out - inp, inp, step)
        if new_update is None:
            return None
        return rebuild(inp + new_update.to(out.dtype))

    return hook


def split_halves(x: torch.Tensor, cfg: bool) -> dict[str, torch.Tensor]:
    """{"uncond": first half, "cond": second half} under guidance, else {"all": x}."""
    if not cfg:
        return {"all": x}
    if x.shape[0] % 2:
        raise ValueError(f"guidance is on but the batch of {x.shape[0]} is odd: cannot split cond/uncond")
    uncond, cond = x.chunk(2)
    return {"uncond": uncond, "cond": cond}


def stack_steps(records: list[torch.Tensor], cfg: bool, half: Half | None = None) -> torch.Tensor:
    """Per-step tensors [B_total, ...] -> [steps, B, ...]; under guidance keep one half
    ("cond" by default, "uncond", or "all" for the doubled batch)."""
    stacked = torch.stack(records)
    if not cfg or half == "all":
        return stacked
    uncond, cond = stacked.chunk(2, dim=1)
    return uncond if half == "uncond" else cond


# ---------------------------------------------------------------------------------------
# Capture


@dataclass
class Capture:
    """Tensors recorded per key and step (`capture`): `raw[key][i]` is [B_total, ...] of step `steps[key][i]`.

    What is recorded is the caller's: block updates [B_total, C, H, W] keyed by block short name
    (`capture_updates`), or GEGLU outputs [B_total, HW, inner] keyed by (block, layer)
    (`repro.riebench.neurons.capture_neurons`)."""

    cfg: bool = False
    raw: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)

    def stacked(self, key, half: Half | None = None) -> torch.Tensor:
        """[steps, B, ...] recorded under `key` (a block name in any spelling). Under guidance pick
        `half` ("cond" by default, "uncond", or "all" for the doubled batch)."""
        key = short_name(key) if isinstance(key, str) else key
        if not self.raw.get(key):
            raise KeyError(f"nothing captured for {key!r}; captured: {sorted(self.raw)}")
        return stack_steps(self.raw[key], self.cfg, half)

    updates = acts = stacked  # the names callers read them by: a block's updates, a layer's activations

    def __getitem__(self, key) -> torch.Tensor:
        return self.stacked(key)

    def clear(self) -> None:
        self.raw.clear()
        self.steps.clear()


Read = Callable[[tuple, dict, object], torch.Tensor]
"""(args, kwargs, output) of a module's call -> the tensor to record."""


@contextlib.contextmanager
def capture(
    unet: nn.Module,
    taps: dict[object, tuple[nn.Module, Read]],
    *,
    cfg: bool = False,
    steps: Iterable[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    on_record: Callable[[object, int, torch.Tensor], None] | None = None,
) -> Iterator[Capture]:
    """Record `read(args, kwargs, output)` of each `taps[key] = (module, read)` at every step (or only `steps`).

    `device`/`dtype` move each tensor as it is taken (default: leave it where it is, no GPU
    sync). `on_record(key, step, tensor)` is called instead of storing when given: the
    streaming path uses it to hand tensors on without keeping them.
    """
    cap = Capture(cfg=cfg)
    wanted = None if steps is None else set(steps)

    def recorder(key, read: Read):
        def fn(args, kwargs, output, step):
            if wanted is not None and step not in wanted:
                return None
            t = read(args, kwargs, output).detach()
            if device is not None or dtype is not None:
                t = t.to(device=device, dtype=dtype, non_blocking=True)
            if on_record is not None:
                on_record(key, step, t)
            else:
                cap.raw.setdefault(key, []).append(t)
                cap.steps.setdefault(key, []).append(step)
            return None

        return fn

    with step_hooks(unet, {module: recorder(key, read) for key, (module, read) in taps.items()}):
        yield cap


def _update(args, kwargs, output) -> torch.Tensor:
    inp, out, _ = _block_io(args, kwargs, output)
    return out - inp


def capture_updates(
    unet: nn.Module,
    blocks: Iterable[str],
    *,
    cfg: bool = False,
    steps: Iterable[int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    on_update: Callable[[str, int, torch.Tensor], None] | None = None,
):
    """`capture` of the update of each block (keys: short names), [B_total, C, H, W] a step;
    `on_update(block, step, update)` as `capture`'s `on_record`."""
    taps = {name: (get_block(unet, name), _update) for name in map(short_name, blocks)}
    return capture(unet, taps, cfg=cfg, steps=steps, device=device, dtype=dtype, on_record=on_update)


# ---------------------------------------------------------------------------------------
# Interventions


def _mask_weights(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [H, W] or [B, H, W] mask (bool or weights in [0, 1]) as [B|1, 1, H, W] weights."""
    m = mask.to(device=like.device, dtype=like.dtype)
    if m.dim() == 2:
        m = m[None]
    if m.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"mask of spatial size {tuple(m.shape[-2:])} does not match the block's {tuple(like.shape[-2:])}")
    if m.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"a mask for {m.shape[0]} images met a batch of {like.shape[0]}: give one mask per image "
                         "of the batch (generate_with slices [N, H, W] masks per batch with Edit.rows)")
    return m[:, None]


@dataclass
class Edit:
    """How to change a block's update, restricted to `mask` positions and `steps`.

    Subclasses define `edited(update, step, half)`; the result is blended in by the mask:
    `update + mask * (edited - update)`. `steps=None` means every step.
    """

    mask: torch.Tensor | None = None
    """[H, W] for every image, or [N, H, W]: one per image of the prompts (see `rows`)."""
    steps: Iterable[int] | None = None
    """Steps the edit acts at (any iterable, kept as a frozenset: a generator is read once, here)."""

    def __post_init__(self) -> None:
        if self.steps is not None:
            self.steps = frozenset(int(s) for s in self.steps)

    def active(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def rows(self, sl: slice) -> "Edit":
        """This edit for the images `sl` of the prompts: a per-image mask [N, H, W] is sliced, the rest kept."""
        if self.mask is None or self.mask.dim() != 3:
            return self
        return dataclasses.replace(self, mask=self.mask[sl])

    def edited(self, update: torch.Tensor, step: int, half: Half) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, update: torch.Tensor, step: int, half: Half) -> torch.Tensor:
        new = self.edited(update, step, half)
        if self.mask is None:
            return new
        return update + _mask_weights(self.mask, update) * (new - update)


@dataclass
class Ablate(Edit):
    """The block writes nothing: its output is its input (the paper's block ablation)."""

    def edited(self, update, step, half):
        return torch.zeros_like(update)


@dataclass
class Scale(Edit):
    """Multiply the update by `factor`."""

    factor: float = 1.0

    def edited(self, update, step, half):
        return update * self.factor


@dataclass
class Replace(Edit):
    """Replace the update by `value` (broadcastable to [B, C, H, W]) or by `value(update, step, half)`."""

    value: torch.Tensor | Callable | None = None

    def edited(self, update, step, half):
        new = self.value(update, step, half) if callable(self.value) else self.value
        return torch.broadcast_to(new.to(device=update.device, dtype=update.dtype), update.shape)


@dataclass
class Add(Edit):
    """Add `strength * direction` ([C], [C, H, W] or [B, C, H, W]) to the update.

    Under guidance (the paper's rule) it is added to the conditional half and subtracted
    from the unconditional half, which pushes the guided prediction the same way twice;
    `cfg_rule="both"` adds it to both halves instead.
    """

    direction: torch.Tensor | None = None
    strength: float = 1.0
    cfg_rule: Literal["signed", "both", "cond"] = "signed"

    def edited(self, update, step, half):
        d = self.direction.to(device=update.device, dtype=update.dtype)
        if d.dim() == 1:
            d = d[:, None, None]
        sign = 1.0
        if half == "uncond":
            sign = {"signed": -1.0, "both": 1.0, "cond": 0.0}[self.cfg_rule]
        return update + sign * self.strength * d


@dataclass
class RowSegments(Edit):
    """Different edits on consecutive row ranges of one batch (`parts`: [(start, stop, edits)], the
    edits applied in order to rows start:stop; rows outside every part unchanged): one generation
    runs several variants of the same prompts side by side (`by_rows`). Any edit with
    `apply(x, step, half)` fits, block edits and GEGLU-neuron edits alike; under guidance each half
    holds the same rows in the same order, so the ranges hold in both."""

    parts: list = field(default_factory=list)

    def active(self, step: int) -> bool:
        return any(_live(e, step) for _, _, edits in self.parts for e in edits)

    def apply(self, update: torch.Tensor, step: int, half: Half) -> torch.Tensor:
        out, at = [], 0
        for start, stop, edits in self.parts:
            if start > at:
                out.append(update[at:start])
            part = update[start:stop]
            for e in edits:
                if _live(e, step):
                    part = e.apply(part, step, half)
            out.append(part)
            at = stop
        if at < update.shape[0]:
            out.append(update[at:])
        return torch.cat(out)


def _live(edit, step: int) -> bool:
    return edit.active(step) if hasattr(edit, "active") else True


def batch_pieces(sizes: list[int], batch_size: int) -> Iterator[list[tuple[int, int, int, slice]]]:
    """Groups of `sizes` rows laid end to end (variants of the same prompts, a method's settings...),
    cut into batches of `batch_size` rows: per batch, its pieces [(start, stop, group, the group's
    rows)], rows start:stop of the batch being those rows of that group."""
    rows = [(g, i) for g, size in enumerate(sizes) for i in range(size)]
    for first in range(0, len(rows), batch_size):
        chunk, pieces, a = rows[first : first + batch_size], [], 0
        while a < len(chunk):
            g, i0 = chunk[a]
            b = min(len(chunk), a + sizes[g] - i0)
            pieces.append((a, b, g, slice(i0, i0 + b - a)))
            a = b
        yield pieces


def by_rows(pieces: list[tuple[int, int, dict]]) -> dict:
    """Per-range edits -> one edit dict for the batch: `pieces` [(start, stop, {key: edit or list})]
    (key: a block, or a (block, layer) for neuron edits), ranges in order, disjoint and covering the
    batch -> {key: [RowSegments]}; one piece (one variant fills the batch) keeps its own edits."""
    keys = list(dict.fromkeys(k for _, _, edits in pieces for k in edits))
    out = {}
    for key in keys:
        parts = [(a, b, e if isinstance(e, list) else [e]) for a, b, edits in pieces if (e := edits.get(key))]
        whole = len(pieces) == 1 and len(parts) == 1
        out[key] = parts[0][2] if whole else [RowSegments(parts=parts)]
    return out


def edits_for_rows(edits: dict[str, "Edit | list[Edit]"], sl: slice) -> dict[str, list["Edit"]]:
    """`edits` ({block: edit or list}) for the images `sl` of the prompts (`Edit.rows` on each)."""
    return {b: [e.rows(sl) for e in (v if isinstance(v, list) else [v])] for b, v in edits.items()}


@contextlib.contextmanager
def intervene(
    unet: nn.Module, edits: dict[str, Edit | list[Edit]], *, cfg: bool = False
) -> Iterator[StepCounter]:
    """Apply `edits[block]` (one edit or a list, applied in order) while generating.

    With `cfg=True` each edit sees the two halves of the batch separately (`half` is
    "uncond" then "cond"); otherwise it sees the whole batch with `half="all"`.
    """

    def editor(edit_list: list[Edit]):
        def fn(update, inp, step):
            live = [e for e in edit_list if e.active(step)]
            if not live:
                return None
            parts = []
            for half, part in split_halves(update, cfg).items():
                for edit in live:
                    part = edit.apply(part, step, half)
                parts.append(part)
            return torch.cat(parts) if len(parts) > 1 else parts[0]

        return fn

    hooks = {short_name(b): editor(e if isinstance(e, list) else [e]) for b, e in edits.items()}
    with block_hooks(unet, hooks) as counter:
        yield counter
