"""Trained agents on disk: a class's agent of each seed, the δ each was trained with (its run
folder's ``config.json``), which evaluation must use, and what makes a run folder belong to one
run: a lock held while it trains (:func:`run_lock`) and the run id written in each of its files
(``config.json``, ``refinement.json``, ``checkpoints/state.json`` and an entry of each zip),
which evaluation checks (:func:`check_run`)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cutbg_env.errors import CheckpointError, RunBusyError, reason
from cutbg_env.io import file_sha256, pid_alive, write_json
from cutbg_env.paths import AGENT_FILE, CONFIG_FILE, agent_dir, make_command, seed_dir


def trained_agent(
    dataset: str, class_name: str, path: str | Path | None = None, seed: int = 0
) -> Path:
    """The zip of a trained agent: ``path``, else the one of ``seed`` in its run folder
    (:func:`~cutbg_env.paths.seed_dir`).

    Raises :class:`CheckpointError` naming the file and the command that trains it when the
    file does not exist (the command that resumes it when the folder holds an interrupted run,
    the process training it when one does now)."""
    zip_path = Path(path) if path else seed_dir(dataset, class_name, seed) / AGENT_FILE
    variables: dict[str, Any] = {"CLASS": class_name} | ({"SEED": seed} if seed else {})
    run_dir = zip_path.parent
    owner = training_owner(run_dir)
    if owner is not None:
        raise CheckpointError(
            f"{run_dir} is being trained now by {_describe(owner)}: evaluate it when it ends"
        )
    state = run_state(run_dir)
    if state == "interrupted":
        raise CheckpointError(
            f"{run_dir} holds an interrupted training run (no final agent.zip): finish it with "
            f"`{make_command('train', dataset, **variables, RESUME=1)}` (--resume), or start it "
            f"over with `{make_command('train', dataset, **variables, FORCE=1)}` (--force)"
        )
    if not zip_path.is_file():
        raise CheckpointError(
            f"no trained agent at {zip_path}: train one with "
            f"`{make_command('train', dataset, **variables)}`"
        )
    return zip_path


def load_agent(zip_path: str | Path, device: str = "cpu") -> Any:
    """SB3's ``DQN.load`` of an agent zip; a file that is not one raises
    :class:`CheckpointError` naming it (and never torch's advice on ``weights_only``)."""
    from stable_baselines3 import DQN

    try:
        return DQN.load(zip_path, device=device)
    except Exception as exc:  # SB3 raises whatever the zip, pickle or torch reader raised
        raise CheckpointError(
            f"{zip_path} is not a readable agent zip ({reason(exc)}): delete its run folder's "
            "files and retrain it (python -m train agent ... --force)"
        ) from exc


def trained_seeds(dataset: str, class_name: str) -> list[int]:
    """The seeds with a trained agent of the class, in order (seed 0 included when trained)."""
    base = agent_dir(dataset, class_name)
    seeds = [0] if (base / AGENT_FILE).is_file() else []
    for d in (base / "seeds").glob("seed_*"):
        tail = d.name[len("seed_") :]
        if tail.isdigit() and int(tail) > 0 and (d / AGENT_FILE).is_file():
            seeds.append(int(tail))
    return sorted(seeds)


def trained_delta(zip_path: str | Path) -> float:
    """The δ an agent was trained with, from ``config.json`` beside its zip.

    Raises :class:`CheckpointError` naming the file when it is missing or holds no δ (the agent
    cannot be evaluated under the reward it learned without it)."""
    config = Path(zip_path).parent / CONFIG_FILE
    try:
        delta = float(json.loads(config.read_text())["delta"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{config} is missing or holds no delta ({exc!r}): it is written by training; "
            f"retrain the agent of {Path(zip_path).parent}"
        ) from exc
    return delta


def check_classifier(zip_path: str | Path, classifier: str | Path, fix: str) -> None:
    """Raise :class:`CheckpointError` when the agent of ``zip_path`` was trained on another
    classifier than ``classifier`` (the ``classifier_sha256`` of its ``config.json``; an agent
    whose config has none, from an older version, is accepted): its observations were that
    classifier's features, so it means nothing on these."""
    config = Path(zip_path).parent / CONFIG_FILE
    try:
        recorded = json.loads(config.read_text()).get("classifier_sha256")
    except (OSError, ValueError, AttributeError):
        return  # trained_delta names an unreadable config
    if recorded is None or not Path(classifier).is_file() or recorded == file_sha256(classifier):
        return  # a missing classifier: its loader names the command that creates it
    raise CheckpointError(
        f"{Path(zip_path).parent} was trained on another classifier than {classifier} "
        f"(sha256 {recorded[:12]}… in {config.name}): {fix}"
    )


# -- one run per folder: its id in every file, a lock while it trains ----------------------
RUN_ID_ENTRY = "cutbg_run_id.txt"
"""The entry of an agent or checkpoint zip that holds the run id (SB3's loader ignores it)."""
REFINEMENT_NAME = "refinement.json"
"""An agent's refinement table (:data:`cutbg_env.refine.REFINEMENT_FILE`)."""
RUN_FILES = (AGENT_FILE, CONFIG_FILE, REFINEMENT_NAME, "checkpoints", "tb", "members")
"""What a training run writes in its folder (``members/m<k>/``: its members' runs; a seed-0
folder also holds ``seeds/``)."""


def new_run_id() -> str:
    """A fresh run id: the start time and a random tag (``20261202-154501-3fa9c2``)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def stamp_zip(path: str | Path, run_id: str) -> None:
    """Write ``run_id`` into the zip at ``path`` (an SB3 save) as :data:`RUN_ID_ENTRY`."""
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(RUN_ID_ENTRY, run_id)


def zip_run_id(path: str | Path, fix: str) -> str | None:
    """The run id stamped in a zip (``None`` for a zip of an older version).

    Raises :class:`CheckpointError` naming the file and ``fix`` when it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as z:
            if RUN_ID_ENTRY not in z.namelist():
                return None
            return z.read(RUN_ID_ENTRY).decode("utf-8").strip()
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable agent zip ({reason(exc)}): {fix}") from exc


def _json(path: Path, fix: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({reason(exc)}): {fix}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not an object: {fix}")
    return obj


def lock_file(run_dir: Path) -> Path:
    """The lock held while a run trains in ``run_dir`` (beside it, so that clearing the folder
    never touches it)."""
    return run_dir.parent / f".{run_dir.name}.lock"


def owner_file(run_dir: Path) -> Path:
    """Who holds :func:`lock_file`: pid, host, run id and start time (JSON)."""
    return run_dir.parent / f".{run_dir.name}.owner.json"


def training_owner(run_dir: Path) -> dict | None:
    """The owner of a training running now in ``run_dir`` (``None`` when none is): the owner
    file of a live process (one on another host is taken as live)."""
    try:
        owner = json.loads(owner_file(run_dir).read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host == socket.gethostname() and not pid_alive(pid):
        return None
    return owner


def _describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid')} on {owner.get('host')} (run {owner.get('run_id')}, "
        f"started {owner.get('started')})"
    )


@contextmanager
def run_lock(
    run_dir: Path, run_id: str, elsewhere: str = "train into another folder with --out"
) -> Iterator[None]:
    """Hold the run folder's lock while training; another training of the folder raises
    :class:`RunBusyError` naming the holder and ``elsewhere`` (how to train somewhere else).
    ``run_dir`` may be a file that a training writes (the classifier's checkpoint): its lock
    lies beside it too."""
    from filelock import FileLock, Timeout

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file(run_dir))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = training_owner(run_dir) or {}
        raise RunBusyError(
            f"{run_dir} is being trained by {_describe(owner)}: wait for it to finish, or "
            f"{elsewhere}"
        ) from None
    try:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": run_id,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(owner_file(run_dir), owner)
        yield
    finally:
        owner_file(run_dir).unlink(missing_ok=True)
        lock.release()


def run_state(run_dir: Path) -> str:
    """``"empty"`` (no run file), ``"finished"`` (an ``agent.zip`` whose ``config.json`` is the
    final one of its run, or which has none: copied by hand or from an older version) or
    ``"interrupted"`` (anything else: a run killed before its end)."""
    if not any((run_dir / name).exists() for name in RUN_FILES):
        return "empty"
    if not (run_dir / AGENT_FILE).is_file():
        return "interrupted"
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "finished"
    except (OSError, ValueError):
        return "interrupted"
    finished = isinstance(config, dict) and config.get("finished", "timesteps" in config)
    return "finished" if finished else "interrupted"


def clear_run(run_dir: Path) -> None:
    """Remove a run's files from its folder (``--force``), keeping other runs' (``seeds/``)."""
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def run_ids(run_dir: Path, fix: str) -> dict[str, str | None]:
    """The run id of each file of the run in ``run_dir`` that exists."""
    ids: dict[str, str | None] = {}
    for name in (CONFIG_FILE, REFINEMENT_NAME, "checkpoints/state.json"):
        obj = _json(run_dir / name, fix)
        if obj is not None:
            ids[name] = obj.get("run_id")
    for z in [run_dir / AGENT_FILE, *sorted((run_dir / "checkpoints").glob("epoch_*.zip"))]:
        if z.is_file():
            ids[str(z.relative_to(run_dir))] = zip_run_id(z, fix)
    return ids


def check_run(run_dir: Path, fix: str) -> str | None:
    """The run id of ``run_dir``'s files; raises :class:`CheckpointError` when they disagree
    (files of two runs mixed in one folder). Files of older versions carry no id: a folder of
    such files only is accepted (``None``)."""
    ids = run_ids(run_dir, fix)
    if len(set(ids.values())) > 1:
        listing = ", ".join(f"{k}: {v or 'no run id'}" for k, v in ids.items())
        raise CheckpointError(f"{run_dir} mixes the files of several runs ({listing}): {fix}")
    return next(iter(ids.values()), None)
