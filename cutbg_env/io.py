"""File output: atomic writes (a temp file in the destination folder, then ``os.replace``) with
the permissions of the umask, the removal of temp files left by killed processes, and the
one-line progress messages of the commands."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"
"""Marks a temp name: ``.<name>.tmp-<pid>-<random><suffix>`` (the pid of the writer)."""
_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)(?:-.*)?$")


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove the temp files and folders (``.<name>.tmp-<pid>...``) of processes that no longer
    exist from ``folder`` (and its subfolders when ``recursive``); return what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    entries = folder.rglob(".*") if recursive else folder.glob(".*")
    for p in sorted(entries):
        m = _TEMP_RE.match(p.name)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return sorted(removed)


def check_writable(folder: str | Path, flag: str) -> Path:
    """Check that files can be written in ``folder`` (or, when it does not exist yet, that it
    can be created: its nearest existing parent is a folder one can write in), creating
    nothing; raises :class:`~cutbg_env.errors.OutputError` naming the folder and ``flag``."""
    from cutbg_env.errors import OutputError

    folder = Path(folder)
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if not base.is_dir():
            raise NotADirectoryError(f"{base} is not a folder")
        fd, probe = tempfile.mkstemp(dir=base, prefix=f".probe{TEMP_MARK}{os.getpid()}-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write in {folder} ({exc.strerror or exc}): make it writable or choose "
            f"another folder with {flag}"
        ) from exc
    return folder


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    The file gets the mode a plain ``open`` would give it (``0o666 & ~umask``), not
    ``mkstemp``'s 0600; a read-only ``path`` is refused (:class:`~cutbg_env.errors.OutputError`),
    not replaced. ``suffix`` keeps an extension on the temp name for writers that look at
    it (e.g. ``.png``). The temp name carries the writer's pid, so that
    :func:`remove_stale_temps` can remove it when the writer was killed.
    """
    from cutbg_env.errors import OutputError

    path = Path(path)
    if path.is_file() and not path.stat().st_mode & 0o200:  # no owner write bit (even for root)
        raise OutputError(f"{path} is read-only: make it writable (chmod u+w) to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path.parent} ({exc.strerror or exc})") from exc
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}{TEMP_MARK}{os.getpid()}-", suffix=suffix or ".tmp"
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes (remembered per path, size and mtime, so a
    stage that asks again does not re-read a large checkpoint)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def relpath(path: str | Path) -> str:
    """``path`` shown relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
