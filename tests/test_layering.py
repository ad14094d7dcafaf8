"""The package layering: ``cutbg_env`` is the library, ``train`` and ``evaluate`` are two
independent stages on top of it. Every import statement of every module is checked (top level,
inside functions, ``if TYPE_CHECKING:`` blocks), in any form."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "train": {"evaluate"},
    "evaluate": {"train"},
    "cutbg_env": {"train", "evaluate"},
}
"""Per package: the top-level packages none of its modules may import."""


def imported_packages(source: str, filename: str = "<src>") -> set[str]:
    """Top-level package of every module an import in ``source`` names: ``import a.b`` and
    ``from a.b import c`` both give ``a``, as do ``importlib.import_module("a.b")`` and
    ``__import__("a.b")`` with a literal name; relative imports give ``"."``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                found.add(str(arg.value).split(".")[0])
    return found


def test_imported_packages_sees_every_form() -> None:
    source = """
import os, evaluate.run as er
from train.agent import AgentArgs
from . import sibling

def late():
    import train
    from evaluate import diagnose

class K:
    def method(self):
        if True:
            from cutbg_env.world import CutWorld
        importlib.import_module("gymnasium.spaces")
        __import__("torch")
"""
    assert imported_packages(source) == {
        "os",
        "evaluate",
        "train",
        ".",
        "cutbg_env",
        "gymnasium",
        "torch",
    }


def python_files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    return files


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_across_the_layers(package: str) -> None:
    bad = []
    for path in python_files(package):
        source = path.read_text(encoding="utf-8")
        names = imported_packages(source, str(path))
        # relative imports stay inside the package, so they cannot cross layers
        for name in sorted(names & FORBIDDEN[package]):
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_stages_and_library_are_the_only_packages_checked() -> None:
    """A new top-level package beside these would escape the rule above: say so."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(FORBIDDEN), packages
