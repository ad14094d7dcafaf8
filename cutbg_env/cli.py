"""Command lines built from frozen dataclasses, CleanRL ``Args`` style, with tyro.

Each stage's configuration is one ``@dataclass(frozen=True)`` whose fields carry a one-line
docstring (a string literal right under the field); tyro turns the fields into ``--kebab-case``
flags with those docstrings as help (``bool`` fields become ``--x/--no-x``). Bad input that the
project detects (:class:`~cutbg_env.errors.CutbgError`) becomes one ``error: ...`` line on stderr
and exit status 2, never a traceback. A closed pipe (``python -m train --help | head``) ends the
command quietly with status 1, without a traceback either.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def run_cli(fn: Callable[[], object]) -> int:
    """Run a command's body: a :class:`~cutbg_env.errors.CutbgError` (bad input) becomes one
    ``error: ...`` line on stderr and exit status 2, not a traceback; success is 0."""
    from cutbg_env.errors import CutbgError

    try:
        fn()
    except CutbgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout is gone: point stdout at devnull so that the interpreter's final
        # flush does not raise again (the remedy in Python's signal module documentation)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def parse(cls: type[T], argv: Sequence[str] | None, prog: str, description: str | None) -> T:
    """The dataclass ``cls`` built from the command line ``argv`` (``None``: ``sys.argv``)."""
    import tyro

    from cutbg_env import checks

    with checks.deferred():  # tyro would box the checks' errors; they run once parsed
        config = tyro.cli(cls, args=argv, prog=prog, description=description or cls.__doc__)
    return checks.recheck(config)


def command_main(
    prog: str,
    description: str | None,
    cls: type[T],
    fn: Callable[[T], object],
    argv: Sequence[str] | None = None,
) -> int:
    """A one-stage command: flags from dataclass ``cls``, then ``fn(config)`` under
    :func:`run_cli`. Returns the exit status."""
    holder: list[T] = []
    status = run_cli(lambda: holder.append(parse(cls, argv, prog, description)))
    return status or run_cli(lambda: fn(holder[0]))


def subcommand_main(
    prog: str,
    description: str | None,
    stages: Mapping[str, tuple[type, Callable[[Any], object]]],
    argv: Sequence[str] | None = None,
) -> int:
    """A command with one subcommand per stage: ``stages`` maps a name to its dataclass and the
    function that runs it. Returns the exit status."""
    import tyro

    classes = {name: cls for name, (cls, _) in stages.items()}
    functions = {cls: fn for cls, fn in stages.values()}
    holder: list[Any] = []

    def build() -> None:
        from cutbg_env import checks

        with checks.deferred():  # tyro would box the checks' errors; they run once parsed
            config = tyro.extras.subcommand_cli_from_dict(
                classes, args=argv, prog=prog, description=description
            )
        holder.append(checks.recheck(config))

    status = run_cli(build)
    return status or run_cli(lambda: functions[type(holder[0])](holder[0]))


@dataclass(frozen=True)
class StageArgs:
    """The fields every stage shares: which dataset, where it lives, which classifier, which
    device. Each stage's arguments subclass this."""

    dataset: str = "animals"
    """Dataset: animals (embedded), voc2007, voc2012 or a VOC-layout folder."""
    root: str | None = None
    """Dataset folder overriding the default location of ``dataset``."""
    checkpoint: str | None = None
    """Classifier checkpoint (default: runs/<dataset>/classifier.pt; on animals, when that is
    missing, the one shipped with the package)."""
    device: str = "cpu"
    """Torch device (cpu or cuda)."""

    def __post_init__(self) -> None:
        """Check the device (``cuda`` needs a visible GPU), then the other bases' values."""
        from cutbg_env import checks

        checks.device("--device", self.device)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()

    def classifier_file(self) -> Path:
        """The classifier the stage reads, found as the env finds it: ``checkpoint``, else
        ``runs/<dataset>/classifier.pt``, else on ``animals`` the one shipped with the package
        (:func:`cutbg_env.world.classifier_file`)."""
        from cutbg_env.world import classifier_file

        return classifier_file(self.dataset, self.checkpoint)
