"""Confidence intervals for the book's headline numbers, from the counts they are computed on.

- `wilson(hits, n)`: the Wilson score interval of a rate hits / n (good at small n and at
  rates near 0 or 1, where the normal approximation is not);
- `bootstrap(values, stat)`: percentile bootstrap of any statistic of per-unit values
  (units = images or edits), resampling units with replacement;
- `rate(hits, n)`: {"rate", "lo", "hi", "hits", "n"}, the record results/*.json keep.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Z95 = 1.959963984540054


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(lo, hi) of the Wilson score interval for hits successes in n trials (nan, nan for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= hits <= n:
        raise ValueError(f"hits must lie in 0..n, got hits={hits}, n={n}")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval holds p exactly (rounding can put p = 0 or 1 a hair outside it)
    return min(max(0.0, centre - half), p), max(min(1.0, centre + half), p)


def rate(hits: int, n: int, z: float = Z95) -> dict:
    """A rate with its Wilson interval and the counts it came from."""
    lo, hi = wilson(int(hits), int(n), z)
    return {"rate": hits / n if n else float("nan"), "lo": lo, "hi": hi, "hits": int(hits), "n": int(n)}


def bootstrap(values, stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float]:
    """(lo, hi) percentile-bootstrap interval of `stat` over units: values [N, ...] resampled along axis 0."""
    values = np.asarray(values)
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = np.array([stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)])
    alpha = (1 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def fmt(record: dict, digits: int = 2) -> str:
    """"0.83 [0.71, 0.91] (25/30)": a rate record as the book prints it."""
    text = f"{record['rate']:.{digits}f} [{record['lo']:.{digits}f}, {record['hi']:.{digits}f}]"
    return text + (f" ({record['hits']}/{record['n']})" if "hits" in record else "")


__all__ = ["Z95", "bootstrap", "fmt", "rate", "wilson"]
