"""05_features' experiments, each one call that returns tables; the chapter shows and glues them.

    freq = frequency_table(analyses)                          # live features, firing frequency
    det = detection(saes, store)                              # concept x block: SAE, random SAE, probe
    lab = labels(analyses, saes, store, seed_saes, threshold) # each feature's label and purity, vs controls
    cz = causality(pipe, saes, det, profile, ...)             # SAE features beside planted directions
    own = own_block_experiments(pipe, profile, ...)           # the same two in the toy's own active blocks
    tm = timing(pipe, saes, det, profile, ...)                # switch-on at one step of the multi-step model
    loc = locality(pipe, saes, features, prompts, ...)        # pixel change against distance from the cell
    claims(det, cz)                                           # the interpretability and causality verdict rows

The `*_headlines` functions give the sentences the chapter glues into its prose ("not measured"
where the profile has no ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from repro.features.analysis import analyse_features
from repro.features.controls import random_direction_twin, random_sae_like
from repro.features.data import store_chunks
from repro.intervals import rate
from repro.sae.model import TopKSAE


NOT_MEASURED = "not measured (no ground truth)"


@dataclass(frozen=True)
class FeaturesConfig:
    """05_features' settings besides the profile's (its causal and timing counts are profile fields)."""

    saes: str = ""
    """Folder of the SAEs (empty: artifacts/<profile>/saes)."""
    seed_saes: str = ""
    """Folder of the second-seed SAEs (empty: artifacts/<profile>/saes-seed1 when the profile trains one)."""
    store: str = ""
    """Activation store (empty: artifacts/<profile>/store)."""
    top_m: int = 16
    """Top images kept per feature."""
    purity_threshold: float = 0.8
    """A feature is pure when its label's precision is at least this."""
    timing_strength: float = 30.0
    """s of the intervention-timing sweep (painting rule s * mean_f)."""
    causal_strengths: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0)
    """s of the locality curves and the painted examples."""
    n_locality: int = 8
    """Prompts for the locality curves (each at every strength, feature and random direction)."""
    icon_strengths: tuple[float, ...] = (0.5, 1.0, 1.5)
    """s of the feature icons."""
    sample_per_feature: int = 32
    """Uniform sample of each feature's images, for the lower-quantile examples."""
    n_transfer_prompts: int = 8
    """Prompts for the per-step mean activation on the multi-step settings."""
    n_neighbours: int = 5
    """Nearest features by decoder cosine, per block."""
    seed: int = 200_000
    """Seed of the first held-out prompt or scene."""
    device: str = "auto"
    """Where to generate: auto, cpu, cuda, cuda:N, mps."""


def frequency_table(analyses: Mapping) -> pd.DataFrame:
    """Per block: live features, the median firing frequency and mean activation of the live ones."""
    rows = {}
    for b, a in analyses.items():
        live = a.stats.count > 0
        rows[b] = {"live features": int(live.sum()), "features": len(a.stats.count),
                   "median firing frequency": float(a.stats.frequency[live].median()),
                   "mean activation when firing": float(a.stats.mean[live].mean())}
    return pd.DataFrame(rows).T


def detection(saes: Mapping[str, TopKSAE], store) -> pd.DataFrame:
    """Every concept x block: the best feature's precision, recall, F1, AUROC and lift on the test
    images (odd ids), chosen on dev (even ids), for the trained SAE, an untrained SAE of the same
    shape and k, and a linear probe on the updates (the ceiling) (`repro.features.detection`)."""
    from repro.features.detection import concept_detection_table

    return concept_detection_table(saes, lambda b: store_chunks(store, b, concepts=True))


@dataclass
class Labels:
    """Each block's feature labels (`FeatureLabels`), their purity summary, and the pure share of the
    trained SAE beside a random SAE's and the second seed's (Wilson rates)."""

    labels: dict
    summaries: dict
    rates: dict

    def rates_table(self) -> pd.DataFrame:
        from repro.intervals import fmt

        return pd.DataFrame({b: {k: fmt(v) for k, v in r.items()} for b, r in self.rates.items()}).T


