"""RIEBench's editing methods: feature transport (all blocks, or one block), and the baselines.

| method | what is added while regenerating the target | grid |
|---|---|---|
| transport | m * z_src @ W_dec of the top-k features (source mask), minus the same of the bottom-k target features (target mask); scored jointly over all blocks' SAE features | k_transfer x m_transfer |
| per_block | the same, scored and selected within one block's features; one run per block | k_transfer x m_transfer |
| steer | m * the whole source update (source mask), minus m * the whole target update (target mask) | m_steer |
| neurons | transport on the GEGLU outputs of the blocks' feed-forward layers (scored jointly over all of them) | k_neurons x m_neurons |

Everything is computed from one *reference* pass that generates [source, target] =
[edit prompt, original prompt] with the same seed and caches every block's update (and
the GEGLU outputs, for the neuron baseline) at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from repro.errors import ReproError, choices_hint
from repro.generate import Sampling, generate
from repro.hooks import capture_updates
from repro.riebench.data import RIEEdit
from repro.riebench.neurons import NeuronTransport, capture_neurons
from repro.riebench.transport import (
    FeatureTransport, StepAdd, joint_scores, mask_mean, sae_codes, selected_units, selection_weights,
)

METHODS = ("transport", "per_block", "steer", "neurons")
"""Every method `run_benchmark` knows."""


PAPER_NEURONS = 204_800
"""GEGLU neurons of SDXL's four RIEBench blocks (`ff_width` summed over them), the paper's k_neurons' denominator."""
TOY_NEURONS = 4_096
"""The same of the toy's four blocks (shapes-turbo: 8 feed-forward layers of 512)."""


def scaled_neurons(ks, n_neurons: int, of: int = PAPER_NEURONS) -> tuple[int, ...]:
    """k's as the same shares of `n_neurons` as they are of `of` (rounded, at least 1)."""
    return tuple(max(1, round(int(k) * n_neurons / of)) for k in ks)


@dataclass(frozen=True)
class Grid:
    """Parameter grid of every method (defaults: the paper's)."""

    k_transfer: tuple[int, ...] = (80, 160, 320, 640)
    """Features added (top) and subtracted (bottom) by feature transport."""
    m_transfer: tuple[float, ...] = (1.0, 2.0)
    """Transport strengths."""
    m_steer: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    """Whole-update steering strengths."""
    k_neurons: tuple[int, ...] = (5000, 10000, 20000, 40000, 80000)
    """Neurons added and subtracted (paper: 5k..80k of 204,800)."""
    m_neurons: tuple[float, ...] = (1.0, 2.0)
    """Neuron transport strengths (not published: we use the transport's)."""

    def __post_init__(self):
        for name in ("k_transfer", "k_neurons"):
            if any(int(k) < 1 for k in getattr(self, name)):
                raise ReproError(f"Grid.{name} holds a k below 1: {getattr(self, name)}")

    @classmethod
    def toy(cls, n_neurons: int = TOY_NEURONS) -> "Grid":
        """A small grid for ShapesWorld (SAEs of a few hundred features, CPU).

        The neuron k are the paper's as shares of its 204,800 neurons, on `n_neurons` (the
        toy's four blocks: 4,096): 100 .. 1,600, up to the paper's 39 %, at m 1 and 2."""
        return cls(k_transfer=(8, 32), m_transfer=(1.0, 2.0), m_steer=(0.5, 1.0),
                   k_neurons=scaled_neurons(cls.k_neurons, n_neurons), m_neurons=(1.0, 2.0))

    @classmethod
    def named(cls, name: str) -> "Grid":
        """The grid a profile names (`Profile.riebench_grid`): "paper" or "toy"."""
        grids = {"paper": cls, "toy": cls.toy}
        if name not in grids:
            raise ReproError(f"unknown RIEBench grid {name!r}: use {choices_hint(grids)}")
        return grids[name]()


@dataclass
class Setting:
    """One edited image: which method with which parameters, and what it selected."""

    method: str
    blocks: tuple[str, ...]
    k: int | None = None
    m: float | None = None
    n_top: dict[str, int] = field(default_factory=dict)
    """Units added per block (transport: features; neurons: summed over the block's layers)."""
    n_bottom: dict[str, int] = field(default_factory=dict)
    """Units subtracted per block."""


@dataclass
class Plan:
    """Settings of one method run and a builder of their edits for a slice of them (a batch)."""

    settings: list[Setting]
    block_edits: Callable[[slice], dict] = lambda sl: {}
    neuron_edits: Callable[[slice], dict] = lambda sl: {}
    selections: list[dict] = field(default_factory=list)
    """SAE-feature methods: one {method, k, blocks, top: {block: [ids]}, bottom: {block: [ids]}}
    per scored group and k (every m of a k moves the same features)."""


