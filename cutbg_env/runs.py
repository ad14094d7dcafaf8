"""Trained agents on disk: a class's agent of each seed, and the δ each was trained with (its
run folder's ``config.json``), which evaluation must use."""

from __future__ import annotations

import json
from pathlib import Path

from cutbg_env.errors import CheckpointError
from cutbg_env.paths import AGENT_FILE, CONFIG_FILE, agent_dir, make_command, seed_dir


def trained_agent(
    dataset: str, class_name: str, path: str | Path | None = None, seed: int = 0
) -> Path:
    """The zip of a trained agent: ``path``, else the one of ``seed`` in its run folder
    (:func:`~cutbg_env.paths.seed_dir`).

    Raises :class:`CheckpointError` naming the file and the command that trains it when the
    file does not exist."""
    zip_path = Path(path) if path else seed_dir(dataset, class_name, seed) / AGENT_FILE
    if not zip_path.is_file():
        variables = {"CLASS": class_name} | ({"SEED": seed} if seed else {})
        raise CheckpointError(
            f"no trained agent at {zip_path}: train one with "
            f"`{make_command('train', dataset, **variables)}`"
        )
    return zip_path


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
