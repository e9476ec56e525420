"""Transfer: a 1-step SAE applied to the updates of every step of other samplers/models.

The paper's second claim is that SAEs trained on 1-step SDXL Turbo also reconstruct the
updates of 4-step Turbo and of multi-step SDXL base (with guidance: cond and uncond halves).
A *control* SAE trained on the target setting itself gives the ceiling of each cell; it is
a ceiling only when it gets the same budget (width, k, batch, steps) as the SAE it is
compared with, so `train_controls` trains one control up to that budget, keeping a copy at
several budgets on the way, and `curves_from_sums` gives the curve of control EV against
training tokens.

The *share of the ceiling* of a cell is (EV of the 1-step SAE) / (EV of the control), each
averaged over the cell's steps; `share_of_ceiling` gives it a bootstrap interval over
images, resampling the same images (at every step) for both SAEs, since both are
measured on the same updates.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Sequence

import torch

import numpy as np

from repro.evaluate.reconstruction import (ImageSums, code_overlap, codes, codes_cosines, draw_weights, image_sums,
                                          image_sums_of, percentile_interval)
from repro.sae.config import SAEConfig, TrainConfig
from repro.sae.model import TopKSAE
from repro.sae.sources import TensorSource
from repro.sae.train import train_saes


def step_sums(sae: TopKSAE, updates: torch.Tensor) -> list[ImageSums]:
    """Per-image moments of `sae` at each step: updates [steps, N, H, W, C] -> [steps] `ImageSums`."""
    return [image_sums(sae, updates[t]) for t in range(updates.shape[0])]


def ev_per_step(sae: TopKSAE, updates: torch.Tensor) -> list[float]:
    """EV of `sae` at each step: updates [steps, N, H, W, C] -> [steps] floats."""
    return [s.ev() for s in step_sums(sae, updates)]


def share_of_ceiling(transfer: list[ImageSums], control: list[ImageSums], n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """Transfer EV / control EV (each the mean over steps) of one cell, from both SAEs'
    `step_sums` on the same updates, with a 95% bootstrap interval over images (one
    resample of the images serves every step and both SAEs).

    Returns {"share", "lo", "hi", "transfer_ev", "control_ev", "n_images"}."""
    def mean_ev(sums: list[ImageSums]) -> float:
        return float(np.mean([s.ev() for s in sums]))

    n = len(transfer[0].x2)
    lo, hi = (float("nan"),) * 2
    if n_boot and n > 1:
        # the draws of `repro.intervals.bootstrap(np.arange(n), share, n_boot, seed=seed)`, every
        # resample's EVs in one product per step and SAE (the same shares up to float64 rounding)
        w = draw_weights(n, n_boot, seed)
        lo, hi = percentile_interval(np.mean([s.ev_draws(w) for s in transfer], axis=0)
                                     / np.mean([s.ev_draws(w) for s in control], axis=0))
    return {"share": mean_ev(transfer) / mean_ev(control), "lo": lo, "hi": hi, "transfer_ev": mean_ev(transfer),
            "control_ev": mean_ev(control), "n_images": n}


def overlap_per_step(sae: TopKSAE, updates: torch.Tensor) -> list[float]:
    """Cosine similarity of the codes at steps t and t+1 (same positions): [steps - 1] floats."""
    return [code_overlap(sae, updates[t], updates[t + 1]) for t in range(updates.shape[0] - 1)]


def budget_points(steps: int, n_points: int) -> list[int]:
    """`n_points` training budgets (in steps) halving down from `steps`: 1500, 4 -> [188, 375, 750, 1500]."""
    return sorted({max(1, round(steps / 2 ** i)) for i in range(n_points)})


def train_controls(
    likes: dict[str, TopKSAE], tokens: dict[str, torch.Tensor], budgets: Sequence[int], batch_size: int,
    seed: int = 0, device: str = "auto", lr: float | dict[str, float] = 1e-4,
) -> dict[str, list[TopKSAE]]:
    """A control SAE of each block's `likes` config (`lr` one for all or {block: lr}) trained on its
    `tokens` [N, C] up to the largest budget (steps of `batch_size` rows), with a frozen copy at
    each budget: {block: [copies, budgets increasing]}. Training continues from the previous
    budget (same run, checkpointed), so the curve costs one training to its largest budget.
    The controls of blocks with as many tokens (and the same lr) train together in one run (on a
    CPU several SAEs per step cost far less than one run each), each with the init seed and batch
    order it would get alone.

    `tokens` may be 16-bit and on the training device (the loop moves each batch there and
    to float32): no float32 copy of the whole sample is made."""
    budgets = sorted(int(b) for b in budgets)
    flat = {b: t.reshape(-1, t.shape[-1]) for b, t in tokens.items()}
    lrs = lr if isinstance(lr, dict) else {b: lr for b in likes}
    groups: dict[tuple[int, float], list[str]] = {}
    for block in likes:
        groups.setdefault((flat[block].shape[0], float(lrs[block])), []).append(block)
    snapshots: dict[str, list[TopKSAE]] = {b: [] for b in likes}
    for (rows, group_lr), group in groups.items():
        controls = {b: TopKSAE(SAEConfig(**{**likes[b].cfg.to_dict(), "d_model": flat[b].shape[-1]}), seed=seed)
                    for b in group}
        source = TensorSource({b: flat[b] for b in group}, batch_size=batch_size, seed=seed)
        with tempfile.TemporaryDirectory(prefix="control-") as work:
            for budget in budgets:
                train_cfg = TrainConfig(steps=budget, lr=group_lr, device=device, checkpoint_every=budgets[-1] + 1,
                                        progress=False, log_every=max(budget, 1),
                                        geometric_median_samples=min(8192, rows))
                train_saes(controls, source, train_cfg, out_dir=work, resume=True, save_final=False)
                for b in group:
                    snapshots[b].append(copy.deepcopy(controls[b]).requires_grad_(False))
    return snapshots


def curves_from_sums(transferred: list[ImageSums], controls: list[list[ImageSums]], budgets: Sequence[int],
                     batch_size: int, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One block's control curve from the `step_sums` of the transferred SAE and of the control at
    each budget (increasing), on the same updates: [{"steps", "tokens", "ev_per_step", "ev": mean,
    "share_of_ceiling": `share_of_ceiling` of the transferred SAE against this control}] per budget."""
    curve = []
    for budget, sums in zip(sorted(int(b) for b in budgets), controls):
        per_step = [s.ev() for s in sums]
        curve.append({"steps": budget, "tokens": budget * batch_size, "ev_per_step": per_step,
                      "ev": float(sum(per_step) / len(per_step)),
                      "share_of_ceiling": share_of_ceiling(transferred, sums, n_boot=n_boot, seed=seed)})
    return curve


