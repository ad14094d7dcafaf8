"""The classifier recipe's last stage: crops of pseudo-boxes, so the score follows the object.

Why (docs/experiments.md, 2026-12-07): after CutMix the score drop of cutting *all* the
background varies across images with a std of 0.13–0.21, while one cell of the object's edge
adds a median 0.001–0.015, so a threshold δ on the drop cannot stop a cut into the object.

What, within weak supervision (image labels only, no box):

1. **Pseudo-boxes.** For every training image and each class it holds, the ``heatmap`` baseline's
   own box of the classifier being trained (the sum-pooled mid-level map of the whole image,
   binarised at a fraction of its peak, the region whose zeroing drops the class score most:
   :func:`cutbg_env.refine.refined_box` with the setting ``mid/drop/0.3``), as a grid crop.
2. **Crops.** Each training image keeps one crop of its mid-level map (zero outside, as the env
   pads): around the pseudo-box of one of its classes, with random background margins, and with
   probability ``cut`` one side cut 1 … half the box's side into it.
3. **Targets.** A positive class's target scales with the share of its pseudo-box the crop keeps
   (``1-ε/2`` kept whole, ``ε/2`` cut away); a positive class without a pseudo-box (moved off the
   map by the translation) is left out of the loss; negatives stay negative.

So a crop that keeps all of the object keeps its score whatever background it lost, and each
cell cut off the object lowers it: the shape of the reward's threshold test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cutbg_env.backbone import Classifier
from cutbg_env.data import VOCDataset
from cutbg_env.geometry import FULL_CROP, GRID, Crop, box_to_crop, crop_area
from cutbg_env.refine import Setting, refined_box
from cutbg_env.world import CutWorld

PseudoBoxes = dict[int, dict[int, Crop]]
"""Image index → class index → the pseudo-box as a grid crop."""


def pseudo_boxes(
    model: Classifier,
    data: VOCDataset,
    dataset: str,
    setting: Setting,
    device: str = "cpu",
    root: str | None = None,
) -> PseudoBoxes:
    """The ``heatmap`` baseline's box of ``model`` (``setting``: layer, region, threshold) for
    every (image, class it holds) of ``data``, as grid crops. ``model`` is put in eval mode."""
    model.eval()
    boxes: PseudoBoxes = {}
    total = sum(len(data.positives(c)) for c in data.classes)
    with tqdm(total=total, desc="pseudo-boxes", leave=False) as bar:
        for c in data.classes:  # one class's mid-level maps cached at a time
            world = CutWorld(
                dataset, data.split, c, root=root, device=device, model=model, data=data
            )
            for i in world.positives:
                a = data.annotation(i)
                box, _ = refined_box(world, i, FULL_CROP, setting, (a.width, a.height))
                boxes.setdefault(i, {})[data.class_index(c)] = box_to_crop(box, a.width, a.height)
                bar.update()
    return boxes


def move_crop(crop: Crop, flip: bool, shift: tuple[int, int], grid: int = GRID) -> Crop | None:
    """A grid crop after the image's horizontal ``flip`` (first) and translation by ``shift``
    ``(dy, dx)`` cells (then), clipped to the map; ``None`` when nothing of it is left."""
    x0, y0, x1, y1 = crop
    if flip:
        x0, x1 = grid - x1, grid - x0
    dy, dx = shift
    x0, x1 = max(x0 + dx, 0), min(x1 + dx, grid)
    y0, y1 = max(y0 + dy, 0), min(y1 + dy, grid)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def kept_share(box: Crop, crop: Crop) -> float:
    """Share of ``box``'s cells inside ``crop`` (both half-open grid crops)."""
    inside = (
        max(box[0], crop[0]),
        max(box[1], crop[1]),
        min(box[2], crop[2]),
        min(box[3], crop[3]),
    )
    return crop_area(inside) / crop_area(box)


def sample_crop(box: Crop, cut: float, gen: torch.Generator, grid: int = GRID) -> Crop:
    """A crop holding ``box`` with random margins of background on every side; with probability
    ``cut`` one random side then cuts 1 … ``⌈side/2⌉`` of the box's cells (at least 1)."""

    def draw(lo: int, hi: int) -> int:  # uniform integer in [lo, hi]
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    x0, y0, x1, y1 = box
    c = [draw(0, x0), draw(0, y0), draw(x1, grid), draw(y1, grid)]
    if float(torch.rand(1, generator=gen)) < cut:
        side = draw(0, 3)
        extent = (x1 - x0) if side in (0, 2) else (y1 - y0)
        depth = draw(1, max(1, extent // 2))
        if side == 0:
            c[0] = x0 + depth
        elif side == 1:
            c[1] = y0 + depth
        elif side == 2:
            c[2] = x1 - depth
        else:
            c[3] = y1 - depth
    return (c[0], c[1], c[2], c[3])


def pseudo_crop_batch(
    boxes: Sequence[Mapping[int, Crop]],
    labels: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    cut: float,
    gen: torch.Generator,
    negative: float,
    positive: float,
    grid: int = GRID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep masks ``(N, 1, grid, grid)``, targets and loss weights of one batch.

    Args:
        boxes: per image, its (already flipped and moved) pseudo-boxes by class index.
        labels: ``(N, K)`` image labels (1 = positive).
        y, w: ``(N, K)`` targets and loss weights before cropping (copied, not changed).
        cut: probability that a crop cuts into its pseudo-box (:func:`sample_crop`).
        negative, positive: the smoothed targets of an absent and a whole object.

    An image without a pseudo-box keeps its whole map and its targets.
    """
    keep = torch.zeros((len(boxes), 1, grid, grid))
    y, w = y.clone(), w.clone()
    for r, bx in enumerate(boxes):
        if not bx:
            keep[r] = 1.0
            continue
        classes = sorted(bx)
        k = classes[int(torch.randint(len(classes), (1,), generator=gen))]
        crop = sample_crop(bx[k], cut, gen, grid)
        keep[r, 0, crop[1] : crop[3], crop[0] : crop[2]] = 1.0
        for j in np.flatnonzero(labels[r].numpy() > 0):
            if j in bx:
                share = kept_share(bx[j], crop)
                y[r, j] = positive * share + negative * (1 - share)
            else:
                w[r, j] = 0.0
    return keep, y, w


def augmented_crops(
    boxes: PseudoBoxes,
    idx: torch.Tensor,
    labels: torch.Tensor,
    flip: torch.Tensor,
    shift: tuple[int, int],
    size: int,
    y: torch.Tensor,
    w: torch.Tensor,
    gen: torch.Generator,
    cut: float,
    smoothing: float,
    grid: int = GRID,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`pseudo_crop_batch` of the training images ``idx`` after their augmentation: each
    image's pseudo-boxes flipped with it (``flip``, ``(N,)`` bool) and moved by its pixel
    ``shift`` ``(dy, dx)`` rounded to cells of a ``size``-pixel image; targets smoothed by
    ``smoothing`` (``ε/2`` … ``1-ε/2``)."""
    cell = size / grid
    cells = (round(shift[0] / cell), round(shift[1] / cell))
    moved = []
    for r, i in enumerate(idx.tolist()):
        bx = {}
        for k, crop in boxes.get(i, {}).items():
            m = move_crop(crop, bool(flip[r]), cells, grid)
            if m is not None:
                bx[k] = m
        moved.append(bx)
    return pseudo_crop_batch(
        moved, labels[idx], y, w, cut, gen, smoothing / 2, 1 - smoothing / 2, grid
    )
