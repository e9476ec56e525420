"""Seed stability: do two SAEs of one block, trained from different seeds, learn the same features?

A feature f of SAE `a` is *matched* in SAE `b` when some decoder column of `b` has cosine
similarity >= `threshold` (default 0.9) with a's column f: max_g cos(W_dec_a[:, f], W_dec_b[:, g]).
The share of matched features is reported both ways (a in b, b in a) and over live
features only when firing counts are given (a dead feature's column is left near its
random start). Two *random* dictionaries of the same shape are the control: at 0.9 their
share is ~0 in any width worth the name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from repro.sae.model import TopKSAE


@torch.no_grad()
def best_cosines(a: TopKSAE, b: TopKSAE, chunk: int = 4096) -> torch.Tensor:
    """[n_a] max over b's decoder columns of the cosine with each of a's columns."""
    wa = torch.nn.functional.normalize(a.W_dec.detach().float().cpu(), dim=0)  # [d, n_a]
    wb = torch.nn.functional.normalize(b.W_dec.detach().float().cpu(), dim=0)  # [d, n_b]
    return torch.cat([(wa[:, s:s + chunk].T @ wb).amax(1) for s in range(0, wa.shape[1], chunk)])


@torch.no_grad()
def fired_on(sae: TopKSAE, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """[n] bool: features that fire (`repro.sae.metrics.fires`) on at least one vector of x [..., d]."""
    from repro.sae.metrics import fires

    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros(sae.cfg.n_features, dtype=torch.bool)
    for s in range(0, flat.shape[0], chunk):
        vals, idx = sae.encode_topk(flat[s:s + chunk].to(device=sae.device, dtype=sae.dtype))
        out[idx[fires(sae.cfg, vals)].unique().cpu()] = True
    return out


@torch.no_grad()
def init_decoder(sae: TopKSAE) -> torch.Tensor | None:
    """[d, n] float32 CPU: the decoder `sae` started from (rebuilt from the `init_seed` that
    `build_block_saes` records), or None without it."""
    seed = sae.metadata.get("init_seed")
    return None if seed is None else TopKSAE(sae.cfg, seed=int(seed)).W_dec.detach().float()


def init_cosines(sae: TopKSAE) -> torch.Tensor | None:
    """[n] cosine of each decoder column with its value at initialisation (`init_decoder`), or None
    without an `init_seed`."""
    start = init_decoder(sae)
    if start is None:
        return None
    now = sae.W_dec.detach().float().cpu()
    return torch.nn.functional.cosine_similarity(now, start, dim=0)


def init_cosine(sae: TopKSAE) -> float | None:
    """Median of `init_cosines`, or None without an `init_seed`. Near 1: training has hardly moved
    the directions, so what they are is mostly their random start."""
    cos = init_cosines(sae)
    return None if cos is None else float(cos.median())


def convergence(log, saes: dict, max_gain: float = 0.01, max_cosine: float = 0.15):
    """Per block, from a training run's metrics log (rows: block, step, ev) and its SAEs: the EV of the
    last logged interval and of the one at half the steps, the gain over that last doubling, the median
    decoder cosine to init, and whether the run counts as converged (gain < `max_gain` and cosine <=
    `max_cosine`: the SAEs have stopped improving and have left their random start)."""
    import pandas as pd

    rows = {}
    for block, g in log.sort_values("step").groupby("block"):
        last = g.iloc[-1]
        half = g.iloc[(g["step"] - last.step / 2).abs().argmin()]
        cos = init_cosine(saes[block]) if block in saes else None
        gain = float(last.ev - half.ev)
        rows[block] = {"steps": int(last.step), "EV": float(last.ev), f"EV at step {int(half.step)}": float(half.ev),
                       "EV gain over the last doubling": gain, "median cosine to init": cos,
                       "converged": bool(gain < max_gain and cos is not None and cos <= max_cosine)}
    return pd.DataFrame(rows).T


def cosine_plateau(path) -> dict:
    """What a recorded long run (`benchmarks/toy_sae_sweep.py`'s JSON) says of the cosine criterion:
    its first row's steps, the median decoder cosine to init at half and all the steps, the EV gain
    over that doubling, and the cosine's parts inside / outside the updates' principal subspace.
    The file is checked (a ReproError names what is missing), never written."""
    import json
    from pathlib import Path

    from repro.errors import ReproError

    path = Path(path)
    try:
        row = json.loads(path.read_text())["rows"][0]
        sub = row["cos_by_subspace"]
        out = {"file": path.name, "block": str(row["block"]), "steps": int(row["steps"]),
               "half_step": int(row["half_step"]), "cos": float(row["median_cos_to_init"]),
               "cos_half": float(row["median_cos_to_init_half"]), "ev_gain": float(row["ev_gain_last_doubling"]),
               "cos_inside": float(sub["median_cos_inside"]), "cos_outside": float(sub["median_cos_outside"]),
               "rank": int(sub["rank"]), "d": int(sub["d"])}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise ReproError(f"{path} is not a toy_sae_sweep result with cos_by_subspace ({exc!r}): "
                         "write one with benchmarks/toy_sae_sweep.py") from None
    if not all(-1.0 <= out[k] <= 1.0 for k in ("cos", "cos_half", "cos_inside", "cos_outside")):
        raise ReproError(f"{path}: a cosine outside [-1, 1]")
    return out


@dataclass
class Stability:
    """Matched features between two SAEs of one block (shares in [0, 1], with their counts)."""

    threshold: float
    matched_a: int
    """Features of a with a match in b."""
    n_a: int
    matched_b: int
    n_b: int
    median_best_cosine: float
    """Median over a's (live) features of their best cosine in b."""

    @property
    def share(self) -> float:
        """Mean of the two directions' matched shares."""
        return (self.matched_a / max(self.n_a, 1) + self.matched_b / max(self.n_b, 1)) / 2

    def to_dict(self) -> dict:
        return {**asdict(self), "share": self.share}


def match_features(a: TopKSAE, b: TopKSAE, threshold: float = 0.9, live_a: torch.Tensor | None = None,
                   live_b: torch.Tensor | None = None) -> Stability:
    """Matched features of a in b and of b in a; `live_a` / `live_b` [n] bool restrict to live features."""
    ab, ba = best_cosines(a, b), best_cosines(b, a)
    if live_a is not None:
        ab = ab[live_a.cpu().bool()]
    if live_b is not None:
        ba = ba[live_b.cpu().bool()]
    return Stability(threshold=threshold, matched_a=int((ab >= threshold).sum()), n_a=len(ab),
                     matched_b=int((ba >= threshold).sum()), n_b=len(ba),
                     median_best_cosine=float(ab.median()) if len(ab) else float("nan"))


__all__ = ["Stability", "best_cosines", "fired_on", "init_cosine", "init_cosines", "match_features"]
