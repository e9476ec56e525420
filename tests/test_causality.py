import torch

from repro.features.causality import causal_test, has_value, locality, reads_value
from repro.generate import Sampling
from repro.sae.config import SAEConfig
from repro.sae.model import TopKSAE
from repro.sae.stats import FeatureStats
from repro.shapes.world import Scene, ShapeObject

RED = Scene((ShapeObject("square", "red", "large", "solid", "left"),), background="white")
BLUE = Scene((ShapeObject("circle", "blue", "small", "dotted", "right"),), background="pink", style="grainy")


def _reading(colour, background="white"):
    return {"background": background, "style": "flat",
            "slots": {"left": {"shape": "square", "orientation": None, "colour": colour, "texture": "solid", "size": "large"},
                      "right": None, "top": None, "bottom": None, "centre": None}}


def test_reading_rules():
    assert reads_value(_reading("red"), RED, "colour=red") and not reads_value(_reading("blue"), RED, "colour=red")
    assert reads_value(_reading("red", "pink"), RED, "background=pink")
    assert has_value(RED, "colour=red") and has_value(BLUE, "style=grainy") and not has_value(RED, "texture=dotted")


class FakeOracle:
    """Reads 'red' when the image's mean red channel exceeds its mean blue channel."""

    def read(self, images):
        return [_reading("red" if im[..., 0].mean() > im[..., 2].mean() else "blue") for im in images]


def _sae():
    sae = TopKSAE(SAEConfig(d_model=64, n_features=128, k=8, k_aux=8), seed=0)
    sae.feature_stats = FeatureStats(mean=torch.ones(128), std=torch.ones(128))
    return sae


def test_causal_test_counts_against_the_oracle(tiny_pipe):
    res = causal_test(tiny_pipe, _sae(), "down.2.1", 3, "colour=red", [RED, RED], [RED], FakeOracle(),
                      Sampling(), grid=4, strength=1.0, batch_size=2)
    assert res.n_on == 2 and res.n_off == 1
    for v in (res.on_success, res.off_success, res.baseline_on):
        assert 0.0 <= v <= 1.0


def test_locality_curve_covers_every_distance(tiny_pipe):
    curve = locality(tiny_pipe, _sae(), "up.0.1", 5, ["a red circle", "a cat"], [0, 1], Sampling(), grid=4,
                     strength=50.0)
    assert curve.ndim == 1 and len(curve) >= 3 and (curve >= 0).all() and curve.max() > 0
