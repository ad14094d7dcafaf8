"""bf16 autocast, the GPU path's precision, run on the CPU: the classifier scores of a world with
``amp=True`` agree with float32 within the GPU check's 1e-2 (the issue's bound)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import dataset_classes, make_tiny_checkpoint, pick_class

from cutbg_env import shipped
from cutbg_env.backbone import load_classifier
from cutbg_env.world import CutWorld

TOLERANCE = 1e-2
"""Largest allowed |p_bf16 - p_fp32| (the GPU check's bound)."""


def random_crops(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 4)`` grid crops ``(x0, y0, x1, y1)`` with sides of at least 4 cells."""
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(0, 20, n), rng.integers(0, 20, n)
    x1, y1 = x0 + rng.integers(4, 29 - x0), y0 + rng.integers(4, 29 - y0)
    return np.stack([x0, y0, np.minimum(x1, 28), np.minimum(y1, 28)], 1)


@pytest.fixture(params=["shipped", "random"], scope="module")
def classifier_file(request, tiny_animals: Path, tmp_path_factory) -> Path:
    if request.param == "shipped":
        return shipped.classifier_path()
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    return make_tiny_checkpoint(path, dataset_classes(tiny_animals))


def test_cpu_world_runs_fp32_by_default(tiny_animals: Path) -> None:
    model, _ = load_classifier(shipped.classifier_path())
    kwargs = {"dataset": str(tiny_animals), "class_name": pick_class(tiny_animals), "model": model}
    assert CutWorld(**kwargs).amp is False
    assert CutWorld(**kwargs, amp=True).amp is True


@pytest.mark.parametrize("n_crops", [8, 96], ids=["slices", "masks"])
def test_bf16_autocast_scores_agree_with_fp32(
    tiny_animals: Path, classifier_file: Path, n_crops: int
) -> None:
    model, _ = load_classifier(classifier_file)
    cls = pick_class(tiny_animals)
    kwargs = {"dataset": str(tiny_animals), "split": "trainval", "class_name": cls}
    fp32 = CutWorld(**kwargs, model=model, amp=False)
    bf16 = CutWorld(**kwargs, model=model, amp=True)
    images = (fp32.positives * n_crops)[:n_crops]
    crops = random_crops(n_crops)
    mids32, mids16 = fp32.mid_maps(images), bf16.mid_maps(images)
    assert mids32.dtype == mids16.dtype == torch.float32  # the cache stores float32 either way
    _, p32 = fp32.score_crops(mids32, crops)
    _, p16 = bf16.score_crops(mids16, crops)
    diff = np.abs(p16 - p32)
    assert diff.max() < TOLERANCE, diff.max()
    assert diff.max() > 0  # bf16 did run: the scores are not the float32 ones
    _, full32 = fp32.full(fp32.positives)
    _, full16 = bf16.full(bf16.positives)
    assert np.abs(np.subtract(full16, full32)).max() < TOLERANCE
