"""LV-MAE on the Hugging Face Hub: huggingface_hub's ``PyTorchModelHubMixin`` over the export layout.

:class:`LVMAEModel` is the encoder side of :class:`~lvmae.models.lvmae.LVMAE` with the mixin's
``from_pretrained`` / ``save_pretrained`` / ``push_to_hub``. The files are the ones
:mod:`lvmae.models.export` writes (``encoder.safetensors`` + ``config.json``), so every
existing export loads through it and every Hub repository it writes loads with
:func:`~lvmae.models.export.load_pretrained`; ``README.md`` is a model card generated from the
model config and the export's ``extra`` (training data, steps, a probe table when given).
Needs ``huggingface_hub`` (``pip install lvmae[hf]``); imported only by this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, PyTorchModelHubMixin

from lvmae.model_config import ModelConfig
from lvmae.models.card import LIBRARY, LICENSE, PIPELINE_TAG, TAGS, card_text
from lvmae.models.export import load_pretrained, save_pretrained
from lvmae.models.lvmae import LVMAE


class LVMAEModel(LVMAE, PyTorchModelHubMixin, library_name=LIBRARY, tags=TAGS, license=LICENSE,
                 pipeline_tag=PIPELINE_TAG):
    """The LV-MAE encoder (no decoder) as a Hub model; ``extra`` is the export's metadata dict.

    >>> model = LVMAEModel.from_pretrained("org/name@v1")   # or an export directory
    >>> model.push_to_hub("me/my-lvmae")                    # writes the export + README.md
    """

    def __init__(self, cfg: ModelConfig, *, with_decoder: bool = False):
        super().__init__(cfg, with_decoder=with_decoder)
        self.extra: dict[str, Any] = {}

    @classmethod
    def from_lvmae(cls, model: LVMAE, extra: dict[str, Any] | None = None) -> LVMAEModel:
        """The encoder of a trained :class:`LVMAE` (weights copied, decoder dropped)."""
        out = cls(model.cfg)
        out.load_state_dict(model.encoder_state_dict())
        out.extra = dict(extra or {})
        return out.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        **kwargs: Any) -> LVMAEModel:
        """An export directory or Hub id ``org/name[@revision]``, resolved by :func:`lvmae.hub.resolve`
        (offline-aware, safetensors only) before the mixin reads it from that directory."""
        from lvmae.hub import resolve

        hub_kw = {k: kwargs.pop(k) for k in ("cache_dir", "token", "force_download", "local_files_only")
                  if k in kwargs}
        path = resolve(pretrained_model_name_or_path, "from_pretrained", revision=revision,
                       **{k: v for k, v in hub_kw.items() if v})
        return super().from_pretrained(str(path), **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **_: Any) -> LVMAEModel:
        model, extra = load_pretrained(model_id, map_location, model_cls=cls)
        model.extra = dict(extra)
        return model  # type: ignore[return-value]

    def _save_pretrained(self, save_directory: Path) -> None:
        save_pretrained(self, save_directory, extra=self.extra, card=False)  # the mixin writes the card

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None,
                    **kwargs: Any) -> Any:
        """The mixin's upload (one commit of the saved folder); the card names ``repo_id``."""
        return super().push_to_hub(repo_id, model_card_kwargs={"repo_id": repo_id, **(model_card_kwargs or {})},
                                   **kwargs)

    def generate_model_card(self, *args: Any, repo_id: str | None = None, **kwargs: Any) -> ModelCard:
        """:func:`~lvmae.models.card.card_text` under the mixin's metadata (library, tags, licence)."""
        meta = self._hub_mixin_info.model_card_data.to_yaml()
        return ModelCard(card_text(self.cfg, self.extra, repo_id=repo_id, metadata=meta))

