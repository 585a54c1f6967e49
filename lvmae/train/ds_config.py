"""A DeepSpeed JSON of one's own (``deepspeed.config_file``) merged into the config lvmae builds.

The typed config stays the one source of batch sizes, precision, ZeRO stage and clipping
(the loop scales the LR by the global batch and feeds micro-batches itself), so the file may
repeat those values (or write ``"auto"``) but a different value is an error naming both
places. Everything else in the file (ZeRO buckets and offload, communication, profilers,
activation checkpointing, ...) is taken as it is, over lvmae's own defaults. ``optimizer``
and ``scheduler`` are refused: lvmae steps its own AdamW and sets the LR every step.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lvmae.errors import ConfigError

OWNED = {  # DeepSpeed key path -> the lvmae key that sets it
    ("train_micro_batch_size_per_gpu",): "deepspeed.micro_batch",
    ("gradient_accumulation_steps",): "deepspeed.grad_accum",
    ("train_batch_size",): "deepspeed.micro_batch x deepspeed.grad_accum x ranks",
    ("gradient_clipping",): "optim.grad_clip",
    ("bf16", "enabled"): "deepspeed.precision",
    ("fp16", "enabled"): "deepspeed.precision",
    ("zero_optimization", "stage"): "deepspeed.zero_stage",
}
REFUSED = {"optimizer": "optim.* (lvmae steps its own AdamW)",
           "scheduler": "optim.* (lvmae sets the LR every step: warmup + cosine)"}
_MISSING = object()


def load_json(path: str) -> dict[str, Any]:
    """The file's top-level object; any unreadable or malformed file is one ConfigError naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"deepspeed.config_file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"deepspeed.config_file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepspeed.config_file {path} must hold a JSON object, not {type(data).__name__}")
    return data


def merge_file(built: dict[str, Any], path: str) -> dict[str, Any]:
    """``built`` (lvmae's dict) with the JSON file at ``path`` merged over it (see the module doc)."""
    return merge(built, load_json(path), f"deepspeed.config_file {path}")


def merge(built: dict[str, Any], user: dict[str, Any], source: str) -> dict[str, Any]:
    for key, owner in REFUSED.items():
        if key in user:
            raise ConfigError(f"{source} sets '{key}', which lvmae's {owner} owns: remove it from the file")
    merged = _deep_merge(built, user)
    for path, owner in OWNED.items():
        ours, theirs = _get(built, path), _get(user, path)
        if theirs is _MISSING or theirs == "auto":
            _set(merged, path, ours)
        elif theirs != ours or isinstance(theirs, bool) != isinstance(ours, bool):
            raise ConfigError(f"{source} sets {'.'.join(path)}={json.dumps(theirs)} but {owner} gives "
                              f"{json.dumps(ours)}: change one of them (or drop the key from the file)")
    return merged


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return _MISSING
        d = d[k]
    return d


def _set(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value
