"""Box and grid geometry: the one place the project's conventions live.

Conventions (used everywhere, re-implemented nowhere):

* **Pixel boxes** follow PASCAL VOC: ``(xmin, ymin, xmax, ymax)``, integers, 1-based, *inclusive*
  on both ends. A box covering a whole ``W×H`` image is ``(1, 1, W, H)``; its width is
  ``xmax - xmin + 1``. IoU uses these ``+1`` widths, as VOC's devkit does.
* **Grid crops** are in cells of the square mid-level map (``GRID`` = 28 cells a side):
  ``(x0, y0, x1, y1)`` integers, 0-based, *half-open* ``[x0, x1) × [y0, y1)``, so the full map is
  ``(0, 0, 28, 28)`` and a crop always holds at least one cell (``x0 < x1``, ``y0 < y1``).
* The image is resized (not letter-boxed) to the network's square input, so cell ``c`` of a
  ``W``-pixel-wide image covers the continuous 0-based pixel span ``[c·W/GRID, (c+1)·W/GRID)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

GRID = 28
"""Cells a side of the mid-level map that the agent cuts."""

Box = tuple[int, int, int, int]
"""A VOC pixel box ``(xmin, ymin, xmax, ymax)``, 1-based inclusive."""

Crop = tuple[int, int, int, int]
"""A grid crop ``(x0, y0, x1, y1)``, 0-based half-open cells."""

FULL_CROP: Crop = (0, 0, GRID, GRID)


def box_area(box: Sequence[float]) -> float:
    """Area of a VOC box in pixels, with the ``+1`` widths (0 for an empty box)."""
    w = box[2] - box[0] + 1
    h = box[3] - box[1] + 1
    return float(max(w, 0) * max(h, 0))


def intersection(a: Sequence[int], b: Sequence[int]) -> Box | None:
    """Intersection of two VOC boxes, or ``None`` when they share no pixel."""
    xmin, ymin = max(a[0], b[0]), max(a[1], b[1])
    xmax, ymax = min(a[2], b[2]), min(a[3], b[3])
    if xmax < xmin or ymax < ymin:
        return None
    return (int(xmin), int(ymin), int(xmax), int(ymax))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two VOC boxes (``+1`` widths, as the VOC devkit)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return float(inter / (box_area(a) + box_area(b) - inter))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of VOC boxes.

    Args:
        a: ``(N, 4)`` boxes, any numeric dtype, VOC convention.
        b: ``(M, 4)`` boxes.

    Returns:
        ``(N, M)`` float64 IoU with the ``+1`` widths.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def crop_to_box(crop: Sequence[int], width: int, height: int, grid: int = GRID) -> Box:
    """Pixel box (VOC) covered by a grid crop of a ``width × height`` image.

    Cell edges map to ``c·W/grid``; the box holds every pixel that a crop cell touches.
    The full crop maps to ``(1, 1, width, height)``.
    """
    x0, y0, x1, y1 = crop
    xmin = math.floor(x0 * width / grid) + 1
    ymin = math.floor(y0 * height / grid) + 1
    xmax = math.ceil(x1 * width / grid)
    ymax = math.ceil(y1 * height / grid)
    return (xmin, ymin, max(xmin, xmax), max(ymin, ymax))


def box_to_crop(box: Sequence[float], width: int, height: int, grid: int = GRID) -> Crop:
    """Smallest grid crop whose cells cover a VOC pixel box (inverse of :func:`crop_to_box`)."""
    xmin, ymin, xmax, ymax = box
    x0 = math.floor((xmin - 1) * grid / width)
    y0 = math.floor((ymin - 1) * grid / height)
    x1 = math.ceil(xmax * grid / width)
    y1 = math.ceil(ymax * grid / height)
    x0, y0 = min(max(x0, 0), grid - 1), min(max(y0, 0), grid - 1)
    return (x0, y0, min(max(x1, x0 + 1), grid), min(max(y1, y0 + 1), grid))


def scale_box(box: Sequence[float], sx: float, sy: float, width: int, height: int) -> Box:
    """Map a VOC box from one image size to another (``sx``, ``sy`` = new/old), clipped to the
    new ``width × height``. Pixel ``p`` (1-based) spans ``[p-1, p)``; the mapped box covers the
    mapped span."""
    xmin = math.floor((box[0] - 1) * sx) + 1
    ymin = math.floor((box[1] - 1) * sy) + 1
    xmax = math.ceil(box[2] * sx)
    ymax = math.ceil(box[3] * sy)
    return clip_box((xmin, ymin, xmax, ymax), width, height)


def clip_box(box: Sequence[float], width: int, height: int) -> Box:
    """Clip a VOC box to a ``width × height`` image (it stays at least one pixel)."""
    xmin = int(min(max(box[0], 1), width))
    ymin = int(min(max(box[1], 1), height))
    xmax = int(min(max(box[2], xmin), width))
    ymax = int(min(max(box[3], ymin), height))
    return (xmin, ymin, xmax, ymax)


def crop_masks(crops: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """Binary masks of a batch of grid crops.

    Args:
        crops: ``(N, 4)`` integer tensor of ``(x0, y0, x1, y1)`` half-open cells.
        grid: cells a side.

    Returns:
        ``(N, 1, grid, grid)`` bool tensor on ``crops.device``: True inside the crop.
    """
    idx = torch.arange(grid, device=crops.device)
    cols = (idx[None, :] >= crops[:, 0:1]) & (idx[None, :] < crops[:, 2:3])  # (N, grid) x
    rows = (idx[None, :] >= crops[:, 1:2]) & (idx[None, :] < crops[:, 3:4])  # (N, grid) y
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def crop_area(crop: Sequence[int]) -> int:
    """Number of cells in a grid crop."""
    return max(crop[2] - crop[0], 0) * max(crop[3] - crop[1], 0)
