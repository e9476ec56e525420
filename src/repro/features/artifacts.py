"""Per-feature artifacts kept beside an SAE: statistics, top examples, labels.

    <sae folder>/feature_stats.safetensors   FeatureStats (mean, std, frequency, count, n_tokens)
    <sae folder>/top_examples.safetensors    TopExamples (image_ids [n, m], values [n, m], maps [n, m, H, W])
    <sae folder>/labels.json                 {"label": [n], "purity": [n], "f1": [n], "live": [n], "threshold"}

`save_feature_artifacts` writes only these files (atomically), never the SAE's weights or
its cfg.json, so the training provenance recorded there survives the analysis.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from repro.io import atomic_path, write_json_atomic
from repro.sae.io import load_feature_stats, save_feature_stats
from repro.sae.stats import FeatureStats

if TYPE_CHECKING:
    from repro.features.analysis import TopExamples
    from repro.features.toy_concepts import FeatureLabels

TOP_EXAMPLES = "top_examples.safetensors"
LABELS = "labels.json"


@dataclass
class FeatureArtifacts:
    """What the feature analysis stores beside one SAE (any part may be missing)."""

    stats: FeatureStats | None = None
    top: TopExamples | None = None
    labels: FeatureLabels | None = None
    threshold: float | None = None
    """The purity threshold the labels were summarised with."""


def save_feature_artifacts(folder: str | os.PathLike, artifacts: FeatureArtifacts) -> list[Path]:
    """Write the parts of `artifacts` that are set into an existing SAE folder; returns the paths."""
    folder = Path(folder)
    written = []
    if artifacts.stats is not None:
        written.append(save_feature_stats(folder, artifacts.stats))
    if artifacts.top is not None:
        with atomic_path(folder / TOP_EXAMPLES) as tmp:
            save_file({k: v.contiguous() for k, v in artifacts.top.to_tensors().items()}, str(tmp))
        written.append(folder / TOP_EXAMPLES)
    if artifacts.labels is not None:
        lab = artifacts.labels
        written.append(write_json_atomic(folder / LABELS, {
            "label": list(lab.label), "purity": lab.purity.tolist(), "f1": lab.f1.tolist(),
            "live": lab.live.tolist(), "threshold": artifacts.threshold}))
    return written


def load_feature_artifacts(folder: str | os.PathLike) -> FeatureArtifacts:
    """Read whatever `save_feature_artifacts` wrote into `folder` (absent parts are None)."""
    from repro.features.analysis import TopExamples
    from repro.features.toy_concepts import FeatureLabels

    folder = Path(folder)
    top = TopExamples.from_tensors(load_file(str(folder / TOP_EXAMPLES))) if (folder / TOP_EXAMPLES).is_file() else None
    labels, threshold = None, None
    if (folder / LABELS).is_file():
        raw = json.loads((folder / LABELS).read_text())
        purity = torch.tensor(raw["purity"], dtype=torch.float32)
        live = torch.tensor(raw["live"], dtype=torch.bool) if "live" in raw else purity > 0
        labels = FeatureLabels(label=list(raw["label"]), purity=purity,
                               f1=torch.tensor(raw["f1"], dtype=torch.float32), live=live)
        threshold = raw.get("threshold")
    return FeatureArtifacts(stats=load_feature_stats(folder), top=top, labels=labels, threshold=threshold)


__all__ = ["LABELS", "TOP_EXAMPLES", "FeatureArtifacts", "load_feature_artifacts", "save_feature_artifacts"]
