"""The probing methods a results table can hold: which features, which head.

``raw_*`` methods read the feature store directly (the paper's "raw" rows, no
pretraining needed); ``lvmae_*`` methods read the frozen LV-MAE encoder's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvmae.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    features: str  # raw | lvmae
    head: str  # sklearn | linear | attentive
    about: str


METHODS = {m.name: m for m in (
    Method("raw_mean_sklearn", "raw", "sklearn",
           "mean-pooled raw segment embeddings, standardised, LogisticRegression / Ridge"),
    Method("raw_linear", "raw", "linear", "mean-pooled raw embeddings, BatchNorm (no affine) + Linear, AdamW"),
    Method("raw_attentive", "raw", "attentive", "attentive probe over the raw segment embeddings"),
    Method("lvmae_linear", "lvmae", "linear", "frozen LV-MAE, mean-pooled tokens (or [CLS]), BatchNorm + Linear"),
    Method("lvmae_attentive", "lvmae", "attentive", "attentive probe over frozen LV-MAE tokens"),
)}


def select_methods(names: list[str], have_encoder: bool, known: dict[str, Method] | None = None,
                   key: str = "probe.methods") -> tuple[list[Method], dict[str, str]]:
    """Methods to run, and those skipped with the reason (LV-MAE rows without a checkpoint).

    ``known`` is the table the names come from (default :data:`METHODS`, the video probes);
    ``key`` names the config key in errors.
    """
    known = METHODS if known is None else known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown {key} {unknown}; known: {', '.join(known)}")
    if not names:
        raise ConfigError(f"{key} is empty")
    run, skipped = [], {}
    for n in dict.fromkeys(names):
        m = known[n]
        if m.features == "lvmae" and not have_encoder:
            skipped[n] = "no probe.checkpoint given"
        else:
            run.append(m)
    if not run:
        raise ConfigError(f"nothing to run: {', '.join(skipped)} need probe.checkpoint (an exported LV-MAE encoder)")
    return run, skipped
