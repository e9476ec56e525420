"""TopK sparse autoencoders of the paper: model, training, statistics and files.

Re-exports only; each submodule has one job (config, model, losses, fast, step, sources,
train, checkpoint, stats, io, sets, metrics, geometric_median).
"""

from repro.sae.config import SAEConfig, TrainConfig
from repro.sae.fast import fast_loss
from repro.sae.geometric_median import geometric_median
from repro.sae.io import load_sae, save_sae
from repro.sae.losses import LossOutput, reference_loss
from repro.sae.model import TopKSAE
from repro.sae.sets import build_block_saes, load_block_saes
from repro.sae.sources import BatchSource, ConcatSource, TensorSource, ZipSource
from repro.sae.stats import FeatureStats, feature_stats
from repro.sae.step import make_optimizer, train_step
from repro.sae.train import TrainResult, train_saes

__all__ = [
    "BatchSource",
    "ConcatSource",
    "FeatureStats",
    "LossOutput",
    "SAEConfig",
    "TensorSource",
    "TopKSAE",
    "TrainConfig",
    "TrainResult",
    "ZipSource",
    "build_block_saes",
    "fast_loss",
    "feature_stats",
    "geometric_median",
    "load_block_saes",
    "load_sae",
    "make_optimizer",
    "reference_loss",
    "save_sae",
    "train_saes",
    "train_step",
]
