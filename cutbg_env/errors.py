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


class OutputError(CutbgError, PermissionError):
    """An output file or folder that cannot be written; the message names it and the fix."""


class RunBusyError(CutbgError, RuntimeError):
    """A run folder that another process is training now; the message names the holder."""


def reason(exc: BaseException) -> str:
    """A short, safe description of ``exc`` for an error line: its first line (at most 200
    characters), never torch's advice to reload with ``weights_only=False`` (which would run
    arbitrary code from an untrusted file)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "weights_only" in str(exc) or "pickle" in str(exc).lower():
        text = "not a file of plain tensors"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
