"""One pass over a block's updates: per-feature statistics, top-activating examples and,
when ground truth is known, each feature's association with concepts.

Input is a stream of chunks `(image_ids [b], updates [b, H, W, C])`, so paper-scale
stores are read piece by piece. Per feature f (z_f: activation after TopK and ReLU, zeroed
where it does not fire by `repro.sae.metrics.fires`, the training loss's rule):
- frequency: share of positions where f fires; mean / std of z_f where it fires;
- top examples: the `m` images with the largest max_pos z_f, with their [H, W] maps;
- concept association (toy only): with C_c the positions where concept c holds (e.g. "this
  position belongs to a red object") and F_f the positions where f fires,
  precision(f, c) = |F_f & C_c| / |F_f|, recall(f, c) = |F_f & C_c| / |C_c|.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from repro.meter import add_sae_analysis
from repro.sae.metrics import fires
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats

if TYPE_CHECKING:
    from repro.features.profile import FeatureProfile


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

    def precision(self) -> torch.Tensor:
        return self.both / self.fired.clamp_min(1)[:, None]

    def recall(self) -> torch.Tensor:
        return self.both / self.concept.clamp_min(1)[None, :]

    def f1(self) -> torch.Tensor:
        p, r = self.precision(), self.recall()
        return 2 * p * r / (p + r).clamp_min(1e-12)


@dataclass
class FeatureAnalysis:
    stats: FeatureStats
    top: TopExamples
    concepts: ConceptCounts | None
    profile: "FeatureProfile | None" = None
    """Density over images, activation histogram and image sample (`profile_sample=`), else None."""


def _chunks_by_size(chunks, max_elems: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Split incoming chunks so that a dense code block [b, H*W, n] stays under `max_elems`."""
    for item in chunks:
        ids, x = item[0], item[1]
        concepts = item[2] if len(item) > 2 else None
        yield from _split(ids, x, concepts, max_elems)


def _split(ids, x, concepts, max_elems):
    per_image = x.shape[1] * x.shape[2]
    step = max(1, max_elems // per_image)
    for s in range(0, len(ids), step):
        yield ids[s:s + step], x[s:s + step], None if concepts is None else concepts[s:s + step]


@torch.no_grad()
def analyse_features(
    sae: TopKSAE,
    chunks: Iterable[tuple],
    m: int = 16,
    concept_names: list[str] | None = None,
    max_dense_elems: int = 2 ** 25,
    profile_sample: int | None = None,
    profile_seed: int = 0,
) -> FeatureAnalysis:
    """Stream `(image_ids [b], updates [b, H, W, C][, concepts [b, c, H, W] bool])` chunks.

    Concepts are optional; give `concept_names` (length c) with them. `profile_sample=r` also
    builds each feature's profile in the same pass (`repro.features.profile`: equal to
    `profile_features(sae, chunks, r, profile_seed, max_dense_elems)`).
    """
    from repro.features.profile import ProfileAccumulator

    n = sae.cfg.n_features
    dev = sae.device
    profile = ProfileAccumulator(n, profile_sample, profile_seed, dev) if profile_sample else None
    started = time.perf_counter()
    count = torch.zeros(n, dtype=torch.int64, device=dev)
    total = torch.zeros(n, dtype=torch.float64, device=dev)
    total_sq = torch.zeros(n, dtype=torch.float64, device=dev)
    best_vals = torch.full((n, m), -1.0, device=dev)
    best_ids = torch.full((n, m), -1, dtype=torch.int64, device=dev)
    best_maps = None
    both = fired_pos = concept_pos = None
    n_tokens = 0
    for ids, x, concepts in _chunks_by_size(chunks, max_dense_elems // max(n, 1)):
        b, h, w, c = x.shape
        if best_maps is None:
            best_maps = torch.zeros(n, m, h, w, dtype=torch.float16, device=dev)
        tokens = x.reshape(-1, c).to(device=dev, dtype=sae.dtype)
        vals, idx = sae.encode_topk(tokens)  # [b*h*w, k]
        vals = vals.float() * fires(sae.cfg, vals)  # below the firing threshold counts as silent
        z = torch.zeros(tokens.shape[0], n, device=dev).scatter_(1, idx, vals)  # [b*h*w, n]
        if profile is not None:
            profile.add(ids, vals, idx, z, (h, w))
        on = z > 0
        count += on.sum(0)
        total += z.sum(0).double()
        total_sq += (z.double() ** 2).sum(0)
        n_tokens += tokens.shape[0]
        # top examples: merge this chunk's per-image maxima into the running top-m
        z_img = z.reshape(b, h * w, n)
        img_max = z_img.amax(1).T  # [n, b]
        cand_vals = torch.cat([best_vals, img_max], 1)  # [n, m + b]
        cand_ids = torch.cat([best_ids, ids.to(dev)[None].expand(n, b)], 1)
        keep_vals, order = cand_vals.topk(m, dim=1)
        chunk_maps = z_img.permute(2, 0, 1).reshape(n, b, h, w).half()  # [n, b, h, w]
        cand_maps = torch.cat([best_maps, chunk_maps], 1)
        best_maps = cand_maps.gather(1, order[:, :, None, None].expand(n, m, h, w))
        best_ids = cand_ids.gather(1, order)
        best_vals = keep_vals
        if concepts is not None:
            cmat = concepts.to(dev).permute(0, 2, 3, 1).reshape(-1, concepts.shape[1]).float()  # [b*h*w, c]
            if both is None:
                both = torch.zeros(n, cmat.shape[1], dtype=torch.float64, device=dev)
                fired_pos = torch.zeros(n, dtype=torch.float64, device=dev)
                concept_pos = torch.zeros(cmat.shape[1], dtype=torch.float64, device=dev)
            both += (on.float().T @ cmat).double()
            fired_pos += on.sum(0).double()
            concept_pos += cmat.sum(0).double()
    safe = count.clamp_min(1).double()
    add_sae_analysis(n_tokens, time.perf_counter() - started)  # reading the store included
    mean = total / safe
    std = (total_sq / safe - mean * mean).clamp_min(0).sqrt()
    stats = FeatureStats(mean=mean.float().cpu(), std=std.float().cpu(),
                         frequency=(count.double() / max(n_tokens, 1)).float().cpu(),
                         count=count.cpu(), n_tokens=n_tokens)
    best_ids = torch.where(best_vals > 0, best_ids, torch.full_like(best_ids, -1))
    top = TopExamples(best_ids.cpu(), best_vals.clamp_min(0).cpu(), best_maps.cpu())
    concepts_out = None
    if both is not None:
        concepts_out = ConceptCounts(list(concept_names or [f"c{i}" for i in range(both.shape[1])]),
                                     both.cpu(), fired_pos.cpu(), concept_pos.cpu(), n_tokens)
    return FeatureAnalysis(stats, top, concepts_out, profile.result() if profile is not None else None)
