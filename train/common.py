"""Pieces the training stages share: dataset opening, seeding, threads, class checks."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch

from cutbg_env.data import VOCDataset, resolve_dataset
from cutbg_env.data.voc import DATASET_SPLITS, VOC_CLASSES
from cutbg_env.errors import UnknownClassError


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed Python, numpy and torch; ``threads > 0`` sets torch's intra-op threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)


def splits(dataset: str) -> tuple[str, str]:
    """``(train_split, test_split)`` of a dataset name (VOC layout folders: trainval/test)."""
    return DATASET_SPLITS.get(dataset, ("trainval", "test"))


def open_split(dataset: str, root: str | None, split: str) -> VOCDataset:
    """Open one split of a dataset (the embedded one is generated on first use)."""
    return VOCDataset(resolve_dataset(dataset, root), split)


def check_class(data: VOCDataset, class_name: str, dataset: str) -> None:
    """Raise :class:`UnknownClassError` unless ``class_name`` is a class of ``data``."""
    if class_name in data.classes:
        return
    msg = f"{class_name!r} is not a class of dataset {dataset!r} ({data.root}). "
    msg += f"Its classes: {', '.join(data.classes)}."
    if class_name in VOC_CLASSES and dataset not in ("voc2007", "voc2012"):
        msg += (
            f" {class_name!r} is a PASCAL VOC class: put VOC under data/VOCdevkit/VOC2007 and "
            f"run `make train DATASET=voc2007 CLASS={class_name}`."
        )
    raise UnknownClassError(msg)


def log(msg: str) -> None:
    """One progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def relpath(path: Path) -> str:
    """Path shown relative to the working directory when possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
