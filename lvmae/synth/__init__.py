"""Synthetic long-video benchmark: real encoded videos whose labels need long-range order.

``plan_dataset(cfg)`` draws every video's step timeline and labels (cheap, no pixels);
``generate(cfg)`` renders them to MP4 files (H.264 + AAC) and writes the generic labels
file and a ground-truth manifest. See :mod:`lvmae.synth.plan` for the tasks and why a
mean pool of per-segment features is at chance on ``order``, ``precedes`` and ``count``.
"""

from lvmae.synth.dataset import generate, labels_csv, manifest, synth_hash, video_path
from lvmae.synth.plan import (
    Step,
    TaskSpec,
    VideoPlan,
    check_config,
    plan_dataset,
    plan_steps,
    task_specs,
)
from lvmae.synth.render import VideoRenderer, look, write_video

__all__ = [
    "Step", "TaskSpec", "VideoPlan", "VideoRenderer", "check_config", "generate", "labels_csv", "look",
    "manifest", "plan_dataset", "plan_steps", "synth_hash", "task_specs", "video_path", "write_video",
]
