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

Training uses `explained_variance` on each batch; evaluation streams over images with
`Moments` and gives the same number on the same data (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """[N, d] -> scalar mean squared deviation from the per-channel mean (float32)."""
    # one Welford pass over x (per-channel variances), then their mean: not four passes of [N, d]
    return x.float().var(0, correction=0).mean()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The paper's EV of x_hat [N, d] as a reconstruction of x [N, d]: 1 - Var(x - x_hat) / Var(x)."""
    x = x.float()
    return 1 - total_variance(x - x_hat.float()) / total_variance(x)


def nmse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Normalised MSE of x_hat [N, d] against x [N, d]: mean |x - x_hat|^2 / Var(x) (the loss's term)."""
    x = x.float()
    return (x_hat.float() - x).pow(2).mean() / total_variance(x)


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
        return self.s2 - self.s1.pow(2).sum(-1) / self.n

    def total_squared_deviation(self) -> float:
        """Sum over all rows and groups of |v - mean(v)|^2 (one mean over every row of every group)."""
        groups = self.s2.numel()
        return float(self.s2.sum() - self.s1.reshape(groups, -1).sum(0).pow(2).sum() / (self.n * groups))

    def sum_squares(self) -> float:
        """Sum of |v|^2 over everything."""
        return float(self.s2.sum())


__all__ = ["Moments", "explained_variance", "fires", "nmse", "total_variance"]
