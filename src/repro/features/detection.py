"""How well a per-position detector finds each ShapesWorld concept: SAE features against
a random SAE and a linear-probe ceiling.

A detector gives scores [N, n, g, g] (n "features" on the SAE's grid: an SAE's activations,
a probe's logits, a ground-truth mask); feature f *fires* where its score exceeds a
threshold (for an SAE its `fire_threshold`, the training loss's rule `repro.sae.metrics.fires`).
Labels are `repro.features.toy_concepts.scene_concepts`' three-state maps: each concept is
scored on its labelled cells only (positive or negative; cells an object only clips are
left out of precision, recall and AUROC alike).

Per concept c, with f the detector's feature for c (`chosen`, e.g. the best F1 on a dev split):
- precision, recall, F1 of "f fires" against "c holds" over c's labelled cells;
- AUROC of f's score as a ranking of c's positive over negative cells: exact (the
  Mann-Whitney statistic with tied scores counted half), from f's scores, which the
  accumulator keeps for the chosen features only (4 bytes + 1 per cell and concept);
- base rate (positives / labelled cells) and lift = precision / base rate.
Counts for every feature stream chunk by chunk (`ConceptTally`), so the best feature of
each concept can be chosen after one pass, and its AUROC read in a second.

`concept_detection_table` runs three detectors per block over the same images: the trained
SAE, `random_sae_like` (the floor) and a logistic probe per concept on the block's raw
update vectors (the ceiling of a linear read-out). Images with even ids are the dev split,
odd ids the test split: the SAE's feature per concept and the probe's weights and
threshold (best dev F1) come from dev, every reported score from test.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch

from repro.errors import ReproError
from repro.features.analysis import ConceptTally
from repro.features.toy_concepts import concept_names, family
from repro.sae.metrics import fires
from repro.sae.model import TopKSAE

COLUMNS = ["concept", "family", "best_feature", "precision", "recall", "f1", "auroc", "base_rate", "lift",
           "n_pos", "n_neg"]


@torch.no_grad()
def sae_activations(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """float32 [b, n, H, W] activations of `sae` on updates x [b, H, W, C], zero where a feature
    does not fire (below `fire_threshold`)."""
    b, h, w, c = x.shape
    tokens = x.reshape(-1, c).to(device=sae.device, dtype=sae.dtype)
    vals, idx = sae.encode_topk(tokens)  # [b*h*w, k]
    vals = vals.float() * fires(sae.cfg, vals)
    z = torch.zeros(tokens.shape[0], sae.cfg.n_features, device=sae.device).scatter_(1, idx, vals)
    return z.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Exact AUROC of scores [m] ranking positive [m] bool over the rest; ties count half (NaN
    without both classes)."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)  # sorted values
    last = counts.cumsum(0).double()
    midrank = last - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = float(midrank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _cells(t: torch.Tensor) -> torch.Tensor:
    """[b, k, g, g] -> [b*g*g, k]."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class DetectionAccumulator:
    """One detector's running scores against concept labels; `add` a chunk, `table` the result.

    threshold: a feature fires where its score > threshold. chosen: [c] the feature scored
    for each concept in `table` (its scores are kept for the AUROC); None keeps no scores
    (counts only: `best()` then picks features for a second pass).
    """

    def __init__(self, names: Sequence[str], threshold: float = 1e-3, chosen: torch.Tensor | None = None):
        self.names, self.threshold = list(names), float(threshold)
        if chosen is not None and len(chosen) != len(self.names):
            raise ReproError(f"chosen names one feature per concept: {len(self.names)} needed, got {len(chosen)}")
        self.chosen = None if chosen is None else torch.as_tensor(chosen, dtype=torch.long).cpu()
        self.tally = ConceptTally()
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # ([P, c] chosen scores, [P, c] int8 labels)
        self.n_positions = 0

    @torch.no_grad()
    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """scores [b, n, g, g] (any float); labels [b, c, g, g] int8 three-state (or bool)."""
        if scores.ndim != 4 or labels.ndim != 4 or scores.shape[0] != labels.shape[0] \
                or scores.shape[2:] != labels.shape[2:] or labels.shape[1] != len(self.names):
            raise ReproError(f"scores must be [b, n, g, g] and labels [b, {len(self.names)}, g, g] on the same "
                             f"images and grid; got {tuple(scores.shape)} and {tuple(labels.shape)}")
        # counted where the scores are (the SAE's device): [P, n] x [P, c] products per chunk
        s, lab = _cells(scores.float()), _cells(labels.to(scores.device))
        if lab.dtype == torch.bool:
            lab = lab.to(torch.int8)  # bool maps: every cell labelled
        self.tally.add(s > self.threshold, lab)
        self.n_positions += s.shape[0]
        if self.chosen is not None:
            if int(self.chosen.max()) >= s.shape[1]:
                raise ReproError(f"chosen feature {int(self.chosen.max())} is out of range for {s.shape[1]} features")
            self.kept.append((s[:, self.chosen.to(s.device)].cpu(), lab.cpu()))

    def counts(self):
        """`ConceptCounts` of every feature against every concept so far."""
        if self.tally.both is None:
            raise ReproError("no chunk was added: the detector saw no images")
        return self.tally.result(self.names, self.n_positions)

    def best(self) -> torch.Tensor:
        """[c] the feature with the highest F1 for each concept (ties: the lowest index)."""
        return self.counts().f1().argmax(0)

    def table(self) -> pd.DataFrame:
        """One row per concept (`COLUMNS`), scoring the chosen feature of each."""
        if self.chosen is None:
            raise ReproError("this accumulator kept no scores: give chosen= (e.g. a dev split's best()) to score")
        counts = self.counts()
        c = torch.arange(len(self.names))
        precision, recall, f1 = (m[self.chosen, c] for m in (counts.precision(), counts.recall(), counts.f1()))
        scores = torch.cat([k[0] for k in self.kept])  # [P, c]
        labels = torch.cat([k[1] for k in self.kept])
        rows = []
        for j, name in enumerate(self.names):
            kept = labels[:, j] >= 0
            n_pos, n_neg = int(counts.concept[j]), int(counts.negative[j])
            base = n_pos / max(n_pos + n_neg, 1)
            p = float(precision[j])
            rows.append({"concept": name, "family": family(name), "best_feature": int(self.chosen[j]),
                         "precision": p, "recall": float(recall[j]), "f1": float(f1[j]),
                         "auroc": auroc(scores[kept, j], labels[kept, j] == 1), "base_rate": base,
                         "lift": p / base if base > 0 else float("nan"), "n_pos": n_pos, "n_neg": n_neg})
        return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------------------------------
