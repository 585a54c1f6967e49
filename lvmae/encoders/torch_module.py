"""Any ``torch.nn.Module`` as a frozen segment encoder (the generic hook).

Every built-in torch encoder (EfficientNet-Lite0, Hugging Face CLIP towers) is a
:class:`TorchEncoder` too: a module plus a preprocessing callable. Frame-level vision
modules see ``[B*K, ...]`` frames and their per-frame features are pooled over the ``K``
frames of each segment (:func:`pool_frames`); clip-level modules (video towers) see the
whole ``[B, K, H, W, 3]`` clip and return ``[B, D]`` themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lvmae.devices import resolve_device
from lvmae.encoders.base import MODALITIES, POOLINGS, RESIZE_MODES, Waveforms
from lvmae.errors import ConfigError

CPU_CHUNK_FRAMES = 16  # frames per forward on the CPU (see TorchEncoder._chunked)


def cpu_chunks(fn: Callable[..., Tensor], device: torch.device, chunk: int, *xs: Tensor) -> Tensor:
    """``fn(*xs)``, on the CPU ``chunk`` rows (of every ``xs``, along dim 0) at a time, concatenated.

    For per-sample computations only (the rows are then the same): it bounds the short-lived
    memory of one call, which glibc would otherwise keep and fragment between calls.
    """
    n = len(xs[0])
    if device.type != "cpu" or n <= chunk:
        return fn(*xs)
    return torch.cat([fn(*(x[i:i + chunk] for x in xs)) for i in range(0, n, chunk)])


def pool_frames(f: Tensor, mode: str) -> Tensor:
    """Pool per-frame features ``[B, K, D]`` into a segment embedding.

    ``mean`` -> ``[B, D]``; ``mean_std`` -> ``[B, 2D]`` (mean, population std over frames);
    ``mean_diff`` -> ``[B, 2D]`` (mean, mean absolute difference of consecutive frames:
    how much the content moves inside the segment; zeros when ``K == 1``).
    """
    mean = f.mean(1)
    if mode == "mean":
        return mean
    if mode == "mean_std":
        return torch.cat([mean, f.std(1, unbiased=False)], -1)
    if mode == "mean_diff":
        diff = (f[:, 1:] - f[:, :-1]).abs().mean(1) if f.shape[1] > 1 else torch.zeros_like(mean)
        return torch.cat([mean, diff], -1)
    raise ConfigError(f"encoder.pooling must be one of {list(POOLINGS)}, got {mode!r}")


def fingerprint_module(module: nn.Module) -> str:
    """Short hash of a module's parameters and buffers (names, shapes, dtypes, values)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def default_output(out: Any) -> Tensor:
    """Module output -> ``[N, D]``: a tensor (spatial maps are mean-pooled) or ``pooler_output``."""
    if not isinstance(out, Tensor):
        for key in ("image_embeds", "text_embeds", "pooler_output"):
            val = getattr(out, key, None)
            if isinstance(val, Tensor):
                return val
        raise TypeError(f"cannot take an embedding from module output of type {type(out).__name__}")
    return out.flatten(2).mean(-1) if out.dim() > 2 else out


def unit_range(x: Tensor) -> Tensor:
    """Default vision preprocessing: ``uint8 [N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [0, 1].

    The permute of a contiguous NHWC tensor is already channels-last, the fast conv layout.
    """
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def clip_unit_range(x: Tensor) -> Tensor:
    """Default clip preprocessing (``frame_level=False``): ``uint8 [B, K, H, W, 3]`` -> float
    ``[B, 3, K, H, W]`` in [0, 1], the layout of ``nn.Conv3d`` (channels, then time)."""
    return x.permute(0, 4, 1, 2, 3).float().div_(255.0)


