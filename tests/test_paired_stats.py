"""Paired statistics for feature-vs-control tests: exact McNemar, Newcombe's paired interval,
Connor's sample size and the minimal detectable difference, against known values."""

import math

import numpy as np
import pytest

from repro.intervals import mcnemar_exact, mcnemar_mde, mcnemar_pairs_needed, paired_difference


def test_exact_mcnemar_is_the_binomial_tail():
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 2 * 0.5^6
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625) and mcnemar_exact(0, 5) > 0.05  # 5 one-way pairs are not enough
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 12) == mcnemar_exact(12, 3)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_connor_sample_size_matches_published_calculators():
    # p10 = 0.05, p01 = 0.45, two-sided alpha 0.05, power 0.8: 23 pairs (Connor 1987 formula, its R code)
    assert math.ceil(mcnemar_pairs_needed(0.05 - 0.45, 0.5)) == 23
    # discordant 0.45, |p10 - p01| = 0.15: 155 pairs
    assert math.ceil(mcnemar_pairs_needed(0.15, 0.45)) == 155
    with pytest.raises(ValueError):
        mcnemar_pairs_needed(0.5, 0.4)  # a difference larger than the discordant share is impossible


def test_minimal_detectable_difference_inverts_the_sample_size():
    assert mcnemar_mde(155, 0.45) == pytest.approx(0.15, abs=1e-3)
    assert mcnemar_mde(23, 0.5) <= 0.4 < mcnemar_mde(22, 0.5) + 0.01
    mdes = [mcnemar_mde(n, 0.5) for n in (16, 24, 48, 96)]
    assert all(a > b for a, b in zip(mdes, mdes[1:]))  # more scenes, smaller detectable effect
    assert math.isnan(mcnemar_mde(5, 0.1))  # too few discordant pairs to detect anything
    n, psi = 40, 0.3
    d = mcnemar_mde(n, psi)
    assert mcnemar_pairs_needed(d, psi) == pytest.approx(n, rel=1e-6)


def test_paired_difference_counts_and_interval():
    x = np.array([1] * 10 + [0] * 14, bool)
    y = np.zeros(24, bool)
    r = paired_difference(x, y)
    assert (r["b"], r["c"], r["n"]) == (10, 0, 24) and r["diff"] == pytest.approx(10 / 24)
    assert r["p"] == pytest.approx(2 / 2**10) and 0 < r["lo"] < r["diff"] < r["hi"] < 1
    same = paired_difference(x, x)
    assert same["diff"] == 0 and same["p"] == 1.0 and same["lo"] < 0 < same["hi"]
    flipped = paired_difference(y, x)
    assert flipped["diff"] == -r["diff"] and flipped["lo"] == pytest.approx(-r["hi"]) and flipped["hi"] == pytest.approx(-r["lo"])
    with pytest.raises(ValueError):
        paired_difference(x, y[:5])


def test_paired_interval_covers_the_true_difference():
    """Newcombe's method 10 keeps ~95% coverage at the chapter's n (24 pairs), for correlated pairs."""
    rng = np.random.default_rng(0)
    probs = np.array([0.15, 0.35, 0.05, 0.45])  # both, x only, y only, neither: diff 0.30
    truth = probs[1] - probs[2]
    hits = 0
    for _ in range(2000):
        cells = rng.choice(4, size=24, p=probs)
        r = paired_difference((cells == 0) | (cells == 1), (cells == 0) | (cells == 2))
        hits += r["lo"] <= truth <= r["hi"]
    assert 0.93 <= hits / 2000 <= 0.99
