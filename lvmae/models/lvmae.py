"""LV-MAE: a masked autoencoder over sequences of frozen segment embeddings.

Input ``x [B, L, in_dim]`` holds one embedding per segment (modalities concatenated along
the last axis in a fixed order), ``valid [B, L]`` marks real segments (padding False).

- Each segment is L2-normalised (per modality, optional) and projected to ``width``
  (identity when ``in_dim == width``). Fusion ``concat`` makes one token
  per segment; ``tokens`` one token per modality per segment (``T`` tokens, segment-major).
- Encoder: [CLS] + the *visible* tokens only (gathered with ``ids_keep``; ``keep_valid``
  masks the batch's ragged tail), pre-LN blocks. Decoder: a linear map to
  ``decoder_width``, a mask token at every masked position (restored with ``ids_restore``,
  MAE style), pre-LN blocks and a linear head back to each modality's dims.
- Positions: every token's time position is ``scale * original segment index``, in the
  encoder and the decoder alike, so that visibility never changes a token's position.
  ``hope``/``rope`` rotate q/k (modality is a second rotary axis with ``tokens`` fusion);
  ``sincos`` adds the paper's absolute embedding; ``none`` uses nothing. The [CLS] token
  gets no rotation, which for rotary attention is the same as sitting at time 0 (the
  first segment's place); with ``sincos`` it gets no embedding (MAE's zero row).
- Loss: per segment, MSE (mean over dims) or ``1 - cosine`` between prediction and
  target, averaged over modalities, then averaged over masked valid segments only
  (plus ``visible_loss_weight`` x the same mean over the visible segments).
  ``norm_target`` standardises each target segment (per modality) first.

The forward pass is batched, has no host syncs (unless ``pack_sequences``) and computes
positions, rotary angles, normalisation and the loss in float32, so it runs under bf16.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmae.errors import DataError, LvmaeError
from lvmae.model_config import ModelConfig, check_model_config, modality_dims
from lvmae.models.blocks import Rope, Transformer
from lvmae.models.rope import (
    alibi_slopes,
    axis_frequencies,
    distance_bias,
    rotary_cos_sin,
    sincos_embedding,
    time_positions,
)

if TYPE_CHECKING:
    from lvmae.masking import MaskBatch

ENCODER_PREFIXES = ("embed.", "cls_token", "encoder.")  # what export keeps


def _linear_or_identity(n_in: int, n_out: int) -> nn.Module:
    return nn.Identity() if n_in == n_out else nn.Linear(n_in, n_out)


class SegmentEmbed(nn.Module):
    """Segments to tokens: ``[B, N, in_dim] -> [B, N * T, width]`` (T tokens per segment)."""

    def __init__(self, dims: list[int], width: int):
        super().__init__()
        self.dims = dims
        self.proj = nn.ModuleList(_linear_or_identity(d, width) for d in dims)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.proj) == 1:
            return self.proj[0](x)
        parts = x.split(self.dims, dim=-1)
        return torch.stack([p(xi) for p, xi in zip(self.proj, parts)], dim=2).flatten(1, 2)


class SegmentHead(nn.Module):
    """Tokens back to segments: ``[B, N * T, width] -> [B, N, in_dim]``."""

    def __init__(self, width: int, dims: list[int]):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(width, d) for d in dims)

    def forward(self, x: Tensor) -> Tensor:
        if len(self.proj) == 1:
            return self.proj[0](x)
        x = x.unflatten(1, (-1, len(self.proj)))
        return torch.cat([p(x[:, :, i]) for i, p in enumerate(self.proj)], dim=-1)


class LVMAE(nn.Module):
    """LV-MAE. ``with_decoder=False`` builds the encoder side only (for :meth:`encode`)."""

    def __init__(self, cfg: ModelConfig, *, with_decoder: bool = True):
        super().__init__()
        self.cfg = check_model_config(cfg)
        self.dims = modality_dims(cfg)
        tokens = cfg.modality_fusion == "tokens"
        self.n_tok = len(self.dims) if tokens else 1
        token_dims = self.dims if tokens else [cfg.in_dim]
        stack_kw = dict(mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, dropout=cfg.dropout, backend=cfg.attention,
                   checkpoint=cfg.checkpoint_activations, pack=cfg.pack_sequences)

        self.embed = SegmentEmbed(token_dims, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.encoder = Transformer(cfg.width, cfg.depth, cfg.heads, **stack_kw)
        self.register_buffer("enc_freqs", self._frequencies(cfg.width // cfg.heads), persistent=False)
        self.register_buffer("enc_slopes", self._slopes(cfg.heads), persistent=False)
        # on the device already (no copy per step)
        self.register_buffer("train_scales", torch.tensor(cfg.rope.train_scales, dtype=torch.float32), persistent=False)
        self.has_decoder = with_decoder
        if with_decoder:
            dw = cfg.decoder_width
            self.decoder_embed = nn.Linear(cfg.width, dw)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
            self.modality_embed = nn.Parameter(torch.zeros(self.n_tok, dw)) if self.n_tok > 1 else None
            self.decoder = Transformer(dw, cfg.decoder_depth, cfg.decoder_heads, **stack_kw)
            self.head = SegmentHead(dw, token_dims)
            self.register_buffer("dec_freqs", self._frequencies(dw // cfg.decoder_heads), persistent=False)
            self.register_buffer("dec_slopes", self._slopes(cfg.decoder_heads), persistent=False)
        self._init_weights()

    FP32_BUFFERS = ("enc_freqs", "dec_freqs", "enc_slopes", "dec_slopes", "train_scales")

    def _frequencies(self, head_dim: int) -> Tensor:
        r = self.cfg.rope
        zero = r.zero_freq_fraction if r.kind == "hope" else 0.0
        max_pos = None
        if r.kind == "hope" and r.zero_freq_rule == "wavelength":
            if r.train_length < 2:
                raise LvmaeError("model.rope.zero_freq_rule=wavelength needs model.rope.train_length (longest training crop)")
            max_pos = max(r.train_scales) * (r.train_length - 1)
        fractions = (1.0 - r.modality_axis_fraction, r.modality_axis_fraction) if self.n_tok > 1 else (1.0,)
        return axis_frequencies(head_dim, r.base, zero, fractions, max_pos)

    def _slopes(self, heads: int) -> Tensor:
        r = self.cfg.rope
        if r.decay == "none":
            return torch.zeros(0)
        # local without a known training length (a model built outside pretraining): ALiBi's slopes
        span = r.train_length if r.decay == "local" and r.train_length >= 2 else None
        return alibi_slopes(heads, r.decay_heads, span)

    def _apply(self, fn, recurse=True):
        """Keep the position buffers float32 under ``.to(bf16)`` / ``.half()`` (a bf16 angle
        table is off by radians at long positions); devices still follow ``fn``."""
        super()._apply(fn, recurse)
        for name in self.FP32_BUFFERS:
            buf = getattr(self, name, None)
            if buf is not None and buf.dtype != torch.float32:
                self._buffers[name] = self._position_buffer(name).to(buf.device)
        return self

    def _position_buffer(self, name: str) -> Tensor:
        """The float32 value of position buffer ``name`` (one of FP32_BUFFERS), from the config."""
        c = self.cfg
        if name == "train_scales":
            return torch.tensor(c.rope.train_scales, dtype=torch.float32)
        enc = name.startswith("enc_")
        heads, width = (c.heads, c.width) if enc else (c.decoder_heads, c.decoder_width)
        return self._frequencies(width // heads) if name.endswith("freqs") else self._slopes(heads)

    def _init_weights(self) -> None:
        """MAE initialisation: xavier-uniform linears, zero biases, N(0, 0.02) tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for name in ("cls_token", "mask_token", "modality_embed"):
            p = getattr(self, name, None)
            if p is not None:
                nn.init.normal_(p, std=0.02)

    # ----------------------------------------------------------------- inputs

    def per_modality(self, fn, x: Tensor) -> Tensor:
        """Apply ``fn`` to each modality's slice of ``x [..., in_dim]`` and concatenate."""
        if len(self.dims) == 1:
            return fn(x)
        return torch.cat([fn(p) for p in x.split(self.dims, dim=-1)], dim=-1)

    def prepare_inputs(self, x: Tensor, valid: Tensor) -> Tensor:
        """Checks shapes, returns float32 ``[B, L, in_dim]`` (L2-normalised if configured)."""
        if x.dim() != 3 or x.shape[-1] != self.cfg.in_dim:
            raise DataError(f"expected embeddings [B, L, {self.cfg.in_dim}], got {tuple(x.shape)}")
        if valid.shape != x.shape[:2] or valid.dtype != torch.bool:
            raise DataError(f"valid must be bool {tuple(x.shape[:2])}, got {valid.dtype} {tuple(valid.shape)}")
        x = x.float()
        if self.cfg.l2_normalize_input:
            x = self.per_modality(lambda p: F.normalize(p, dim=-1), x)
        return x

    def targets(self, x: Tensor) -> Tensor:
        """Reconstruction targets from prepared inputs (per-segment standardised if ``norm_target``)."""
        if not self.cfg.norm_target:
            return x

        def standardise(p: Tensor) -> Tensor:
            return (p - p.mean(-1, keepdim=True)) / (p.var(-1, keepdim=True) + 1e-6).sqrt()

        return self.per_modality(standardise, x)

    def resolve_scale(self, scale: Tensor | float | None, batch: int, device: torch.device, train: bool) -> Tensor:
        """Per-sequence temporal scale ``[B]`` float32 (see :class:`RopeConfig`)."""
        r = self.cfg.rope
        if scale is not None:
            return torch.as_tensor(scale, dtype=torch.float32, device=device).expand(batch)
        if r.kind != "hope":
            return torch.ones(batch, device=device)
        if train:
            return self.train_scales[torch.randint(len(self.train_scales), (batch,), device=device)].float()
        return torch.full((batch,), r.eval_scale, device=device)

    # -------------------------------------------------------------- positions

    def attn_extras(self, seg_pos: Tensor, slopes: Tensor, n_total: int) -> tuple[Tensor | None, float | None]:
        """Distance-decay bias ``[B, H, 1 + N*T, 1 + N*T]`` for tokens at ``seg_pos [B, N]``
        (None without ``rope.decay``) and the length-scaling logit factor for a sequence of
        ``n_total`` segments (None unless ``rope.length_scaling`` and longer than training)."""
        r = self.cfg.rope
        bias = None
        if slopes.numel():
            bias = distance_bias(seg_pos.repeat_interleave(self.n_tok, dim=1), slopes)
        scale = None
        if r.length_scaling and r.train_length >= 2 and n_total > r.train_length:
            scale = math.log(n_total) / math.log(r.train_length)
        return bias, scale

    def rotary(self, seg_pos: Tensor, freqs: Tensor) -> Rope | None:
        """(cos, sin) ``[B, 1 + N*T, 1, P]`` for [CLS] (angle 0) + tokens at ``seg_pos [B, N]``."""
        if self.cfg.rope.kind not in ("hope", "rope"):
            return None
        b, n = seg_pos.shape
        t = F.pad(seg_pos.repeat_interleave(self.n_tok, dim=1), (1, 0))
        if freqs.shape[0] == 1:
            pos = t.unsqueeze(-1)
        else:
            m = F.pad(torch.arange(self.n_tok, device=t.device).repeat(n).float(), (1, 0)).expand(b, -1)
            pos = torch.stack((t, m), dim=-1)
        cos, sin = rotary_cos_sin(pos, freqs)
        return cos.unsqueeze(2), sin.unsqueeze(2)

    def add_absolute(self, tokens: Tensor, seg_pos: Tensor) -> Tensor:
        """Adds the 1-D sin-cos embedding of ``seg_pos [B, N]`` to ``tokens [B, N*T, C]`` (kind sincos)."""
        if self.cfg.rope.kind != "sincos":
            return tokens
        emb = sincos_embedding(seg_pos, tokens.shape[-1], self.cfg.rope.base)
        return tokens + emb.repeat_interleave(self.n_tok, dim=1).to(tokens.dtype)

    # ---------------------------------------------------------------- encoder

    def encoder_inputs(self, x_seg: Tensor, seg_pos: Tensor, seg_valid: Tensor) -> tuple[Tensor, Tensor, Rope | None]:
        """[CLS] + tokens of ``x_seg [B, N, in_dim]`` at ``seg_pos [B, N]``.

        Returns tokens ``[B, 1 + N*T, width]``, their validity and their rotary cos/sin."""
        tokens = self.add_absolute(self.embed(x_seg.to(self.cls_token.dtype)), seg_pos)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        valid = F.pad(seg_valid.repeat_interleave(self.n_tok, dim=1), (1, 0), value=True)
        return tokens, valid, self.rotary(seg_pos, self.enc_freqs)

    def forward_encoder(self, x: Tensor, masks: MaskBatch, scale: Tensor) -> Tensor:
        """Visible segments only: ``x [B, L, in_dim]`` -> latent ``[B, 1 + K*T, width]``."""
        x_vis = x.gather(1, masks.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        seg_pos = time_positions(masks.ids_keep, scale)
        tokens, valid, rope = self.encoder_inputs(x_vis, seg_pos, masks.keep_valid)
        bias, logit_scale = self.attn_extras(seg_pos, self.enc_slopes, x.shape[1])
        return self.encoder(tokens, None if masks.full else valid, rope, bias, logit_scale)

    # ---------------------------------------------------------------- decoder

    def restore(self, latent: Tensor, masks: MaskBatch) -> Tensor:
        """Decoder tokens in original order: ``[B, 1 + K*T, Cd]`` -> ``[B, L*T, Cd]``.

        Visible segment at shuffle rank ``r < n_keep`` takes encoder token ``r``; every
        other position (masked or padding) takes the mask token."""
        b, k = masks.ids_keep.shape
        cd, t = latent.shape[-1], self.n_tok
        rank = masks.ids_restore
        src_idx = torch.where(rank < masks.keep_valid.sum(1, keepdim=True), rank, k)
        mask_tok = self.mask_token.to(latent.dtype).view(1, 1, 1, cd).expand(b, 1, t, cd)
        src = torch.cat([latent[:, 1:].unflatten(1, (k, t)), mask_tok], dim=1)
        return src.gather(1, src_idx[:, :, None, None].expand(-1, -1, t, cd)).flatten(1, 2)

    def decoder_inputs(self, cls: Tensor, tokens: Tensor, valid: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Rope | None]:
        """Decoder [CLS] ``[B, 1, Cd]`` + restored ``tokens [B, L*T, Cd]`` with positions and validity."""
        b, n = valid.shape
        seg_pos = time_positions(torch.arange(n, device=valid.device).expand(b, n), scale)
        if self.modality_embed is not None:
            tokens = tokens + self.modality_embed.to(tokens.dtype).repeat(n, 1)
        tokens = torch.cat([cls, self.add_absolute(tokens, seg_pos)], dim=1)
        tok_valid = F.pad(valid.repeat_interleave(self.n_tok, dim=1), (1, 0), value=True)
        return tokens, tok_valid, self.rotary(seg_pos, self.dec_freqs)

    def forward_decoder(self, latent: Tensor, masks: MaskBatch, valid: Tensor, scale: Tensor) -> Tensor:
        """Latent ``[B, 1 + K*T, width]`` -> predictions ``[B, L, in_dim]``."""
        y = self.decoder_embed(latent)
        tokens, tok_valid, rope = self.decoder_inputs(y[:, :1], self.restore(y, masks), valid, scale)
        b, n = valid.shape
        seg_pos = time_positions(torch.arange(n, device=valid.device).expand(b, n), scale)
        bias, logit_scale = self.attn_extras(seg_pos, self.dec_slopes, n)
        out = self.decoder(tokens, None if masks.full else tok_valid, rope, bias, logit_scale)
        return self.head(out[:, 1:])

    # ------------------------------------------------------------------- loss

    def segment_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-segment loss ``[B, L]`` float32, averaged over modalities."""
        pred = pred.float()
        losses = []
        for p, t in zip(pred.split(self.dims, -1), target.split(self.dims, -1)):
            if self.cfg.loss == "mse":
                losses.append((p - t).pow(2).mean(-1))
            else:
                losses.append(1.0 - F.cosine_similarity(p, t, dim=-1, eps=1e-6))
        return torch.stack(losses, dim=-1).mean(-1)

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean of :meth:`segment_loss` over ``mask [B, L]`` (masked valid segments); 0 if none."""
        m = mask.float()
        return (self.segment_loss(pred, target) * m).sum() / m.sum().clamp(min=1.0)

    def objective(self, pred: Tensor, target: Tensor, mask: Tensor, valid: Tensor) -> Tensor:
        """The training loss: masked segments, plus ``visible_loss_weight`` x the visible ones."""
        loss = self.loss(pred, target, mask)
        if self.cfg.visible_loss_weight > 0:
            loss = loss + self.cfg.visible_loss_weight * self.loss(pred, target, valid & ~mask)
        return loss

    # ------------------------------------------------------------- public API

    def forward(self, x: Tensor, valid: Tensor, masks: MaskBatch, scale: Tensor | float | None = None) -> dict:
        """Masked reconstruction. ``x [B, L, in_dim]``, ``valid [B, L]``, ``scale [B]`` or None.

        Returns ``loss`` (scalar), ``pred`` and ``target`` ``[B, L, in_dim]``, ``mask [B, L]``."""
        if not self.has_decoder:
            raise LvmaeError("this LV-MAE was built without its decoder (exported encoder): use encode()")
        x = self.prepare_inputs(x, valid)
        _check_masks(masks, valid)
        scale = self.resolve_scale(scale, x.shape[0], x.device, self.training)
        pred = self.forward_decoder(self.forward_encoder(x, masks, scale), masks, valid, scale)
        target = self.targets(x)
        return {"loss": self.objective(pred, target, masks.mask, valid), "pred": pred, "target": target,
                "mask": masks.mask}

    def encode(self, x: Tensor, valid: Tensor, scale: Tensor | float | None = None) -> dict:
        """All segments visible, for probing. ``scale`` None = the eval scale, in any mode.

        Returns ``tokens [B, L, width]`` (mean over a segment's modality tokens, zero at
        padding), ``cls [B, width]`` and ``valid [B, L]``."""
        x = self.prepare_inputs(x, valid)
        b, n = valid.shape
        scale = self.resolve_scale(scale, b, x.device, train=False)
        seg_pos = time_positions(torch.arange(n, device=x.device).expand(b, n), scale)
        tokens, tok_valid, rope = self.encoder_inputs(x, seg_pos, valid)
        bias, logit_scale = self.attn_extras(seg_pos, self.enc_slopes, n)
        # unpadded batch: no mask, so SDPA may take its flash kernel (one sync; the caller syncs anyway)
        out = self.encoder(tokens, None if bool(valid.all()) else tok_valid, rope, bias, logit_scale)
        tokens = out[:, 1:].unflatten(1, (n, self.n_tok)).mean(2) * valid.unsqueeze(-1).to(out.dtype)
        return {"tokens": tokens, "cls": out[:, 0], "valid": valid}

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder-side weights (input projection, [CLS], encoder blocks and norm)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ENCODER_PREFIXES)}


def _check_masks(masks: MaskBatch, valid: Tensor) -> None:
    """Shape checks only (no host sync)."""
    b, n = valid.shape
    k = masks.ids_keep.shape[-1]
    shapes = {"ids_keep": (b, k), "keep_valid": (b, k), "ids_restore": (b, n), "mask": (b, n)}
    for name, shape in shapes.items():
        got = tuple(getattr(masks, name).shape)
        if got != shape:
            raise DataError(f"masks.{name} has shape {got}, expected {shape} for valid {tuple(valid.shape)}")
