"""Video towers from transformers (``encoder.vision=hf_video``): a segment's K frames in as one clip.

``extract.encoder.checkpoint`` names a local directory or Hub id of one of these (found by its
``config.json`` ``model_type``, loaded with ``AutoModel``, except X-CLIP's full model):

============== ==================== ======================================= ====================
model_type     frames per clip      segment embedding                       default mean / std
============== ==================== ======================================= ====================
videomae       ``num_frames`` (16)  mean of the last layer's patch tokens   ImageNet
vjepa2         ``frames_per_clip``  mean of the encoder's patch tokens      ImageNet
               (64)                 (the predictor is skipped)
timesformer    ``num_frames`` (8)   [CLS] token of the last layer           ImageNet
vivit          ``num_frames`` (32)  [CLS] token of the last layer           0.5 / 0.5, offset
xclip          ``vision_config.     projected video embedding               CLIP
               num_frames`` (8)     (``get_video_features``)
============== ==================== ======================================= ====================

The tower takes exactly its own frame count, so ``extract.segment.frames`` must equal it
(the extractor says so otherwise); frames are resized to its ``image_size`` / ``crop_size``
by the extractor and normalised with the mean, std, rescale factor and offset of the
checkpoint's (video) processor config (``video_preprocessor_config.json`` or
``preprocessor_config.json``; the defaults above when it has none). The processor classes
themselves need torchvision, which lvmae does not require, so only their configs are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lvmae.config import EncoderConfig
from lvmae.encoders.hf import (
    CLIP_MEAN,
    CLIP_STD,
    ClipNormalize,
    checkpoint_dir,
    load_kw,
    quiet,
    transformers_module,
)
from lvmae.encoders.torch_module import TorchEncoder
from lvmae.errors import ConfigError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# model_type -> (config attribute of the frame count, of the frame size, pooling, default (mean, std))
TOWERS: dict[str, tuple[str, str, str, tuple]] = {
    "videomae": ("num_frames", "image_size", "mean", IMAGENET),
    "vjepa2": ("frames_per_clip", "crop_size", "mean", IMAGENET),
    "timesformer": ("num_frames", "image_size", "cls", IMAGENET),
    "vivit": ("num_frames", "image_size", "cls", HALF),
    "xclip": ("num_frames", "image_size", "video_features", (CLIP_MEAN, CLIP_STD)),
}


class VideoTower(nn.Module):
    """``[B, T, 3, H, W]`` normalised clips -> ``[B, D]`` (see the module table for each pooling)."""

    def __init__(self, model: nn.Module, model_type: str, pooling: str):
        super().__init__()
        self.model, self.model_type, self.pooling = model, model_type, pooling

    def forward(self, x: Tensor) -> Tensor:
        if self.pooling == "video_features":
            out = self.model.get_video_features(pixel_values=x)
            return out if isinstance(out, Tensor) else out.pooler_output
        if self.model_type == "vjepa2":
            hidden = self.model(pixel_values_videos=x, skip_predictor=True).last_hidden_state
        else:
            hidden = self.model(pixel_values=x).last_hidden_state  # [B, N(+1), D]
        return hidden[:, 0] if self.pooling == "cls" else hidden.mean(1)


def processor_stats(path: str, default: tuple) -> tuple[tuple, tuple, float, float]:
    """``(mean, std, rescale, offset)`` from the checkpoint's processor config, else ``default``."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        f = Path(path) / name
        if f.is_file():
            d = json.loads(f.read_text(encoding="utf-8"))
            mean, std = d.get("image_mean", default[0]), d.get("image_std", default[1])
            rescale = float(d.get("rescale_factor", 1 / 255))
            return tuple(mean), tuple(std), rescale, 1.0 if d.get("offset") else 0.0
    offset = default is HALF  # ViViT's processor: x / 127.5 - 1, then (x - 0.5) / 0.5
    return default[0], default[1], (1 / 127.5) if offset else 1 / 255, 1.0 if offset else 0.0


def build_video(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    path = checkpoint_dir(cfg.checkpoint, "encoder.vision=hf_video", "encoder.checkpoint", cfg)
    tf, kw = transformers_module(), load_kw(cfg)
    with quiet():
        conf = tf.AutoConfig.from_pretrained(path, **kw)
        if conf.model_type not in TOWERS:
            raise ConfigError(f"encoder.checkpoint={cfg.checkpoint}: model type {conf.model_type!r} is not a "
                              f"video tower lvmae knows ({', '.join(TOWERS)}); image towers: encoder.vision=hf_clip")
        frames_key, size_key, pooling, default = TOWERS[conf.model_type]
        model = (tf.XCLIPModel if conf.model_type == "xclip" else tf.AutoModel).from_pretrained(path, **kw)
    tower_conf = conf.vision_config if conf.model_type == "xclip" else conf
    frames, size = int(getattr(tower_conf, frames_key)), _side(getattr(tower_conf, size_key))
    mean, std, rescale, offset = processor_stats(path, default)
    return TorchEncoder("hf_video", VideoTower(model, conf.model_type, pooling), "vision",
                        preprocess=ClipNormalize(mean, std, rescale, offset), output=_identity,
                        frame_level=False, frames=frames, image_size=size, resize=cfg.resize,
                        device=device, precision=cfg.precision)


def _side(size: Any) -> int:
    """A config's image size (an int, or a ``[H, W]`` / ``{"height": ...}`` of a square)."""
    if isinstance(size, dict):
        size = size.get("height", size.get("shortest_edge"))
    if isinstance(size, list | tuple):
        size = size[0]
    return int(size)


def _identity(x: Tensor) -> Tensor:
    return x
