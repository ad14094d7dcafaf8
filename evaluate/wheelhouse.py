"""``make wheelhouse`` and ``make gpu-check``'s first step: the wheels a bare GPU machine lacks.

A GPU machine brings Python, PyTorch with CUDA and the compiled scientific stack, but no
gymnasium, SB3 or tyro, and reaches no package registry. So:

* ``build`` (``make wheelhouse``, here, in the project's venv) walks the project's dependencies
  (``pyproject.toml``) through the installed distributions' metadata and downloads, with
  ``pip download``, the *pure-Python* wheels of that closure at the versions installed here, for
  the GPU machine's Python (3.12), into a git-ignored folder (``.wheelhouse/``) that travels with
  the working tree. Torch and its CUDA packages are never walked into; compiled packages (numpy,
  OpenCV, matplotlib, grpcio, ...) stay with the machine: they are large and platform-bound.
* ``install`` (there) plans what the machine lacks: each requirement satisfied by an installed
  distribution (``opencv-python`` also by its headless builds) is kept; the others come from the
  wheelhouse, whose own requirements are walked in turn. It installs the plan with ``pip install
  --no-index --no-deps --target``, checks the result, and prints the folder to put on
  ``PYTHONPATH``. Anything neither installed nor in the wheelhouse is one line of the error.

This module runs before the project's dependencies exist (it installs them): the standard
library only (``packaging`` from pip's vendored copy where it is not installed), an ``argparse``
command line instead of tyro, and its own error class with the same rule as
:mod:`cutbg_env.cli`: one ``error: ...`` line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pragma: no cover - every pip has it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

EXCLUDED = ("torch", "torchvision", "torchaudio", "triton")
"""Distributions the GPU machine brings with its CUDA build: never downloaded, never walked into
(their dependencies are theirs); ``install`` only checks that they are there."""
EXCLUDED_PREFIXES = ("nvidia-", "cuda-")
"""Name prefixes of the CUDA runtime packages, treated as :data:`EXCLUDED`."""
ALTERNATIVES = {
    "opencv-python": (
        "opencv-python-headless",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ),
}
"""Distributions that provide the same import as a requirement (all four give ``cv2``)."""
GPU_PYTHON = "3.12"
"""Python version of the GPU machine's interpreter (its image's ``python3``)."""
GPU_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
"""Platform tags given to ``pip download`` (only pure wheels are fetched; these keep pip from
refusing the target interpreter)."""
MAX_MIB = 40.0
"""Largest wheelhouse ``build`` writes: what travels to the GPU machine is limited (64 MiB)."""


class WheelhouseError(Exception):
    """Bad input or an unmet requirement; the message names it and the fix."""


@dataclass(frozen=True)
class Dist:
    """A distribution: installed, or a wheel file of the wheelhouse."""

    name: str
    """Canonical name (PEP 503)."""
    version: str
    """Its version string."""
    requires: tuple[str, ...] = ()
    """Its ``Requires-Dist`` lines."""
    pure: bool = True
    """Whether it is a pure-Python wheel (``py3-none-any``; root is purelib)."""
    path: Path | None = None
    """The wheel file (wheelhouse entries only)."""


@dataclass(frozen=True)
class Plan:
    """What ``install`` does on a machine: what it keeps, what it installs, what it cannot."""

    present: dict[str, str] = field(default_factory=dict)
    """Requirement name -> the installed ``"distribution version"`` that satisfies it."""
    install: tuple[Dist, ...] = ()
    """Wheels to install, in the order they were needed."""
    problems: tuple[str, ...] = ()
    """One line per requirement that neither the machine nor the wheelhouse satisfies."""


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``Stable_Baselines3`` -> ``stable-baselines3``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_excluded(name: str) -> bool:
    """Whether a distribution is one the GPU machine must bring (:data:`EXCLUDED`)."""
    name = canonical(name)
    return name in EXCLUDED or name.startswith(EXCLUDED_PREFIXES)


def project_requirements(pyproject: str | Path) -> list[str]:
    """The ``[project] dependencies`` of a ``pyproject.toml``."""
    import tomllib

    path = Path(pyproject)
    try:
        return list(tomllib.loads(path.read_text(encoding="utf-8"))["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise WheelhouseError(
            f"{path}: cannot read [project] dependencies ({exc}); run from the repository root"
        ) from exc


def _is_pure(wheel_text: str | None) -> bool:
    if not wheel_text:
        return False
    lines = [line.strip() for line in wheel_text.splitlines()]
    tags = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")]
    return (
        "Root-Is-Purelib: true" in lines
        and bool(tags)
        and all(t.endswith("-none-any") for t in tags)
    )


def installed(path: Sequence[str] | None = None) -> dict[str, Dist]:
    """The distributions importable from ``path`` (default ``sys.path``), first one of a name
    winning, as the import system does."""
    found: dict[str, Dist] = {}
    for d in md.distributions(path=list(sys.path if path is None else path)):
        name = d.metadata["Name"]
        if not name or canonical(name) in found:
            continue
        found[canonical(name)] = Dist(
            canonical(name), d.version, tuple(d.requires or ()), _is_pure(d.read_text("WHEEL"))
        )
    return found


def wheel_dist(path: str | Path) -> Dist:
    """The :class:`Dist` of a wheel file, read from its ``METADATA`` and ``WHEEL``."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
            wheel = next(n for n in names if n.endswith(".dist-info/WHEEL"))
            text, wheel_text = z.read(meta).decode("utf-8"), z.read(wheel).decode("utf-8")
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        raise WheelhouseError(
            f"{path} is not a readable wheel ({exc or 'no .dist-info'}): delete it and rebuild "
            "the wheelhouse with `make wheelhouse`"
        ) from exc
    fields: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            fields.setdefault(key.strip(), []).append(value.strip())
    return Dist(
        canonical(fields["Name"][0]),
        fields["Version"][0],
        tuple(fields.get("Requires-Dist", ())),
        _is_pure(wheel_text),
        path,
    )


