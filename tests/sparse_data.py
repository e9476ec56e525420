"""Synthetic activations with known sparse structure, for the SAE tests.

x = offset + sum of `k_active` random atoms (unit vectors) with positive coefficients
+ small Gaussian noise: a TopK SAE with enough latents should explain nearly all of it.
"""

from __future__ import annotations

import torch


def sparse_dictionary_data(
    n_rows: int,
    d: int,
    *,
    n_atoms: int = 32,
    k_active: int = 3,
    noise: float = 0.01,
    offset: float = 2.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x [n_rows, d] float32, atoms [n_atoms, d] unit rows)."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    active = torch.rand(n_rows, n_atoms, generator=gen).argsort(dim=1)[:, :k_active]  # [N, k_active]
    coef = 0.5 + 1.5 * torch.rand(n_rows, k_active, generator=gen)
    x = (coef.unsqueeze(-1) * atoms[active]).sum(1)  # [N, d]
    x += offset * torch.randn(d, generator=gen) / d**0.5 + noise * torch.randn(n_rows, d, generator=gen)
    return x, atoms
