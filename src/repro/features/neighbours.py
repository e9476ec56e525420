"""Nearest features by decoder cosine, within a block and across blocks.

Decoder columns are unit norm (the SAE keeps them so), so the cosine of features f and g
is W_dec[:, f] . W_dec[:, g]; all four paper blocks write 1280-channel updates, so features
of different blocks compare directly (a direction in the same residual-stream space).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from repro.errors import ReproError


def _unit_columns(sae) -> torch.Tensor:
    """[n, d] float32 unit decoder directions on the CPU."""
    w = sae.W_dec.detach().float().cpu().T
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def decoder_neighbours(saes: Mapping[str, object], k: int = 5, chunk: int = 1024) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """{block: {other block: (ids [n, k] int64, cosine [n, k] float32)}}, highest cosine first.

    In a block's own entry the feature itself is left out.
    """
    dirs = {b: _unit_columns(sae) for b, sae in saes.items()}
    widths = {b: d.shape[1] for b, d in dirs.items()}
    if len(set(widths.values())) > 1:
        raise ReproError(f"decoder widths differ across blocks ({widths}): neighbours compare one residual width")
    out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for b, mine in dirs.items():
        out[b] = {}
        for other, theirs in dirs.items():
            kk = min(k, theirs.shape[0] - (other == b))
            ids, cos = [], []
            for start in range(0, mine.shape[0], chunk):
                sim = mine[start:start + chunk] @ theirs.T  # [c, n_other]
                if other == b:
                    rows = torch.arange(start, start + sim.shape[0])
                    sim[torch.arange(sim.shape[0]), rows] = -float("inf")
                v, i = sim.topk(kk, dim=1)
                ids.append(i)
                cos.append(v)
            out[b][other] = (torch.cat(ids), torch.cat(cos))
    return out


__all__ = ["decoder_neighbours"]