def labels(analyses: Mapping, saes: Mapping[str, TopKSAE], store, seed_saes: Mapping, threshold: float) -> Labels:
    """Label every feature (best F1 concept on labelled cells) and count the pure ones (precision >=
    `threshold`), beside an untrained SAE of the same shape and k and the second-seed SAEs."""
    from repro.features.toy_concepts import concept_names, label_features

    def summary_of(sae, b):
        a = analyse_features(sae, store_chunks(store, b, concepts=True), m=1)
        a.concepts.names = concept_names()
        return label_features(a.concepts).summary(threshold)

    out, summaries, rates = {}, {}, {}
    for b in saes:
        analyses[b].concepts.names = concept_names()
        out[b] = label_features(analyses[b].concepts)
        summaries[b] = out[b].summary(threshold)
        rates[b] = {"trained": rate(summaries[b]["pure"], summaries[b]["live"])}
        ctrl = summary_of(random_sae_like(saes[b]), b)
        rates[b]["random SAE (control)"] = rate(ctrl["pure"], ctrl["live"])
        if b in seed_saes:
            other = summary_of(seed_saes[b], b)
            rates[b]["second seed"] = rate(other["pure"], other["live"])
    return Labels(out, summaries, rates)


def label_headlines(lab: Labels | None, blocks: Sequence[str] = ("down.2.1", "up.0.1")) -> dict[str, str]:
    """Per block: the pure share of the trained and of the random SAE, and the most common family."""
    from repro.intervals import fmt

    if lab is None:
        return {f"{name}_{b}": NOT_MEASURED for b in blocks for name in ("pure", "pure_random", "family")}
    return {k: v for b, s in lab.summaries.items() for k, v in (
        (f"pure_{b}", fmt(lab.rates[b]["trained"])), (f"pure_random_{b}", fmt(lab.rates[b]["random SAE (control)"])),
        (f"family_{b}", max(s["families"], key=s["families"].get)))}


def top_features(analysis, feature_labels, threshold: float, n: int = 3) -> list[int]:
    """The `n` most frequent features, pure ones (precision >= threshold) first when labels exist."""
    order = torch.argsort(analysis.stats.frequency, descending=True).tolist()
    if feature_labels is not None:
        order = [f for f in order if float(feature_labels.purity[f]) >= threshold] or order
    return [int(f) for f in order[:n]]


def store_images(pipe, store, ids) -> dict[int, np.ndarray]:
    """{image id: the store's latents of that image decoded by `pipe`'s VAE}, 64 at a time."""
    from repro.generate import decode_latents

    ids, out = sorted({int(i) for i in ids}), {}
    for start in range(0, len(ids), 64):
        chunk = ids[start:start + 64]
        out.update(zip(chunk, decode_latents(pipe, torch.as_tensor(store.latents(chunk)))))
    return out


def icons(pipe, saes: Mapping[str, TopKSAE], rows: Sequence[tuple[str, int]], strengths: Sequence[float], seed: int,
          sampling) -> dict:
    """{block: {feature: {s: image}}}: the empty prompt with the block's update replaced everywhere by
    `s * mean_f * k * W_dec[:, f]` (the paper's icon rule), for each (block, feature) of `rows`."""
    from repro.evaluate.in_loop import generate_with
    from repro.features.interventions import FeatureIcon

    out = {b: {} for b in saes}
    for b, f in rows:
        out[b][f] = {s: generate_with(pipe, [""], [seed], sampling, {b: FeatureIcon(sae=saes[b], features=f, strength=s)})[0]
                     for s in strengths}
    return out


def save_artifacts(saes: Mapping[str, TopKSAE], analyses: Mapping, lab: Labels | None, threshold: float) -> None:
    """Per-feature statistics, top examples and labels beside each SAE (`repro.features.artifacts`)."""
    from repro.features.artifacts import FeatureArtifacts, save_feature_artifacts

    for b, sae in saes.items():
        save_feature_artifacts(sae.folder, FeatureArtifacts(stats=analyses[b].stats, top=analyses[b].top, threshold=threshold,
                                                            labels=lab.labels.get(b) if lab else None))


def sae_feature_for(det: pd.DataFrame, block: str, label: str) -> int | None:
    """The trained SAE's best feature for `label` in `block` (chosen on the dev images), or None."""
    row = det[(det.block == block) & (det.detector == "SAE") & (det.concept == label)]
    if row.empty or not np.isfinite(row.iloc[0]["best_feature"]):
        return None
    return int(row.iloc[0]["best_feature"])