class TorchEncoder:
    """A frozen ``nn.Module`` behind the :class:`~lvmae.encoders.base.Encoder` protocol.

    ``preprocess`` maps the modality's raw batch (already on the device for vision and
    audio; a ``list[str]`` for text) to the module's input (a tensor or a dict of keyword
    tensors). ``output`` maps the module's output to ``[N, D]``. ``dim`` is found with one
    dummy forward when not given. ``version`` defaults to a fingerprint of the weights.
    ``frames``: a clip-level tower that only takes clips of this many frames (the extractor
    refuses another ``segment.frames``).
    """

    def __init__(
        self, name: str, module: nn.Module, modality: str = "vision", *,
        preprocess: Callable[[Any], Any] | None = None, output: Callable[[Any], Tensor] | None = None,
        frame_level: bool = True, pooling: str = "mean", image_size: int | None = None,
        resize: str = "center_crop", sample_rate: int | None = None, dim: int | None = None,
        device: str = "cpu", precision: str = "fp32", version: str | None = None, frames: int | None = None,
    ):
        _check_args(modality, pooling, resize, image_size, sample_rate, precision)
        self.name, self.modality = name, modality
        self.frame_level = frame_level and modality == "vision"
        self.pooling, self.image_size, self.resize, self.sample_rate = pooling, image_size, resize, sample_rate
        self.frames = frames  # a clip-level tower that needs exactly this many frames per segment
        self.version = version or fingerprint_module(module)
        self.device = resolve_device(device, key="extract.encoder.device")
        self.module = module.eval().requires_grad_(False).to(self.device)
        if self.frame_level:  # 2-D convolutions over frames; a clip tower may hold 5-D (Conv3d) weights
            self.module = self.module.to(memory_format=torch.channels_last)
        default = (unit_range if self.frame_level else clip_unit_range) if modality == "vision" else _identity
        self.preprocess = preprocess or default
        self.output = output or default_output
        self.precision = precision
        self.dim = int(dim) if dim is not None else self._probe_dim()

    def input_spec(self) -> dict[str, Any]:
        """What the decoder must produce, plus what else shapes the output (it is hashed into the
        store: pooling, and the autocast precision where it applies, i.e. on CUDA)."""
        spec: dict[str, Any] = {}
        if self.modality == "vision":
            spec = {"image_size": self.image_size, "resize": self.resize, "frame_level": self.frame_level}
            if self.frames:
                spec["frames"] = self.frames
            if self.frame_level:
                spec["pooling"] = self.pooling
        elif self.modality == "audio":
            spec = {"sample_rate": self.sample_rate}
        if self._amp_dtype() is not None:
            spec["precision"] = self.precision
        return spec

    def _amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype: only on CUDA (CPU always runs fp32)."""
        if self.device.type != "cuda":
            return None
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)

    @torch.inference_mode()
    def encode(self, batch: Any) -> Tensor:
        """Raw modality batch (see :mod:`lvmae.encoders.base`) -> ``[B, dim]`` float32 CPU."""
        if self.modality == "vision":
            clips = torch.as_tensor(batch).to(self.device, non_blocking=True)
            b, k = clips.shape[:2]
            if not self.frame_level:
                return self._chunked(clips, max(1, CPU_CHUNK_FRAMES // k)).float().cpu()
            feats = self._chunked(clips.reshape(b * k, *clips.shape[2:]), CPU_CHUNK_FRAMES)
            return pool_frames(feats.float().reshape(b, k, -1), self.pooling).cpu()
        if self.modality == "audio":
            batch = Waveforms(batch.wave.to(self.device), batch.lengths.to(self.device))
            return self._forward(self.preprocess(batch)).float().cpu()
        return self._forward(_to_device(self.preprocess(list(batch)), self.device)).float().cpu()

    def _chunked(self, x: Tensor, chunk: int) -> Tensor:
        """Preprocess + forward ``x`` (frames or clips along dim 0); on the CPU ``chunk`` at a time.

        Same outputs (every sample is computed alone), less memory and no slower: a forward of
        64 frames at 112 px holds hundreds of MB of activations, which glibc keeps on its heap
        between forwards and fragments, so the peak kept rising with the number of batches
        (the video's length); in chunks of 16 frames it stays flat, and the activations fit
        the caches better (10 ms/frame instead of 15 for EfficientNet-Lite0, one thread).
        """
        return cpu_chunks(lambda c: self._forward(self.preprocess(c)), self.device, chunk, x)

    def _forward(self, x: Any) -> Tensor:
        dtype = self._amp_dtype()
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with amp:
            out = self.module(**x) if isinstance(x, dict) else self.module(x)
        return self.output(out)

    def _probe_dim(self) -> int:
        if self.modality == "vision":
            s = self.image_size
            dummy: Any = torch.zeros(1, self.frames or 2, s, s, 3, dtype=torch.uint8)
        elif self.modality == "audio":
            n = int(self.sample_rate)
            dummy = Waveforms(torch.zeros(1, n), torch.tensor([n]))
        else:
            dummy = ["probe"]
        return int(self.encode(dummy).shape[-1])


def _identity(x: Any) -> Any:
    return x


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, dict) or hasattr(x, "items"):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in x.items()}
    return x


def _check_args(modality: str, pooling: str, resize: str, image_size: int | None,
                sample_rate: int | None, precision: str) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"encoder modality must be one of {list(MODALITIES)}, got {modality!r}")
    if pooling not in POOLINGS:
        raise ConfigError(f"encoder.pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"encoder.resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"encoder.precision must be fp32, fp16 or bf16, got {precision!r}")
    if modality == "vision" and not (image_size and image_size > 0):
        raise ConfigError("a vision encoder needs a positive image_size")
    if modality == "audio" and not (sample_rate and sample_rate > 0):
        raise ConfigError("an audio encoder needs a positive sample_rate")
