"""Feature records: everything one feature's page shows, gathered per block, as JSON-able records.

`BlockFeatures` holds what the chapter computed for one block (any part may be missing);
`FeatureSite` (repro.features.site) turns them into lazily loaded static files. A record
(`feature_record`) holds, for one live feature:

    f, label, label_note, freq (share of positions), dens (share of images), mean, std,
    purity, f1, hist {lo, counts}          # counts of firing positions per HIST_EDGES bin from `lo`
    top {img, val, hmax, heat}             # image ids, max activations, zlib uint8 heatmaps (b64)
    bands [{q: [lo, hi], img, val, hmax, heat}]  # 3 lower quantile bands of per-image max activation
    icons [{s, src}], painted {prompt, region, plain, edited}   # files written beside the data
    steps {setting: {half: [mean activation per step]}}
    nbr {block: [[feature, cosine], ...]}  # nearest by decoder cosine, own block and the others
    causal {label, s, on, off, control_on, effect}
(RIEBench's selection counts come in their own file per block: repro.features.riebench_counts.)

Labels: on ShapesWorld the chapter gives the ground-truth label (best concept by F1) with
purity and F1. Without ground truth the label is empty and `label_note` says why, unless
a `labeller(block, feature, record) -> label | (label, score)` supplies one (a judge model,
a person's notes).

Heatmaps are quantised per group of maps: q = round(255 * map / hmax) with hmax the largest
value of the group, so a value comes back within hmax / 510.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from repro.errors import ReproError
from repro.features.distribution import ActivationDistribution, quantile_samples

NO_LABEL = "no label: no ground truth and no judge model offline (give a labeller to label features)"

Labeller = Callable[[str, int, dict], "str | tuple[str, float]"]
"""labeller(block, feature, record) -> label or (label, score): a hook for user-supplied labels."""


@dataclass
class BlockFeatures:
    """What the feature pages of one block show (all per feature of the block's SAE, n of them)."""

    stats: Any
    """FeatureStats: mean, std, frequency, count [n]."""
    top: Any
    """TopExamples: image_ids / values [n, m], maps [n, m, H, W]."""
    distribution: ActivationDistribution | None = None
    labels: Sequence[str] | None = None
    purity: Sequence[float] | None = None
    f1: Sequence[float] | None = None
    label_note: str = NO_LABEL
    """Shown where a feature has no label."""
    causal: Mapping[int, dict] | None = None
    """feature -> {label, s, on, off, control_on, effect} (see `causal_by_feature`)."""
    steps: Mapping[str, Mapping[str, Sequence[float] | torch.Tensor]] | None = None
    """setting -> half -> [steps, n] mean activation per step (`step_means`)."""
    neighbours: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    """block -> (ids [n, k], cosine [n, k]) from `decoder_neighbours`."""
    icons: Mapping[int, Mapping[float, np.ndarray]] = field(default_factory=dict)
    """feature -> strength -> uint8 [H, W, 3] icon."""
    painted: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    """feature -> {prompt, region, plain: image, edited: image}."""

    @property
    def n_features(self) -> int:
        return int(len(self.stats.mean))

    def live(self) -> np.ndarray:
        """Ids of the features that fired, ascending."""
        count = self.stats.count if self.stats.count is not None else self.stats.mean
        return np.flatnonzero(np.asarray(count) > 0)

    def check(self, block: str) -> None:
        n = self.n_features
        for name in ("labels", "purity", "f1"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ReproError(f"{block}: {len(value)} {name} for {n} features: give one per feature")


def rounded(values, digits: int = 4) -> list[float]:
    """Floats rounded to `digits` significant digits (JSON stays short)."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def quantise_maps(maps: np.ndarray) -> tuple[np.ndarray, float]:
    """float [m, h, w] >= 0 -> (uint8 [m, h, w], hmax) with maps ~= q * hmax / 255."""
    maps = np.clip(np.asarray(maps, dtype=np.float32), 0, None)
    hmax = float(maps.max()) if maps.size else 0.0
    if hmax <= 0 or not math.isfinite(hmax):
        return np.zeros(maps.shape, np.uint8), 0.0
    return np.clip(np.rint(maps / hmax * 255.0), 0, 255).astype(np.uint8), hmax


def shrink_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """[n, m, H, W] -> at most `size` on each side (area average)."""
    h, w = maps.shape[-2:]
    if h <= size and w <= size:
        return maps
    t = torch.from_numpy(maps.reshape(-1, 1, h, w).astype(np.float32))
    out = torch.nn.functional.adaptive_avg_pool2d(t, (min(h, size), min(w, size)))
    return out.reshape(*maps.shape[:2], *out.shape[-2:]).numpy()


def _heat(maps: np.ndarray, heat_size: int) -> dict:
    """float [m, H, W] -> {hmax, heat: base64 of the zlib stream of the quantised uint8 maps}."""
    q, hmax = quantise_maps(shrink_maps(np.asarray(maps, np.float32)[None], heat_size)[0])
    heat = base64.b64encode(zlib.compress(np.ascontiguousarray(q).tobytes(), 9)).decode("ascii")
    return {"hmax": float(f"{hmax:.6g}"), "heat": heat}


def feature_record(block: str, f: int, bf: BlockFeatures, *, heat_size: int = 16, bands: int = 3,
                   per_band: int = 4, labeller: Labeller | None = None, icon_src: Callable[[int, float], str] | None = None,
                   paint_src: Callable[[int, str], str] | None = None) -> dict:
    """The JSON-able record of feature `f` of `block` (layout in the module docstring)."""
    st = bf.stats
    rec: dict[str, Any] = {"f": int(f), "label": "", "label_note": ""}
    rec["freq"] = rounded([st.frequency[f]], 3)[0] if st.frequency is not None else None
    rec["mean"], rec["std"] = rounded([st.mean[f]], 4)[0], rounded([st.std[f]], 4)[0]
    top_ids = bf.top.image_ids[f].tolist()
    keep = [j for j, i in enumerate(top_ids) if i >= 0]
    maps = bf.top.maps[f].float().numpy()
    rec["shape"] = list(shrink_maps(maps[None, :1], heat_size).shape[-2:])
    rec["top"] = {"img": [int(top_ids[j]) for j in keep], "val": rounded(bf.top.values[f, keep], 3),
                  **_heat(maps[keep], heat_size)}
    p = bf.distribution
    if p is not None:
        rec["dens"] = rounded([p.image_density[f]], 3)[0]
        counts = p.hist[f].tolist()
        nz = [i for i, c in enumerate(counts) if c]
        rec["hist"] = {"lo": nz[0], "counts": counts[nz[0]:nz[-1] + 1]} if nz else {"lo": 0, "counts": []}
        rec["bands"] = []
        for band in quantile_samples(p, f, bands, per_band, exclude=rec["top"]["img"]):
            entry = {"q": list(band["band"]), "img": band["ids"], "val": rounded(band["values"], 3)}
            if band["slots"]:
                entry.update(_heat(p.sample_maps[f, band["slots"]].float().numpy(), heat_size))
            rec["bands"].append(entry)
    if bf.labels is not None and bf.labels[f]:
        rec["label"] = str(bf.labels[f])
        rec["purity"], rec["f1"] = rounded([bf.purity[f]], 3)[0] if bf.purity is not None else None, \
            rounded([bf.f1[f]], 3)[0] if bf.f1 is not None else None
    elif labeller is not None:
        got = labeller(block, int(f), rec)
        label, score = got if isinstance(got, tuple) else (got, None)
        rec["label"], rec["label_score"] = str(label or ""), score
        rec["label_note"] = "" if label else bf.label_note
    else:
        rec["label_note"] = bf.label_note
    if bf.icons.get(f) and icon_src is not None:
        rec["icons"] = [{"s": float(s), "src": icon_src(f, s)} for s in sorted(bf.icons[f])]
    if bf.painted.get(f) and paint_src is not None:
        pt = bf.painted[f]
        rec["painted"] = {"prompt": str(pt.get("prompt", "")), "region": str(pt.get("region", "")),
                          "plain": paint_src(f, "plain"), "edited": paint_src(f, "edited")}
    if bf.steps:
        rec["steps"] = {setting: {half: rounded(np.asarray(v)[:, f], 3) for half, v in halves.items()}
                        for setting, halves in bf.steps.items()}
    if bf.neighbours:
        rec["nbr"] = {other: [[int(g), round(float(c), 3)] for g, c in zip(ids[f].tolist(), cos[f].tolist())]
                      for other, (ids, cos) in bf.neighbours.items()}
    if bf.causal and f in bf.causal:
        rec["causal"] = dict(bf.causal[f])
    return rec


def causal_by_feature(table) -> dict[str, dict[int, dict]]:
    """The causality table of 05 (`repro.features.experiments.causality`: rows of kind "SAE feature"
    with their `feature`, and "isotropic random" rows on the same scenes) -> {block: {feature: {label,
    s, on, control_on, effect, p}}} at the strength where the feature beats its random direction most
    (effect = the paired difference in success-and-preserved)."""
    from repro.features.positive_controls import ISOTROPIC, SAE_FEATURE

    out: dict[str, dict[int, dict]] = {}
    feats = table[table["kind"] == SAE_FEATURE]
    if feats.empty:
        return out
    if "feature" not in feats:
        raise ReproError("the causality table has no 'feature' column: build it with repro.features.experiments.causality")
    best = feats.sort_values(["diff_vs_isotropic", "p"], ascending=[False, True]).groupby(["block", "label"]).head(1)
    ctrl = table[table["kind"] == ISOTROPIC].set_index(["block", "label", "strength"])["joint"]
    for row in best.itertuples():
        out.setdefault(row.block, {})[int(row.feature)] = {
            "label": row.label, "s": round(float(row.strength), 4), "on": round(float(row.joint), 4),
            "control_on": round(float(ctrl.get((row.block, row.label, row.strength), float("nan"))), 4),
            "effect": round(float(row.diff_vs_isotropic), 4), "p": round(float(row.p), 4)}
    return out


__all__ = ["NO_LABEL", "BlockFeatures", "Labeller", "causal_by_feature", "feature_record", "quantise_maps", "rounded"]
