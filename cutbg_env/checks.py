"""Value checks of the configuration dataclasses and the env constructor.

Each check raises :class:`~cutbg_env.errors.OptionError` with one line: the flag, the value and
the allowed range (``--gamma 2.0: must be a finite number in [0, 1]``; a keyword argument is
named ``delta=``: ``delta=nan: ...``). ``None`` is never checked here (it means
"the default"); ``0`` is a value like any other.

While a command line is parsed (:func:`deferred`, used by :mod:`cutbg_env.cli`) the checks do
nothing: tyro would turn their error into a box of its own; the CLI runs the dataclass's
``__post_init__`` again once parsed, so a bad value is one ``error: ...`` line and exit 2.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cutbg_env.errors import OptionError

_DEFERRED = contextvars.ContextVar("cutbg_checks_deferred", default=False)


@contextmanager
def deferred() -> Iterator[None]:
    """Skip every check inside the block (the CLI checks the parsed config after it)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def recheck(config: object) -> object:
    """Run ``config.__post_init__`` (its checks) now; return ``config``."""
    post = getattr(config, "__post_init__", None)
    if post is not None:
        post()
    return config


def flag(name: str) -> str:
    """The command-line flag of a dataclass field: ``lr_start`` -> ``--lr-start``."""
    return "--" + name.replace("_", "-")


def _named(name: str, value: object) -> str:
    return f"{name}{value!r}" if name.endswith("=") else f"{name} {value!r}"


def real(
    name: str,
    value: float | None,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    required: bool = False,
    note: str = "",
) -> None:
    """``value`` is a finite number within ``lo``..``hi`` (each bound open or closed);
    ``None`` passes unless ``required``; ``note`` is added to the message in parentheses
    (``--finetune-share 1.0: must be a finite number in [0, 1) (0 = no fine-tune stage)``)."""
    if (value is None and not required) or _DEFERRED.get():
        return
    if hi is None:
        bounds = "" if lo is None else f" {'>' if lo_open else '≥'} {lo:g}"
    else:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        bounds = f" in {left}{'-inf' if lo is None else f'{lo:g}'}, {hi:g}{right}"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        extra = f" ({note})" if note else ""
        raise OptionError(f"{_named(name, value)}: must be a finite number{bounds}{extra}")


def positive(name: str, value: float | None, required: bool = False) -> None:
    """``value`` is a finite number > 0."""
    real(name, value, 0.0, lo_open=True, required=required)


def delta(name: str, value: float | None, required: bool = False) -> None:
    """δ, the score-drop threshold (a cut is within it when ``p̄ − p̂ ≤ δ``): a finite number in
    [0, 1]. A negative δ would refuse even a drop of 0, so every episode would end at its first
    cut."""
    real(name, value, 0.0, 1.0, required=required)


ENV_ATTRS: dict[str, Callable[[str, Any, bool], None]] = {"delta": delta, "eta": positive}
"""The episode rules an env checks (its constructor, and the vector envs' ``set_attr``)."""


def env_attr(name: str, value: Any) -> Any:
    """Check a value given to an env's attribute ``name`` after construction (``set_attr``):
    the constructor's check of :data:`ENV_ATTRS` (``None`` refused: there is no default to fall
    back on), as ``delta=nan: must be a finite number in [0, 1]``. Returns the value to set
    (a float for the checked ones)."""
    check = ENV_ATTRS.get(name)
    if check is None:
        return value
    check(f"{name}=", value, True)
    return float(value)


def integer(name: str, value: int | None, lo: int, hi: int | None = None) -> None:
    """``value`` is an integer ``≥ lo`` (and ``≤ hi``)."""
    if value is None or _DEFERRED.get():
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer ≥ {lo}"
        raise OptionError(f"{_named(name, value)}: must be {allowed}")


def choice(name: str, value: object, allowed: tuple) -> None:
    """``value`` is one of ``allowed``."""
    if not _DEFERRED.get() and value not in allowed:
        raise OptionError(f"{_named(name, value)}: must be one of {', '.join(map(str, allowed))}")


def rule(holds: bool, message: str) -> None:
    """A rule between several values: ``message`` (one line naming them and the fix) unless
    ``holds``."""
    if not _DEFERRED.get() and not holds:
        raise OptionError(message)


def device(name: str, value: str) -> None:
    """A torch device string whose hardware exists here (``cuda`` needs a visible GPU)."""
    if _DEFERRED.get():
        return
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(
            f"{_named(name, value)}: not a torch device (cpu, cuda, cuda:0, ...)"
        ) from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise OptionError(
                f"{_named(name, value)}: no CUDA GPU is visible here; use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise OptionError(f"{_named(name, value)}: only {n} CUDA GPU(s) are visible (cuda:0..)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"{_named(name, value)}: MPS is not available here; use --device cpu")


def names(name: str, value: str | None) -> None:
    """A comma-separated list of names without an empty one (``None``: the default)."""
    if value is None or _DEFERRED.get():
        return
    if not all(part.strip() for part in value.split(",")):
        raise OptionError(f"{_named(name, value)}: must be comma-separated names (a,b,c)")
