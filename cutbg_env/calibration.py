"""The small validation subset with boxes, and the calibration file chosen on it.

The only place boxes are used before evaluation (as in the paper): a seeded ≤ 5 % subset of the
training split (:func:`validation_subset`). ``python -m train calibrate`` chooses each class's δ
and refinement setting on it, counts every refinement setting's hits there, and writes them to
``runs/<dataset>/calibration.json`` (:func:`load_calibration`, each class with the sha256 of the
classifier it was calibrated with);
:func:`resolve_delta` is δ's resolution order (the given value, the calibrated one, the shipped
classifier's, :data:`DEFAULT_DELTA`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cutbg_env import paths, shipped
from cutbg_env.errors import DataError
from cutbg_env.geometry import Box
from cutbg_env.io import file_sha256
from cutbg_env.refine import parse_setting

if TYPE_CHECKING:
    from cutbg_env.world import CutWorld

DEFAULT_DELTA = 0.1
"""δ used when neither the caller nor a calibration file gives one."""
VALIDATION_FRACTION = 0.05
"""Share of the training split in the validation subset (the paper's "small validation set")."""
VALIDATION_SEED = 0
"""Seed of the validation subset."""


def validation_subset(n_images: int, fraction: float, seed: int) -> list[int]:
    """Indices of the validation subset: a seeded ``fraction`` (≤ 5%) of ``n_images``."""
    if not 0 < fraction <= 0.05:
        raise ValueError(f"fraction={fraction}: the validation subset must be 0 < f ≤ 0.05")
    rng = np.random.default_rng(seed)
    k = max(1, round(n_images * fraction))
    return sorted(rng.permutation(n_images)[:k].tolist())


def validation_images(
    world: CutWorld, fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED
) -> list[int]:
    """The images of the validation subset that contain the world's class."""
    positives = set(world.positives)
    return [i for i in validation_subset(len(world.data), fraction, seed) if i in positives]


def validation_truth(world: CutWorld, images: list[int]) -> dict[int, list[Box]]:
    """Per image: the class's non-difficult ground-truth boxes."""
    data, cls = world.data, world.class_name
    return {i: [b for b, d in data.gt_boxes(i, cls) if not d] for i in images}


CALIBRATION_TABLES = (
    "delta",
    "heatmap_layer",
    "heatmap_region",
    "heatmap_threshold",
    "validation",
    "classifier",
    "refinement_hits",
)
"""The per-class tables of a calibration file (each maps a class to its value; ``classifier``:
the sha256 of the classifier file the class was calibrated with; ``refinement_hits``: the
validation images whose refined greedy-cut box is a CorLoc hit, per setting key, which
:func:`cutbg_env.refine.dataset_setting` pools into the dataset's one refinement setting)."""


def load_calibration(dataset: str, classifier: str | Path | None = None) -> dict:
    """The calibration file of a dataset (``{}`` when there is none).

    With ``classifier`` (the classifier file the stage runs), a class whose ``classifier`` entry
    records another file's sha256 is left out, with a warning naming the command that
    recalibrates it (entries without a record are kept); and when ``classifier`` is the one
    shipped with the package, the shipped calibration (:func:`cutbg_env.shipped.calibration`)
    fills in each table's classes the file lacks.

    Raises :class:`DataError` naming the file and the command that recreates it when it is not
    UTF-8 JSON, not an object, a table is not an object of classes, or a δ is not a number in
    [0, 1]."""
    calib = _read_calibration(dataset)
    if classifier is None:
        return calib
    calib = _made_with(dataset, calib, Path(classifier))
    return _with_shipped(calib) if shipped.is_shipped_classifier(classifier) else calib


def _made_with(dataset: str, calib: dict, classifier: Path) -> dict:
    """``calib`` without the classes calibrated with a classifier other than ``classifier``."""
    recorded = calib.get("classifier", {})
    if not recorded or not classifier.is_file():
        return calib
    digest = file_sha256(classifier)
    stale = sorted(c for c, d in recorded.items() if d != digest)
    if not stale:
        return calib
    command = paths.stage_hint(
        f"python -m train calibrate --dataset {dataset} --classes {','.join(stale)}"
    )
    warnings.warn(
        f"{paths.calibration_path(dataset)}: {', '.join(stale)} calibrated with another "
        f"classifier than {classifier}; ignoring those entries. Recalibrate: {command}",
        stacklevel=3,
    )
    kept = dict(calib)
    for key in CALIBRATION_TABLES:
        kept[key] = {c: v for c, v in calib.get(key, {}).items() if c not in stale}
    return kept


def _read_calibration(dataset: str) -> dict:
    """:func:`load_calibration` of the file alone."""
    path = paths.calibration_path(dataset)
    if not path.is_file():
        return {}
    fix = f"recreate it with {paths.stage_hint(f'python -m train calibrate --dataset {dataset}')}"
    try:
        calib = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"calibration file {path} is unreadable ({exc}): {fix}") from exc
    if not isinstance(calib, dict):
        raise DataError(
            f"calibration file {path} holds a {type(calib).__name__}, not an object: {fix}"
        )
    for key in CALIBRATION_TABLES:
        if not isinstance(calib.get(key, {}), dict):
            raise DataError(
                f"calibration file {path}: {key!r} is a {type(calib[key]).__name__}, "
                f"not an object of classes: {fix}"
            )
    for c, d in calib.get("delta", {}).items():
        ok = isinstance(d, int | float) and not isinstance(d, bool) and 0 <= d <= 1
        if not ok:
            raise DataError(
                f"calibration file {path}: delta of {c!r} is {d!r}, not a number in [0, 1]: {fix}"
            )
    for c, table in calib.get("refinement_hits", {}).items():
        try:
            ok = isinstance(table, dict) and all(
                parse_setting(k) and type(n) is int and n >= 0 for k, n in table.items()
            )
        except ValueError:
            ok = False
        if not ok:
            raise DataError(
                f"calibration file {path}: refinement_hits of {c!r} is not an object of "
                f"'layer/region/threshold' keys and hit counts ≥ 0: {fix}"
            )
    return calib


def _with_shipped(calib: dict) -> dict:
    """``calib`` over the shipped calibration: per table, a class's value from ``calib`` when it
    has one, else the shipped one's."""
    merged = dict(calib)
    base = shipped.calibration()
    for key in CALIBRATION_TABLES:
        merged[key] = base.get(key, {}) | calib.get(key, {})
    return merged


def resolve_delta(
    dataset: str, class_name: str, delta: float | None, classifier: str | Path | None = None
) -> float:
    """δ for a class: the given value, else the calibrated one (``calibration.json`` of the
    dataset's runs, unless made with another classifier than ``classifier``), else, when
    ``classifier`` is the one shipped with the package, the shipped calibration's
    (:func:`cutbg_env.shipped.calibration`), else :data:`DEFAULT_DELTA` with a warning."""
    if delta is not None:
        return float(delta)
    calib = load_calibration(dataset, classifier).get("delta", {})
    if class_name in calib:
        return float(calib[class_name])
    command = paths.stage_hint(f"python -m train calibrate --dataset {dataset}")
    warnings.warn(
        f"no calibrated delta for {dataset}/{class_name} ({paths.calibration_path(dataset)}); "
        f"using {DEFAULT_DELTA}. Run {command}, or pass delta=.",
        stacklevel=3,
    )
    return DEFAULT_DELTA
