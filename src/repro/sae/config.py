"""Configuration of a TopK SAE (`SAEConfig`) and of its training run (`TrainConfig`).

Defaults are the paper's released SAEs (d 1280, 5120 features, k 10) and training recipe
(Gao et al. 2024: AuxK 256 at 1/32, dead after 10M tokens, Adam 1e-4, eps 6.25e-10, batch
4096, no schedule). Both classes check themselves on construction and raise `ReproError`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from repro.errors import ReproError, choices_hint
from repro.ranges import MAX_SAE_MATRIX, MAX_TOKEN_BATCH, MAX_TRAIN_STEPS, check_float, check_int

ARCHITECTURE = "topk"
IMPLS = ("auto", "fast", "fused", "reference")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class SAEConfig:
    """Shape and sparsity of one TopK SAE: z = ReLU(TopK_k(W_enc (x - b_pre) + b_lat))."""

    d_model: int = 1280
    """Width of the input vectors x (1280 for the four SDXL blocks)."""
    n_features: int = 5120
    """Number of latents (dictionary size); the paper's released SAEs use 4 x 1280."""
    k: int = 10
    """Latents kept per input by TopK (10 for the released SAEs, 160 for RIEBench)."""
    k_aux: int = 256
    """Dead latents used by the AuxK loss to reconstruct the residual (0 turns AuxK off)."""
    auxk_coef: float = 1 / 32
    """Weight of the AuxK loss in the total loss."""
    dead_tokens_threshold: int = 10_000_000
    """A latent is dead after more than this many training tokens without firing (2441 steps at batch 4096)."""
    fire_threshold: float = 1e-3
    """A selected latent counts as having fired when its value exceeds this (OpenAI's 1e-3)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_features", "k"):
            check_int(f"SAE {name}", getattr(self, name), 1, MAX_SAE_MATRIX)
        if self.d_model * self.n_features > MAX_SAE_MATRIX:
            raise ReproError(f"SAE d_model x n_features = {self.d_model} x {self.n_features} must be at most {MAX_SAE_MATRIX} "
                             "(8 GiB a weight matrix in fp32, four such with Adam): lower the expansion")
        if not self.k < self.n_features:
            raise ReproError(
                f"SAE k={self.k} must be smaller than n_features={self.n_features}: lower k or raise n_features"
            )
        if self.k_aux < 0 or self.k_aux > self.n_features:
            raise ReproError(f"SAE k_aux={self.k_aux} must lie in 0..n_features={self.n_features} (0 turns AuxK off)")
        check_float("SAE auxk_coef", self.auxk_coef, 0.0)
        check_int("SAE dead_tokens_threshold", self.dead_tokens_threshold, 0, None)
        check_float("SAE fire_threshold", self.fire_threshold, 0.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        """Build from a saved dict, ignoring keys this version does not know (files outlive code)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def scaled_lr(n_features: int) -> float:
    """Adam lr for a dictionary of `n_features` latents: 2e-4 / sqrt(n_features / 2^14), the rule
    EleutherAI's sparsify uses by default (after Gao et al.'s fit of lr against width).

    Adam moves every weight by about lr per step, while a unit-norm decoder column of width d
    has entries of about 1/sqrt(d): at the paper's 1e-4, a small dictionary trained for a few
    thousand steps (the toy's) hardly leaves its random start (measured: benchmarks/investigations.md)."""
    return 2e-4 / math.sqrt(n_features / 2**14)


@dataclass
class TrainConfig:
    """One training run of one or several SAEs on one batch source."""

    steps: int = 100_000
    """Optimisation steps (batches) to train for; the run ends earlier if the source runs out."""
    lr: float = 1e-4
    """Adam learning rate (constant: the paper uses no schedule); 0: `scaled_lr(n_features)` of
    each SAE, sparsify's rule (1.1e-3 at 512 features, 3.6e-4 at 5120)."""
    adam_eps: float = 6.25e-10
    """Adam epsilon (Gao et al.)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas (PyTorch defaults, as in the original code)."""
    impl: Literal["auto", "fast", "fused", "reference"] = "auto"
    """Loss implementation: the sparse "fast" path, the "fused" one (hand-written backward) or the
    dense "reference" twin (same numbers); "auto" takes whichever measured faster on the device
    (`step.auto_impl`, benchmarks/investigations.md): the fused one, replayed from a CUDA graph, on CUDA;
    the sparse one on the CPU."""
    device: str = "auto"
    """Where to train: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N."""
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Matmul dtype under autocast; auto = bfloat16 on CUDA, float32 elsewhere. Master weights stay float32."""
    init_b_pre: bool = True
    """On a fresh start set b_pre to the geometric median of the first training vectors."""
    geometric_median_samples: int = 32_768
    """How many training vectors the b_pre geometric median is computed from."""
    on_nonfinite: Literal["skip", "stop"] = "stop"
    """A batch holding NaN/inf: skip it for that block and count it, or stop with an error."""
    log_every: int = 100
    """Steps between metrics lines (averaged over the interval) and progress-bar updates."""
    checkpoint_every: int = 5_000
    """Steps between checkpoints (0: none besides the final SAEs)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep on disk."""
    stats_batches: int = 0
    """Batches of a pass after training that measure per-feature statistics (0: skip)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    cuda_graph: bool = True
    """On CUDA, replay each SAE's step from a CUDA graph after 3 eager steps (`sae.graphed`): one
    launch per step instead of ~150. The `fused` and dense `reference` losses are capturable (the
    sparse one reads its dead-latent count on the host); other impls, the CPU and a custom
    `step_fn` run eagerly. The same kernels run either way."""
    side_stream: bool = False
    """On CUDA, run the SAE steps on their own CUDA stream, so that they overlap with work the
    batch source queues on another (a `StreamSource` generating with `prefetch=1`); the
    per-batch finite check then waits for the SAE stream only. Same numbers either way."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        if self.impl not in IMPLS:
            raise ReproError(f"unknown SAE impl {self.impl!r}: use {choices_hint(IMPLS)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ReproError(f"unknown compute_dtype {self.compute_dtype!r}: use {choices_hint(COMPUTE_DTYPES)}")
        if self.on_nonfinite not in ("skip", "stop"):
            raise ReproError(f"unknown on_nonfinite {self.on_nonfinite!r}: use {choices_hint(['skip', 'stop'])}")
        check_int("steps", self.steps, 1, MAX_TRAIN_STEPS)  # 0 would write untrained SAEs as if they were trained
        if not (math.isfinite(self.lr) and self.lr >= 0 and math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ReproError(f"lr must be finite and >= 0 (0: scaled to the dictionary) and adam_eps finite and "
                             f"positive, got lr={self.lr}, adam_eps={self.adam_eps}")
        for i, beta in enumerate(self.adam_betas):
            check_float(f"adam_betas[{i}]", beta, 0.0, 1.0, high_open=True)
        check_int("log_every", self.log_every, 1, MAX_TRAIN_STEPS)
        check_int("checkpoint_every", self.checkpoint_every, 0, MAX_TRAIN_STEPS, why="0 writes no checkpoints")
        check_int("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        check_int("stats_batches", self.stats_batches, 0, MAX_TRAIN_STEPS)
        check_int("geometric_median_samples", self.geometric_median_samples, 1, MAX_TOKEN_BATCH,
                  why="the samples are held in memory at once")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


__all__ = ["ARCHITECTURE", "SAEConfig", "TrainConfig", "scaled_lr"]
