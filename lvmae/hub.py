"""Checkpoint references: a local path or a Hugging Face Hub id, resolved to a local directory.

Every place that names weights (``extract.encoder.checkpoint``, ``text_checkpoint``,
``audio_checkpoint``, ``probe.checkpoint``, :func:`lvmae.models.load_pretrained`) takes

- an existing local directory or file (used as it is; nothing is looked up), or
- a Hub id ``org/name``, optionally pinned as ``org/name@revision`` (branch, tag or commit),
  fetched into (or found in) huggingface_hub's cache by :func:`resolve`.

``HF_HUB_OFFLINE=1`` makes resolution cache-only; an id that is not cached then fails with
one line giving the ``hf download`` command that fetches it. Only configs, tokenizer files
and ``*.safetensors`` weights are fetched (no pickled ``*.bin``), and Python files only when
the caller allows remote code. huggingface_hub is imported here only when an id is resolved.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lvmae.errors import ConfigError

# Configs, tokenizers/processors and safetensors weights: never pickled weights.
SAFE_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.md")
CODE_PATTERNS = ("*.py",)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class HubError(ConfigError):
    """A checkpoint reference that names nothing loadable (not local, not cached, not on the Hub)."""


def split_ref(ref: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; ``"org/name"`` -> ``("org/name", None)``."""
    repo, sep, rev = ref.partition("@")
    return repo, (rev or None) if sep else None


def is_local(ref: str | os.PathLike) -> bool:
    """True for an existing path, or anything spelled as a path (absolute, ``./``, ``~``)."""
    s = str(ref)
    return Path(s).expanduser().exists() or s.startswith(("/", ".", "~")) or "\\" in s


def offline() -> bool:
    """huggingface_hub's offline switch (``HF_HUB_OFFLINE``, read when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_command(repo: str, revision: str | None = None) -> str:
    """The shell command that puts ``repo`` into the cache (for error messages and docs)."""
    return f"hf download {repo}" + (f" --revision {revision}" if revision else "")


def resolve(ref: str | os.PathLike, key: str, *, revision: str | None = None,
            remote_code: bool = False, patterns: tuple[str, ...] = SAFE_PATTERNS, **kwargs: Any) -> Path:
    """A local directory (or file) holding the checkpoint ``ref`` names; ``key`` names it in errors.

    ``revision`` pins the Hub revision when ``ref`` has no ``@rev`` of its own; ``remote_code``
    also fetches the repository's ``*.py`` (for ``trust_remote_code``). A Hub snapshot without
    ``*.safetensors`` is refused. ``kwargs`` go to ``snapshot_download`` (``cache_dir``, ``token``...).
    """
    s = str(ref)
    if not s:
        raise HubError(f"{key} is empty: give a local directory or a Hugging Face id such as org/name")
    if is_local(s):
        path = Path(s).expanduser()
        if not path.exists():
            raise HubError(f"{key}={s}: no such file or directory")
        return path
    repo, rev = split_ref(s)
    rev = rev or revision
    if not _ID.match(repo) or "--" in repo or ".." in repo:
        raise HubError(f"{key}={s}: neither an existing path nor a Hugging Face id (org/name[@revision])")
    path = _snapshot(repo, rev, key, (*patterns, *CODE_PATTERNS) if remote_code else patterns, **kwargs)
    if not any(path.rglob("*.safetensors")):
        raise HubError(f"{key}={s}: the Hub snapshot has no *.safetensors weights (lvmae does not load "
                       "pickled *.bin weights from the Hub; use a safetensors revision or a local directory)")
    return path


def _snapshot(repo: str, revision: str | None, key: str, patterns: tuple[str, ...],
              **kwargs: Any) -> Path:
    try:
        from huggingface_hub import errors, snapshot_download
    except ImportError:
        raise HubError(f"{key}={repo} is a Hub id: resolving it needs `pip install lvmae[hf]` "
                       "(huggingface_hub)") from None
    is_offline = offline()
    local_only = is_offline or bool(kwargs.pop("local_files_only", False))
    where = f"{key}={repo}" + (f"@{revision}" if revision else "")
    try:
        path = snapshot_download(repo, revision=revision, allow_patterns=list(patterns),
                                 local_files_only=local_only, **kwargs)
    except (errors.LocalEntryNotFoundError, getattr(errors, "IncompleteSnapshotError", errors.LocalEntryNotFoundError)):
        why = ("HF_HUB_OFFLINE is set" if is_offline else "local_files_only is set" if local_only
               else "the Hub is unreachable") + " and it is not"
        raise HubError(f"{where}: {why} in the Hugging Face cache; fetch it once with "
                       f"`{fetch_command(repo, revision)}` (on a machine with network)") from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{where}: revision {revision!r} does not exist on the Hub") from None
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as e:
        raise HubError(f"{where}: {type(e).__name__} (a typo, a private or a gated repository: "
                       "log in with `hf auth login`)") from None
    return Path(path)

