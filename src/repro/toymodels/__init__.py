"""The embedded ShapesWorld models: shapes-base (multi-step) and shapes-turbo (1 step), trained here.

`repro toy train` (`train_toy_models`) renders the data, trains a 4x VAE, the base
diffusion model and the turbo model derived from it, and saves both as ordinary SDXL
pipelines; `repro toy eval` scores one with the ShapesWorld oracle (`repro.shapes.scoring`).
"""

from repro.toymodels.config import (
    BaseStage,
    DataConfig,
    ToySizes,
    ToyTrainConfig,
    TurboStage,
    VaeStage,
)
from repro.toymodels.train import train_toy_models

__all__ = [
    "BaseStage",
    "DataConfig",
    "ToySizes",
    "ToyTrainConfig",
    "TurboStage",
    "VaeStage",
    "train_toy_models",
]
