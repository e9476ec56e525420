"""Reconstruction quality of an SAE on held-out updates.

Definitions (x: update vectors [N, C], x_hat: their reconstructions; `repro.sae.metrics`):
- EV  = 1 - Var(x - x_hat) / Var(x), the paper's explained variance and the one training
  logs (FVU = 1 - EV)
- NMSE = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, which also counts the residual's
  mean (NMSE >= FVU); reported under its own name
- L0  = mean number of firing latents per vector (`metrics.fires`)
- dead fraction = share of features that never fired on the evaluation set (same rule)
- per-position EV: EV computed separately for each spatial position (h, w), over all
  images: where in the image reconstruction fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from repro.errors import ReproError
from repro.sae.metrics import Moments, ev_from, fires, nmse_from, squared_deviation
from repro.sae.model import TopKSAE


@dataclass
class Reconstruction:
    """Reconstruction figures of one SAE on one set of updates."""

    ev: float
    fvu: float
    nmse: float
    l0: float
    dead_fraction: float
    n_tokens: int
    position_ev: list[list[float]]
    """[H][W] explained variance per spatial position."""
    ev_interval: tuple[float, float] = (float("nan"), float("nan"))
    """95% bootstrap interval of EV, resampling images."""

    def to_dict(self) -> dict:
        return asdict(self)


def _image_sums(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v [b, H, W, C] -> (sum over positions [b, C], sum of squares [b]) in float64, on v's device.

    Summed where v is: only [b, C] + [b] numbers leave a GPU, not v itself in float64 (at SDXL
    base's 1024 px, 04's transfer cell used to copy ~670 GB of float64 rows to the host)."""
    v = v.double()
    return v.sum((1, 2)), v.pow(2).sum((1, 2, 3))


def draw_weights(n: int, n_boot: int, seed: int = 0) -> torch.Tensor:
    """[n_boot, n] float64 counts: how often each of n units is drawn in each bootstrap resample,
    for the same draws as `repro.intervals.bootstrap(np.arange(n), ..., n_boot, seed=seed)`."""
    rng = np.random.default_rng(seed)
    idx = torch.as_tensor(np.stack([rng.integers(0, n, n) for _ in range(n_boot)]))
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))


