"""ShapesWorld captions: round trip, vocabulary, and clear errors."""

import numpy as np
import pytest

from repro.errors import ReproError
from repro.shapes import caption, parse_caption, sample_scene, tokenize, vocabulary


def test_caption_round_trip_and_vocabulary():
    rng = np.random.default_rng(0)
    vocab = set(vocabulary())
    seen, captions = set(), set()
    for _ in range(4000):
        s = sample_scene(rng)
        text = caption(s, rng)
        assert parse_caption(text) == s, text
        words = tokenize(text)
        assert set(words) <= vocab, set(words) - vocab
        seen |= set(words)
        captions.add(text)
    assert seen == vocab  # every vocabulary word is used
    assert len(captions) > 3900  # phrasing varies


def test_caption_is_deterministic_and_varied():
    s = sample_scene(1, n_objects=2)
    assert caption(s, 5) == caption(s, 5)
    assert len({caption(s, i) for i in range(50)}) > 40


def test_parse_example():
    s = parse_caption("a large red striped triangle pointing left on the right, "
                      "a small blue solid circle at the top, on a pink background, outline style")
    assert s.background == "pink" and s.style == "outline"
    top, right = s.objects
    assert (top.shape, top.colour, top.position, top.texture) == ("circle", "blue", "top", "solid")
    assert (right.shape, right.orientation, right.position, right.size) == ("triangle", "left", "right", "large")


@pytest.mark.parametrize("text, match", [
    ("a small red solid circle on the left, a big blue solid square on the right and a small green solid "
     "cross at the top, on a white background, flat style", "at most 2"),
    ("a small mauve solid circle on the left, on a white background, flat style", "unknown word.*mauve"),
    ("a small red solid circle on the left and a big blue solid square on the left, on a white background, "
     "flat style", "same slot"),
    ("a small red solid circle on the left, flat style", "no background"),
    ("a small red solid circle on the left, on a white background", "no style"),
    ("a small red solid triangle on the left, on a white background, flat style", "needs a direction"),
    ("a small red solid circle pointing up on the left, on a white background, flat style", "has no direction"),
    ("a small red solid circle, on a white background, flat style", "no position"),
    ("a small red blue solid circle on the left, on a white background, flat style", "more than one colour"),
])
def test_impossible_captions_raise(text, match):
    with pytest.raises(ReproError, match=match):
        parse_caption(text)
