"""Shared helpers of the env tests: a tiny dataset, a random-init classifier, env kwargs.

Plain functions (no fixtures here): each test module wraps them in module/session-scoped
fixtures built with ``tmp_path_factory`` (or reuses ``tests/conftest.py``'s ``tiny_animals``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from cutbg_env.backbone import BackboneConfig, Classifier, save_classifier
from cutbg_env.data import GeneratorConfig, VOCDataset, generate

TINY_CONFIG = GeneratorConfig(n_trainval=24, n_test=12, seed=0)
"""The tiny cluttered-animals dataset (same config as ``conftest.TINY_ANIMALS``)."""

TINY_CLASS = "dog"
"""A class with several images in the tiny trainval split (6 with seed 0)."""


def make_tiny_dataset(root: str | Path) -> Path:
    """Generate the tiny dataset at ``root`` (a no-op when it is already there); return it."""
    return generate(TINY_CONFIG, Path(root))


def dataset_classes(root: str | Path, split: str = "trainval") -> tuple[str, ...]:
    """Class names of a VOC-layout dataset folder."""
    return VOCDataset(root, split).classes


def pick_class(root: str | Path, split: str = "trainval", min_images: int = 3) -> str:
    """:data:`TINY_CLASS` when it has ``min_images`` positives, else the class with the most."""
    ds = VOCDataset(root, split)
    counts = {c: len(ds.positives(c)) for c in ds.classes}
    if counts.get(TINY_CLASS, 0) >= min_images:
        return TINY_CLASS
    return max(counts, key=lambda c: counts[c])


def make_tiny_checkpoint(path: str | Path, classes: tuple[str, ...] | list[str]) -> Path:
    """Save a random-init CPU-default :class:`Classifier` (seeded) at ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Classifier(BackboneConfig(), classes).eval()
    save_classifier(model, path)
    return path


def tiny_env_kwargs(root: str | Path, ckpt: str | Path, class_name: str, **extra: Any) -> dict:
    """JSON-serialisable keyword arguments of ``gym.make("CutBackground-v0", ...)``."""
    kwargs: dict[str, Any] = {
        "dataset": str(root),
        "checkpoint": str(ckpt),
        "class_name": class_name,
        "delta": 0.1,
    }
    kwargs.update(extra)
    return kwargs


def make_registered(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` after ``import cutbg_env`` (registers the ids in a fresh spawned process)."""
    import cutbg_env  # noqa: F401

    return gym.make(env_id, **kwargs)
