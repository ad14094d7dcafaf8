"""What the package ships for the embedded default (``cutbg_env/assets/``, package data).

* the classifier of the *cluttered-animals* dataset (``animals-classifier.pt``, its recipe in
  ``animals-classifier.json``), used when no checkpoint is given and none is found at
  ``runs/animals/classifier.pt``;
* its calibration (``animals-calibration.json``: δ and the heat-map setting of every class, as
  ``python -m train calibrate`` writes them, with how it was made), used for δ when the env runs
  the shipped classifier and no calibration file gives the class's;
* the 10,000 Animal-MNIST silhouettes the dataset generator pastes (``animal-mnist.npz``, under
  the MIT license of their source, ``ANIMAL-MNIST-LICENSE.txt``), so that generating the dataset
  needs neither the ``animal-mnist`` package nor TensorFlow.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np

from cutbg_env.errors import DataError

DATASET = "animals"
"""The dataset the shipped classifier and calibration belong to."""
CLASSIFIER = "animals-classifier.pt"
CALIBRATION = "animals-calibration.json"
GLYPHS = "animal-mnist.npz"


def asset(name: str) -> Path:
    """The path of a shipped file; :class:`DataError` when the installation lacks it."""
    path = Path(str(files("cutbg_env") / "assets" / name))
    if not path.is_file():
        raise DataError(
            f"the package file {path} is missing: the cutbg-env installation is incomplete, "
            "reinstall it (pip install --force-reinstall cutbg-env)"
        )
    return path


def classifier_path() -> Path:
    """The shipped classifier of the embedded dataset."""
    return asset(CLASSIFIER)


@cache
def _calibration_text() -> str:
    return asset(CALIBRATION).read_text(encoding="utf-8")


def calibration() -> dict:
    """The shipped classifier's calibration (a fresh copy: the caller may change it)."""
    return json.loads(_calibration_text())


def is_shipped_classifier(path: str | Path) -> bool:
    """Whether ``path`` is the shipped classifier file itself."""
    try:
        return Path(path).resolve() == classifier_path().resolve()
    except (OSError, DataError):
        return False


def glyphs() -> tuple[np.ndarray, np.ndarray]:
    """The Animal-MNIST silhouettes as stored: ``(10000, 28, 28)`` uint8 images and ``(10000,)``
    int64 labels (read without pickle)."""
    path = asset(GLYPHS)
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(
            f"{path} is not a readable glyph archive ({exc}); reinstall cutbg-env"
        ) from None
    return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64).reshape(-1)
