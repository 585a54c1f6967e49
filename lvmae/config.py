"""Typed configuration for every lvmae component.

Each section is a plain dataclass so that library code (models, data, masking)
can take just its own section without importing omegaconf. OmegaConf is used
only at the edge (:func:`load_config`): the schema is merged with YAML files and
``key=value`` overrides in struct mode, so an unknown key or a wrongly typed
value is an error that names it, then converted back to these dataclasses once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvmae.errors import ConfigError
from lvmae.model_config import ModelConfig, RopeConfig, check_model_config  # noqa: F401  (re-exported)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class RunConfig:
    """Where a run writes and how it is seeded."""

    out_dir: str = "runs/default"  # pretrain / probe / demo outputs (checkpoints, export, results)
    seed: int = 0  # pretraining RNG: init, crop order, masks, HoPE scales (dropout: seed + rank)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # tqdm progress bars (extract, synth, pretrain, probe); false for logs
    # Pretraining metric sinks beside RUN/metrics.jsonl (always written): tensorboard (RUN/tb) |
    # wandb (Weights & Biases, `pip install lvmae[wandb]`; WANDB_MODE=offline needs no account).
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    wandb_project: str = "lvmae"  # W&B project of run.loggers=[...,wandb] (entity, mode: WANDB_* variables)


@dataclass
class SegmentConfig:
    """How a long video is cut into segments and sampled.

    Segment ``i`` covers ``[i*stride, i*stride + seconds)``. The last partial
    segment is kept when it covers at least ``min_last_fraction`` of a segment.
    """

    seconds: float = 5.0  # segment length in seconds (one embedding per segment and modality)
    stride: float | None = None  # None: equal to `seconds` (no overlap)
    frames: int = 8  # K frames per segment (centres of K equal parts); see encoder.pooling
    # The trailing partial segment is kept if it covers >= this share of `seconds` (0: any
    # remainder); a video shorter than that share of one segment fails as too short.
    min_last_fraction: float = 0.5
    audio_sample_rate: int = 16000  # Hz: audio is resampled to mono at this rate for its encoder


@dataclass
class EncoderConfig:
    """Which frozen encoders turn segments into embeddings (one per modality)."""

    vision: str | None = "efficientnet_lite0"  # efficientnet_lite0 | hf_clip | registered name; null = none
    audio: str | None = "logmel"  # logmel | a registered name; null = no audio features
    text: str | None = None  # minilm | hf_text (subtitles per segment); null = no text features
    image_size: int = 112  # side (px) of the square frames for vision encoders (hf_clip: its own)
    pooling: str = "mean"  # mean | mean_std | mean_diff (over the K frames)
    # Weights of encoders that need them: a local dir/file or a Hugging Face id org/name[@revision]
    # (fetched into the HF cache; cache-only under HF_HUB_OFFLINE=1; safetensors weights only).
    checkpoint: str | None = None
    text_checkpoint: str | None = None  # HF text encoder (encoder.text=hf_text): local dir or Hub id
    audio_checkpoint: str | None = None  # HF audio encoder (encoder.audio=hf_audio): local dir or Hub id
    trust_remote_code: bool = False  # let transformers run a Hub checkpoint's own Python code
    resize: str = "center_crop"  # center_crop | squash (how frames become image_size squares)
    n_mels: int = 64  # logmel audio encoder: mel bands (embedding = mean+std per band)
    batch_frames: int = 64  # frames per encoder forward, across segments
    device: str = "auto"  # auto (this rank's GPU, else cpu) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast on CUDA; CPU always fp32)


@dataclass
class ExtractConfig:
    """Extraction job: videos -> feature store."""

    out: str = "features"  # feature store directory to write (lvmae extract --out overrides it)
    dtype: str = "float16"  # float16 | float32: embeddings as stored (part of the store's identity)
    decode_workers: int = 0  # parallel decoded files; 0 = auto (cores, at most 8)
    decode_backend: str = "thread"  # thread | process (decode workers)
    decode_threads: int = 0  # FFmpeg threads per decoded file; 0 = cores / workers
    prefetch_segments: int = 16  # bound of the decoded-segment queue (memory cap; thread backend)
    shard: str | None = None  # "i/n"; defaults to RANK/WORLD_SIZE when launched
    id_from: str = "stem"  # stem | relpath: how a file becomes a video id
    retry_failed: bool = False  # re-extract videos recorded as failed
    keep_truncated: bool = False  # on a mid-file decode error keep the segments before it
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


MASK_STRATEGIES = ("random", "semantic_mask_distinct", "semantic_keep_distinct", "block")


@dataclass
class MaskingConfig:
    """Which segments the autoencoder must reconstruct (built in the collate step).

    ``semantic_mask_distinct`` masks the segments least similar to their predecessor
    (the LV-MAE paper's text); ``semantic_keep_distinct`` keeps them visible (the public
    LV-MAE code); ``block`` masks contiguous spans of ``block_min..block_max`` segments.
    See :mod:`lvmae.masking`.
    """

    strategy: str = "random"  # random | semantic_mask_distinct | semantic_keep_distinct | block
    # Share of each sequence's valid segments that is masked, in (0, 1); at least one segment
    # stays visible (visible = max(1, round((1 - ratio) * length))).
    ratio: float = 0.5
    block_min: int = 2  # block strategy: chunk lengths (segments) drawn from block_min..block_max
    block_max: int = 16  # block strategy: longest chunk (adjacent masked chunks merge)


@dataclass
class DataConfig:
    """Pretraining data: random crops of stored embedding sequences."""

    # Feature store directories to pretrain on (required); they must hold `modalities` with
    # the same dims, and are mixed by `weights`.
    stores: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # per store; empty = proportional
    # Modalities read from every store (vision | audio | text), concatenated along D in this order.
    modalities: list[str] = field(default_factory=lambda: ["vision"])
    min_len: int = 2  # shortest crop, in segments (crop length: uniform in [min_len, max_len])
    max_len: int = 256  # longest crop, in segments (the paper: 256 x 5 s = 1280 s)
    # A video shorter than the drawn crop length: tile (repeat it to that length, as the
    # paper does) | keep (use it whole, padded) | drop (like keep, but videos shorter than
    # min_len are left out of the dataset).
    short_policy: str = "tile"
    bucket_by_length: bool = True  # batch crops of similar length (less padding); false = random
    bucket_window: int = 32  # micro-batches pooled and sorted by crop length when bucketing
    num_workers: int = 0  # DataLoader worker processes per rank; 0 = load in the training process
    # Stores made with different encoders or segment rules (config_hash) are refused in one run;
    # true mixes them anyway.
    allow_mixed_stores: bool = False
    check_stores: bool = False  # read every feature file first (shape, NaN/inf, files; as lvmae store check)
    # Held-out validation (see lvmae.train.validate): separate stores, never trained on ...
    val_stores: list[str] = field(default_factory=list)
    # ... or, when val_stores is empty, this share of data.stores' videos, chosen by a hash of
    # the video id and left out of training; 0 = no validation.
    val_fraction: float = 0.0
    # Video-text retrieval monitor: also read the stores' text modality (segment text embedded by
    # the vision encoder's own text tower, extract.encoder.text=hf_clip_text) and log R@1/R@5 of the
    # reconstructed masked segments against the batch's texts (train/text_retrieval_top1/5).
    text_monitor: bool = False


@dataclass
class OptimConfig:
    """AdamW with per-step warmup + cosine; LR scaled by global batch / 256."""

    base_lr: float = 1.5e-4  # peak LR = base_lr x global batch / 256 (linear scaling, MAE) ...
    lr: float | None = None  # ... unless this absolute peak LR is set
    min_lr: float = 0.0  # LR at the end of the cosine decay (absolute, not batch-scaled)
    warmup_steps: int = 100  # optimiser steps of linear warmup to the peak LR; 0 = none
    weight_decay: float = 0.05  # AdamW, on parameters of >= 2 dims only (not biases or norms)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW (beta1, beta2)
    eps: float = 1e-8  # AdamW epsilon (added to the denominator)
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class DeepSpeedConfig:
    """Engine, batch sizes and precision: defined once, here."""

    engine: str = "deepspeed"  # deepspeed | torch
    micro_batch: int = 16  # crops per forward per rank; global batch = micro x grad_accum x ranks
    grad_accum: int = 1  # micro-batches accumulated per optimiser step
    precision: str = "fp32"  # fp32 | bf16 | fp16
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0..3 (0 = off); deepspeed engine only
    # Single CPU process only: skip compiling DeepSpeed's shared-memory all-reduce op
    # (~1 min on first use, useless with one rank).
    cpu_skip_shm_op: bool = True
    # A DeepSpeed JSON merged over the config built from these keys (ZeRO buckets/offload, comms,
    # profilers...); keys that these set must agree or be "auto"; no optimizer/scheduler. See docs/hub.md.
    config_file: str | None = None


@dataclass
class TrainConfig:
    """Pretraining loop: length, checkpoints, logging."""

    steps: int = 1000  # optimiser steps in all (after grad_accum); the LR schedule spans them
    save_every: int = 200  # checkpoint every N steps (and at the last step)
    keep_last: int = 3  # newest checkpoints kept in RUN/checkpoints; older ones are deleted
    log_every: int = 10  # log metrics (jsonl, TensorBoard) every N steps, averaged over them
    # Continue from the newest checkpoint that verifies (same as --resume; starts fresh if there is
    # none). False while the run dir already has checkpoints is an error.
    resume: bool = False
    restart: bool = False  # delete the run dir's checkpoints and metrics and start at step 0 (--restart)
    export: bool = True  # write the encoder to RUN/export at the end
    plot: bool = True  # loss / retrieval curves to RUN/curves.png at the end
    compile: bool = False  # torch.compile the model (torch engine only; first steps slow while it compiles)
    # torch.compile mode: default | reduce-overhead (CUDA graphs: no launch overhead, but one
    # graph per batch shape: fixed lengths only) | max-autotune | max-autotune-no-cudagraphs.
    compile_mode: str = "default"
    eval_every: int = 0  # validation every N steps (and at the last); 0 = at every checkpoint step
    # Validation lengths in segments beyond data.max_len (e.g. [128, 512]): the loss there shows
    # whether the model holds up on videos longer than its training crops.
    eval_lengths: list[int] = field(default_factory=list)
    eval_windows: int = 4  # held-out windows per video and length (consecutive, from the start)


@dataclass
class ProbeConfig:
    """Frozen-backbone probing on a benchmark."""

    benchmark: str = "generic"  # lvu | coin | breakfast | generic
    labels: str = ""  # label file or directory, in the benchmark's own format
    store: str = ""  # feature store of the benchmark's videos (required)
    checkpoint: str | None = None  # exported LV-MAE encoder: dir or Hub id org/name[@rev]; None = raw baselines only
    tasks: list[str] = field(default_factory=list)  # empty = every task of the benchmark
    # Rows of the results table: raw_mean_sklearn | raw_linear | raw_attentive | lvmae_linear |
    # lvmae_attentive (lvmae_* need probe.checkpoint and are skipped without it).
    methods: list[str] = field(
        default_factory=lambda: ["raw_mean_sklearn", "raw_attentive", "lvmae_linear", "lvmae_attentive"]
    )
    pooling: str = "mean"  # mean | cls (linear probe)
    epochs: int = 100  # training epochs of each torch head (not sklearn); best val epoch kept
    lr: float = 1e-3  # attentive heads (linear heads: linear_lrs)
    weight_decay: float = 0.05  # AdamW, torch heads (on parameters of >= 2 dims only)
    batch_size: int = 32  # videos per training step of torch heads (>= 2: BatchNorm)
    # One fit per task, method and seed (it seeds the head's init and shuffling); the tables
    # report the mean and std over seeds.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_len: int = 1024  # longer videos are subsampled uniformly to this many segments
    modalities: list[str] = field(default_factory=lambda: ["vision"])  # concatenated along D, as in pretraining
    schedule: str = "cosine"  # cosine | constant (after warmup)
    warmup_epochs: float = 1.0  # linear LR warmup of torch heads, in epochs (may be fractional)
    min_lr: float = 0.0  # LR at the end of the cosine schedule (torch heads)
    attn_heads: int = 8  # attentive probe; reduced to a divisor of its width
    attn_queries: int = 1  # attentive probe: learned queries (their outputs are averaged)
    attn_dim: int = 256  # attentive probe width: wider features are projected to it first; 0 = feature width
    # Attentive probe: stop after this many epochs without a better val (not in the first half
    # of probe.epochs); 0 = never.
    attn_patience: int = 15
    linear_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # linear heads: best on val; [] = lr
    sklearn_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])  # C; Ridge alpha = 1/(2C)
    val_fraction: float = 0.1  # carved from train where a benchmark has no val split
    scale: float | None = None  # HoPE temporal scale for encoding; None = the model's eval_scale
    encode_batch: int = 16  # videos per LV-MAE encoder forward when encoding the probe set
    # Encode each video in independent windows of this many segments (0 = whole videos, up to
    # probe.max_len): how a model that cannot take the whole video would see it.
    encode_window: int = 0
    cache: bool = True  # keep LV-MAE encoder outputs on disk, reused across tasks and runs
    cache_dir: str = ""  # "" = <run.out_dir>/encoded
    # Dense probing: one label per stored segment (Breakfast segmentation, COIN steps, synthetic
    # step timelines, generic interval files) instead of one per video; see docs/dense-probing.md.
    dense: bool = False
    # Dense rows: raw_linear | raw_temporal | lvmae_linear | lvmae_temporal (per-segment linear head,
    # or one MS-TCN stage of dilated temporal convolutions; lvmae_* need probe.checkpoint).
    dense_methods: list[str] = field(
        default_factory=lambda: ["raw_linear", "raw_temporal", "lvmae_linear", "lvmae_temporal"]
    )
    dense_width: int = 64  # temporal head: channels of its convolutions
    dense_layers: int = 4  # temporal head: dilated layers (receptive field 2^(layers+1) - 1 segments)
    dense_plots: int = 4  # test videos drawn as timelines (ground truth vs each method)


@dataclass
class SynthConfig:
    """Synthetic long-video benchmark (real encoded files) for the demo and tests.

    A video is a sequence of steps, each lasting a whole number of segments
    (``segments_per_step``, inclusive range) so that every segment shows one step.
    Task-specific steps are mixed with ``filler_steps`` (inclusive range) filler steps.
    See :mod:`lvmae.synth` for the tasks and why mean pooling cannot solve some.
    """

    out: str = "synth"  # output dir: videos/, labels.csv, manifest.json (lvmae synth --out)
    num_videos: int = 120  # videos generated, divided into train/val/test by `splits`
    # Label tasks (one labels.csv task each): order | precedes | count | appearance | direction.
    tasks: list[str] = field(default_factory=lambda: ["order", "precedes", "count", "appearance"])
    splits: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train, val, test
    # Segment length in seconds: every step lasts a whole number of segments; extract with
    # extract.segment.seconds equal to it (the demo does).
    segment_seconds: float = 5.0
    # [min, max] segments per step (not the count task's E steps: their total is fixed).
    segments_per_step: list[int] = field(default_factory=lambda: [1, 3])
    # [min, max] filler steps per video (the task steps are placed in the gaps between them).
    filler_steps: list[int] = field(default_factory=lambda: [6, 10])
    filler_types: int = 4  # distinct filler step types (>= 2), named G, H, ...
    min_gap: int = 3  # steps between the far-apart steps of the order/precedes tasks
    order_trace: bool = True  # A and B change the look of later filler steps (a lasting scene state)
    precedes_max: int = 2  # each of the two precedes step types occurs 1..precedes_max times
    count_max: int = 3  # count classes: 1..count_max repetitions
    script_noise: float = 0.2  # direction task: chance that a filler breaks the script cycle
    fps: int = 2  # frame rate of the rendered videos; fps x segment_seconds must be whole
    size: int = 96  # frame side in pixels (square; even and >= 16)
    noise: float = 0.04  # pixel noise std (0..1 scale)
    jitter: float = 0.06  # camera shift std (fraction of the frame)
    audio: bool = True  # add a mono AAC track (a tone per step type)
    audio_rate: int = 16000  # audio sample rate in Hz (a standard AAC rate)
    workers: int = 1  # rendering processes (1 = in this process); the output does not depend on it
    seed: int = 0  # decides splits, labels, step timelines and rendering noise


@dataclass
class Config:
    """The whole configuration; each command reads the sections it needs."""

    run: RunConfig = field(default_factory=RunConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


ID_FROM = ("stem", "relpath")  # extract.id_from: how a video file becomes a video id
# synth.tasks; their order fixes the label seeds of the synthetic videos
SYNTH_TASKS = ("order", "precedes", "count", "appearance", "direction", "script")


def check_extract(cfg: ExtractConfig) -> None:
    """The extract section's checks: run by :func:`validate`, and by ``lvmae.Extractor`` for a
    section built in Python; raises ConfigError."""
    s, enc = cfg.segment, cfg.encoder
    _check(s.seconds > 0, f"extract.segment.seconds must be > 0, got {s.seconds}")
    _check(s.stride is None or s.stride > 0, f"extract.segment.stride must be > 0, got {s.stride}")
    _check(s.frames >= 1, f"extract.segment.frames must be >= 1, got {s.frames}")
    _check(0.0 <= s.min_last_fraction <= 1.0, "extract.segment.min_last_fraction must be in [0, 1]")
    _check(cfg.dtype in ("float16", "float32"), f"extract.dtype must be float16 or float32, got {cfg.dtype!r}")
    _check(cfg.decode_backend in ("thread", "process"), "extract.decode_backend must be thread or process")
    _check(cfg.decode_workers >= 0, "extract.decode_workers must be >= 0 (0: auto)")
    _check(cfg.prefetch_segments >= 1, "extract.prefetch_segments must be >= 1")
    _check(enc.batch_frames >= 1, "extract.encoder.batch_frames must be >= 1")
    _check(cfg.id_from in ID_FROM, f"extract.id_from must be one of {list(ID_FROM)}, got {cfg.id_from!r}")
    _check(any((enc.vision, enc.audio, enc.text)), "no encoder: set extract.encoder.vision/audio/text")


def check_synth(cfg: SynthConfig) -> None:
    """The synth section's checks: run by :func:`validate`, and by ``lvmae.synth`` for a section
    built in Python; raises ConfigError naming the first synth.* value that cannot work."""
    def need(cond: bool, msg: str) -> None:
        _check(cond, f"synth.{msg}")

    unknown = [t for t in cfg.tasks if t not in SYNTH_TASKS]
    need(not unknown, f"tasks: unknown task(s) {unknown}; choose from {list(SYNTH_TASKS)}")
    need(not {"direction", "script"} <= set(cfg.tasks), "tasks: direction and script both order the fillers; "
         "choose one")
    need(len(set(cfg.tasks)) == len(cfg.tasks), "tasks: a task is listed twice")
    need(len(cfg.splits) == 3 and min(cfg.splits) >= 0 and sum(cfg.splits) > 0,
         "splits must be three non-negative fractions (train, val, test)")
    need(cfg.num_videos >= 1, "num_videos must be >= 1")
    lo, hi = _synth_range(cfg.segments_per_step, "segments_per_step")
    need(lo >= 1, "segments_per_step must be >= 1")
    _synth_range(cfg.filler_steps, "filler_steps")
    need(cfg.filler_steps[0] >= 0, "filler_steps must be >= 0")
    need(cfg.filler_types >= 2, "filler_types must be >= 2 (adjacent fillers must differ)")
    need(cfg.min_gap >= 1, "min_gap must be >= 1")
    need(cfg.precedes_max >= 1, "precedes_max must be >= 1")
    need(1 <= cfg.count_max <= 6, "count_max must be in [1, 6]")
    need(cfg.segment_seconds > 0, "segment_seconds must be > 0")
    need(cfg.fps >= 1 and abs(cfg.fps * cfg.segment_seconds - round(cfg.fps * cfg.segment_seconds)) < 1e-9,
         "fps * segment_seconds must be a whole number of frames")
    need(cfg.size >= 16 and cfg.size % 2 == 0, "size must be even and >= 16 (H.264 4:2:0)")
    need(cfg.audio_rate in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000),
         "audio_rate must be a standard AAC rate, e.g. 16000")
    need(cfg.workers >= 1, "workers must be >= 1")


def _synth_range(v: list[int], name: str) -> tuple[int, int]:
    if len(v) != 2 or v[0] > v[1]:
        raise ConfigError(f"synth.{name} must be [min, max] with min <= max, got {v}")
    return v[0], v[1]


def validate(cfg: Config) -> Config:
    """Cross-field checks that types alone cannot express; raises ConfigError."""
    m, mk = cfg.model, cfg.masking
    check_model_config(m)
    check_extract(cfg.extract)
    check_synth(cfg.synth)
    _check(mk.strategy in MASK_STRATEGIES, f"masking.strategy must be one of {MASK_STRATEGIES}, got {mk.strategy!r}")
    _check(0.0 < mk.ratio < 1.0, f"masking.ratio must be in (0, 1), got {mk.ratio}")
    _check(1 <= mk.block_min <= mk.block_max, "masking.block_min must be >= 1 and <= masking.block_max")
    _check(cfg.data.min_len >= 1 and cfg.data.min_len <= cfg.data.max_len, "data.min_len must be in [1, data.max_len]")
    _check(
        not cfg.data.weights or len(cfg.data.weights) == len(cfg.data.stores),
        "data.weights must be empty or have one weight per entry of data.stores",
    )
    _check(cfg.deepspeed.engine in ("deepspeed", "torch"), "deepspeed.engine must be 'deepspeed' or 'torch'")
    _check(cfg.deepspeed.precision in ("fp32", "bf16", "fp16"), "deepspeed.precision must be fp32, bf16 or fp16")
    _check(cfg.deepspeed.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage must be 0, 1, 2 or 3")
    _check(len(cfg.optim.betas) == 2, "optim.betas must have two values")
    _validate_pretrain(cfg)
    _check(cfg.probe.pooling in ("mean", "cls"), "probe.pooling must be 'mean' or 'cls'")
    _check(cfg.probe.schedule in ("cosine", "constant"), "probe.schedule must be 'cosine' or 'constant'")
    _check(cfg.probe.epochs >= 1 and cfg.probe.batch_size >= 2, "probe.epochs must be >= 1 and probe.batch_size >= 2")
    _check(0.0 < cfg.probe.val_fraction < 1.0, "probe.val_fraction must be in (0, 1)")
    _check(bool(cfg.probe.seeds), "probe.seeds must not be empty")
    _check(cfg.probe.encode_window >= 0, "probe.encode_window must be >= 0")
    _check(cfg.probe.attn_dim >= 0 and cfg.probe.attn_patience >= 0, "probe.attn_dim and probe.attn_patience must be >= 0")
    _check(all(lr > 0 for lr in [cfg.probe.lr, *cfg.probe.linear_lrs]), "probe.lr and probe.linear_lrs must be > 0")
    _check(cfg.probe.dense_width >= 1 and cfg.probe.dense_layers >= 0 and cfg.probe.dense_plots >= 0,
           "probe.dense_width must be >= 1, probe.dense_layers and probe.dense_plots >= 0")
    return cfg


def _validate_pretrain(cfg: Config) -> None:
    d, ds, t = cfg.data, cfg.deepspeed, cfg.train
    _check(d.short_policy in ("tile", "keep", "drop"), "data.short_policy must be tile, keep or drop")
    _check(len(d.modalities) >= 1, "data.modalities must name at least one modality")
    _check(all(w >= 0 for w in d.weights) and (not d.weights or sum(d.weights) > 0),
           "data.weights must be >= 0 and not all zero")
    _check(d.bucket_window >= 1, "data.bucket_window must be >= 1")
    _check_something_masked(cfg.masking.ratio, d.min_len, d.max_len)
    _check(0.0 <= d.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    _check(t.eval_every >= 0 and t.eval_windows >= 1, "train.eval_every must be >= 0 and train.eval_windows >= 1")
    _check(all(n >= 1 for n in t.eval_lengths), "train.eval_lengths must be segment counts >= 1")
    _check(ds.micro_batch >= 1 and ds.grad_accum >= 1, "deepspeed.micro_batch and deepspeed.grad_accum must be >= 1")
    _check(t.steps >= 1 and t.save_every >= 1 and t.log_every >= 1 and t.keep_last >= 1,
           "train.steps, train.save_every, train.log_every and train.keep_last must be >= 1")
    _check(cfg.optim.warmup_steps >= 0 and cfg.optim.base_lr > 0, "optim.base_lr must be > 0, optim.warmup_steps >= 0")
    _check(cfg.optim.lr is None or cfg.optim.lr > 0, f"optim.lr must be > 0 or null, got {cfg.optim.lr}")
    _check(not t.compile or ds.engine == "torch", "train.compile needs deepspeed.engine=torch (untested under DeepSpeed)")
    _check(not ds.config_file or ds.engine == "deepspeed", "deepspeed.config_file needs deepspeed.engine=deepspeed")
    _check(not d.text_monitor or ("vision" in d.modalities and "text" not in d.modalities),
           "data.text_monitor needs vision in data.modalities and text not in them (text is what it retrieves)")
    _check(set(cfg.run.loggers) <= {"tensorboard", "wandb"},
           f"run.loggers must name tensorboard and/or wandb, got {cfg.run.loggers}")
    _check(not (t.resume and t.restart), "train.resume and train.restart exclude each other: continue or start over")
    _check(t.compile_mode in COMPILE_MODES, f"train.compile_mode must be one of {COMPILE_MODES}, got {t.compile_mode!r}")


def _check_something_masked(ratio: float, min_len: int, max_len: int) -> None:
    """Every crop length masks >= 1 segment (visible = max(1, round((1 - ratio) * length))), else a
    batch of such crops trains nothing (loss 0)."""
    bare = [n for n in range(min_len, max_len + 1) if n - max(1, round((1.0 - ratio) * n)) < 1]
    if not bare:
        return
    fix = (f"raise data.min_len to {bare[-1] + 1}" if bare[-1] < max_len else "raise data.max_len") + \
        " or masking.ratio"
    raise ConfigError(f"masking.ratio={ratio} masks nothing in a crop of {bare[0]} segment(s) (data.min_len="
                      f"{min_len}): such crops train nothing; {fix}")


def load_config(
    files: Sequence[str | os.PathLike] = (),
    overrides: Sequence[str] = (),
    base: Config | None = None,
) -> Config:
    """Schema defaults (or ``base``) <- YAML files in order <- ``key=value`` overrides.

    A file is a path or a shipped recipe's name (``tiny``, ``paper``, ``demo``, ``probe/lvu``: see
    :mod:`lvmae.recipes`); its ``include:`` files are merged before it. Raises :class:`ConfigError`
    naming the offending key or file.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(base if base is not None else Config)
    OmegaConf.set_struct(schema, True)
    merged = schema
    for path, loaded in (part for f in files for part in _expand(f)):
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as e:
            raise ConfigError(_describe(e, f"in {path}: ")) from None
    _check_overrides(overrides)
    try:
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        obj = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, TypeError) as e:
        raise ConfigError(_describe(e, _culprit(merged, overrides))) from None
    return validate(obj)  # type: ignore[arg-type]


