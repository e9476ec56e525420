import torch

from repro.features.analysis import ConceptCounts, analyse_features
from repro.features.toy_concepts import (
    IGNORED, NEGATIVE, POSITIVE, concept_names, coverage_labels, family, label_features, scene_concepts, scene_coverage,
)
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.shapes.render import object_mask
from repro.shapes.world import Scene, ShapeObject

NAMES = concept_names()


def test_coverage_of_a_known_scene_is_the_mask_area_per_cell():
    obj = ShapeObject("square", "red", "large", "striped", "left")
    scene = Scene((obj,), background="pink", style="outline")
    cov = scene_coverage([scene], grid=8)[0]
    get = lambda n: cov[NAMES.index(n)]
    # the square's pixels per 16-px cell, counted directly from its mask
    area = torch.from_numpy(object_mask(obj).reshape(8, 16, 8, 16).sum((1, 3)) / 256.0).float()
    for concept in ("object", "colour=red", "shape=square", "texture=striped", "size=large", "slot=left"):
        torch.testing.assert_close(get(concept), area, rtol=0, atol=0)
    assert float(get("colour=blue").abs().sum()) == 0 and float(get("pose=up").abs().sum()) == 0
    torch.testing.assert_close(get("background"), 1 - area)
    torch.testing.assert_close(get("background=pink"), 1 - area)
    assert float(get("background=white").abs().sum()) == 0
    assert (get("style=outline") == 1).all() and (get("style=flat") == 0).all()
    assert float(area.sum()) * 256 == object_mask(obj).sum()  # every pixel of the square counted once


def test_three_state_labels_follow_the_coverage_rules():
    obj = ShapeObject("circle", "blue", "small", "solid", "centre")
    scene = Scene((obj,), background="grey", style="flat")
    cov = scene_coverage([scene])[0]
    lab = scene_concepts([scene])[0]
    assert lab.dtype == torch.int8
    blue, bg_grey, bg_pink = (NAMES.index(n) for n in ("colour=blue", "background=grey", "background=pink"))
    c = cov[blue]
    assert ((lab[blue] == POSITIVE) == (c >= 0.5)).all() and ((lab[blue] == NEGATIVE) == (c == 0)).all()
    partial = (c > 0) & (c < 0.5)
    assert partial.any() and (lab[blue][partial] == IGNORED).all()  # a small circle clips cells it does not fill
    # background: positive only where no object pixel, negative where objects cover at least half
    g = cov[bg_grey]
    assert ((lab[bg_grey] == POSITIVE) == (g == 1)).all() and ((lab[bg_grey] == NEGATIVE) == (g <= 0.5)).all()
    assert (lab[bg_grey] == IGNORED).sum() == ((g > 0.5) & (g < 1)).sum() > 0
    assert (lab[bg_pink] == NEGATIVE).all()  # another background colour: negative everywhere
    assert (lab[NAMES.index("style=flat")] == POSITIVE).all() and (lab[NAMES.index("style=grainy")] == NEGATIVE).all()
    assert family("colour=red") == "colour" and family("object") == "slot"


def test_coverage_labels_reject_a_wrong_shape():
    import pytest

    from repro.errors import ReproError

    with pytest.raises(ReproError, match="one map per concept"):
        coverage_labels(torch.zeros(2, 3, 8, 8))


def test_labels_pick_best_f1_and_report_precision():
    names = ["object", "colour=red", "texture=striped"]
    both = torch.tensor([[10.0, 9.0, 1.0], [5.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    counts = ConceptCounts(names, both, fired=torch.tensor([10.0, 10.0, 0.0]),
                           concept=torch.tensor([20.0, 10.0, 5.0]), n_positions=100)
    labels = label_features(counts)
    assert labels.label[:2] == ["colour=red", "texture=striped"]
    torch.testing.assert_close(labels.purity[:2], torch.tensor([0.9, 0.5]))
    torch.testing.assert_close(labels.recall[:2], torch.tensor([0.9, 1.0]))
    summary = labels.summary(threshold=0.8)
    assert summary["live"] == 2 and summary["pure"] == 1 and summary["families"]["colour"] == 1.0


def test_counts_leave_ignored_cells_out_of_precision_and_recall():
    """Brute force on random three-state labels: precision over labelled cells only."""
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_model=8, n_features=16, k=3, k_aux=4), seed=1)
    x = torch.randn(12, 4, 4, 8)
    lab = torch.randint(-1, 2, (12, 3, 4, 4), dtype=torch.int8)
    counts = analyse_features(sae, [(torch.arange(6), x[:6], lab[:6]), (torch.arange(6, 12), x[6:], lab[6:])],
                              m=1, concept_names=list("abc")).concepts
    on = (sae.encode(x.reshape(-1, 8)) > 0).float()  # [P, n]
    flat = lab.permute(0, 2, 3, 1).reshape(-1, 3)
    pos, kept = (flat == 1).float(), (flat >= 0).float()
    torch.testing.assert_close(counts.precision().float(), (on.T @ pos) / (on.T @ kept).clamp_min(1))
    torch.testing.assert_close(counts.recall().float(), (on.T @ pos) / pos.sum(0).clamp_min(1))
    torch.testing.assert_close(counts.negative.float(), (flat == 0).float().sum(0))
    # a feature firing only on ignored cells has no precision penalty: label a concept ignored everywhere it fires
    f = int(on.sum(0).argmax())
    lab2 = lab.clone()
    fire_map = on[:, f].reshape(12, 4, 4).bool()
    lab2[:, 0][fire_map] = IGNORED
    c2 = analyse_features(sae, [(torch.arange(12), x, lab2)], m=1, concept_names=list("abc")).concepts
    assert float(c2.fired_labelled[f, 0]) == 0 and float(c2.precision()[f, 0]) == 0
