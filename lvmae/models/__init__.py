"""LV-MAE model code. Imports neither data, training, omegaconf nor deepspeed."""

from lvmae.models.config import ModelConfig, RopeConfig

__all__ = ["ModelConfig", "RopeConfig"]