def _culprit(merged: Any, overrides: Sequence[str]) -> str:
    """``"override 'k=v': "`` for the first override that fails on its own (only after a failure)."""
    from omegaconf import OmegaConf

    for o in overrides:
        try:
            OmegaConf.merge(merged, OmegaConf.from_dotlist([o]))
        except Exception:  # any failure marks the culprit; the caller reports the error
            return f"override {o!r}: "
    return ""


def _check_overrides(overrides: Sequence[str]) -> None:
    """``key=value`` shape, and no value for a whole section (OmegaConf's message names no key)."""
    sections = {f.name for f in dataclasses.fields(Config)}
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not of the form key=value")
        key = o.split("=", 1)[0].strip()
        if key in sections:
            raise ConfigError(f"override {o!r}: '{key}' is a section; set one of its keys, e.g. {key}.<name>=...")


def _resolve(name: str | os.PathLike, including: Path | None = None) -> Path:
    """A ``-c`` argument (an existing file, else a recipe name) or an ``include:`` entry of
    ``including`` (a ``.yaml``/``.yml`` path relative to that file, else a recipe name)."""
    from lvmae import recipes

    text = str(name)
    if including is None and Path(text).is_file():
        return Path(text)
    if including is not None and text.endswith((".yaml", ".yml")):
        return including.parent / text
    found = recipes.find(text)
    if found is not None:
        return found
    if including is None and not text.endswith((".yaml", ".yml")):
        raise ConfigError(f"config file not found: {text} (shipped recipes: {', '.join(recipes.names())})")
    return Path(text)


