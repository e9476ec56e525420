"""Positive controls and power for the causality test (issue #27): can it find a direction known to work?

For each block and attribute value (`colour=red`, `shape=circle`, ...) the experiment
(`positive_controls`) switches on, in held-out test scenes without the value, with the same
`causal_test` the chapter runs on SAE features:

- *planted*: the value's class-conditional mean difference of the block's updates
  (`repro.features.planted`), planted as an extra SAE feature whose mean activation is the
  difference's norm, so that strength s adds s times the whole difference;
- *isotropic random*: the same SAE with that column replaced by a random unit vector
  (`random_direction_twin`): same norm, same cells, same scenes and seeds;
- *data-shaped random*: a random direction drawn with the block updates' covariance
  (`data_shaped_twin`), same norm;
- optionally a trained SAE's feature for the value (`sae_features`), at its own mean_f.

Outcome per scene: *joint* = the oracle reads the value AND every other attribute is kept.
Each direction is compared with the isotropic control on the same scenes and seeds by a
paired test (`repro.intervals.paired_difference`: difference in joint rates with Newcombe's
interval, exact McNemar p); *detected* = p < 0.05 and the joint rate higher. The strengths
are calibrated per block (`calibrate_norm`): the largest intervention norm at which the
isotropic random direction still keeps preservation >= 0.8 on a few dev scenes, and a
log-spaced grid up to it. `detection_power` summarises the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from repro.errors import ReproError
from repro.features.causality import (CausalResult, causal_test, has_value, is_testable, reads_value,
                                      switch_on_curves)
from repro.features.controls import data_shaped_twin, random_direction_twin, update_covariance
from repro.features.planted import (FAMILIES, capture_block, carrier_sae, dev_scenes, ground_truth, parse_label,
                                    planted_feature, with_planted)
from repro.generate import Sampling
from repro.intervals import mcnemar_mde, paired_difference, rate
from repro.sae.model import TopKSAE

PLANTED, ISOTROPIC, SHAPED, SAE_FEATURE = "planted", "isotropic random", "data-shaped random", "SAE feature"
KINDS = (PLANTED, ISOTROPIC, SHAPED)
ALPHA = 0.05


def default_labels(families: Sequence[str] = ("colour", "shape", "texture", "size"), per_family: int = 1) -> list[str]:
    """`per_family` values of each family, the first ones in the world's order: chosen by
    family, not by how pure a feature is."""
    return [f"{fam}={v}" for fam in families for v in FAMILIES[fam][:per_family]]


def strength_grid(s_max: float, n: int = 8, span: float = 16.0) -> list[float]:
    """n log-spaced strengths from s_max / span to s_max (rounded to 4 significant digits)."""
    if not s_max > 0 or n < 1:
        raise ReproError(f"a strength grid needs s_max > 0 and n >= 1, got s_max={s_max}, n={n}")
    return [float(f"{s:.4g}") for s in np.geomspace(s_max / span, s_max, n)] if n > 1 else [float(f"{s_max:.4g}")]


@dataclass
class Calibration:
    """The largest intervention norm a block tolerates from an isotropic random direction."""

    block: str
    label: str
    """The label whose cells were painted and whose attribute preservation ignores."""
    norm: float
    """Largest tried norm |s * mean_f * W_dec[:, f]| with preservation >= threshold (the smallest tried if none)."""
    threshold: float
    tried: dict[float, dict] = field(default_factory=dict)
    """norm -> preservation rate record (`repro.intervals.rate`)."""
    bounded: bool = True
    """False when the largest tried norm kept preservation (the true limit may lie above `norm`)."""


def calibrate_norm(pipe, oracle, block: str, label: str, scenes: Sequence, sampling: Sampling, grid: int,
                   d_model: int, norms: Sequence[float], threshold: float = 0.8, seed: int = 0,
                   batch_size: int = 16) -> Calibration:
    """Paint an isotropic random direction at every norm into `scenes`' cells of `label`, and keep
    the largest norm whose preservation is >= `threshold` (every norm is tried: at a few scenes
    one unlucky scene can fail a small norm and pass a larger one)."""
    sae = with_planted(carrier_sae(d_model), torch.ones(d_model), 1.0)
    f = planted_feature(sae)
    iso = random_direction_twin(sae, f, seed=seed)
    res = causal_test(pipe, iso, block, f, label, scenes, [], oracle, sampling, grid, sorted(norms), seed, batch_size)
    out = Calibration(block, label, norm=float(min(norms)), threshold=threshold)
    out.tried = {r.strength: rate(r.preserved, r.n) for r in res.on}
    passing = [a for a, r in out.tried.items() if r["rate"] >= threshold]
    if passing:
        out.norm = max(passing)
    out.bounded = max(out.tried) not in passing
    return out


def _rows(block, label, kind, scale, mean_f, res, control, n_strengths, unedited) -> list[dict]:
    """Table rows of one direction's `causal_test` result; `control`: the isotropic one's on
    the same scenes; `unedited`: per scene, whether the plain image already reads the value."""
    family = label.split("=", 1)[0]
    rows = []
    for r in res.on:
        joint = rate(sum(r.joint), r.n)
        vs_plain = paired_difference(r.joint, unedited)
        row = {"block": block, "label": label, "family": family, "kind": kind, "strength": r.strength,
               "norm": r.strength * mean_f, "scale": scale, "n": r.n, "baseline": res.baseline_on / r.n,
               "success": r.hits / r.n, "preserved": r.preserved / r.n, "joint": joint["rate"],
               "joint_lo": joint["lo"], "joint_hi": joint["hi"], "p_vs_unedited": vs_plain["p"],
               "detected_vs_unedited": bool(vs_plain["p"] < ALPHA and vs_plain["diff"] > 0)}
        ctrl = next((c for c in control.on if c.strength == r.strength), None) if control is not None else None
        if ctrl is not None and kind != ISOTROPIC:
            pd_ = paired_difference(r.joint, ctrl.joint)
            row.update({"diff_vs_isotropic": pd_["diff"], "diff_lo": pd_["lo"], "diff_hi": pd_["hi"], "p": pd_["p"],
                        "discordant": (pd_["b"] + pd_["c"]) / r.n,
                        "mde": mcnemar_mde(r.n, (pd_["b"] + pd_["c"]) / r.n, ALPHA) if pd_["b"] + pd_["c"] else float("nan"),
                        "detected": bool(pd_["p"] < ALPHA and pd_["diff"] > 0),
                        "detected_bonferroni": bool(pd_["p"] < ALPHA / n_strengths and pd_["diff"] > 0)})
        else:
            row.update({"diff_vs_isotropic": float("nan"), "diff_lo": float("nan"), "diff_hi": float("nan"),
                        "p": float("nan"), "discordant": float("nan"), "mde": float("nan"), "detected": False,
                        "detected_bonferroni": False})
        rows.append(row)
    return rows


def positive_controls(pipe, oracle, blocks: Sequence[str], labels: Sequence[str], sampling: Sampling, *,
                      n: int = 24, n_dev: int = 96, n_calibration: int = 24, strengths: Sequence[float] | None = None,
                      n_strengths: int = 8, span: float = 16.0, calibration_norms: Sequence[float] | None = None,
                      n_norms: int = 15,
                      kinds: Sequence[str] = KINDS, saes: dict[str, TopKSAE] | None = None,
                      sae_features: dict[tuple[str, str], int] | None = None, seed: int = 0, batch_size: int = 16,
                      progress=None):
    """The whole positive-control experiment: a pandas DataFrame, one row per (block, label,
    kind, strength) with n, baseline, success, preserved, joint (+ Wilson lo/hi), the paired
    difference in joint rate vs the isotropic control (diff_vs_isotropic, diff_lo, diff_hi,
    McNemar p, discordant share, minimal detectable difference `mde` at this n and discordance),
    detected (p < 0.05 and higher) and detected_bonferroni (p < 0.05 / number of strengths);
    and against the unedited images (the value read without any edit, the rest trivially
    kept): p_vs_unedited and detected_vs_unedited, for every kind, the control included.

    Directions come from `n_dev` dev (train-split) scenes, calibration from `n_calibration`
    of them; the test uses the first `n` held-out test scenes without the value (captions
    and seeds from `seed`). `strengths` (s, multiples of each direction's mean_f) skips the
    calibration; otherwise per block the norm limit is calibrated on the first label
    (`calibration_norms`: absolute norms to try, default the block's mean update norm times
    1/8 .. 16, `n_norms` points) and each label gets `strength_grid(limit / its scale, n_strengths, span)`.
    `saes[block]` + `sae_features[(block, label)]` add a trained SAE's feature as a kind
    (its own mean_f, the same s). `df.attrs["calibration"]` and `df.attrs["directions"]`
    keep what the strengths and directions were computed from.
    """
    import pandas as pd

    from repro.shapes.splits import split_scenes

    if ISOTROPIC not in kinds:
        raise ReproError(f"kinds must include {ISOTROPIC!r}: every direction is compared with it")
    for label in labels:
        parse_label(label)
        if not is_testable(label):
            raise ReproError(f"{label!r} cannot be switched on by the causality test")
    say = progress or (lambda msg: None)
    dev = dev_scenes(n_dev, seed=seed)
    pool = split_scenes("test", max(8 * n, 200), seed=seed)
    rows, calibrations, directions = [], {}, {}
    for block in blocks:
        updates = capture_block(pipe, dev, block, sampling, seed, batch_size)  # [steps, N, H, W, C]
        grid, d_model = updates.shape[-3], updates.shape[-1]  # each block's own grid (8x8 or 16x16 on the toy)
        cov = update_covariance(updates)
        truths = {label: ground_truth(updates, dev, block, label, grid) for label in labels}
        if strengths is None:
            cal_label = labels[0]
            cal_scenes = [s for s in dev if not has_value(s, cal_label)][:n_calibration]
            typical = float(updates.norm(dim=-1).mean())
            norms = calibration_norms or [typical * x for x in np.geomspace(1 / 8, 16, n_norms)]
            cal = calibrate_norm(pipe, oracle, block, cal_label, cal_scenes, sampling, grid, d_model, norms,
                                 seed=seed + 50_000, batch_size=batch_size)
            calibrations[block] = {"label": cal.label, "norm": cal.norm, "bounded": cal.bounded,
                                   "typical_update_norm": typical, "tried": cal.tried}
            say(f"{block}: calibrated norm {cal.norm:.3g} (typical update norm {typical:.3g})")
        del updates
        for label in labels:
            gt = truths[label]
            directions[f"{block} | {label}"] = {"scale": gt.scale, "n_pos": gt.n_pos, "n_neg": gt.n_neg}
            grid_s = list(strengths) if strengths is not None else strength_grid(calibrations[block]["norm"] / gt.scale,
                                                                                 n_strengths, span)
            on = [s for s in pool if not has_value(s, label)][:n]
            if len(on) < n:
                raise ReproError(f"only {len(on)} test scenes without {label}: ask for fewer than n={n}")
            planted = with_planted(carrier_sae(d_model) if saes is None or block not in saes else saes[block],
                                   gt.direction, gt.scale)
            f = planted_feature(planted)
            variants = {PLANTED: (planted, f), ISOTROPIC: (random_direction_twin(planted, f, seed=seed + 1), f),
                        SHAPED: (data_shaped_twin(planted, f, cov, seed=seed + 2), f)}
            variants = {k: v for k, v in variants.items() if k in kinds}
            if sae_features and (block, label) in sae_features:
                variants[SAE_FEATURE] = (saes[block], sae_features[(block, label)])
            plain, curves = switch_on_curves(pipe, variants, block, label, on, oracle, sampling, grid, grid_s, seed,
                                             batch_size)  # every kind and strength in one batched generation
            unedited = [bool(reads_value(r, s, label)) for r, s in zip(plain, on)]  # the rest is kept trivially
            results = {k: CausalResult(label, n_on=len(on), baseline_on=sum(unedited), on=curve)
                       for k, curve in curves.items()}
            for kind, res in results.items():
                sae, feat = variants[kind]
                mean_f = float(sae.feature_stats.mean[feat]) if sae.feature_stats is not None else 1.0
                rows += _rows(block, label, kind, gt.scale, mean_f, res, results[ISOTROPIC], len(grid_s), unedited)
            say(f"{block} {label}: planted detected at "
                f"{[r['strength'] for r in rows[-len(results) * len(grid_s):] if r['kind'] == PLANTED and r['detected']]}")
    table = pd.DataFrame(rows)
    table.attrs["calibration"] = calibrations
    table.attrs["directions"] = directions
    return table


def detection_power(table, kind: str = PLANTED, by: Sequence[str] = ("block", "family"),
                    column: str = "detected"):
    """Share of `kind`'s directions (block, label) detected at their best strength (the one with
    the largest paired difference vs the isotropic control; ties: the smaller p), per `by`
    group, with Wilson intervals: a DataFrame with columns by + [detected, n, power, lo, hi]."""
    import pandas as pd

    rows = table[table["kind"] == kind]
    if rows.empty:
        return pd.DataFrame(columns=[*by, "detected", "n", "power", "lo", "hi"])
    best = (rows.sort_values(["diff_vs_isotropic", "p"], ascending=[False, True])
                .groupby(["block", "label"], as_index=False).head(1))
    out = []
    for key, g in best.groupby(list(by)):
        key = key if isinstance(key, tuple) else (key,)
        r = rate(int(g[column].sum()), len(g))
        out.append({**dict(zip(by, key)), "detected": r["hits"], "n": r["n"], "power": r["rate"], "lo": r["lo"],
                    "hi": r["hi"]})
    return pd.DataFrame(out)


__all__ = ["ALPHA", "Calibration", "ISOTROPIC", "KINDS", "PLANTED", "SAE_FEATURE", "SHAPED", "calibrate_norm",
           "default_labels", "detection_power", "positive_controls", "strength_grid"]
