"""Concept detection scores with known answers on real rendered ShapesWorld scenes: a perfect
detector (the ground-truth coverage itself) passes the coverage labelling and fails the old
majority one; random and noisy scores score as they must; the probe ceiling on real toy
activations is far above a random SAE."""

from __future__ import annotations

import itertools

import pytest
import torch

from repro.errors import ReproError
from repro.features.detection import (
    COLUMNS, DetectionAccumulator, LinearProbe, auroc, concept_detection_table, f1_thresholds,
)
from repro.features.toy_concepts import concept_names, coverage_labels, family, scene_coverage
from repro.shapes.splits import split_scenes

NAMES = concept_names()
OBJECT = [i for i, n in enumerate(NAMES) if family(n) not in ("background", "style")]
MIN_POS = 20  # object concepts with fewer positive cells than this are not judged (pose=down/right: ~25 in 300 scenes)


@pytest.fixture(scope="module")
def world():
    """Coverage [N, c, 8, 8] and labels of 300 held-out scenes."""
    scenes = split_scenes("test", 300, seed=1)
    cov = scene_coverage(scenes)
    return cov, coverage_labels(cov)


def _table(scores, labels, threshold=1e-3):
    acc = DetectionAccumulator(NAMES, threshold, torch.arange(len(NAMES)))
    for part in (slice(None, 150), slice(150, None)):
        acc.add(scores[part], labels[part])
    return acc.table()


def test_a_perfect_detector_passes_every_object_concept(world):
    cov, labels = world
    table = _table(cov, labels).set_index("concept")
    judged = table.iloc[OBJECT]
    judged = judged[judged.n_pos >= MIN_POS]
    assert len(judged) >= len(OBJECT) - 2  # all but the rarest poses have enough positives
    assert (judged.precision >= 0.95).all() and (judged.recall >= 0.95).all(), judged[["precision", "recall"]]
    assert (judged.auroc >= 0.99).all()
    assert ((judged.lift - judged.precision / judged.base_rate).abs() < 1e-9).all()
    assert (judged.lift > 10).all()  # objects are rare: ~1-5% of labelled cells are positives
    # the style maps are exact too (style is global)
    styles = table.loc[[n for n in NAMES if n.startswith("style=")]]
    assert (styles.f1 == 1).all()


def test_the_old_majority_labelling_fails_the_perfect_detector(world):
    cov, _ = world
    old = cov > 0.5  # the old rule: bool maps, every cell counted, positives only where an object fills most of it
    table = _table(cov, old).set_index("concept")
    colours = table.loc[[n for n in NAMES if n.startswith("colour=")]]
    assert (colours.recall == 1).all() and (colours.precision < 0.4).all(), colours.precision


def test_random_scores_have_auroc_one_half_and_noise_costs_f1(world):
    cov, labels = world
    gen = torch.Generator().manual_seed(0)
    rand = _table(torch.rand(cov.shape, generator=gen), labels, threshold=0.5)
    enough = rand[rand.n_pos >= 100]
    assert len(enough) >= 15 and (enough.auroc - 0.5).abs().max() < 0.08
    assert abs(enough.auroc.mean() - 0.5) < 0.02
    # a noisy copy of the truth: better than chance, clearly worse than the truth
    noisy = _table(cov + 0.5 * torch.randn(cov.shape, generator=gen), labels, threshold=0.25).iloc[OBJECT]
    noisy = noisy[noisy.n_pos >= MIN_POS]
    assert noisy.f1.median() < 0.5 and noisy.auroc.median() > 0.7 and noisy.auroc.median() < 0.99


def test_auroc_equals_pairwise_counting_with_ties():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (60,), generator=gen).float()  # many ties
    pos = torch.rand(60, generator=gen) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(scores[pos], scores[~pos])]
    assert auroc(scores, pos) == pytest.approx(sum(pairs) / len(pairs))
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([False, False, True, True])) == 1.0
    assert auroc(torch.zeros(5), torch.tensor([True, False, True, False, False])) == 0.5
    assert auroc(torch.ones(3), torch.ones(3, dtype=torch.bool)) != auroc(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_f1_thresholds_are_the_best_cut():
    gen = torch.Generator().manual_seed(4)
    scores = torch.randn(200, 3, generator=gen)
    labels = torch.randint(-1, 2, (200, 3), generator=gen, dtype=torch.int8)
    labels[:, 1] = torch.where(scores[:, 1] > 0.5, 1, 0).to(torch.int8)  # separable
    t = f1_thresholds(scores, labels)
    for j in range(3):
        kept = labels[:, j] >= 0
        s, y = scores[kept, j], labels[kept, j] == 1

        def f1(th):
            on = s > th
            return 2 * (on & y).sum().item() / max(on.sum().item() + y.sum().item(), 1)

        best = max(f1(th) for th in torch.cat([s, s.min()[None] - 1]))
        assert f1(t[j]) == pytest.approx(best)
    assert (scores[labels[:, 1] == 1, 1] > t[1]).all() and (scores[labels[:, 1] == 0, 1] <= t[1]).all()


def test_bad_inputs_get_one_clear_error():
    acc = DetectionAccumulator(["a", "b"])
    with pytest.raises(ReproError, match="labels must be|scores must be"):
        acc.add(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, dtype=torch.int8))
    with pytest.raises(ReproError, match="no chunk"):
        acc.best()
    with pytest.raises(ReproError, match="kept no scores"):
        acc.add(torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4, dtype=torch.int8))
        acc.table()
    with pytest.raises(ReproError, match="one feature per concept"):
        DetectionAccumulator(["a", "b"], chosen=torch.tensor([0]))