@dataclass
class Reference:
    """The reference pass of one edit: images, cached updates and masks on each block's grid."""

    images: np.ndarray
    """uint8 [2, H, W, 3]: source (edit prompt), target (original prompt)."""
    updates: dict[str, dict[str, torch.Tensor]]
    """{block: {half: [steps, 2, C, h, w]}} (index 0 source, 1 target)."""
    masks: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """{block: (source, target) bool [h, w]}."""
    halves: tuple[str, ...]
    """("all",) without guidance, ("uncond", "cond") with it."""
    neurons: dict[tuple[str, int], dict[str, torch.Tensor]] | None = None
    """{(block, layer): {half: [steps, 2, HW, inner]}} when the neuron baseline runs."""

    @property
    def score_half(self) -> str:
        """The half whose first step is scored: the conditional one under guidance."""
        return "cond" if "cond" in self.halves else "all"


def reference_pass(pipe, edit: RIEEdit, blocks: list[str], sampling: Sampling, with_neurons: bool = False,
                   dilate_px: int = 0, threshold: float = 0.0, segmenter=None) -> tuple[Reference, RIEEdit]:
    """Generate [source, target] for `edit` with one seed, caching every block's update at every step.

    Edits without masks are segmented in the generated images when a `segmenter` is given.
    Returns the reference and the edit (with its masks), validated; raises ReproError."""
    cfg = sampling.cfg
    halves = ("uncond", "cond") if cfg else ("all",)
    prompts, seeds = [edit.edit_prompt, edit.original_prompt], [edit.seed, edit.seed]
    with capture_updates(pipe.unet, blocks, cfg=cfg) as cap:
        if with_neurons:
            with capture_neurons(pipe.unet, blocks, cfg=cfg) as ncap:
                images = generate(pipe, prompts, seeds, sampling)
        else:
            images = generate(pipe, prompts, seeds, sampling)
    if segmenter is not None and (edit.source_mask is None or edit.target_mask is None):
        from repro.riebench.segment import segment_edit

        edit = segment_edit(edit, segmenter, images[0], images[1])
    edit.validate(resolution=images.shape[1])
    updates = {b: {h: cap.updates(b, h) for h in halves} for b in blocks}
    masks = {}
    for b in blocks:
        grid = updates[b][halves[0]].shape[-1]
        masks[b] = edit.block_masks(grid, dilate_px, threshold)
        for name, m in zip(("source", "target"), masks[b]):
            if not m.any():
                raise ReproError(f"edit {edit.id!r}: its {name} mask covers no cell of block {b}'s {grid}x{grid} "
                                 "grid; lower the mask threshold or dilate the mask")
    neurons = None
    if with_neurons:
        neurons = {key: {h: ncap.acts(key, h) for h in halves} for key in ncap.raw}
    return Reference(images=images, updates=updates, masks=masks, halves=halves, neurons=neurons), edit


def _block_counts(counts: dict) -> tuple[dict[str, int], dict[str, int]]:
    """{key: {"top", "bottom"}} with keys blocks or (block, layer) -> per-block sums."""
    top: dict[str, int] = {}
    bottom: dict[str, int] = {}
    for key, c in counts.items():
        block = key[0] if isinstance(key, tuple) else key
        top[block] = top.get(block, 0) + c["top"]
        bottom[block] = bottom.get(block, 0) + c["bottom"]
    return top, bottom


def transport_plan(ref: Reference, saes: dict, blocks: list[str], ks, ms, strict_sign: bool = False,
                   per_block: bool = False) -> Plan:
    """Feature transport for every (k, m): scored jointly over all `blocks`' SAE features, or
    (`per_block=True`) within each block alone, one run per block (batched together)."""
    src_codes, tgt_codes, src_means, tgt_means = {}, {}, {}, {}
    for b in blocks:
        src_codes[b] = {h: sae_codes(saes[b], ref.updates[b][h][:, 0]) for h in ref.halves}  # [S, h, w, n]
        tgt_codes[b] = {h: sae_codes(saes[b], ref.updates[b][h][:, 1]) for h in ref.halves}
        src_means[b] = mask_mean(src_codes[b][ref.score_half][0].flatten(0, 1), ref.masks[b][0])  # [n]
        tgt_means[b] = mask_mean(tgt_codes[b][ref.score_half][0].flatten(0, 1), ref.masks[b][1])
    groups = [[b] for b in blocks] if per_block else [list(blocks)]
    method = "per_block" if per_block else "transport"
    settings, add_rows, sub_rows, selections = [], {b: [] for b in blocks}, {b: [] for b in blocks}, []
    for group in groups:
        scores = joint_scores({b: src_means[b] for b in group}, {b: tgt_means[b] for b in group})
        for k in ks:
            add, sub, counts = selection_weights(scores, k, ms, strict_sign)
            top_ids, bottom_ids = selected_units(scores, k, strict_sign)
            selections.append({"method": method, "k": int(k), "blocks": list(group),
                               "top": {b: ids.tolist() for b, ids in top_ids.items()},
                               "bottom": {b: ids.tolist() for b, ids in bottom_ids.items()}})
            top, bottom = _block_counts(counts)
            settings += [Setting(method, tuple(group), int(k), float(m), top, bottom) for m in ms]
            for b in blocks:  # blocks outside the group get zero weights in these rows
                zero = torch.zeros(len(ms), saes[b].cfg.n_features)
                add_rows[b].append(add.get(b, zero))
                sub_rows[b].append(sub.get(b, zero))
    add_w = {b: torch.cat(add_rows[b]) for b in blocks}  # [settings, n]
    sub_w = {b: torch.cat(sub_rows[b]) for b in blocks}

    def build(sl: slice) -> dict:
        edits = {}
        for b in blocks:
            W_dec = saes[b].W_dec.detach()
            src_mask, tgt_mask = ref.masks[b]
            parts = []
            if add_w[b][sl].any():
                parts.append(FeatureTransport(codes=src_codes[b], weights=add_w[b][sl], W_dec=W_dec, mask=src_mask))
            if sub_w[b][sl].any():
                parts.append(FeatureTransport(codes=tgt_codes[b], weights=sub_w[b][sl], W_dec=W_dec, sign=-1.0,
                                              mask=tgt_mask))
            if parts:
                edits[b] = parts
        return edits

    return Plan(settings, block_edits=build, selections=selections)


