"""One pass over a block's updates: per-feature statistics, top-activating examples and,
when ground truth is known, each feature's association with concepts.

Input is a stream of chunks `(image_ids [b], updates [b, H, W, C])`, so paper-scale
stores are read piece by piece; `FeatureAccumulator` holds the running state (one per SAE,
so that `repro.features.data.analyse_store` feeds all blocks from one read of a store). Per feature f (z_f: activation after TopK and ReLU, zeroed
where it does not fire by `repro.sae.metrics.fires`, the training loss's rule):
- frequency: share of positions where f fires; mean / std of z_f where it fires;
- top examples: the `m` images with the largest max_pos z_f, with their [H, W] maps;
- concept association (toy only): with P_c the positions where concept c holds (e.g. "this
  position is mostly a red object"), L_c the positions labelled for c at all (positive or
  negative: three-state labels leave cells an object only clips out, see
  `repro.features.toy_concepts`; bool maps label every position) and F_f the positions
  where f fires, precision(f, c) = |F_f & P_c| / |F_f & L_c|, recall(f, c) = |F_f & P_c| / |P_c|.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch

from repro.meter import add_sae_analysis
from repro.sae.metrics import fires
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats

if TYPE_CHECKING:
    from repro.features.distribution import ActivationDistribution


@dataclass
class TopExamples:
    """The m top-activating images of each of n features."""

    image_ids: torch.Tensor
    """[n, m] int64 image ids, best first (-1 where a feature fired in fewer images)."""
    values: torch.Tensor
    """[n, m] float32: max activation of the feature in that image."""
    maps: torch.Tensor
    """[n, m, H, W] float16: the feature's activation over that image."""

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"image_ids": self.image_ids, "values": self.values, "maps": self.maps}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "TopExamples":
        return cls(t["image_ids"], t["values"], t["maps"])


@dataclass
class ConceptCounts:
    """Co-occurrence counts of feature firing with concepts over positions."""

    names: list[str]
    """Concept names, e.g. "colour=red", "texture=striped", "background=pink"."""
    both: torch.Tensor
    """[n, c] positions where feature f fires and concept c holds."""
    fired: torch.Tensor
    """[n] positions where f fires."""
    concept: torch.Tensor
    """[c] positions where c holds."""
    n_positions: int
    fired_labelled: torch.Tensor | None = None
    """[n, c] positions where f fires and c is labelled (positive or negative); None: every
    position is labelled (bool concept maps), so it equals `fired`."""
    negative: torch.Tensor | None = None
    """[c] positions labelled negative for c (None: n_positions - concept)."""

    def precision(self) -> torch.Tensor:
        """[n, c] share of f's firings on c's labelled positions where c holds."""
        fired = self.fired[:, None] if self.fired_labelled is None else self.fired_labelled
        return self.both / fired.clamp_min(1)

    def recall(self) -> torch.Tensor:
        return self.both / self.concept.clamp_min(1)[None, :]

    def f1(self) -> torch.Tensor:
        p, r = self.precision(), self.recall()
        return 2 * p * r / (p + r).clamp_min(1e-12)