def wheelhouse(folder: str | Path) -> dict[str, Dist]:
    """The wheels of a wheelhouse folder by canonical name (two versions of one are an error:
    pip would refuse to install both)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WheelhouseError(
            f"wheelhouse {folder} does not exist: build it with `make wheelhouse` (where a "
            "package registry is reachable) and carry it with the working tree"
        )
    wheels: dict[str, Dist] = {}
    for path in sorted(folder.glob("*.whl")):
        dist = wheel_dist(path)
        if dist.name in wheels:
            raise WheelhouseError(
                f"{folder} holds two versions of {dist.name} ({wheels[dist.name].path} and "
                f"{path}): delete one, or rebuild the wheelhouse with `make wheelhouse`"
            )
        wheels[dist.name] = dist
    return wheels


def _applies(req: Requirement, environment: Mapping[str, str] | None) -> bool:
    env = {"extra": "", **(environment or {})}
    return req.marker is None or bool(req.marker.evaluate(env))


def _satisfies(req: Requirement, version: str) -> bool:
    return req.specifier.contains(Version(version), prereleases=True)


def plan(
    requirements: Iterable[str],
    have: Mapping[str, Dist],
    wheels: Mapping[str, Dist],
    environment: Mapping[str, str] | None = None,
) -> Plan:
    """What to install from ``wheels`` so that ``requirements`` hold on a machine that ``have``.

    A requirement is met by an installed distribution of its name (or one of its
    :data:`ALTERNATIVES`) at a version it accepts; else by the wheel of that name, whose
    requirements are then met the same way. :data:`EXCLUDED` ones must be installed. Markers
    are evaluated for the running interpreter (``environment`` overrides its values).
    """
    queue = [Requirement(r) for r in requirements]
    present: dict[str, str] = {}
    chosen: dict[str, Dist] = {}
    problems: list[str] = []
    while queue:
        req = queue.pop(0)
        if not _applies(req, environment):
            continue
        name = canonical(req.name)
        if name in chosen:
            if not _satisfies(req, chosen[name].version):
                problems.append(f"{req}: the wheelhouse's {name} is {chosen[name].version}")
            continue
        candidates = [have[n] for n in (name, *ALTERNATIVES.get(name, ())) if n in have]
        good = [d for d in candidates if _satisfies(req, d.version)]
        if good:
            present[name] = f"{good[0].name} {good[0].version}"
            continue
        found = ", ".join(f"{d.name} {d.version}" for d in candidates) or "not installed"
        if is_excluded(name):
            problems.append(f"{req}: {found}; the GPU machine's image must bring it")
            continue
        wheel = wheels.get(name)
        if wheel is not None and _satisfies(req, wheel.version):
            chosen[name] = wheel
            queue.extend(Requirement(r) for r in wheel.requires)
            continue
        where = f"the wheelhouse has {wheel.version}" if wheel else "not in the wheelhouse"
        problems.append(f"{req}: {found}, {where}")
    return Plan(present, tuple(chosen.values()), tuple(problems))


def closure(
    requirements: Iterable[str],
    have: Mapping[str, Dist],
    environment: Mapping[str, str] | None = None,
) -> list[Dist]:
    """The installed distributions that ``requirements`` need, transitively, in the order first
    needed, without :data:`EXCLUDED` ones and what only they need. A requirement that no
    installed distribution meets raises :class:`WheelhouseError` (the wheelhouse is built from a
    working install)."""
    queue = [Requirement(r) for r in requirements]
    out: dict[str, Dist] = {}
    while queue:
        req = queue.pop(0)
        name = canonical(req.name)
        if not _applies(req, environment) or is_excluded(name) or name in out:
            continue
        dist = next((have[n] for n in (name, *ALTERNATIVES.get(name, ())) if n in have), None)
        if dist is None or not _satisfies(req, dist.version):
            raise WheelhouseError(
                f"{req} is not met here ({dist.version if dist else 'not installed'}): "
                "build the wheelhouse from the project's venv (`make wheelhouse` does)"
            )
        out[name] = dist
        queue.extend(Requirement(r) for r in dist.requires)
    return list(out.values())


def download_command(
    dists: Sequence[Dist], dest: str | Path, python: str = GPU_PYTHON
) -> list[str]:
    """The ``pip download`` command line of the pure wheels of ``dists`` at their versions."""
    platforms = [arg for p in GPU_PLATFORMS for arg in ("--platform", p)]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(dest),
        *(f"{d.name}=={d.version}" for d in dists),
    ]


def install_command(wheels: Sequence[Dist], target: str | Path) -> list[str]:
    """The offline ``pip install`` of ``wheels`` into the folder ``target``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(target),
        *(str(w.path) for w in wheels),
    ]