@pytest.mark.slow
def test_probe_ceiling_on_real_toy_activations_is_far_above_a_random_sae(one_thread):
    """96 held-out scenes through shapes-turbo (1 step, CPU), block down.2.1: the probe reads
    colour; a random SAE's best feature for a colour is near chance."""
    from repro.collect import capture_batch
    from repro.generate import Sampling
    from repro.models.loading import load_pipeline
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE
    from repro.shapes.scoring import heldout_captions

    block, n = "down.2.1", 96
    pipe = load_pipeline("shapes-turbo", device="cpu", dtype="float32")
    scenes, prompts = heldout_captions(n, one_stream=True)
    xs = []
    for lo in range(0, n, 32):
        out, _ = capture_batch(pipe, prompts[lo:lo + 32], list(range(lo, lo + 32)), [block], Sampling(steps=1),
                               torch.float32)
        t = out[block][:, 0, 0]  # [B, HW, C]
        xs.append(t.reshape(t.shape[0], 8, 8, -1))
    x = torch.cat(xs)
    labels = coverage_labels(scene_coverage(scenes, grid=8))
    sae = TopKSAE(SAEConfig(d_model=x.shape[-1], n_features=256, k=8, k_aux=16), seed=0)
    with torch.no_grad():
        sae.b_pre.copy_(x.reshape(-1, x.shape[-1]).mean(0))  # untrained: stands in for "trained"; the control is random too
    ids = torch.arange(n)
    table = concept_detection_table({block: sae}, lambda b: [(ids[i:i + 32], x[i:i + 32], labels[i:i + 32])
                                                            for i in range(0, n, 32)])
    assert list(table.columns) == ["block", "detector", *COLUMNS] and len(table) == 3 * len(NAMES)
    colour = table[table.family == "colour"].groupby("detector")[["f1", "auroc"]].median()
    probe, rand = colour.loc["linear probe"], colour.loc["random SAE"]
    assert probe.auroc > 0.85 and rand.auroc < 0.65 and probe.auroc - rand.auroc > 0.25, colour
    assert probe.f1 > rand.f1 + 0.1, colour
    shape = table[(table.family == "shape")].groupby("detector").f1.median()
    assert shape["linear probe"] > 0.15 + shape["random SAE"], shape  # 48 dev images: shape is read less well


def detection_tables(world, devices) -> dict:
    """`concept_detection_table` of one SAE on updates whose first channels read the concepts, per device."""
    from repro.sae.config import SAEConfig
    from repro.sae.model import TopKSAE

    _, labels = world
    d = len(NAMES) + 12  # a channel per concept, and some that read nothing
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(labels), 8, 8, d, generator=gen)
    x[..., :len(NAMES)] += 2.0 * (labels.permute(0, 2, 3, 1) == 1).float()  # channels that read the concepts
    ids = torch.arange(len(labels))

    def chunks(b):
        return [(ids[i:i + 50], x[i:i + 50], labels[i:i + 50]) for i in range(0, len(ids), 50)]

    tables = {}
    for device in devices:
        sae = TopKSAE(SAEConfig(d_model=d, n_features=2 * d, k=4, k_aux=8), seed=0).to(device)
        tables[device] = concept_detection_table({"b": sae}, chunks, probe_steps=50)
    return tables


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_table_on_a_gpu_equals_the_cpu_table(world):
    """SAEs on the GPU: the tally, the probe and its thresholds run there; the table matches the CPU's."""
    tables = detection_tables(world, ("cpu", "cuda"))
    cpu, gpu = tables["cpu"], tables["cuda"]
    sae_rows = cpu.detector != "linear probe"
    assert (cpu[sae_rows].best_feature.values == gpu[sae_rows].best_feature.values).all()
    assert abs(cpu.f1 - gpu.f1).max() < 0.02 and abs(cpu.auroc - gpu.auroc).fillna(0).max() < 0.02
