"""The quantities every chapter reports about an SAE, defined once.

- explained variance (the paper's): `EV = 1 - Var(x - x_hat) / Var(x)`, with `Var` the
  total variance (mean over rows and channels of the squared deviation from each
  channel's mean). FVU = 1 - EV. A constant offset of the residual costs nothing here.
- normalised MSE: `NMSE = sum |x - x_hat|^2 / sum |x - mean(x)|^2`, the training loss's
  term; it counts the residual's mean too, so `NMSE >= 1 - EV`, with equality when the
  residual has mean 0.
- a latent *fires* on a token when it is among the TopK with value > `fire_threshold`
  (`SAEConfig`, OpenAI's 1e-3): the training loss's dead counters, the feature
  statistics, L0 and the evaluation's dead fraction all use `fires`.

EV and NMSE are each defined once, from the two totals they compare (`ev_from`, `nmse_from`):
training's batch tensors (`explained_variance`, `nmse`), the fused loss, a batch split across
ranks (`repro.dist.step`) and evaluation's streamed sums (`Moments`, `squared_deviation`) all
form those totals their own way and call these. Training uses `explained_variance` on each
batch; evaluation streams over images with `Moments` and gives the same number on the same
data (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """[N, d] -> scalar mean squared deviation from the per-channel mean (float32)."""
    # one Welford pass over x (per-channel variances), then their mean: not four passes of [N, d]
    return x.float().var(0, correction=0).mean()


def squared_deviation(s1, s2, n):
    """Sum over n rows of |v - mean(v)|^2 from the rows' sum s1 [..., C] and their sum of |v|^2 s2 [...]
    (float64 sums: the difference cancels); [...] (a tensor, or a float for floats)."""
    return s2 - s1.pow(2).sum(-1) / n


def ev_from(signal, residual):
    """The paper's EV, 1 - residual / signal: `signal` the deviation of x from its mean, `residual` that
    of x - x_hat, both as variances or both as sums over the same rows (only the ratio counts)."""
    return 1 - residual / signal


def nmse_from(signal, residual_sq):
    """NMSE, residual_sq / signal: `residual_sq` the mean (or sum) of |x - x_hat|^2, `signal` the
    variance (or squared deviation summed over the same rows) of x."""
    return residual_sq / signal


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The paper's EV of x_hat [N, d] as a reconstruction of x [N, d]: 1 - Var(x - x_hat) / Var(x)."""
    x = x.float()
    return ev_from(total_variance(x), total_variance(x - x_hat.float()))


def nmse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Normalised MSE of x_hat [N, d] against x [N, d]: mean |x - x_hat|^2 / Var(x) (the loss's term)."""
    x = x.float()
    return nmse_from(total_variance(x), (x_hat.float() - x).pow(2).mean())


def fires(sae_cfg, vals: torch.Tensor) -> torch.Tensor:
    """Bool mask of TopK values [..., k] (after or before ReLU) that count as a firing."""
    return vals > sae_cfg.fire_threshold


@dataclass
class Moments:
    """Streaming first and second moments of vectors, kept per group (e.g. per position).

    `add(v)` takes v [N, *G, C] (N rows, G the group dims); sums are float64.
    """

    s1: torch.Tensor | None = None
    """[*G, C] sum of v over rows."""
    s2: torch.Tensor | None = None
    """[*G] sum of |v|^2 over rows."""
    n: int = 0

    def add(self, v: torch.Tensor) -> None:
        v = v.detach().double().cpu()
        s1, s2 = v.sum(0), v.pow(2).sum(-1).sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += v.shape[0]

    def squared_deviation(self) -> torch.Tensor:
        """[*G] sum over rows of |v - mean_group(v)|^2 (deviation from each group's own mean)."""
        return squared_deviation(self.s1, self.s2, self.n)

    def total_squared_deviation(self) -> float:
        """Sum over all rows and groups of |v - mean(v)|^2 (one mean over every row of every group)."""
        groups = self.s2.numel()
        return float(squared_deviation(self.s1.reshape(groups, -1).sum(0), self.s2.sum(), self.n * groups))

    def sum_squares(self) -> float:
        """Sum of |v|^2 over everything."""
        return float(self.s2.sum())


__all__ = ["Moments", "ev_from", "explained_variance", "fires", "nmse", "nmse_from", "squared_deviation",
           "total_variance"]
