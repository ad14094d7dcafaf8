"""Where generated data, classifiers, calibrations and agents live, and how to make them.

The rule (:func:`data_dir`, :func:`runs_dir`), in order:

1. ``$CUTBG_DATA`` and ``$CUTBG_RUNS``, when set, are the two base folders;
2. in a checkout of this repository (the current folder holds the project's ``pyproject.toml``,
   :func:`in_checkout`) they are ``data/`` and ``runs/`` there, as the ``make`` targets expect;
3. anywhere else (an installed package used from any folder) they are ``$CUTBG_HOME/data`` and
   ``$CUTBG_HOME/runs``, with ``$CUTBG_HOME`` defaulting to the per-user cache folder
   (``platformdirs.user_cache_dir("cutbg")``, ``~/.cache/cutbg`` on Linux).

A class's run folder is ``runs/<dataset>/<class>/`` (``agent.zip``, ``config.json``,
``refinement.json``, TensorBoard logs), for seed 0; the agent of seed ``N > 0`` has its own run
folder, ``runs/<dataset>/<class>/seeds/seed_<N>/`` (the seeds that evaluation averages over, and
that the ensemble rows act on together).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

DEFAULT_DATASET = "animals"
"""The embedded cluttered-animals set (generated on first use)."""
AGENT_FILE = "agent.zip"
"""The trained agent in a run folder (SB3's zip; ``DQN.load`` reads it)."""
CONFIG_FILE = "config.json"
"""A run's arguments, the δ it was trained with and its timings, in its run folder."""
PROJECT_NAME = "cutbg-env"
"""The ``[project] name`` of this repository's ``pyproject.toml`` (how a checkout is told apart)."""
CHECKOUT_HINT = "in a clone of the cutbg repository (training is not part of the installed package)"
"""Said after a ``make`` command when the user is not in a checkout."""


def in_checkout(folder: str | Path = ".") -> bool:
    """Whether ``folder`` (default: the current one) is the root of a checkout of this project:
    it holds a ``pyproject.toml`` whose project is :data:`PROJECT_NAME`."""
    try:
        text = (Path(folder) / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return any(line.replace(" ", "") == f'name="{PROJECT_NAME}"' for line in text.splitlines())


def home_dir() -> Path:
    """``$CUTBG_HOME``, else the per-user cache folder of cutbg (``~/.cache/cutbg`` on Linux)."""
    home = os.environ.get("CUTBG_HOME")
    if home:
        return Path(home)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cutbg", appauthor=False))


def _base(variable: str, name: str) -> Path:
    value = os.environ.get(variable)
    if value:
        return Path(value)
    return Path(name) if in_checkout() else home_dir() / name


def data_dir() -> Path:
    """Base folder of datasets: ``$CUTBG_DATA``, else ``data`` in a checkout, else
    ``$CUTBG_HOME/data``."""
    return _base("CUTBG_DATA", "data")


def runs_dir() -> Path:
    """Base folder of checkpoints and logs: ``$CUTBG_RUNS``, else ``runs`` in a checkout, else
    ``$CUTBG_HOME/runs``."""
    return _base("CUTBG_RUNS", "runs")


def dataset_key(dataset: str) -> str:
    """Folder name under ``runs/`` of a dataset: its name (``animals``, ``voc2007``, ...), or for
    a folder path its last part and a short hash of the resolved path (``c-1a2b3c4d``), so that
    two folders with the same last part never share a runs folder."""
    if "/" not in dataset and os.sep not in dataset:
        return dataset
    import hashlib

    resolved = str(Path(dataset).expanduser().resolve())
    digest = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(resolved).name) or "dataset"
    return f"{name}-{digest}"


def make_command(target: str, dataset: str, **variables: object) -> str:
    """The ``make`` command line of a pipeline stage: ``make_command("train", "voc2007",
    CLASS="cat")`` is ``make train CLASS=cat DATASET=voc2007``; ``DATASET`` is left out on the
    embedded default."""
    words = ["make", target, *(f"{k}={v}" for k, v in variables.items())]
    if dataset != DEFAULT_DATASET:
        words.append(f"DATASET={shlex.quote(dataset)}")
    return " ".join(words)


def stage_hint(command: str) -> str:
    """``command`` in backticks, followed outside a checkout by where it runs
    (:data:`CHECKOUT_HINT`): the training and calibration commands exist only in a checkout."""
    return f"`{command}`" if in_checkout() else f"`{command}` {CHECKOUT_HINT}"


def classifier_path(dataset: str) -> Path:
    """Where ``make train-classifier`` writes the classifier of a dataset."""
    return runs_dir() / dataset_key(dataset) / "classifier.pt"


def calibration_path(dataset: str) -> Path:
    """Per-class δ and heat-map settings written by ``python -m train calibrate``."""
    return runs_dir() / dataset_key(dataset) / "calibration.json"


def agent_dir(dataset: str, class_name: str) -> Path:
    """Run folder of one class's agent (``agent.zip``, ``config.json``, TensorBoard logs)."""
    return runs_dir() / dataset_key(dataset) / class_name


def seed_dir(dataset: str, class_name: str, seed: int = 0) -> Path:
    """Run folder of the class's agent of ``seed``: :func:`agent_dir` for seed 0, else
    ``<agent_dir>/seeds/seed_<seed>/``."""
    if seed < 0:
        raise ValueError(f"seed={seed}: seeds are 0, 1, 2, ...")
    base = agent_dir(dataset, class_name)
    return base if seed == 0 else base / "seeds" / f"seed_{seed}"
