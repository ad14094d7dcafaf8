"""The project's exceptions: each names the bad file or value and says how to fix it."""

from __future__ import annotations


class CutbgError(Exception):
    """Base class of every error this project raises on bad input."""


class DataError(CutbgError, ValueError):
    """Missing dataset root, corrupt image or annotation, bad split or source."""


class UnknownClassError(CutbgError, ValueError):
    """A class name that the dataset does not have; the message lists the valid ones."""


class CheckpointError(CutbgError, FileNotFoundError):
    """A missing or unreadable checkpoint; the message names the command that makes it."""


class OptionError(CutbgError, ValueError):
    """Command options that contradict each other or the runs on disk; the message says which."""
