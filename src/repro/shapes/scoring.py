"""Oracle-scored prompt following of ShapesWorld generators, their speed, block ablations, the VAE's ceiling.

Everything is read back by the oracle (`repro.shapes.oracle`) and scored against the scene
each caption asked for (`compare`), so the numbers rest on ground truth, not on a judge:

    scenes, captions = heldout_captions(500)                    # test split: never trained on
    gen = pipeline_generator(pipe, Sampling(steps=1))            # (captions, seeds) -> uint8 images
    pf = prompt_following(gen, oracle, scenes, captions, seeds=range(500))
    pf.scores                                                   # {"shape": 0.97, ..., "all": 0.9}
    ab = block_ablation(pipe, oracle, scenes[:100], captions[:100], range(100), Sampling(steps=1))
    ab.table                                                     # one row per block

A generator is any function `(captions, seeds) -> uint8 [N, H, W, 3]`; the tests pass one
that returns the renders themselves, which must score (close to) perfectly. Images of any
size are fine: the oracle resizes them to 128 px (bilinear, antialiased) before reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from repro.shapes.captions import caption
from repro.shapes.oracle import compare
from repro.shapes.splits import split_scenes
from repro.shapes.world import Scene

if TYPE_CHECKING:
    import pandas as pd

ATTRIBUTES = ("layout", "shape", "pose", "colour", "texture", "size", "background", "style")
"""The attributes `compare` scores, in table order ("all" comes after them)."""

Generator = Callable[[Sequence[str], Sequence[int]], np.ndarray]
"""(captions, seeds) -> uint8 images [N, H, W, 3], one per caption."""


def heldout_captions(n: int, seed: int = 0, one_stream: bool = False) -> tuple[list[Scene], list[str]]:
    """n distinct test-split scenes (never trained on) and one caption of each.

    Deterministic in (n, seed); the first k of a longer list equal the list for n = k.
    `one_stream` draws the captions in turn from one generator: the captions `repro toy eval`,
    benchmarks/toy_eval.py and the toy investigations were recorded with (same scenes).
    """
    scenes = split_scenes("test", n, seed=seed)
    if one_stream:
        rng = np.random.default_rng([seed, 2])
        return scenes, [caption(s, rng) for s in scenes]
    return scenes, [caption(s, np.random.default_rng([seed, i])) for i, s in enumerate(scenes)]


def score_readings(readings: Sequence[dict], scenes: Sequence[Scene]) -> dict[str, float]:
    """Share of images with each attribute right, and "all" (every attribute of the image right).

    Per image, an attribute is right when every object of the scene has it right (see
    `compare`); "pose" is scored over the images whose scene holds an oriented shape.
    """
    if len(readings) != len(scenes):
        raise ValueError(f"{len(readings)} readings but {len(scenes)} scenes: give one reading per scene")
    hits: dict[str, list[bool]] = {a: [] for a in (*ATTRIBUTES, "all")}
    for r, s in zip(readings, scenes):
        for k, v in compare(r, s).items():
            hits[k].append(bool(v))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def rounded(scores: dict[str, float]) -> dict[str, float]:
    """Scores to 4 decimals, the attributes no image could be scored on (nan) left out."""
    return {k: round(v, 4) for k, v in scores.items() if not np.isnan(v)}


def vae_ceiling(vae, oracle, n: int = 500, seed: int = 0) -> dict:
    """Oracle scores of the renders of n held-out scenes and of their VAE reconstructions:
    no generator can follow prompts better than its VAE lets it."""
    import torch

    from repro.shapes.render import render_batch
    from repro.toymodels.vae import decode_latents, encode_images

    scenes, _ = heldout_captions(n, seed)
    renders = render_batch(scenes, with_masks=False).images
    with torch.no_grad():
        x = torch.from_numpy(renders).to(next(vae.parameters()).device)
        rec = decode_latents(vae, encode_images(vae, x)).cpu().numpy()
    mse = float((((rec.astype(np.float32) - renders.astype(np.float32)) / 255.0) ** 2).mean())
    return {"renders": rounded(score_readings(oracle.read(renders), scenes)),
            "reconstructions": rounded(score_readings(oracle.read(rec), scenes)), "reconstruction_mse": round(mse, 6), "n": n}


def pipeline_generator(pipe, sampling, output: str = "np") -> Generator:
    """A `Generator` drawing with `pipe` at `sampling` (one image per caption, seeded per caption)."""
    from repro.generate import generate

    def gen(captions: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        return generate(pipe, list(captions), [int(s) for s in seeds], sampling, output=output)

    return gen


def generate_batched(generator: Generator, captions: Sequence[str], seeds: Sequence[int],
                     batch_size: int = 32) -> tuple[np.ndarray, list[float]]:
    """All images in batches of `batch_size`: (uint8 [N, H, W, 3], seconds per batch)."""
    if len(captions) != len(seeds):
        raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds: give one seed per caption")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    parts, seconds = [], []
    for a in range(0, len(captions), batch_size):
        t0 = time.perf_counter()
        parts.append(np.asarray(generator(captions[a : a + batch_size], seeds[a : a + batch_size])))
        seconds.append(time.perf_counter() - t0)
    return np.concatenate(parts), seconds


@dataclass
class Speed:
    """Generation speed: images per second over the timed batches (the warm-up ones excluded)."""

    images_per_second: float
    batch_size: int
    timed_images: int
    timed_seconds: float
    warm: bool
    """False when there was no batch after the warm-up: the rate then includes the warm-up."""

    def to_dict(self) -> dict:
        return {"images_per_second": round(self.images_per_second, 3), "batch_size": self.batch_size,
                "timed_images": self.timed_images, "timed_seconds": round(self.timed_seconds, 2),
                "warm": self.warm}


def speed_from_batches(batch_seconds: Sequence[float], n_images: int, batch_size: int, warmup: int = 1) -> Speed:
    """Images per second from per-batch times, skipping the first `warmup` batches when others exist."""
    sizes = [min(batch_size, n_images - a) for a in range(0, n_images, batch_size)]
    if len(sizes) != len(batch_seconds):
        raise ValueError(f"{len(batch_seconds)} batch times for {len(sizes)} batches of {batch_size}")
    warm = len(sizes) > warmup
    skip = warmup if warm else 0
    imgs, secs = sum(sizes[skip:]), float(sum(batch_seconds[skip:]))
    return Speed(imgs / secs if secs > 0 else float("inf"), batch_size, imgs, secs, warm)


@dataclass
class PromptFollowing:
    """Images generated for held-out captions and how often the oracle reads each attribute right."""

    scores: dict[str, float]
    """Share right per attribute and "all"."""
    images: np.ndarray
    """uint8 [N, H, W, 3], in caption order."""
    hits: list[dict[str, bool]]
    """`compare` per image."""
    speed: Speed
    """Images per second of this run (batches after the first)."""

    def to_dict(self) -> dict:
        return {"scores": {k: round(v, 4) for k, v in self.scores.items()}, "n": len(self.hits),
                "speed": self.speed.to_dict()}


def prompt_following(generator: Generator, oracle, scenes: Sequence[Scene], captions: Sequence[str],
                     seeds: Sequence[int], batch_size: int = 32) -> PromptFollowing:
    """Generate one image per caption, read it with the oracle, score it against the caption's scene."""
    if not len(scenes) == len(captions) == len(seeds):
        raise ValueError(f"{len(scenes)} scenes, {len(captions)} captions, {len(seeds)} seeds: give one of each per image")
    images, seconds = generate_batched(generator, list(captions), list(seeds), batch_size)
    readings = oracle.read(images)
    hits = [compare(r, s) for r, s in zip(readings, scenes)]
    return PromptFollowing(score_readings(readings, scenes), images, hits,
                           speed_from_batches(seconds, len(images), batch_size))