def causal_labels(profile) -> list[str]:
    """The attribute values 05 tests for causality: `causal_features` spread over colour, shape, texture
    and size, chosen by family, never by purity."""
    from repro.features.positive_controls import default_labels

    return default_labels(("colour", "shape", "texture", "size"), max(1, profile.causal_features // 4))


def causality(pipe, saes: Mapping[str, TopKSAE], det: pd.DataFrame, profile, *, seed: int, batch_size: int,
              progress=None) -> pd.DataFrame:
    """`repro.features.positive_controls` on every block and `causal_labels` with the trained SAE's best
    feature for the label as a fourth kind, at the profile's counts: one row per (block, label, kind, strength)."""
    from repro.features.positive_controls import SAE_FEATURE, positive_controls
    from repro.shapes.oracle import load_oracle

    labels = causal_labels(profile)
    chosen = {(b, lab): f for b in saes for lab in labels if (f := sae_feature_for(det, b, lab)) is not None}
    oracle = load_oracle(device=pipe.device)
    table = positive_controls(pipe, oracle, list(saes), labels, profile.turbo, n=profile.causal_scenes,
                              n_dev=profile.causal_dev_scenes, n_calibration=profile.causal_scenes,
                              n_strengths=profile.causal_strength_points, n_norms=profile.causal_calibration_norms,
                              saes=dict(saes), sae_features=chosen, seed=seed, batch_size=batch_size, progress=progress)
    # which SAE feature each "SAE feature" row tested (the feature pages link to it)
    table["feature"] = [chosen.get((b, lab)) if k == SAE_FEATURE else None
                        for b, lab, k in zip(table.block, table.label, table.kind)]
    return table


def power_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per block and kind: the share of directions detected at their best strength (Wilson interval)."""
    from repro.features.positive_controls import PLANTED, SAE_FEATURE, SHAPED, detection_power

    parts = [detection_power(table, kind, by=("block",)).assign(kind=kind) for kind in (PLANTED, SAE_FEATURE, SHAPED)]
    return pd.concat([p for p in parts if len(p)], ignore_index=True)[["block", "kind", "detected", "n", "power", "lo", "hi"]]


def best_strengths(cz: pd.DataFrame) -> pd.DataFrame:
    """Per (block, label, kind): the row of the strength with the largest paired difference vs the isotropic control."""
    best = cz.sort_values("diff_vs_isotropic", ascending=False).groupby(["block", "label", "kind"]).head(1)
    return best[["block", "label", "kind", "strength", "n", "joint", "joint_lo", "joint_hi", "diff_vs_isotropic",
                 "diff_lo", "diff_hi", "p", "mde", "detected"]].sort_values(["block", "label", "kind"]).round(3)


def causal_headlines(power: pd.DataFrame | None, prefix: str = "") -> dict[str, str]:
    """How many (block, value) pairs each kind of direction was detected in (keys `prefix` + causal_...)."""
    keys = [prefix + key for key in ("causal_planted", "causal_sae", "causal_shaped")]
    if power is None:
        return dict.fromkeys(keys, NOT_MEASURED)
    by_kind = power.groupby("kind")[["detected", "n"]].sum()
    return {key: f"{int(by_kind.loc[kind, 'detected'])} of {int(by_kind.loc[kind, 'n'])}" if kind in by_kind.index
            else "none tested" for kind, key in zip(("planted", "SAE feature", "data-shaped random"), keys)}


@dataclass
class OwnBlocks:
    """05's detection and causality in the toy's own most active blocks (`repro.features.own_blocks`)."""

    ranking: pd.DataFrame
    """Every block's ablation effect on dev scenes, most harmful first, with intervals and P(top 4)."""
    blocks: list[str]
    saes: dict[str, TopKSAE]
    detection: pd.DataFrame
    """As `detection`, on held-out halves of the captured scenes."""
    causality: pd.DataFrame
    """As `causality`."""

    def where(self) -> str:
        return f"the toy's own most active blocks outside the paper's four ({', '.join(self.blocks)})"

    def power(self) -> pd.DataFrame:
        return power_table(self.causality)

    def to_dict(self) -> dict:
        """For the results JSON: the blocks, the ranking and the tables as records."""
        from repro.results import records

        return {"blocks": self.blocks, "ranking": records(self.ranking.reset_index()),
                "detection": records(self.detection), "causality": records(self.causality),
                "causality_power": records(self.power())}


def own_block_experiments(pipe, profile, *, seed: int, device: str = "auto", progress=None) -> OwnBlocks | None:
    """`detection` and `causality` in the profile's `own_blocks` most ablation-sensitive blocks outside the
    paper's four, ranked on `causal_dev_scenes` dev scenes, each with an SAE trained the main SAEs' way
    on `collect_prompts` train-split scenes (None when the profile asks for none)."""
    from repro.features.detection import concept_detection_table
    from repro.features.own_blocks import capture_blocks, own_blocks, rank_blocks, train_block_saes
    from repro.shapes.oracle import load_oracle

    if not profile.own_blocks:
        return None
    batch = profile.image_batch
    ranking = rank_blocks(pipe, load_oracle(device=pipe.device), profile.turbo, n=profile.causal_dev_scenes, seed=seed,
                          batch_size=batch)
    blocks = own_blocks(ranking, profile.own_blocks)
    data = capture_blocks(pipe, blocks, profile.turbo, n=profile.collect_prompts, seed=seed, batch_size=batch)
    saes = train_block_saes(data, profile, seed=seed, device=device)
    det = concept_detection_table(saes, data.chunks)
    del data
    return OwnBlocks(ranking, blocks, saes, det, causality(pipe, saes, det, profile, seed=seed, batch_size=batch,
                                                           progress=progress))


def timing(pipe, saes: Mapping[str, TopKSAE], det: pd.DataFrame, profile, strength: float, grid: int, seed: int,
           batch_size: int) -> pd.DataFrame:
    """Switch each block's best feature for the first of `causal_labels` on within one step of the
    profile's multi-step turbo sampling (or all steps), beside a random direction of the same norm, in
    the first `timing_scenes` test scenes without the value (seeds from `seed` + 20,000): switch-on
    success rates per (block, kind) x window."""
    from repro.features.causality import causal_timing, has_value, pooled_timing
    from repro.shapes.oracle import load_oracle
    from repro.shapes.splits import split_scenes

    oracle, label, sampling = load_oracle(device=pipe.device), causal_labels(profile)[0], profile.turbo_multistep
    seed += 20_000
    windows = [[t] for t in range(sampling.steps)] + [list(range(sampling.steps))]
    on = [s for s in split_scenes("test", 400, seed=seed) if not has_value(s, label)][:profile.timing_scenes]
    rows = {}
    for b, sae in saes.items():
        f = sae_feature_for(det, b, label)
        if f is None:
            continue
        for kind, s in (("feature", sae), ("random direction", random_direction_twin(sae, f, seed=f))):
            res = pooled_timing([causal_timing(pipe, s, b, f, label, on, oracle, sampling, grid, strength, windows,
                                               seed=seed, batch_size=batch_size)])
            rows[(b, kind)] = {**{(f"on at step {w}" if "-" not in w else "on at all steps"): r["rate"]
                                  for w, r in res["on"].items()}, "value read without edit": res["baseline_on"]["rate"]}
    return pd.DataFrame(rows).T


def locality(pipe, saes: Mapping[str, TopKSAE], features: Mapping[str, int], prompts, seeds, sampling, grid: int,
             strengths: Sequence[float], batch_size: int) -> dict:
    """{(block, kind): LocalityCurve} for each block's feature and a random direction of the same norm,
    added at the centre cell at each strength (`repro.features.causality.locality_curve`)."""
    from repro.evaluate.in_loop import generate_with
    from repro.features.causality import locality_curve

    plain = generate_with(pipe, prompts, seeds, sampling, None, batch_size)
    out = {}
    for b, f in features.items():
        for kind, sae in (("feature", saes[b]), ("random direction", random_direction_twin(saes[b], f, seed=f))):
            out[(b, kind)] = locality_curve(pipe, sae, b, f, prompts, seeds, sampling, grid, strengths,
                                            batch_size=batch_size, plain=plain)
    return out


def locality_table(curves: dict) -> pd.DataFrame:
    """Spread (far / near change) with its bootstrap interval per (block, kind) and strength."""
    out = {}
    for key, c in curves.items():
        summary = c.summary()
        out[key] = {f"spread s={s:g}": f"{r['spread']['value']:.2f} [{r['spread']['lo']:.2f}, {r['spread']['hi']:.2f}]"
                    for s, r in summary.items()}
    return pd.DataFrame(out).T


def claims(det: pd.DataFrame, cz: pd.DataFrame | None, *, min_pos: int = 20, where: str = "") -> list:
    """05's measurements of the interpretability and causality claims (`repro.claims`); `where`: the
    blocks, when they are not the paper's four (named in each claim).

    Interpretable: per block, over concepts with >= `min_pos` positive test cells, the trained
    SAE's best F1 beats the random SAE's in more concepts than not (exact sign test, p < 0.05);
    the positive control is the same test run on the linear probe against the random SAE.
    Causal: the SAE features detected against the isotropic random direction (paired McNemar,
    p < 0.05) in at least half of the (block, label) pairs tested; the positive control is the
    share of planted ground-truth directions the same test detects."""
    from repro.claims import Claim
    from repro.features.positive_controls import PLANTED, SAE_FEATURE, detection_power
    from repro.intervals import mcnemar_exact as sign_test  # the exact sign test of wins against losses

    rows = det[(det.n_pos >= min_pos) & ~det.concept.isin(("object", "background"))]
    f1 = rows.pivot_table(index=["block", "concept"], columns="detector", values="f1")
    per_block, probe_wins = {}, 0
    for b, g in f1.groupby(level=0):
        wins, losses = int((g["SAE"] > g["random SAE"]).sum()), int((g["SAE"] < g["random SAE"]).sum())
        pw, pl = int((g["linear probe"] > g["random SAE"]).sum()), int((g["linear probe"] < g["random SAE"]).sum())
        per_block[b] = (wins, losses, sign_test(wins, losses))
        probe_wins += pw > pl and sign_test(pw, pl) < 0.05
    medians = f1.groupby(level=0).median()
    out = [Claim(
        claim="SAE features are interpretable (match ground-truth concepts)" + (f", in {where}" if where else ""),
        chapter="05_features",
        measure=f"best F1 per concept (>= {min_pos} positive cells), trained SAE above an untrained one in more "
                "concepts than not, exact sign test p < 0.05, in every block",
        result="; ".join(f"{b} median F1 {medians.loc[b, 'SAE']:.2f}, wins {w}/{w + lo} (p {p:.2g})"
                         for b, (w, lo, p) in per_block.items()),
        control="random SAE median F1: " + "; ".join(f"{b} {medians.loc[b, 'random SAE']:.2f}" for b in per_block),
        beats_control=bool(per_block) and all(w > lo and p < 0.05 for w, lo, p in per_block.values()),
        positive_control="a linear probe on the updates, same test against the random SAE: detected in "
                         f"{probe_wins} of {len(per_block)} blocks (median F1 "
                         + "; ".join(f"{b} {medians.loc[b, 'linear probe']:.2f}" for b in per_block) + ")",
        power=probe_wins / max(len(per_block), 1), n=f"{len(f1)} (block, concept) pairs on the test images")]
    if cz is not None and len(cz):
        planted = detection_power(cz, PLANTED, by=("kind",))
        sae = detection_power(cz, SAE_FEATURE, by=("kind",))
        n_scenes = int(cz["n"].max())
        mdes = cz[cz.kind == PLANTED]["mde"].to_numpy(dtype=float)
        mde = float(np.nanmedian(mdes)) if np.isfinite(mdes).any() else float("nan")  # none: no discordant pairs
        if len(sae):
            s = sae.iloc[0]
            p = planted.iloc[0]
            out.append(Claim(
                claim="SAE features are causal (switching one on writes its concept)" + (f", in {where}" if where else ""),
                chapter="05_features",
                measure="joint success-and-preserved against an isotropic random direction of the same norm, paired "
                        "McNemar p < 0.05 at the best strength, in at least half of the (block, label) pairs",
                result=f"SAE features detected in {int(s['detected'])} of {int(s['n'])} "
                       f"({s['power']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}])",
                control="isotropic random direction, same cells, scenes, seeds and strengths",
                beats_control=bool(s["power"] >= 0.5),
                positive_control=f"planted mean-difference directions detected in {int(p['detected'])} of "
                                 f"{int(p['n'])} ({p['power']:.2f} [{p['lo']:.2f}, {p['hi']:.2f}]); minimal detectable "
                                 + (f"difference at this n ~{mde:.2f}" if np.isfinite(mde)
                                    else "difference not estimable (no discordant pairs)"),
                power=float(p["power"]), n=f"{n_scenes} scenes per direction and strength"))
    return out


def feature_site(pipe, saes: Mapping[str, TopKSAE], store, analyses: Mapping, prof, *, labels: Mapping, causal,
                 icons: Mapping, shown: Sequence[tuple[str, int]], prompts: Sequence[str], seed: int, strength: float,
                 n_neighbours: int, batch_size: int, device="auto"):
    """Every live feature's page (`repro.features.site.FeatureSite`): statistics, top and sampled images
    from the store, labels and causal results (toy), nearest features, mean activation per step on
    the multi-step settings, icons, and a painted example (`strength * mean_f` in the centre region)
    for the `shown` features."""
    from repro.evaluate.capture import capture_eval_updates
    from repro.evaluate.in_loop import generate_with
    from repro.features.distribution import step_means
    from repro.features.interventions import FeatureAdd, InRegion
    from repro.features.neighbours import decoder_neighbours
    from repro.features.records import BlockFeatures, causal_by_feature
    from repro.features.site import FeatureSite
    from repro.models.loading import load_pipeline

    blocks = list(saes)
    seeds = [seed + i for i in range(len(prompts))]
    steps = {b: {} for b in blocks}
    for name, model, sampling in ((f"turbo, {prof.turbo_multistep.steps} steps", prof.turbo_model, prof.turbo_multistep),
                                  (f"base, {prof.base.steps} steps", prof.base_model, prof.base)):
        other = pipe if model == prof.turbo_model else load_pipeline(model, device=device, dtype=prof.dtype)
        ups = capture_eval_updates(other, prompts, seeds, sampling, blocks, batch_size=batch_size)
        for b in blocks:
            steps[b][name] = {h: step_means(saes[b], u) for h, u in ups[b].items()}
    painted = {b: {} for b in blocks}
    for b, f in shown:
        add = InRegion(inner=FeatureAdd(sae=saes[b], features=f, strength=strength * float(analyses[b].stats.mean[f])),
                       region="centre")
        plain, edited = (generate_with(pipe, [prompts[0]], [seed], prof.turbo, e)[0] for e in ({}, {b: add}))
        painted[b][f] = {"prompt": prompts[0], "region": "centre", "plain": plain, "edited": edited}
    causal_pages = causal_by_feature(causal) if causal is not None else {}
    neighbours = decoder_neighbours(saes, k=n_neighbours)
    site_blocks = {b: BlockFeatures(
        stats=analyses[b].stats, top=analyses[b].top, distribution=analyses[b].distribution,
        labels=labels[b].label if b in labels else None, purity=labels[b].purity.tolist() if b in labels else None,
        f1=labels[b].f1.tolist() if b in labels else None, causal=causal_pages.get(b), steps=steps[b],
        neighbours=neighbours[b], icons=icons[b], painted=painted[b]) for b in blocks}
    cache = store_images(pipe, store, [i for a in analyses.values() for ids in (a.top.image_ids, a.distribution.sample_ids)
                                       for i in ids.flatten().tolist() if i >= 0])
    return FeatureSite(site_blocks, lambda i: cache[int(i)], title=f"{prof.name}: SAE features of {', '.join(blocks)}")


__all__ = ["FeaturesConfig", "Labels", "causal_headlines", "causal_labels", "causality", "claims", "detection",
           "feature_site", "frequency_table", "icons", "label_headlines", "labels", "locality", "locality_table",
           "power_table", "sae_feature_for", "save_artifacts", "store_images", "timing", "top_features"]
