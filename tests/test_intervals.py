import numpy as np
import pytest

from repro.intervals import bootstrap, fmt, rate, wilson


def test_wilson_matches_published_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 .. 0.3662; 0/10 -> 0 .. 0.2775
    lo, hi = wilson(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0) and np.isnan(wilson(0, 0)[0])
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_interval_narrows_with_more_data_and_covers_the_rate():
    small, big = rate(6, 10), rate(600, 1000)
    assert small["lo"] < 0.6 < small["hi"] and big["lo"] < 0.6 < big["hi"]
    assert big["hi"] - big["lo"] < (small["hi"] - small["lo"]) / 5
    assert fmt(small) == "0.60 [0.31, 0.83] (6/10)"


def test_bootstrap_interval_of_a_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    lo, hi = bootstrap(x, n_boot=500)
    assert lo < 1.0 < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)
    assert bootstrap(np.full(10, 2.0), n_boot=50) == (2.0, 2.0)


def test_the_interval_always_holds_the_rate():
    for n in range(1, 60):
        for hits in range(n + 1):
            lo, hi = wilson(hits, n)
            assert lo <= hits / n <= hi
