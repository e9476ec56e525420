import torch

from repro.features.analysis import ConceptCounts
from repro.features.toy_concepts import concept_names, family, label_features, scene_concepts
from repro.shapes.world import Scene, ShapeObject


def test_concepts_of_a_known_scene():
    scene = Scene((ShapeObject("square", "red", "large", "striped", "left"),), background="pink", style="outline")
    maps = scene_concepts([scene], grid=8)[0]
    names = concept_names()
    get = lambda n: maps[names.index(n)]
    assert get("colour=red").any() and not get("colour=blue").any()
    assert torch.equal(get("colour=red"), get("object")) and torch.equal(get("object"), ~get("background"))
    assert torch.equal(get("background=pink"), get("background"))
    assert get("style=outline").all() and not get("style=flat").any()
    cols = get("object").nonzero()[:, 1]
    assert cols.float().mean() < 3.5  # a left object sits in the left part of the grid
    assert family("colour=red") == "colour" and family("object") == "slot"


def test_labels_pick_best_f1_and_report_precision():
    names = ["object", "colour=red", "texture=striped"]
    both = torch.tensor([[10.0, 9.0, 1.0], [5.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    counts = ConceptCounts(names, both, fired=torch.tensor([10.0, 10.0, 0.0]),
                           concept=torch.tensor([20.0, 10.0, 5.0]), n_positions=100)
    labels = label_features(counts)
    assert labels.label[:2] == ["colour=red", "texture=striped"]
    torch.testing.assert_close(labels.purity[:2], torch.tensor([0.9, 0.5]))
    summary = labels.summary(threshold=0.8)
    assert summary["live"] == 2 and summary["pure"] == 1 and summary["families"]["colour"] == 1.0