def percentile_interval(draws, level: float = 0.95) -> tuple[float, float]:
    """(lo, hi) of a statistic's bootstrap draws, as `repro.intervals.bootstrap` takes them."""
    draws = np.asarray(draws)
    alpha = (1 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


@dataclass
class ImageSums:
    """Per-image moments of updates x and residuals e = x - x_hat: enough for the EV of any
    multiset of the images (a bootstrap resample) without encoding again."""

    x1: torch.Tensor
    """[N, C] sum of x over each image's positions (float64)."""
    x2: torch.Tensor
    """[N] sum of |x|^2 over each image's positions."""
    e1: torch.Tensor
    """[N, C] the same for the residual."""
    e2: torch.Tensor
    positions: int
    """Positions per image (H * W)."""

    def ev(self, idx=None) -> float:
        """The paper's EV over the images `idx` (with repeats; default: all)."""
        idx = torch.arange(len(self.x2)) if idx is None else torch.as_tensor(idx)

        def dev(s1, s2):  # sum |v - mean(v)|^2 over every position of the chosen images
            return squared_deviation(s1.sum(0), s2.sum(), len(s2) * self.positions)

        return float(ev_from(dev(self.x1[idx], self.x2[idx]), dev(self.e1[idx], self.e2[idx])))

    def ev_draws(self, weights: torch.Tensor) -> np.ndarray:
        """`ev` of many resamples at once: weights [n_boot, N] counts of each image per resample
        (`draw_weights`) -> [n_boot] EVs; each equals `ev(idx)` of that resample up to float64
        rounding (a resample's sums are w @ the images' sums: matrix products, not n_boot indexings)."""
        w = weights.to(torch.float64)
        rows = w.sum(1) * self.positions  # positions in each resample

        def dev(s1, s2):  # [n_boot]
            return squared_deviation(w @ s1.double(), w @ s2.double(), rows)

        return ev_from(dev(self.x1, self.x2), dev(self.e1, self.e2)).numpy()


@torch.no_grad()
def image_sums(sae: TopKSAE, updates: torch.Tensor, batch_size: int = 8192) -> ImageSums:
    """`ImageSums` of `sae` on updates [N, H, W, C]."""
    return image_sums_of({"sae": sae}, updates, batch_size)["sae"]


@torch.no_grad()
def image_sums_of(saes: dict[str, TopKSAE], updates: torch.Tensor, batch_size: int = 8192) -> dict[str, ImageSums]:
    """`image_sums` of several SAEs on the same updates [N, H, W, C]: {name: ImageSums}, each the
    one `image_sums(sae, updates)` gives. Each chunk of images is moved and converted once per
    device and dtype, and the sums of x, the same for all those SAEs, are computed once; the
    sums stay on the SAEs' device until the end (one copy of [N, C] numbers to the host)."""
    x = updates.reshape(-1, *updates.shape[-3:]).float()  # [N, H, W, C]
    n, h, w, c = x.shape
    per_batch = max(1, batch_size // (h * w))
    groups: dict[tuple, list[str]] = {}
    for name, sae in saes.items():
        groups.setdefault((sae.device, sae.dtype), []).append(name)
    out: dict[str, ImageSums] = {}
    for (device, dtype), names in groups.items():
        xs: dict[str, list] = {"x1": [], "x2": []}
        es: dict = {name: {"e1": [], "e2": []} for name in names}
        for start in range(0, n, per_batch):
            chunk = x[start : start + per_batch].to(device=device, dtype=dtype)
            xf = chunk.float()
            for key, v in zip(("x1", "x2"), _image_sums(xf)):
                xs[key].append(v)
            for name in names:
                sae = saes[name]
                for key, v in zip(("e1", "e2"), _image_sums(xf - sae.decode_sparse(*sae.encode_topk(chunk)).float())):
                    es[name][key].append(v)
        x1, x2 = (torch.cat(xs[k]).cpu() for k in ("x1", "x2"))
        for name in names:
            out[name] = ImageSums(x1=x1, x2=x2, **{k: torch.cat(v).cpu() for k, v in es[name].items()}, positions=h * w)
    return {name: out[name] for name in saes}


@torch.no_grad()
def evaluate_reconstruction(sae: TopKSAE, updates: torch.Tensor, batch_size: int = 8192,
                            n_boot: int = 1000) -> Reconstruction:
    """Metrics of `sae` on updates [N, H, W, C] (or [..., H, W, C]: leading dims are flattened);
    `n_boot` bootstrap resamples of the images give EV's interval (0: none)."""
    if updates.shape[-1] != sae.cfg.d_model:
        raise ReproError(
            f"the SAE reads vectors of width {sae.cfg.d_model} but these updates have {updates.shape[-1]} "
            "channels: evaluate it on a block of its width"
        )
    x = updates.reshape(-1, *updates.shape[-3:]).float()  # [N, H, W, C]
    n, h, w, c = x.shape
    signal, residual = Moments(), Moments()  # per position [H, W]
    per_image: dict[str, list] = {"x1": [], "x2": [], "e1": [], "e2": []}
    l0_total = 0.0
    fired = torch.zeros(sae.cfg.n_features, dtype=torch.bool)
    images_per_batch = max(1, batch_size // (h * w))
    for start in range(0, n, images_per_batch):
        chunk = x[start : start + images_per_batch].to(device=sae.device, dtype=sae.dtype)
        vals, idx = sae.encode_topk(chunk)
        x_hat = sae.decode_sparse(vals, idx).float()
        signal.add(chunk.float())
        residual.add(chunk.float() - x_hat)  # [b, H, W, C]
        for key, v in (("x", chunk.float()), ("e", chunk.float() - x_hat)):
            s1, s2 = _image_sums(v)
            per_image[key + "1"].append(s1)
            per_image[key + "2"].append(s2)
        active = fires(sae.cfg, vals)
        l0_total += float(active.sum())
        fired[idx[active].unique().cpu()] = True
    var_x = signal.total_squared_deviation()
    ev = ev_from(var_x, residual.total_squared_deviation()) if var_x > 0 else float("nan")
    nmse = nmse_from(var_x, residual.sum_squares()) if var_x > 0 else float("nan")
    position_ev = ev_from(signal.squared_deviation().clamp_min(1e-12), residual.squared_deviation()).tolist()
    interval = (float("nan"), float("nan"))
    if n_boot and n > 1 and var_x > 0:
        sums = ImageSums(**{k: torch.cat(v).cpu() for k, v in per_image.items()}, positions=h * w)
        interval = percentile_interval(sums.ev_draws(draw_weights(n, n_boot)))
    return Reconstruction(
        ev=ev, fvu=1.0 - ev, nmse=nmse, l0=l0_total / (n * h * w),
        dead_fraction=1.0 - float(fired.float().mean()), n_tokens=n * h * w, position_ev=position_ev,
        ev_interval=interval,
    )


@torch.no_grad()
def code_overlap(sae: TopKSAE, a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of the SAE codes of the same positions in `a` and `b` ([..., C] each).

    The paper's "feature overlap" between adjacent denoising steps t and t+1.
    """
    return float(code_cosines(sae, a, b).mean())


@torch.no_grad()
def code_cosines(sae: TopKSAE, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the SAE codes of each position in `a` and `b` ([..., C] each): [rows]."""
    return codes_cosines(codes(sae, a), codes(sae, b))


@torch.no_grad()
def codes(sae: TopKSAE, a: torch.Tensor) -> torch.Tensor:
    """Dense SAE codes [rows, n] (float32) of the vectors a [..., C], as `code_cosines` compares them."""
    return sae.encode(a.reshape(-1, a.shape[-1]).to(device=sae.device, dtype=sae.dtype)).float()


def codes_cosines(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two sets of `codes`, row by row: [rows]."""
    return torch.nn.functional.cosine_similarity(za, zb, dim=-1, eps=1e-12)
