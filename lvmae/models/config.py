"""The model configuration, re-exported from :mod:`lvmae.model_config` where it lives."""

from lvmae.model_config import (  # noqa: F401
    ATTENTION_BACKENDS,
    DECAYS,
    FUSIONS,
    LOSSES,
    ROPE_KINDS,
    ZERO_FREQ_RULES,
    ModelConfig,
    RopeConfig,
    check_model_config,
    modality_dims,
    model_config_from_dict,
)
