"""The model card (README.md) of an LV-MAE export: Hub metadata, usage, config, training, probing.

Plain text from the model config and the export's ``extra`` (``step``, ``stores``,
``modalities``, ``encoders``, ``probe``: a Markdown results table), so a local export and a
Hub repository carry the same card; no huggingface_hub needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lvmae.model_config import ModelConfig

LIBRARY = "lvmae"
LICENSE = "apache-2.0"
PIPELINE_TAG = "feature-extraction"
TAGS = ["video", "self-supervised-learning", "long-video", "masked-autoencoder", "lv-mae"]
_TRAINING = {"step": "optimiser steps", "stores": "feature stores", "modalities": "modalities",
             "encoders": "segment encoders", "checkpoint": "exported from"}


def card_text(cfg: ModelConfig, extra: dict[str, Any], repo_id: str | None = None,
              metadata: str | None = None) -> str:
    """The whole card; ``metadata`` replaces the default YAML front matter (the Hub mixin's)."""
    if metadata is None:
        metadata = "\n".join([f"library_name: {LIBRARY}", f"license: {LICENSE}",
                              f"pipeline_tag: {PIPELINE_TAG}", "tags:", *(f"- {t}" for t in TAGS)])
    ref = repo_id or "<repo id or export dir>"
    lines = ["---", metadata.strip(), "---", "", "# LV-MAE encoder", "",
             "A long-video encoder pretrained with LV-MAE (masked autoencoding over frozen segment "
             "embeddings): one token per short segment in, contextual segment tokens and a [CLS] "
             "video embedding out.", "",
             "```python", "from lvmae.models.hub import LVMAEModel", "",
             f'model = LVMAEModel.from_pretrained("{ref}")',
             "out = model.encode(x, valid)  # x [B, N, in_dim] segment embeddings, valid [B, N] bool",
             "```", "", "## Model", "", "| key | value |", "|---|---|"]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        lines.append(f"| {f.name} | {_cell(dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)} |")
    lines += ["", "## Training", ""]
    rows = [f"- {label}: {_cell(extra[k])}" for k, label in _TRAINING.items() if k in extra]
    lines += rows or ["Not recorded in this export."]
    if extra.get("probe"):
        lines += ["", "## Probing", "", str(extra["probe"]).strip()]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")
