"""Confidence intervals for the book's headline numbers, from the counts they are computed on.

- `wilson(hits, n)`: the Wilson score interval of a rate hits / n (good at small n and at
  rates near 0 or 1, where the normal approximation is not);
- `bootstrap(values, stat)`: percentile bootstrap of any statistic of per-unit values
  (units = images or edits), resampling units with replacement;
- `rate(hits, n)`: {"rate", "lo", "hi", "hits", "n"}, the record results/*.json keep;
- paired outcomes (two conditions on the same units, e.g. a feature and its random control
  on the same scenes and seeds): `mcnemar_exact(b, c)`, the exact two-sided McNemar p value
  from the discordant counts; `paired_difference(x, y)`, the difference in rates with
  Newcombe's (1998) method-10 score interval and that p; `mcnemar_pairs_needed` and
  `mcnemar_mde`, Connor's (1987) sample size and the smallest difference detectable at n pairs.
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


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p value: discordant pairs b (first condition only) and c (second
    only); under no difference b ~ Binomial(b + c, 1/2). 1.0 when there are no discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    m, k = b + c, min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def paired_difference(x, y, z: float = Z95) -> dict:
    """Difference of two rates measured on the same units: x, y bool [n] (unit i under each condition).

    {"diff": mean(x) - mean(y), "lo", "hi": Newcombe's method-10 interval (Wilson intervals of
    the two rates combined with the phi correlation of the pairs), "p": exact McNemar p value,
    "b": units with x only, "c": units with y only, "n"}.
    """
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired outcomes need two 1-d arrays of the same length, got {x.shape} and {y.shape}")
    n = len(x)
    a, b, c = int((x & y).sum()), int((x & ~y).sum()), int((~x & y).sum())
    d = n - a - b - c
    if n == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": 1.0, "b": 0, "c": 0, "n": 0}
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    denom = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    num = a * d - b * c
    num = max(num - n / 2, 0.0) if num > 0 else num  # Newcombe's continuity correction of phi
    phi = num / denom if denom else 0.0
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    eps = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    diff = p1 - p2
    return {"diff": diff, "lo": max(-1.0, diff - delta), "hi": min(1.0, diff + eps), "p": mcnemar_exact(b, c),
            "b": b, "c": c, "n": n}


def _z(q: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def mcnemar_pairs_needed(delta: float, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Pairs needed to detect a difference `delta` = p10 - p01 in paired rates when a share
    `discordant` = p10 + p01 of pairs disagree, by the two-sided McNemar test (Connor 1987):
    n = (z_{1-alpha/2} sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2 (not rounded up)."""
    delta, psi = abs(delta), discordant
    if not 0 < delta <= psi <= 1:
        raise ValueError(f"need 0 < |delta| <= discordant <= 1, got delta={delta}, discordant={psi}")
    return (_z(1 - alpha / 2) * math.sqrt(psi) + _z(power) * math.sqrt(psi - delta**2)) ** 2 / delta**2


def mcnemar_mde(n: int, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimal detectable difference in paired rates at n pairs: the smallest |p10 - p01| that
    the two-sided McNemar test finds with `power` at level `alpha` when a share `discordant`
    of pairs disagree (Connor's formula inverted by bisection). nan when even all discordant
    pairs going one way (delta = discordant) is not detectable at this n."""
    if n < 1 or not 0 < discordant <= 1:
        return float("nan")
    if mcnemar_pairs_needed(discordant, discordant, alpha, power) > n:
        return float("nan")
    lo, hi = 0.0, discordant  # pairs_needed falls as delta grows: bisect on pairs_needed(delta) <= n
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid > 0 and mcnemar_pairs_needed(mid, discordant, alpha, power) <= n:
            hi = mid
        else:
            lo = mid
    return hi


def fmt(record: dict, digits: int = 2) -> str:
    """"0.83 [0.71, 0.91] (25/30)": a rate record as the book prints it."""
    text = f"{record['rate']:.{digits}f} [{record['lo']:.{digits}f}, {record['hi']:.{digits}f}]"
    return text + (f" ({record['hits']}/{record['n']})" if "hits" in record else "")


__all__ = ["Z95", "bootstrap", "fmt", "mcnemar_exact", "mcnemar_mde", "mcnemar_pairs_needed", "paired_difference",
           "rate", "wilson"]
