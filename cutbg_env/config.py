"""Command lines built from frozen dataclasses, CleanRL ``Args`` style.

Each stage's configuration is one ``@dataclass(frozen=True)`` whose fields carry a one-line
docstring (a string literal right under the field). :func:`add_arguments` turns the fields into
``--kebab-case`` flags with those docstrings as help, and :func:`from_namespace` builds the
dataclass back from parsed arguments.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import json
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map field name → the string literal written right under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of an annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _parse_optional(kind: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind(text)

    return parse


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (bools become ``--x/--no-x``); extra
    spellings come from ``field(metadata={"flags": ("--alias",)})`` and allowed values from
    ``field(metadata={"choices": (...)})``."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        flags = ("--" + f.name.replace("_", "-"), *f.metadata.get("flags", ()))
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                *flags,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        else:
            parse = _parse_optional(kind) if optional else kind
            parser.add_argument(
                *flags,
                dest=f.name,
                type=parse,
                default=default,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def from_namespace(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """Build dataclass ``cls`` from the parsed flags (and explicit overrides)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update(overrides)
    return cls(**values)


def to_json(obj: Any) -> str:
    """Stable JSON of a dataclass (sorted keys): used to tell configs apart."""
    return json.dumps(dataclasses.asdict(obj), sort_keys=True)


def run_cli(fn: Callable[[], object]) -> int:
    """Run a command's body: a :class:`~cutbg_env.errors.CutbgError` (bad input) becomes one
    ``error: ...`` line on stderr and exit status 2, not a traceback; success is 0."""
    from cutbg_env.errors import CutbgError

    try:
        fn()
    except CutbgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def command_main(
    prog: str,
    description: str | None,
    cls: type[T],
    fn: Callable[[T], object],
    argv: list[str] | None = None,
) -> int:
    """A one-stage command: flags from dataclass ``cls``, then ``fn(config)`` under
    :func:`run_cli`. Returns the exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, cls)
    config = from_namespace(cls, parser.parse_args(argv))
    return run_cli(lambda: fn(config))
