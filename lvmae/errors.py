"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class LvmaeError(Exception):
    """Base class for user-facing errors (bad input, bad config, missing files)."""


class ConfigError(LvmaeError):
    """A config file, key or value is wrong."""


class DataError(LvmaeError):
    """Input data is missing, corrupt or inconsistent (wrong dims, NaNs, ...)."""
