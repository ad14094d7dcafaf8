"""Heat-map refinement of the agent's box (paper §2.3).

The heat-map is the sum over channels of the feature maps (:func:`channel_sum`). It is
min–max normalised, binarised at a fraction of its peak, and the rectangle around one connected
region (:func:`heatmap_box`: the region holding the peak, or the one with the largest summed
response) is intersected with the agent's box (:func:`refine`). All boxes are VOC boxes
``(xmin, ymin, xmax, ymax)``, 1-based inclusive (:mod:`cutbg_env.geometry`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from cutbg_env.errors import CutbgError
from cutbg_env.geometry import Box, intersection, scale_box


class HeatmapError(CutbgError, ValueError):
    """A heat-map or feature tensor that cannot be used: wrong shape, empty, NaN or inf."""


def _to_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def channel_sum(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Sum-pool all feature maps into one heat-map.

    Args:
        features: ``(C, h, w)`` numpy array or torch tensor (any device), ``C >= 1``.

    Returns:
        ``(h, w)`` float64 array, the sum over the channel axis.

    Raises:
        HeatmapError: not 3-D, or no channel.
    """
    array = _to_numpy(features)
    if array.ndim != 3 or array.shape[0] == 0:
        raise HeatmapError(f"features must have shape (C, h, w) with C >= 1; got {array.shape}")
    return array.sum(axis=0)


HEATMAP_REGIONS = ("peak", "mass")
"""Which connected region of the binarised heat-map is boxed: ``"peak"``, the one holding the
maximum (the paper's "maximal response region"), or ``"mass"``, the one with the largest sum of
normalised response (a large object beats a small, brighter fragment of clutter)."""


def _full_box(width: int, height: int) -> Box:
    return (1, 1, width, height)


def heatmap_box(
    heatmap: np.ndarray | torch.Tensor,
    threshold: float,
    image_size: tuple[int, int] | None = None,
    *,
    upsample: bool = False,
    region: str = "peak",
) -> Box:
    """Rectangle around the maximal-response region of a heat-map.

    Steps: normalise ``n = (heatmap - min) / (max - min)`` (so the peak is 1, the floor 0);
    binarise ``n >= threshold``; take one 8-connected region of it (``region``); return its
    bounding rectangle.

    Args:
        heatmap: ``(h, w)`` finite float map (numpy or torch).
        threshold: fraction of the peak (after min–max normalisation) in ``[0, 1]``; ``0`` keeps
            every cell, ``1`` keeps only cells equal to the maximum.
        image_size: ``(width, height)`` of the image in pixels, or ``None``.
        upsample: only with ``image_size``: resize the raw map bilinearly to the image first
            (``cv2.resize``), then threshold at pixel resolution. Default ``False``: threshold the
            cells themselves, then scale the cell rectangle.
        region: ``"peak"`` (default): the region holding the peak (the first maximal cell in
            row-major order if several tie); ``"mass"``: the region with the largest sum of ``n``
            (ties: the region whose first cell comes first in row-major order).

    Returns:
        A VOC box. With ``image_size=None``: in the map's own cell coordinates, cell
        ``(row r, col c)`` being pixel ``(c + 1, r + 1)``, so the whole map is ``(1, 1, w, h)``.
        With ``image_size``: in image pixels, cell edges mapped linearly by
        :func:`cutbg_env.geometry.scale_box` (cell ``c`` covers ``[c·W/w, (c+1)·W/w)``).
        A constant map (``max == min``) has no region that stands out, so the fallback is the
        whole map (hence the whole image).

    Raises:
        HeatmapError: not 2-D, empty, holds NaN or inf, bad ``threshold``, ``image_size`` or
            ``region``.
    """
    if region not in HEATMAP_REGIONS:
        raise HeatmapError(f"region must be one of {HEATMAP_REGIONS}; got {region!r}")
    hmap = _to_numpy(heatmap)
    if hmap.ndim != 2 or hmap.size == 0:
        raise HeatmapError(f"heat-map must be a non-empty 2-D (h, w) array; got {hmap.shape}")
    if not np.all(np.isfinite(hmap)):
        bad = "NaN" if np.isnan(hmap).any() else "inf"
        raise HeatmapError(f"heat-map holds {bad} values; check the features it was summed from")
    if not 0.0 <= threshold <= 1.0:
        raise HeatmapError(f"threshold must be in [0, 1] (a fraction of the peak); got {threshold}")
    if image_size is not None:
        width, height = image_size
        if int(width) != width or int(height) != height or width < 1 or height < 1:
            raise HeatmapError(
                f"image_size must be positive integers (width, height); got {image_size}"
            )
        width, height = int(width), int(height)
    if upsample:
        if image_size is None:
            raise HeatmapError("upsample=True needs image_size=(width, height)")
        hmap = cv2.resize(hmap, (width, height), interpolation=cv2.INTER_LINEAR)
        image_size = None  # the map is now in image pixels

    rows, cols = hmap.shape
    lo, hi = float(hmap.min()), float(hmap.max())
    if hi == lo:
        box = _full_box(cols, rows)
    else:
        norm = (hmap - lo) / (hi - lo)
        mask = (norm >= threshold).astype(np.uint8)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if region == "peak":
            label = labels[np.unravel_index(int(np.argmax(hmap)), hmap.shape)]  # first max
        else:  # labels are numbered in row-major order of first cell; 0 is the background
            label = 1 + int(np.argmax(np.bincount(labels.ravel(), weights=norm.ravel())[1:]))
        left, top, w, h = (int(v) for v in stats[label, :4])
        box = (left + 1, top + 1, left + w, top + h)
    if image_size is None:
        return box
    return scale_box(box, width / cols, height / rows, width, height)


def refine(agent_box: Sequence[int], heat_box: Sequence[int]) -> Box:
    """Final box: the intersection of the agent's box and the heat-map rectangle.

    When the two share no pixel the agent's box is returned unchanged: the heat-map's peak lies
    outside the agent's box, so the rectangle carries no evidence about the object the agent found.
    Both boxes must be in the same (pixel) coordinates.
    """
    inter = intersection(agent_box, heat_box)
    if inter is None:
        return tuple(int(v) for v in agent_box)  # type: ignore[return-value]
    return inter