# The linear-probe ceiling


def f1_thresholds(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[c] per concept, the threshold t maximising F1 of "score > t" on scores [P, c] over the
    labelled cells of labels [P, c] int8 (halfway between the last score kept and the next)."""
    out = torch.full((scores.shape[1],), float("inf"))
    for j in range(scores.shape[1]):
        kept = labels[:, j] >= 0
        s, pos = scores[kept, j].double(), (labels[kept, j] == 1).double()
        if pos.sum() == 0:
            continue
        order = s.argsort(descending=True)
        s, pos = s[order], pos[order]
        tp = pos.cumsum(0)
        f1 = 2 * tp / (torch.arange(1, len(s) + 1, dtype=torch.float64, device=s.device) + pos.sum())
        last = torch.ones(len(s), dtype=torch.bool, device=s.device)  # a cut only between distinct scores
        last[:-1] = s[1:] < s[:-1]
        i = int(torch.where(last, f1, torch.full_like(f1, -1.0)).argmax())
        out[j] = float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i]) - 1.0
    return out


class LinearProbe:
    """Logistic regressions, one per concept, on update vectors [P, C] -> logits [P, c] (shifted
    by each concept's F1-best dev threshold, so a probe fires where its score > 0)."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, l2: float = 1e-3, steps: int = 200):
        """Fit on x [P, C] (dev cells) against labels [P, c] int8: each concept's loss over its
        labelled cells only, standardised inputs, L2 penalty `l2`, full-batch L-BFGS `steps`."""
        x = x.float()
        self.mean, self.scale = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - self.mean) / self.scale
        labels = labels.to(x.device)
        mask = (labels >= 0).float()
        target = (labels == 1).float()
        per_concept = mask.sum(0).clamp_min(1)
        self.weight = torch.zeros(x.shape[1], labels.shape[1], device=x.device, requires_grad=True)
        self.bias = torch.zeros(labels.shape[1], device=x.device, requires_grad=True)
        opt = torch.optim.LBFGS([self.weight, self.bias], max_iter=steps, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            bce = torch.nn.functional.binary_cross_entropy_with_logits(z @ self.weight + self.bias, target,
                                                                       reduction="none")
            loss = ((bce * mask).sum(0) / per_concept).sum() + l2 * self.weight.square().sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.weight, self.bias = self.weight.detach(), self.bias.detach()
        self.threshold = torch.zeros(labels.shape[1], device=x.device)
        self.threshold = f1_thresholds(self(x), labels).to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[P, c] scores of x [P, C]: > 0 where the probe fires."""
        return ((x.float() - self.mean) / self.scale) @ self.weight + self.bias - self.threshold


# ---------------------------------------------------------------------------------------
# The table


def _split(ids: torch.Tensor, dev: bool) -> torch.Tensor:
    return (ids % 2 == 0) == dev


def _split_chunks(chunks, dev: bool):
    """(x [b, H, W, C], labels [b, c, H, W]) of the dev (even ids) or test (odd ids) images."""
    for ids, x, labels in chunks:
        keep = _split(torch.as_tensor(ids), dev)
        if keep.any():
            yield x[keep], labels[keep]


@torch.no_grad()
def concept_detection_table(
    saes: Mapping[str, TopKSAE],
    chunks: Callable[[str], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
    names: Sequence[str] | None = None,
    *,
    random_seed: int = 12345,
    probe_l2: float = 1e-3,
    probe_steps: int = 200,
) -> pd.DataFrame:
    """Per block, concept and detector (trained SAE, random SAE, linear probe): `COLUMNS` plus
    `block` and `detector`, scored on the test split (odd image ids), chosen on dev (even).

    chunks(block) yields (image_ids [b], updates [b, H, W, C], labels [b, c, H, W] int8) and is
    called twice per block, e.g. `lambda b: store_chunks(store, b, concepts=True)`. The probe
    holds the dev split's update vectors on the SAE's device (dev images x H x W x C floats) and fits there.
    """
    from repro.features.controls import random_sae_like

    names = concept_names() if names is None else list(names)
    tables = []
    for block, sae in saes.items():
        detectors = {"SAE": sae, "random SAE": random_sae_like(sae, seed=random_seed)}
        dev = {k: DetectionAccumulator(names, s.cfg.fire_threshold) for k, s in detectors.items()}
        xs, labs = [], []
        for x, labels in _split_chunks(chunks(block), dev=True):
            for k, s in detectors.items():
                dev[k].add(sae_activations(s, x), labels)
            xs.append(x.reshape(-1, x.shape[-1]).to(device=sae.device, dtype=torch.float32))  # the probe fits there
            labs.append(_cells(labels.to(sae.device)))
        if not xs:
            raise ReproError(f"block {block}: no dev images (even ids) in the chunks; give at least two images")
        probe = LinearProbe(torch.cat(xs), torch.cat(labs), l2=probe_l2, steps=probe_steps)
        xs = labs = None
        test = {k: DetectionAccumulator(names, detectors[k].cfg.fire_threshold, dev[k].best()) for k in detectors}
        test["linear probe"] = DetectionAccumulator(names, 0.0, torch.arange(len(names)))
        for x, labels in _split_chunks(chunks(block), dev=False):
            for k, s in detectors.items():
                test[k].add(sae_activations(s, x), labels)
            b, h, w, c = x.shape
            x = x.to(sae.device)
            test["linear probe"].add(probe(x.reshape(-1, c)).reshape(b, h, w, -1).permute(0, 3, 1, 2), labels)
        if test["linear probe"].tally.both is None:
            raise ReproError(f"block {block}: no test images (odd ids) in the chunks; give at least two images")
        for k, acc in test.items():
            tables.append(acc.table().assign(block=block, detector=k))
    out = pd.concat(tables, ignore_index=True)
    return out[["block", "detector", *COLUMNS]]


def family_medians(table: pd.DataFrame, column: str = "f1", exclude: tuple[str, ...] = ("object", "background"),
                   min_pos: int = 1) -> pd.DataFrame:
    """Median `column` per (block, detector) x family over concepts with >= min_pos positives
    (the catch-alls `object` / `background` left out, as in labelling)."""
    rows = table[~table.concept.isin(exclude) & (table.n_pos >= min_pos)]
    return rows.pivot_table(index=["block", "detector"], columns="family", values=column, aggfunc="median")


__all__ = ["COLUMNS", "DetectionAccumulator", "LinearProbe", "auroc", "concept_detection_table",
           "f1_thresholds", "family_medians", "sae_activations"]
