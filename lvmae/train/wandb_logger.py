"""Weights & Biases as a metrics sink beside TensorBoard (``run.loggers=[tensorboard,wandb]``).

The same scalars as ``metrics.jsonl`` go to one W&B run per run dir: its id is kept in
``RUN/wandb_id`` so a resumed run continues the same W&B run. Files go under ``RUN/wandb``.
``WANDB_MODE=offline`` works without an account (``wandb sync RUN/wandb/offline-run-*``
uploads later); entity, tags and mode come from the usual ``WANDB_*`` variables.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from lvmae.errors import ConfigError
from lvmae.io import atomic_write_text


class WandbLogger:
    """One W&B run for ``run_dir``: ``log(step, scalars)``, ``close()``."""

    def __init__(self, run_dir: str | os.PathLike, project: str, config: dict[str, Any] | None = None,
                 resume: bool = False):
        try:
            import wandb
        except ImportError:
            raise ConfigError("run.loggers has wandb: `pip install lvmae[wandb]` (Weights & Biases)") from None
        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id + "\n")
        try:
            self.run = wandb.init(project=project, dir=str(run_dir), name=run_dir.resolve().name, id=run_id,
                                  resume="allow", config=config or {})
        except wandb.errors.Error as e:  # e.g. online mode without a login
            raise ConfigError(f"wandb could not start ({' '.join(str(e).split())}); "
                              "WANDB_MODE=offline logs without an account") from None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()