def targets_met(scores: dict[str, float], threshold: float = 0.9) -> dict:
    """Whether every attribute (not "all") reaches `threshold`: {"met", "weakest", "weakest_value", "below"}."""
    per = {a: v for a, v in scores.items() if a in ATTRIBUTES and not np.isnan(v)}
    weakest = min(per, key=per.get)
    return {"met": bool(per[weakest] >= threshold), "weakest": weakest, "weakest_value": round(per[weakest], 4),
            "below": sorted(a for a, v in per.items() if v < threshold), "threshold": threshold}


@dataclass
class BlockAblation:
    """What replacing each block's output by its input does to the images and to prompt following."""

    table: pd.DataFrame
    """pandas DataFrame, one row per block: in_paper, pixel_change, then `d_<attribute>` and `d_all`
    (accuracy with the block ablated minus without; negative = the block mattered)."""
    baseline: dict[str, float]
    """Prompt-following scores of the un-ablated images."""
    n: int
    changes: dict[str, np.ndarray] | None = None
    """block -> int8 [N, attributes + 1]: per image, right with the block ablated minus right without
    (columns `ATTRIBUTES` then "all"): what the bootstrap resamples."""

    def to_dict(self) -> dict:
        rows = {b: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                for b, row in self.table.to_dict(orient="index").items()}
        return {"baseline": {k: round(v, 4) for k, v in self.baseline.items()}, "n": self.n, "blocks": rows}

    def bootstrap(self, column: str = "all", top: int = 4, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Per block: the accuracy change of `column` with a 95% paired bootstrap interval over images,
        the median rank (1 = most harmful) and the share of resamples in which it is among the `top`
        most harmful ablations (ties broken at random)."""
        import pandas as pd

        if not self.changes:
            raise ValueError("no per-image changes recorded: run block_ablation again")
        blocks = list(self.changes)
        j = [*ATTRIBUTES, "all"].index(column)
        d = np.stack([self.changes[b][:, j] for b in blocks], axis=1).astype(np.float64)  # [N, blocks]
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, d.shape[0], size=(n_boot, d.shape[0]))
        means = d[idx].mean(axis=1)  # [n_boot, blocks]
        jitter = rng.random(means.shape) * 1e-9  # random tie-breaking
        ranks = (means + jitter).argsort(axis=1).argsort(axis=1) + 1  # 1 = most negative
        lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
        return pd.DataFrame({"change": d.mean(0), "lo": lo, "hi": hi, "median rank": np.median(ranks, 0),
                             f"P(top {top})": (ranks <= top).mean(0)}, index=pd.Index(blocks, name="block"))

    def ranking(self, by: str = "d_all") -> list[str]:
        """Blocks from the most to the least harmful ablation (most negative `by` first, ties by pixel change)."""
        t = self.table.sort_values([by, "pixel_change"], ascending=[True, False])
        return list(t.index)


ROLES = {"down.2.1": ("composition", ("layout", "shape", "size")), "up.0.1": ("style", ("colour", "texture", "style"))}
"""The paper's block roles that ablation can test on the toy: the attributes each role stands for."""


def ablation_claims(ab: "BlockAblation", top: int = 4, n_boot: int = 2000, seed: int = 0) -> list:
    """01's measurements of the paper's block claims (`repro.claims`): that its four blocks are the ones
    whose ablation matters most (each in the `top` most harmful in >= 95% of bootstrap resamples over
    images), and that `down.2.1` writes composition and `up.0.1` style (the ablation loss on the role's
    attributes exceeds that on the others, 95% paired bootstrap interval above 0)."""
    from repro.blocks import PAPER_BLOCKS
    from repro.claims import Claim

    boot = ab.bootstrap("all", top=top, n_boot=n_boot, seed=seed)
    col = f"P(top {top})"
    paper = [b for b in PAPER_BLOCKS if b in boot.index]
    out = [Claim(
        claim="The paper's four blocks are the ones whose ablation matters most", chapter="01_shapesworld",
        measure=f"each paper block among the {top} most harmful ablations (all attributes right) in >= 95% of "
                "bootstrap resamples over images",
        result="; ".join(f"{b} {boot.loc[b, 'change']:+.2f} [{boot.loc[b, 'lo']:+.2f}, {boot.loc[b, 'hi']:+.2f}], "
                         f"{col} {boot.loc[b, col]:.2f}" for b in paper),
        control="the other blocks: " + ", ".join(f"{b} {boot.loc[b, col]:.2f}" for b in boot.index if b not in paper),
        beats_control=all(boot.loc[b, col] >= 0.95 for b in paper), n=f"{ab.n} captions a block",
        note="the toy UNet has one transformer layer in down.2.1 against SDXL's ten")]
    if ab.changes:
        idx = {a: i for i, a in enumerate((*ATTRIBUTES, "all"))}
        rng = np.random.default_rng(seed)
        for block, (role, attrs) in ROLES.items():
            if block not in ab.changes:
                continue
            d = ab.changes[block].astype(np.float64)
            others = [a for a in ATTRIBUTES if a not in attrs]
            # per image: loss on the role's attributes minus loss on the others (loss = -change)
            gap = -d[:, [idx[a] for a in attrs]].mean(1) + d[:, [idx[a] for a in others]].mean(1)
            draws = gap[rng.integers(0, len(gap), size=(n_boot, len(gap)))].mean(1)
            lo, hi = np.percentile(draws, [2.5, 97.5])
            moved = bool((ab.changes[block][:, idx["all"]] != 0).any())
            out.append(Claim(
                claim=f"{block} writes {role} ({', '.join(attrs)})", chapter="01_shapesworld",
                measure=f"ablation loss on {', '.join(attrs)} minus on the other attributes, 95% paired bootstrap "
                        "interval above 0",
                result=f"{gap.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]", control="the block's loss on the other attributes",
                beats_control=bool(lo > 0), n=f"{ab.n} captions",
                positive_control="" if moved else "none: ablating this block changes no oracle reading",
                power=None if moved else 0.0,
                note="" if moved else "the toy's block writes nothing the oracle can read, so no role can show"))
    return out


def block_ablation(pipe, oracle, scenes: Sequence[Scene], captions: Sequence[str], seeds: Sequence[int],
                   sampling, blocks: Sequence[str] | None = None, batch_size: int = 32) -> BlockAblation:
    """Ablate each block in turn (`hooks.Ablate`: output = input at every step) and measure the change.

    pixel_change: mean absolute difference to the un-ablated image of the same seed, as a
    fraction of full scale (0..1). d_<attribute>: oracle accuracy against the caption's
    scene with the block ablated minus without.
    """
    import pandas as pd

    from repro.blocks import PAPER_BLOCKS, block_names
    from repro.evaluate.in_loop import generate_variants
    from repro.hooks import Ablate

    blocks = list(blocks) if blocks is not None else block_names(pipe.unet)
    gen = pipeline_generator(pipe, sampling)
    base = prompt_following(gen, oracle, scenes, captions, seeds, batch_size)
    ref = base.images.astype(np.float32)
    rows, changes = {}, {}
    # an attribute a scene does not have (pose of unoriented shapes) counts as right: no change
    right = lambda hits: np.array([[h.get(a, True) for a in (*ATTRIBUTES, "all")] for h in hits], dtype=np.int8)  # noqa: E731
    # every block's ablation in one batched generation (the variants side by side)
    ablated = generate_variants(pipe, list(captions), [int(s) for s in seeds], sampling, [{b: Ablate()} for b in blocks],
                                batch_size, "block ablation")
    for b, images in zip(blocks, ablated):
        readings = oracle.read(images)
        hits = [compare(r, s) for r, s in zip(readings, scenes)]
        scores = score_readings(readings, scenes)
        row = {"in_paper": b in PAPER_BLOCKS,
               "pixel_change": float(np.abs(images.astype(np.float32) - ref).mean() / 255.0)}
        for a in (*ATTRIBUTES, "all"):
            row[f"d_{a}"] = scores[a] - base.scores[a]
        rows[b] = row
        changes[b] = right(hits) - right(base.hits)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "block"
    return BlockAblation(table, base.scores, len(scenes), changes)


# ---------------------------------------------------------------------------------------
# Figures


def plot_samples(rows: dict[str, np.ndarray], captions: Sequence[str], ncols: int | None = None):
    """A grid: one row per entry of `rows` (name -> uint8 [N, H, W, 3]), one column per caption."""
    import matplotlib.pyplot as plt

    n = ncols or len(captions)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.9 * n, 1.9 * len(rows) + 0.6), squeeze=False)
    for i, (name, imgs) in enumerate(rows.items()):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j], interpolation="nearest")
            ax.set_xticks([]); ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if i == 0:
                ax.set_title(_wrap(captions[j]), fontsize=5.5)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 30) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_ablation(ablation: BlockAblation):
    """Heatmap block x attribute of the accuracy change, with the pixel change beside it."""
    import matplotlib.pyplot as plt

    t = ablation.table
    cols = [c for c in t.columns if c.startswith("d_")]
    m = 100 * t[cols].to_numpy(dtype=float)  # percentage points
    lim = max(5.0, float(np.nanmax(np.abs(m))))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 0.35 * len(t) + 1.5), gridspec_kw={"width_ratios": [len(cols), 1.5]})
    im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), [c[2:] for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(t)), [f"{b} *" if p else b for b, p in zip(t.index, t["in_paper"])])
    for (i, j), v in np.ndenumerate(m):
        if not np.isnan(v):
            ax.text(j, i, f"{v:+.0f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, label="accuracy change, points (ablated - intact)")
    ax.set_title("oracle accuracy change per attribute (* = paper block)", fontsize=9)
    ax2.barh(range(len(t)), t["pixel_change"].to_numpy(), color="grey")
    ax2.set_ylim(len(t) - 0.5, -0.5)
    ax2.set_yticks([])
    ax2.set_title("pixel change", fontsize=9)
    fig.tight_layout()
    return fig


QUALITY_TARGETS = {"vae": 0.97, "turbo_1_step": 0.95, "turbo_multistep": 0.95, "base": 0.90}
"""Share of images with every attribute right that the ShapesWorld models must reach (issue #14):
the VAE's reconstructions of renders, the 1-step model at 1 and at 4 steps, the base model."""


def all_right_rate(hits: list[dict[str, bool]]) -> dict:
    """{"rate", "lo", "hi", "hits", "n"}: share of images with every attribute right, Wilson 95 % interval."""
    from repro.intervals import rate

    return rate(sum(bool(h["all"]) for h in hits), len(hits))


def quality_targets(rates: dict[str, dict]) -> pd.DataFrame:
    """One row per model setting in `rates` (keys of QUALITY_TARGETS -> `all_right_rate` records):
    target, measured share with its interval, and whether the target is met (by the point estimate)
    and whether the interval lies wholly above it."""
    import pandas as pd

    rows = {}
    for key, r in rates.items():
        target = QUALITY_TARGETS[key]
        rows[key] = {"target": target, "all right": round(r["rate"], 4), "95% lo": round(r["lo"], 4),
                     "95% hi": round(r["hi"], 4), "images": r["n"], "met": r["rate"] >= target,
                     "interval above target": r["lo"] >= target}
    return pd.DataFrame(rows).T
