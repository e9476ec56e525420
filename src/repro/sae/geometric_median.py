"""Geometric median by Weiszfeld iterations: the initial b_pre of a new SAE.

The geometric median argmin_y sum_i ||x_i - y|| is a robust centre of the data (Gao et
al. and the paper initialise b_pre with it on ~32k training vectors).
"""

from __future__ import annotations

import torch


def geometric_median(
    points: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-7, eps: float = 1e-12
) -> torch.Tensor:
    """[N, d] -> [d]: Weiszfeld iterations y <- sum_i w_i x_i / sum_i w_i with w_i = 1/||x_i - y||.

    Starts from the mean; stops when the objective improves by less than `tol` (relative).
    Distances are clamped at `eps` so that a point coinciding with y does not divide by 0.
    Computed in float64 on the points' device for a stable result.
    """
    x = points.detach().to(torch.float64)
    y = x.mean(0)
    best = objective(x, y)
    for _ in range(max_iter):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)  # [N]
        y_new = (w.unsqueeze(1) * x).sum(0) / w.sum()
        obj = objective(x, y_new)
        converged = bool(best - obj <= tol * best)
        if obj <= best:
            y, best = y_new, obj
        if converged:
            break
    return y.to(points.dtype)


def objective(points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of Euclidean distances from `y` [d] to `points` [N, d] (what the median minimises)."""
    return (points.to(torch.float64) - y.to(torch.float64)).norm(dim=1).sum()
