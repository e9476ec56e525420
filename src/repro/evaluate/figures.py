"""04_evaluate's figures, each from the result object of `repro.evaluate.experiments`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def position_ev(recon) -> plt.Figure:
    """EV per spatial position, one panel per block (`ReconstructionResult`)."""
    blocks = list(recon.trained)
    fig, axes = plt.subplots(1, len(blocks), figsize=(3 * len(blocks), 3), squeeze=False)
    for ax, b in zip(axes[0], blocks):
        im = ax.imshow(np.array(recon.trained[b].position_ev), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"{b}: EV per position", fontsize=8); ax.set_xticks([]); ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8)
    return fig


def image_grid(images: dict[str, list], columns: list[str], n_rows: int, title: str = "") -> plt.Figure:
    """Rows of images, one column per variant name."""
    fig, axes = plt.subplots(n_rows, len(columns), figsize=(1.6 * len(columns), 1.7 * n_rows), squeeze=False)
    for i in range(n_rows):
        for j, name in enumerate(columns):
            axes[i, j].imshow(images[name][i]); axes[i, j].set_xticks([]); axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(name, fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def control_curves(tr, settings: list[str]) -> plt.Figure:
    """Control EV against its training tokens per cell; dotted: the transferred 1-step SAE (`TransferResult`)."""
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 3.2), squeeze=False)
    for ax, name in zip(axes[0], settings):
        for (b, cell), curve in tr.curves.items():
            if cell.startswith(name):
                line, = ax.plot([c["tokens"] for c in curve], [c["ev"] for c in curve], marker="o",
                                label=f"{b} {cell[len(name):]}")
                ax.axhline(float(np.mean(tr.transfer[(b, cell)])), ls=":", color=line.get_color())
        ax.set_xscale("log"); ax.set_xlabel("control SAE training tokens"); ax.set_ylabel("EV")
        ax.set_title(f"{name}: control EV vs budget (dotted: transferred 1-step SAE)", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def transfer_heatmap(recon, tr) -> plt.Figure:
    """Mean EV of each block's 1-step SAE per setting, the 1-step model first."""
    blocks = list(recon.trained)
    cells = sorted({c for _, c in tr.transfer})
    heat = np.array([[recon.trained[b].ev] + [np.mean(tr.transfer[(b, c)]) for c in cells] for b in blocks])
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(cells), 0.6 * len(blocks) + 1.5))
    im = ax.imshow(heat, vmin=min(0, heat.min()), vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cells) + 1), ["turbo, 1 step"] + cells, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(blocks)), blocks)
    for i in range(heat.shape[0]):
        for j in range(heat.shape[1]):
            ax.text(j, i, f"{heat[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
    ax.set_title("EV of the 1-step SAEs, per block and setting")
    fig.colorbar(im)
    return fig


def ev_per_step(tr) -> plt.Figure:
    """EV per sampling step of each block's 1-step SAE per cell; dotted: its control."""
    cells = sorted({c for _, c in tr.transfer})
    blocks = list(dict.fromkeys(b for b, _ in tr.transfer))
    fig, axes = plt.subplots(1, len(cells), figsize=(4 * len(cells), 3), squeeze=False)
    for ax, c in zip(axes[0], cells):
        for b in blocks:
            line, = ax.plot(tr.transfer[(b, c)], marker="o", label=b)
            ax.plot(tr.ceiling[(b, c)], ls=":", color=line.get_color())
        ax.set_title(f"{c}: EV per step (dotted: control)", fontsize=8); ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["control_curves", "ev_per_step", "image_grid", "position_ev", "transfer_heatmap"]