class ConceptTally:
    """Running `ConceptCounts`: `add` takes one block of positions, `result` the counts so far."""

    def __init__(self):
        self.both = self.fired = self.concept = self.fired_labelled = self.negative = None

    def add(self, on: torch.Tensor, labels: torch.Tensor, fired: torch.Tensor | None = None) -> None:
        """on [P, n] bool: where each of n features fires; labels [P, c]: bool, or int8 three-state
        labels (1 positive, 0 negative, -1 left out; `repro.features.toy_concepts`); fired [n]:
        on.sum(0) if already computed. Sums are float64, each block's products float32 (exact
        below 2^24 positions per block)."""
        n, dev = on.shape[1], on.device
        labels = labels.to(dev)
        fired = on.sum(0) if fired is None else fired
        pos = (labels if labels.dtype == torch.bool else labels == 1).float()  # [P, c]
        if self.both is None:
            c = pos.shape[1]
            self.both = torch.zeros(n, c, dtype=torch.float64, device=dev)
            self.fired = torch.zeros(n, dtype=torch.float64, device=dev)
            self.concept = torch.zeros(c, dtype=torch.float64, device=dev)
            self.fired_labelled = torch.zeros(n, c, dtype=torch.float64, device=dev)
            self.negative = torch.zeros(c, dtype=torch.float64, device=dev)
        on = on.float()
        self.both += (on.T @ pos).double()
        self.fired += fired.double()
        self.concept += pos.sum(0).double()
        if labels.dtype == torch.bool:  # every position labelled
            self.fired_labelled += fired.double()[:, None]
            self.negative += (1 - pos).sum(0).double()
        else:
            labelled = (labels >= 0).float()
            self.fired_labelled += (on.T @ labelled).double()
            self.negative += (labelled - pos).sum(0).double()

    def result(self, names: list[str] | None, n_positions: int) -> ConceptCounts:
        """The counts on the CPU (names default to c0, c1, ...)."""
        names = list(names or [f"c{i}" for i in range(self.both.shape[1])])
        return ConceptCounts(names, self.both.cpu(), self.fired.cpu(), self.concept.cpu(), n_positions,
                             self.fired_labelled.cpu(), self.negative.cpu())


@dataclass
class FeatureAnalysis:
    stats: FeatureStats
    top: TopExamples
    concepts: ConceptCounts | None
    distribution: "ActivationDistribution | None" = None
    """Density over images, activation histogram and image sample (`sample_per_feature=`), else None."""