def steer_plan(ref: Reference, blocks: list[str], ms) -> Plan:
    """Whole-update steering: + m * source update (source mask), - m * target update (target mask)."""
    settings = [Setting("steer", tuple(blocks), None, float(m)) for m in ms]
    scale = torch.as_tensor([float(m) for m in ms])

    def build(sl: slice) -> dict:
        edits = {}
        for b in blocks:
            src = {h: ref.updates[b][h][:, 0] for h in ref.halves}  # [S, C, h, w]
            tgt = {h: ref.updates[b][h][:, 1] for h in ref.halves}
            edits[b] = [StepAdd(value=src, scale=scale[sl], mask=ref.masks[b][0]),
                        StepAdd(value=tgt, scale=scale[sl], sign=-1.0, mask=ref.masks[b][1])]
        return edits

    return Plan(settings, block_edits=build)


def neuron_plan(ref: Reference, blocks: list[str], ks, ms, strict_sign: bool = False) -> Plan:
    """Transport on GEGLU neurons of every feed-forward layer of `blocks`, scored jointly."""
    if ref.neurons is None:
        raise ReproError("the reference pass did not capture neurons; run it with with_neurons=True")
    keys = [key for key in ref.neurons if key[0] in blocks]
    src = {key: {h: ref.neurons[key][h][:, 0] for h in ref.halves} for key in keys}  # [S, HW, inner]
    tgt = {key: {h: ref.neurons[key][h][:, 1] for h in ref.halves} for key in keys}
    scores = joint_scores({key: mask_mean(src[key][ref.score_half][0], ref.masks[key[0]][0]) for key in keys},
                          {key: mask_mean(tgt[key][ref.score_half][0], ref.masks[key[0]][1]) for key in keys})
    settings, add_rows, sub_rows = [], {key: [] for key in keys}, {key: [] for key in keys}
    for k in ks:
        add, sub, counts = selection_weights(scores, k, ms, strict_sign)
        top, bottom = _block_counts(counts)
        settings += [Setting("neurons", tuple(blocks), int(k), float(m), top, bottom) for m in ms]
        for key in keys:
            add_rows[key].append(add[key])
            sub_rows[key].append(sub[key])
    add_w = {key: torch.cat(v) for key, v in add_rows.items()}
    sub_w = {key: torch.cat(v) for key, v in sub_rows.items()}

    def build(sl: slice) -> dict:
        edits = {}
        for key in keys:
            src_mask, tgt_mask = ref.masks[key[0]]
            parts = []
            if add_w[key][sl].any():
                parts.append(NeuronTransport(acts=src[key], weights=add_w[key][sl], mask=src_mask))
            if sub_w[key][sl].any():
                parts.append(NeuronTransport(acts=tgt[key], weights=sub_w[key][sl], mask=tgt_mask, sign=-1.0))
            if parts:
                edits[key] = parts
        return edits

    return Plan(settings, neuron_edits=build)


def plans(ref: Reference, saes: dict, blocks: list[str], methods, grid: Grid, strict_sign: bool = False) -> list[Plan]:
    """Every method's plan for one edit, in `methods` order."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ReproError(f"unknown RIEBench method {unknown[0]!r}: use {choices_hint(METHODS)}")
    out = []
    for method in methods:
        if method == "transport":
            out.append(transport_plan(ref, saes, blocks, grid.k_transfer, grid.m_transfer, strict_sign))
        elif method == "per_block":
            out.append(transport_plan(ref, saes, blocks, grid.k_transfer, grid.m_transfer, strict_sign, True))
        elif method == "steer":
            out.append(steer_plan(ref, blocks, grid.m_steer))
        else:
            out.append(neuron_plan(ref, blocks, grid.k_neurons, grid.m_neurons, strict_sign))
    return out
