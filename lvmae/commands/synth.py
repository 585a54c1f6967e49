"""``lvmae synth``: write the synthetic long-video benchmark (videos, labels, manifest)."""

from __future__ import annotations

import argparse
import dataclasses

from lvmae.commands._common import add_config_args, config_from_args, literal

HELP = "generate synthetic long videos whose labels need long-range order (for the demo and tests)"
DESCRIPTION = """\
Write minutes-long MP4 videos (H.264 + AAC) made of steps with distinct looks and
sounds, a labels file in the generic probe format (video_id,split,task,label,target)
and a manifest with every video's step timeline. Tasks: order, precedes, count and
direction (a mean pool of segment features is at chance by construction) and
appearance (it is not).
Deterministic from synth.seed; re-running renders only missing videos.
Overrides may name synth fields without the prefix (num_videos=20 = synth.num_videos=20).

With --features it writes embeddings instead of videos (no decoding, any length): the
long-range feature benchmark of lvmae.synth.features, as feature stores OUT/pretrain,
OUT/val and OUT/probe (with labels.csv); overrides then name its fields
(num_videos, length=[64,512], val_length, probe_length, dim, seed, ...).

examples:
  lvmae synth --out data/synth num_videos=40 fps=2
  lvmae synth --out /tmp/s synth.tasks=[order,appearance] synth.audio=false
  lvmae synth --features --out data/long num_videos=200 probe_length=2048
"""

ON_INTERRUPT = "run the same command again to render only the missing videos"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output directory (synth.out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--features", action="store_true",
                   help="write the long-range feature benchmark (stores, no videos); needs --out")
    add_config_args(p)


def _features(args: argparse.Namespace) -> int:
    import json

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from lvmae.errors import ConfigError
    from lvmae.synth.features import FeatureSynthConfig, generate

    if not args.out:
        raise ConfigError("lvmae synth --features needs --out DIR")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(FeatureSynthConfig),
                                 OmegaConf.from_dotlist(list(args.overrides or [])))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid feature synth setting: {str(e).splitlines()[0]}") from None
    print(json.dumps(generate(cfg, args.out), indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    import json

    if args.features:
        return _features(args)

    from lvmae.config import SynthConfig
    from lvmae.synth import generate

    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    args.overrides = [
        f"synth.{o}" if o.split("=", 1)[0] in fields else o for o in (args.overrides or [])
    ]
    extra = [literal("synth.out", args.out)] if args.out else []
    cfg = config_from_args(args, extra)
    summary = generate(cfg.synth, progress=cfg.run.progress and not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
