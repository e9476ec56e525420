"""The embedded ShapesWorld models: shapes-base (multi-step) and shapes-turbo (1 step), trained here.

`repro toy train` (`train_toy_models`) renders the data, trains a 4x VAE, the base
diffusion model and the turbo model derived from it, and saves both as ordinary SDXL
pipelines; `prompt_following` scores a pipeline with the ShapesWorld oracle.
"""

from repro.toymodels.config import (
    BaseStage,
    DataConfig,
    ToySizes,
    ToyTrainConfig,
    TurboStage,
    VaeStage,
)
from repro.toymodels.evaluate import prompt_following, vae_ceiling
from repro.toymodels.train import train_toy_models

__all__ = [
    "BaseStage",
    "DataConfig",
    "ToySizes",
    "ToyTrainConfig",
    "TurboStage",
    "VaeStage",
    "prompt_following",
    "train_toy_models",
    "vae_ceiling",
]
