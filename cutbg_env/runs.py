"""Trained agents on disk: a class's agent, its ensemble members, and the δ each was trained
with (its run folder's ``config.json``), which evaluation must use."""

from __future__ import annotations

import json
from pathlib import Path

from cutbg_env.errors import CheckpointError
from cutbg_env.paths import AGENT_FILE, CONFIG_FILE, agent_dir, ensemble_dir, make_command


def trained_agent(dataset: str, class_name: str, path: str | Path | None = None) -> Path:
    """The zip of a trained agent: ``path``, else ``runs/<dataset>/<class>/agent.zip``.

    Raises :class:`CheckpointError` naming the file and the command that trains it when the
    file does not exist."""
    zip_path = Path(path) if path else agent_dir(dataset, class_name) / AGENT_FILE
    if not zip_path.is_file():
        raise CheckpointError(
            f"no trained agent at {zip_path}: train one with "
            f"`{make_command('train', dataset, CLASS=class_name)}`"
        )
    return zip_path


def ensemble_agents(dataset: str, class_name: str) -> list[Path]:
    """The zips of a class's ensemble: its agent (``runs/<dataset>/<class>/agent.zip``, first)
    and every trained member (``ensemble/seed_<N>/agent.zip``, by seed). One path when no member
    was trained; :func:`trained_agent`'s error when the class has no agent."""
    members = [
        d / AGENT_FILE
        for d in ensemble_dir(dataset, class_name).glob("seed_*")
        if (d / AGENT_FILE).is_file() and d.name[len("seed_") :].isdigit()
    ]
    members.sort(key=lambda p: int(p.parent.name[len("seed_") :]))
    return [trained_agent(dataset, class_name), *members]


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
