"""Where generated data, classifiers, calibrations and agents live, and how to make them.

Default locations are relative to the checkout (both git-ignored): ``data/`` and ``runs/``;
``CUTBG_DATA`` and ``CUTBG_RUNS`` override the two base folders. A class's run folder is
``runs/<dataset>/<class>/`` (``agent.zip``, ``config.json``, ``refinement.json``, TensorBoard
logs), for seed 0; the agent of seed ``N > 0`` has its own run folder,
``runs/<dataset>/<class>/seeds/seed_<N>/`` (the seeds that evaluation averages over, and that
the ensemble rows act on together).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATASET = "animals"
"""The embedded cluttered-animals set (generated on first use)."""
AGENT_FILE = "agent.zip"
"""The trained agent in a run folder (SB3's zip; ``DQN.load`` reads it)."""
CONFIG_FILE = "config.json"
"""A run's arguments, the δ it was trained with and its timings, in its run folder."""


def data_dir() -> Path:
    """Base folder of datasets: ``$CUTBG_DATA`` or ``data``."""
    return Path(os.environ.get("CUTBG_DATA", "data"))


def runs_dir() -> Path:
    """Base folder of checkpoints and logs: ``$CUTBG_RUNS`` or ``runs``."""
    return Path(os.environ.get("CUTBG_RUNS", "runs"))


def dataset_key(dataset: str) -> str:
    """Folder name under ``runs/`` of a dataset: its name, or the last part of a folder path."""
    return Path(dataset).name if ("/" in dataset or os.sep in dataset) else dataset


def make_command(target: str, dataset: str, **variables: object) -> str:
    """The ``make`` command line of a pipeline stage: ``make_command("train", "voc2007",
    CLASS="cat")`` is ``make train CLASS=cat DATASET=voc2007``; ``DATASET`` is left out on the
    embedded default."""
    words = ["make", target, *(f"{k}={v}" for k, v in variables.items())]
    if dataset != DEFAULT_DATASET:
        words.append(f"DATASET={dataset}")
    return " ".join(words)


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