def folder_mib(folder: str | Path) -> float:
    """Size of the wheels in a folder, MiB."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.whl")) / 2**20


def build(
    pyproject: str | Path, dest: str | Path, python: str = GPU_PYTHON, max_mib: float = MAX_MIB
) -> dict[str, Dist]:
    """Download the pure-Python wheels of the project's dependency closure into ``dest``
    (replaced whole only once every wheel is there and the folder is under ``max_mib``)."""
    needed = closure(project_requirements(pyproject), installed())
    pure = [d for d in needed if d.pure]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        subprocess.run(download_command(pure, tmp, python), check=True)
        got = wheelhouse(tmp)
        missing = [
            f"{d.name}=={d.version}"
            for d in pure
            if got.get(d.name, Dist("", "")).version != d.version
        ]
        if missing:
            raise WheelhouseError(f"pip download did not fetch {', '.join(missing)}")
        size = folder_mib(tmp)
        if size > max_mib:
            raise WheelhouseError(
                f"the wheelhouse would be {size:.1f} MiB (> {max_mib:g} MiB): too large to "
                "travel; drop a dependency or raise --max-mib"
            )
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    compiled = [f"{d.name} {d.version}" for d in needed if not d.pure]
    print(f"{dest}: {len(pure)} wheels, {folder_mib(dest):.1f} MiB, for Python {python}")
    print(f"left to the GPU machine (compiled): {', '.join(compiled) or 'none'}")
    print(
        f"left to the GPU machine (CUDA build): {', '.join(EXCLUDED)}, {'*, '.join(EXCLUDED_PREFIXES)}*"
    )
    return got


def install(pyproject: str | Path, folder: str | Path, target: str | Path) -> Plan:
    """Install what this interpreter lacks from the wheelhouse ``folder`` into ``target``;
    print the plan. Raises :class:`WheelhouseError` listing every unmet requirement (a missing
    ``folder`` is one only when something is lacking)."""
    requirements = project_requirements(pyproject)
    target = Path(target)
    search = [str(target), *sys.path]
    have_folder = Path(folder).is_dir()
    todo = plan(requirements, installed(search), wheelhouse(folder) if have_folder else {})
    if todo.problems:
        where = (
            f"wheelhouse {folder}"
            if have_folder
            else f"no wheelhouse at {folder}: build it with `make wheelhouse` and carry it"
        )
        raise WheelhouseError(f"unmet requirements: {'; '.join(todo.problems)} ({where})")
    for name, dist in todo.present.items():
        print(f"present  {name:<22} {dist}")
    if todo.install:
        for w in todo.install:
            print(f"install  {w.name:<22} {w.version}  ({w.path.name if w.path else ''})")
        subprocess.run(install_command(todo.install, target), check=True)
        after = plan(requirements, installed(search), {})
        if after.problems:
            raise WheelhouseError("still unmet after installing: " + "; ".join(after.problems))
    print(f"PYTHONPATH={target}" if todo.install or target.is_dir() else "nothing to install")
    return todo


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evaluate.wheelhouse build|install``; 2 on a :class:`WheelhouseError`."""
    parser = argparse.ArgumentParser(
        prog="python -m evaluate.wheelhouse", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--pyproject", default="pyproject.toml", help="the project's pyproject.toml"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="download the pure-Python wheels of the dependency closure")
    b.add_argument("--dest", default=".wheelhouse", help="wheelhouse folder (replaced)")
    b.add_argument("--python-version", default=GPU_PYTHON, help="the GPU machine's Python")
    b.add_argument("--max-mib", type=float, default=MAX_MIB, help="largest wheelhouse, MiB")
    i = sub.add_parser("install", help="install what this interpreter lacks from the wheelhouse")
    i.add_argument("--wheelhouse", default=".wheelhouse", help="wheelhouse folder")
    i.add_argument("--target", required=True, help="folder to install into (for PYTHONPATH)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.pyproject, args.dest, args.python_version, args.max_mib)
        else:
            install(args.pyproject, args.wheelhouse, args.target)
    except WheelhouseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(
            f"error: `{' '.join(map(str, exc.cmd[:6]))} ...` failed with status {exc.returncode}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
