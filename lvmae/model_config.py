"""The ``model`` section's configuration: plain dataclasses, no omegaconf, no torch.

It sits at the bottom of the import graph so that :mod:`lvmae.config` (the whole schema) and
:mod:`lvmae.models` both import it and the schema imports nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RopeConfig:
    """Position encoding. ``kind``: hope (hybrid RoPE + dynamic temporal scaling),
    rope (plain rotary: no zero-frequency pairs, no scaling), sincos (1-D absolute
    embedding added to the tokens, the LV-MAE paper's choice), none.

    Time positions are ``scale * segment_index``. With ``hope`` each training sequence
    draws its scale from ``train_scales``; at eval the scale is ``eval_scale`` (1.0, the
    centre of the training scales; HoPE uses 1.5 to stretch positions for long videos).
    Other kinds use scale 1 unless a scale is passed to the model explicitly.
    """

    kind: str = "hope"  # hope | rope | sincos | none (see above)
    base: float = 10000.0  # frequencies base^(-2i/d); d = head dim (rotary) or token width (sincos)
    # hope: which pairs get frequency 0. fraction = the lowest zero_freq_fraction of pairs;
    # wavelength = every pair whose wavelength 2*pi/theta exceeds the longest scaled training
    # position (max(train_scales) x (train_length - 1)): HoPE's rule, tied to the training length.
    zero_freq_rule: str = "fraction"
    zero_freq_fraction: float = 0.25  # hope, zero_freq_rule=fraction: share of lowest-frequency pairs set to 0
    # Longest training crop in segments; 0 = unknown (pretraining sets it from data.max_len).
    # Used by zero_freq_rule=wavelength, decay=local and length_scaling.
    train_length: int = 0
    # Distance-decay bias added to attention logits, -slope_h x |t_i - t_j| (the [CLS] token is
    # never penalised): none | alibi (ALiBi's geometric slopes 2^(-8h/H)) | local (geometric
    # slopes down to 1 / train_length: no head reaches much further than the training crops;
    # ALiBi's slopes while train_length is 0).
    decay: str = "local"
    decay_heads: float = 1.0  # share of heads with a decay (the others attend without one)
    # Multiply attention logits by log(n) / log(train_length) when a sequence of n tokens is
    # longer than training (attention-entropy scaling); needs train_length.
    length_scaling: bool = False
    # hope only: each training sequence's time scale, drawn uniformly from this list.
    train_scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    eval_scale: float = 1.0  # hope only: time scale when encoding / in eval (probe.scale overrides)
    modality_axis_fraction: float = 0.25  # share of rotary pairs given to the modality axis


@dataclass
class ModelConfig:
    """LV-MAE sizes. Defaults are a small CPU-friendly model; see the ``paper`` recipe."""

    in_dim: int = 1280  # input embedding size (all modalities); pretrain sets it from data.stores
    modality_dims: list[int] = field(default_factory=list)  # split of in_dim; empty = one modality
    modality_fusion: str = "concat"  # concat (then project) | tokens (one token per modality)
    l2_normalize_input: bool = True  # L2-normalise each segment per modality (targets too)
    width: int = 256  # encoder token width; inputs are linearly projected to it (identity if equal)
    depth: int = 4  # encoder transformer blocks
    heads: int = 4  # encoder attention heads; width / heads must be even (rotary pairs)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio x block width (encoder and decoder)
    decoder_width: int = 128  # decoder token width (the encoder output is linearly mapped to it)
    decoder_depth: int = 2  # decoder transformer blocks (pretraining only; not exported)
    decoder_heads: int = 4  # decoder attention heads; decoder_width / decoder_heads must be even
    qkv_bias: bool = True  # bias in the fused q/k/v projection of every attention layer
    dropout: float = 0.0  # in every block (attention weights, attention and MLP outputs); 0 = off
    loss: str = "mse"  # mse | cosine
    norm_target: bool = False  # standardise each target segment per modality (MAE norm_pix_loss)
    # Weight of the reconstruction of the *visible* segments, added to the masked loss: the
    # encoder must then keep each segment's own content (a rare segment that helps predict
    # no neighbour is otherwise free to be forgotten); 0 = MAE's masked-only loss.
    visible_loss_weight: float = 0.0
    attention: str = "sdpa"  # sdpa | xformers | math
    pack_sequences: bool = False  # varlen packing of ragged batches (one host sync per stack)
    checkpoint_activations: bool = False  # recompute blocks in backward: less memory, more compute
    rope: RopeConfig = field(default_factory=RopeConfig)


ROPE_KINDS = ("hope", "rope", "sincos", "none")
ZERO_FREQ_RULES = ("fraction", "wavelength")
DECAYS = ("none", "alibi", "local")
FUSIONS = ("concat", "tokens")
LOSSES = ("mse", "cosine")
ATTENTION_BACKENDS = ("sdpa", "xformers", "math")


def modality_dims(cfg: ModelConfig) -> list[int]:
    """Dims of the modalities concatenated along the input's last axis (one modality = [in_dim])."""
    return list(cfg.modality_dims) if cfg.modality_dims else [cfg.in_dim]


def check_model_config(cfg: ModelConfig) -> ModelConfig:
    """Cross-field checks, so a model built from Python fails as clearly as one built from YAML."""
    from lvmae.errors import ConfigError

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    r = cfg.rope
    for name, width, heads in (("", cfg.width, cfg.heads), ("decoder_", cfg.decoder_width, cfg.decoder_heads)):
        need(width > 0 and heads > 0, f"model.{name}width and model.{name}heads must be > 0")
        need(width % heads == 0, f"model.{name}width ({width}) must be divisible by model.{name}heads ({heads})")
        need((width // heads) % 2 == 0, f"model.{name}width / model.{name}heads must be even (rotary pairs)")
    need(cfg.in_dim > 0, f"model.in_dim must be > 0, got {cfg.in_dim}")
    need(
        not cfg.modality_dims or (sum(cfg.modality_dims) == cfg.in_dim and min(cfg.modality_dims) > 0),
        f"model.modality_dims {list(cfg.modality_dims)} must be positive and sum to model.in_dim ({cfg.in_dim})",
    )
    need(cfg.depth >= 1 and cfg.decoder_depth >= 1, "model.depth and model.decoder_depth must be >= 1")
    need(cfg.modality_fusion in FUSIONS, f"model.modality_fusion must be one of {FUSIONS}, got {cfg.modality_fusion!r}")
    need(cfg.loss in LOSSES, f"model.loss must be one of {LOSSES}, got {cfg.loss!r}")
    need(cfg.attention in ATTENTION_BACKENDS, f"model.attention must be one of {ATTENTION_BACKENDS}, got {cfg.attention!r}")
    need(0.0 <= cfg.dropout < 1.0, f"model.dropout must be in [0, 1), got {cfg.dropout}")
    need(cfg.visible_loss_weight >= 0.0, f"model.visible_loss_weight must be >= 0, got {cfg.visible_loss_weight}")
    need(r.kind in ROPE_KINDS, f"model.rope.kind must be one of {ROPE_KINDS}, got {r.kind!r}")
    need(r.base > 1.0, f"model.rope.base must be > 1, got {r.base}")
    need(0.0 <= r.zero_freq_fraction <= 1.0, "model.rope.zero_freq_fraction must be in [0, 1]")
    need(r.zero_freq_rule in ZERO_FREQ_RULES, f"model.rope.zero_freq_rule must be one of {ZERO_FREQ_RULES}, got {r.zero_freq_rule!r}")
    need(r.decay in DECAYS, f"model.rope.decay must be one of {DECAYS}, got {r.decay!r}")
    need(0.0 < r.decay_heads <= 1.0, f"model.rope.decay_heads must be in (0, 1], got {r.decay_heads}")
    need(r.train_length >= 0, f"model.rope.train_length must be >= 0, got {r.train_length}")
    need(not (r.decay != "none" and cfg.pack_sequences), "model.pack_sequences=true takes no distance-decay bias: set model.rope.decay=none (or pack_sequences=false)")
    need(not (r.length_scaling and cfg.pack_sequences), "model.rope.length_scaling needs model.pack_sequences=false")
    need(not (r.length_scaling or r.zero_freq_rule == "wavelength" or r.decay == "local")
         or r.train_length >= 2 or r.train_length == 0,
         "model.rope.train_length must be >= 2 (or 0 = set by pretraining)")
    need(0.0 <= r.modality_axis_fraction < 1.0, "model.rope.modality_axis_fraction must be in [0, 1)")
    need(len(r.train_scales) > 0 and min(r.train_scales) > 0, "model.rope.train_scales must be non-empty and > 0")
    need(r.eval_scale > 0, f"model.rope.eval_scale must be > 0, got {r.eval_scale}")
    return cfg


def model_config_from_dict(d: dict) -> ModelConfig:
    """Inverse of ``dataclasses.asdict`` (e.g. an exported ``config.json``); unknown keys are errors."""
    from dataclasses import fields

    from lvmae.errors import ConfigError

    d = dict(d)
    rope = d.pop("rope", {}) or {}
    for cls, values in ((ModelConfig, d), (RopeConfig, rope)):
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return check_model_config(ModelConfig(**d, rope=RopeConfig(**rope)))