class StepStream:
    """`step_sums` of several SAEs and `overlap_per_step` of one, accumulated over batches of
    images: updates [steps, B, H, W, C] are seen once (on the generation device) and only
    per-image sums stay, so no step of a large model's held-out updates is kept.

    `step_sums(name)` and `overlap()` equal `step_sums(sae, all_updates)` and
    `overlap_per_step(sae, all_updates)` up to float rounding (batch composition)."""

    def __init__(self, saes: dict[str, TopKSAE], overlap_of: str | None = None):
        self.saes = saes
        self.overlap_of = overlap_of
        self._sums: dict[str, list[list[ImageSums]]] = {name: [] for name in saes}  # [name][batch][step]
        self._cos: list[float] = []
        self._rows = 0

    @torch.no_grad()
    def add(self, updates: torch.Tensor) -> None:
        # every SAE of a step on one pass over its chunks (the sums of x once for all of them)
        per_step = [image_sums_of(self.saes, updates[t]) for t in range(updates.shape[0])]
        for name in self.saes:
            self._sums[name].append([s[name] for s in per_step])
        if self.overlap_of is not None and updates.shape[0] > 1:
            # each step's codes once (step t is the second of one pair and the first of the next);
            # the per-pair sums stay on the device until the one copy at the end
            sae = self.saes[self.overlap_of]
            prev, sums = codes(sae, updates[0]), []
            for t in range(1, updates.shape[0]):
                z = codes(sae, updates[t])
                sums.append(codes_cosines(prev, z).double().sum())
                prev = z
            cos = torch.stack(sums).tolist()
            self._cos = [a + b for a, b in zip(self._cos, cos)] if self._cos else cos
        if self.overlap_of is not None:
            self._rows += updates[0].numel() // updates.shape[-1]

    def step_sums(self, name: str) -> list[ImageSums]:
        batches = self._sums[name]
        return [ImageSums(**{k: torch.cat([getattr(b[t], k) for b in batches]) for k in ("x1", "x2", "e1", "e2")},
                          positions=batches[0][t].positions) for t in range(len(batches[0]))]

    def overlap(self) -> list[float]:
        return [c / self._rows for c in self._cos]