def _expand(name: str | os.PathLike, including: Path | None = None, chain: tuple[Path, ...] = ()) -> list:
    """``[(path, mapping), ...]`` in merge order: a file's includes (recursively), then the file."""
    path = _resolve(name, including)
    if path.resolve() in chain:
        raise ConfigError(f"config include cycle: {' -> '.join(str(p) for p in (*chain, path.resolve()))}")
    loaded = _load_yaml(path)
    inc = loaded.pop("include", None)
    entries = [inc] if isinstance(inc, str) else list(inc or [])
    if not all(isinstance(e, str) for e in entries):
        raise ConfigError(f"{path}: include must be a recipe name or file, or a list of them")
    parts = [p for e in entries for p in _expand(e, path, (*chain, path.resolve()))]
    return [*parts, (path, loaded)]


def _load_yaml(path: Path) -> Any:
    """A YAML file's top-level mapping; any unreadable or malformed file is a ConfigError naming it."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {path}: {' '.join(str(e).split())}") from None
    except OSError:  # OmegaConf's answer to a top-level scalar
        loaded = None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of sections (e.g. 'model:' on its own line), not a list or value")
    return loaded


def _describe(e: Exception, where: str = "") -> str:
    """One line naming the key, from OmegaConf's multi-line message."""
    msg = str(e).splitlines()[0]
    key = getattr(e, "full_key", None)
    if key and "is not a ListConfig" in msg:
        msg = f"{key} must be a list, e.g. {key}=[1,2] or {key}=[a,b]"
    elif isinstance(e, TypeError):
        msg = f"{msg} (a list or mapping where the schema has another kind of value)"
    if key and key not in msg:
        msg = f"{msg} (key: {key})"
    return f"invalid config: {where}{msg}"


def to_yaml(cfg: Config) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    from lvmae.io import atomic_write_text

    path = Path(out_dir) / name
    atomic_write_text(path, to_yaml(cfg))
    return path


def section_dict(section: Any) -> dict:
    """A plain dict of one section, e.g. for hashing or JSON logs."""
    return dataclasses.asdict(section)
