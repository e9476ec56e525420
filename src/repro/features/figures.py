"""05_features' figures, each from the tables and results of `repro.features.experiments`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def detection_bars(det: pd.DataFrame, column: str = "f1", min_pos: int = 20) -> plt.Figure:
    """Median best `column` per family, one panel per block: trained SAE, random SAE, linear probe."""
    from repro.features.detection import family_medians

    med = family_medians(det, column, min_pos=min_pos)
    blocks = list(dict.fromkeys(med.index.get_level_values(0)))
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.4 * len(blocks), 3), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], blocks):
        med.loc[b].T.plot(kind="bar", ax=ax, legend=False, width=0.8)
        ax.set_title(b, fontsize=8); ax.set_xlabel(""); ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel(f"median best {column} (test images)")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def specialisation(summaries: dict, threshold: float) -> plt.Figure:
    """Share of each block's pure features by attribute family (stacked bars)."""
    from repro.features.toy_concepts import FAMILIES

    spec = pd.DataFrame({b: s["families"] for b, s in summaries.items()}).T[list(FAMILIES)]
    ax = spec.plot(kind="barh", stacked=True, figsize=(8, 2.8), colormap="tab10")
    ax.set_xlabel(f"share of pure features (purity >= {threshold}) by attribute family")
    ax.legend(fontsize=7, bbox_to_anchor=(1, 1))
    return ax.figure


def top_images(rows: list[tuple[str, int]], analyses: dict, decoded: dict, labels: dict | None = None) -> plt.Figure:
    """Each (block, feature) row: its top 4 images (`decoded` {image id: image}) with the activation
    heatmap over them, named by its label and purity where `labels` {block: FeatureLabels} has them."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(7, 1.8 * len(rows)), squeeze=False)
    for r, (b, f) in enumerate(rows):
        for j in range(4):
            ax = axes[r, j]; ax.set_xticks([]); ax.set_yticks([])
            i = int(analyses[b].top.image_ids[f, j])
            if i < 0:
                continue
            img = decoded[i]
            ax.imshow(img)
            ax.imshow(analyses[b].top.maps[f, j].float().numpy(), cmap="hot", alpha=0.45,
                      extent=(0, img.shape[1], img.shape[0], 0), interpolation="nearest")
        name = f"\n{labels[b].label[f]} ({float(labels[b].purity[f]):.2f})" if labels else ""
        axes[r, 0].set_ylabel(f"{b} #{f}{name}", fontsize=6)
    fig.tight_layout()
    return fig


def icon_grid(icons: dict, rows: list[tuple[str, int]], strengths: list[float]) -> plt.Figure:
    """Icons {block: {feature: {s: image}}}, one row per (block, feature), one column per strength."""
    fig, axes = plt.subplots(len(rows), len(strengths), figsize=(1.8 * len(strengths), 1.8 * len(rows)), squeeze=False)
    for r, (b, f) in enumerate(rows):
        for j, s in enumerate(strengths):
            axes[r, j].imshow(icons[b][f][s]); axes[r, j].set_xticks([]); axes[r, j].set_yticks([])
            if r == 0:
                axes[r, j].set_title(f"s = {s}", fontsize=7)
        axes[r, 0].set_ylabel(f"{b} #{f}", fontsize=6)
    fig.tight_layout()
    return fig


def causal_curves(cz: pd.DataFrame) -> plt.Figure:
    """Joint success-and-preserved rate against strength per block, pooled over labels, one line per kind."""
    blocks = list(dict.fromkeys(cz.block))
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.4 * len(blocks), 3), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], blocks):
        g = cz[cz.block == b].copy()
        g["step"] = g.groupby(["label", "kind"]).cumcount()  # strength index: each label has its own grid
        for kind, k in g.groupby("kind"):
            curve = k.groupby("step")["joint"].mean()
            ax.plot(curve.index, curve.values, marker="o", ms=3, label=kind)
        ax.set_title(b, fontsize=8); ax.set_xlabel("strength (grid index, calibrated per block)")
    axes[0, 0].set_ylabel("success and preserved (mean over labels)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def locality_curves(curves: dict, blocks: list[str], strengths: list[float]) -> plt.Figure:
    """Near change and spread against strength per block: feature (solid) and random direction (dotted)."""
    fig, axes = plt.subplots(2, len(blocks), figsize=(3.4 * len(blocks), 5), squeeze=False, sharex=True)
    for j, b in enumerate(blocks):
        for kind in ("feature", "random direction"):
            if (b, kind) not in curves:
                continue
            summary = curves[(b, kind)].summary()
            for i, stat in enumerate(("near", "spread")):
                pts = [summary[float(x)][stat] for x in strengths]
                ys = np.array([p["value"] for p in pts])
                err = [ys - [p["lo"] for p in pts], [p["hi"] for p in pts] - ys]
                axes[i, j].errorbar(strengths, ys, yerr=err, ls="-" if kind == "feature" else ":", marker="o", ms=3,
                                    capsize=2, color="C0" if kind == "feature" else "C7", label=kind)
        axes[0, j].set_title(b, fontsize=8); axes[1, j].set_xlabel("strength s (x mean_f)"); axes[0, j].set_xscale("log")
    axes[0, 0].set_ylabel("mean |pixel change| near the cell"); axes[1, 0].set_ylabel("spread (far / near)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


__all__ = ["causal_curves", "detection_bars", "icon_grid", "locality_curves", "specialisation", "top_images"]
