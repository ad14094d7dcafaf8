"""Default locations of generated data and runs (both git-ignored, relative to the checkout).

``CUTBG_DATA`` and ``CUTBG_RUNS`` override the two base folders.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Base folder of datasets: ``$CUTBG_DATA`` or ``data``."""
    return Path(os.environ.get("CUTBG_DATA", "data"))


def runs_dir() -> Path:
    """Base folder of checkpoints and logs: ``$CUTBG_RUNS`` or ``runs``."""
    return Path(os.environ.get("CUTBG_RUNS", "runs"))


def dataset_key(dataset: str) -> str:
    """Folder name under ``runs/`` of a dataset: its name, or the last part of a folder path."""
    return Path(dataset).name if ("/" in dataset or os.sep in dataset) else dataset


def classifier_path(dataset: str) -> Path:
    """Where ``make train-classifier`` writes the classifier of a dataset."""
    return runs_dir() / dataset_key(dataset) / "classifier.pt"


def calibration_path(dataset: str) -> Path:
    """Per-class δ and heat-map thresholds written by ``python -m train calibrate``."""
    return runs_dir() / dataset_key(dataset) / "calibration.json"


def agent_dir(dataset: str, class_name: str) -> Path:
    """Folder of one class's agent (``agent.zip``, ``config.json``, TensorBoard logs)."""
    return runs_dir() / dataset_key(dataset) / class_name


def ensemble_dir(dataset: str, class_name: str) -> Path:
    """Folder of a class's ensemble members: ``<agent_dir>/ensemble/seed_<N>/`` each, one run
    folder per extra seed (``python -m train agent --ensemble-member --seed N``)."""
    return agent_dir(dataset, class_name) / "ensemble"