def _split(ids, x, concepts, max_elems):
    per_image = x.shape[1] * x.shape[2]
    step = max(1, max_elems // per_image)
    for s in range(0, len(ids), step):
        yield ids[s:s + step], x[s:s + step], None if concepts is None else concepts[s:s + step]


class FeatureAccumulator:
    """The running state of one SAE's analysis: `add` takes a chunk, `result` the analysis.

    The one implementation of the maths, fed by `analyse_features` (chunks of any stream)
    and by `repro.features.data.analyse_store` (all blocks of a store in one read). Each
    `add` is cut into dense blocks of at most `max_dense_elems` codes, so the same chunks
    give the same floats whoever feeds them.
    """

    def __init__(self, sae: TopKSAE, m: int = 16, concept_names: list[str] | None = None,
                 max_dense_elems: int = 2 ** 25, sample_per_feature: int | None = None, sample_seed: int = 0):
        from repro.features.distribution import DistributionAccumulator

        self.sae, self.m, self.concept_names = sae, m, concept_names
        n, dev = sae.cfg.n_features, sae.device
        self.max_elems = max_dense_elems // max(n, 1)
        self.distribution = (DistributionAccumulator(n, sample_per_feature, sample_seed, dev)
                             if sample_per_feature else None)
        self.count = torch.zeros(n, dtype=torch.int64, device=dev)
        self.total = torch.zeros(n, dtype=torch.float64, device=dev)
        self.total_sq = torch.zeros(n, dtype=torch.float64, device=dev)
        self.best_vals = torch.full((n, m), -1.0, device=dev)
        self.best_ids = torch.full((n, m), -1, dtype=torch.int64, device=dev)
        self.best_maps: torch.Tensor | None = None
        self.tally = ConceptTally()
        self.n_tokens = 0

    @torch.no_grad()
    def add(self, ids: torch.Tensor, x: torch.Tensor, concepts: torch.Tensor | None = None) -> None:
        """ids [b] image ids; x [b, H, W, C] updates (any device, any float dtype); concepts
        [b, c, H, W] bool, int8 three-state labels (1 / 0 / -1 left out) or None."""
        for part in _split(ids, x, concepts, self.max_elems):
            self._add(*part)

    def _add(self, ids, x, concepts) -> None:
        sae, m = self.sae, self.m
        n, dev = sae.cfg.n_features, sae.device
        b, h, w, c = x.shape
        if self.best_maps is None:
            self.best_maps = torch.zeros(n, m, h, w, dtype=torch.float16, device=dev)
        tokens = x.reshape(-1, c).to(device=dev, dtype=sae.dtype)
        vals, idx = sae.encode_topk(tokens)  # [b*h*w, k]
        vals = vals.float() * fires(sae.cfg, vals)  # below the firing threshold counts as silent
        z = torch.zeros(tokens.shape[0], n, device=dev).scatter_(1, idx, vals)  # [b*h*w, n]
        if self.distribution is not None:
            self.distribution.add(ids, vals, idx, z, (h, w))
        on = z > 0
        fired = on.sum(0)  # [n] int64
        self.count += fired
        self.total += z.sum(0).double()
        # one float64 copy of z, squared in place (x*x either way: the same floats as `z.double() ** 2`)
        self.total_sq += z.double().square_().sum(0)
        self.n_tokens += tokens.shape[0]
        # top examples: merge this chunk's per-image maxima into the running top-m
        z_img = z.reshape(b, h * w, n)
        img_max = z_img.amax(1).T  # [n, b]
        cand_vals = torch.cat([self.best_vals, img_max], 1)  # [n, m + b]
        cand_ids = torch.cat([self.best_ids, ids.to(dev)[None].expand(n, b)], 1)
        keep_vals, order = cand_vals.topk(m, dim=1)
        chunk_maps = z_img.permute(2, 0, 1).reshape(n, b, h, w).half()  # [n, b, h, w]
        cand_maps = torch.cat([self.best_maps, chunk_maps], 1)
        self.best_maps = cand_maps.gather(1, order[:, :, None, None].expand(n, m, h, w))
        self.best_ids = cand_ids.gather(1, order)
        self.best_vals = keep_vals
        if concepts is not None:
            self.tally.add(on, concepts.to(dev).permute(0, 2, 3, 1).reshape(-1, concepts.shape[1]), fired)

    def result(self) -> FeatureAnalysis:
        """The analysis so far, on the CPU."""
        count, n_tokens = self.count, self.n_tokens
        safe = count.clamp_min(1).double()
        mean = self.total / safe
        std = (self.total_sq / safe - mean * mean).clamp_min(0).sqrt()
        stats = FeatureStats(mean=mean.float().cpu(), std=std.float().cpu(),
                             frequency=(count.double() / max(n_tokens, 1)).float().cpu(),
                             count=count.cpu(), n_tokens=n_tokens)
        best_ids = torch.where(self.best_vals > 0, self.best_ids, torch.full_like(self.best_ids, -1))
        maps = self.best_maps
        if maps is None:  # nothing added
            maps = torch.zeros(*best_ids.shape, 1, 1, dtype=torch.float16)
        top = TopExamples(best_ids.cpu(), self.best_vals.clamp_min(0).cpu(), maps.cpu())
        concepts_out = None
        if self.tally.both is not None:
            concepts_out = self.tally.result(self.concept_names, n_tokens)
        distribution = self.distribution.result() if self.distribution is not None else None
        return FeatureAnalysis(stats, top, concepts_out, distribution)


@torch.no_grad()
def analyse_features(
    sae: TopKSAE,
    chunks: Iterable[tuple],
    m: int = 16,
    concept_names: list[str] | None = None,
    max_dense_elems: int = 2 ** 25,
    sample_per_feature: int | None = None,
    sample_seed: int = 0,
) -> FeatureAnalysis:
    """Stream `(image_ids [b], updates [b, H, W, C][, concepts [b, c, H, W] bool or int8 labels])` chunks.

    Concepts are optional; give `concept_names` (length c) with them. `sample_per_feature=r`
    also builds each feature's activation distribution in the same pass
    (`repro.features.distribution`; tests/test_feature_pages.py checks it against that pass
    alone, `activation_distribution`). A whole store, all blocks at once:
    `repro.features.data.analyse_store` (each shard read once).
    """
    started = time.perf_counter()
    acc = FeatureAccumulator(sae, m, concept_names, max_dense_elems, sample_per_feature, sample_seed)
    for item in chunks:
        acc.add(item[0], item[1], item[2] if len(item) > 2 else None)
    out = acc.result()
    add_sae_analysis(acc.n_tokens, time.perf_counter() - started)  # reading the store included
    return out
