"""Heat-map refinement of the agent's box (paper §2.3), and how its setting is chosen.

The heat-map is the sum over channels of a feature map (:func:`channel_sum`, :func:`heatmaps`:
the mid-level map or the senior features of the agent's zero-padded crop). It is min–max
normalised, binarised at a fraction of its peak, and the rectangle around one connected region
(:func:`heatmap_box`: the region holding the peak, or the one with the largest summed response;
:func:`refined_box` adds the class-aware ``"drop"`` rule, which asks the classifier which of the
largest regions the score needs) is intersected with the agent's box (:func:`refine`). All
boxes are VOC boxes ``(xmin, ymin, xmax, ymax)``, 1-based inclusive (:mod:`cutbg_env.geometry`).

A *setting* is the heat-map ``(layer, region, threshold)``. It is chosen on the small validation
subset with boxes (:mod:`cutbg_env.calibration`): :func:`refinement_scores` gives the refined
CorLoc of every setting, :func:`best_setting` picks one, and after training each agent writes
its validation hit table to ``refinement.json`` in its run folder (:func:`write_refinement`).
Evaluation uses one setting for the whole dataset (:func:`evaluation_settings`): the calibration
stores every class's hit table on greedy-cut boxes, and :func:`dataset_setting` pools them.
The two halves share one module (~470 lines) because choosing a setting is running every
setting's refinement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from cutbg_env.errors import CheckpointError, CutbgError
from cutbg_env.geometry import GRID, Box, Crop, crop_masks, crop_to_box, intersection, scale_box
from cutbg_env.io import write_json
from cutbg_env.metrics import corloc_hit

if TYPE_CHECKING:
    from cutbg_env.world import CutWorld


class HeatmapError(CutbgError, ValueError):
    """A heat-map or feature tensor that cannot be used: wrong shape, empty, NaN or inf."""


def _to_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def channel_sum(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Sum-pool all feature maps into one heat-map.

    Args:
        features: ``(C, h, w)`` or a batch ``(N, C, h, w)``, numpy array or torch tensor (any
            device), ``C >= 1``. A tensor is summed in float32, an array in float64.

    Returns:
        ``(h, w)`` (or ``(N, h, w)``) float64 array, the sum over the channel axis.

    Raises:
        HeatmapError: not 3-D or 4-D, or no channel.
    """
    if features.ndim not in (3, 4) or features.shape[-3] == 0:
        raise HeatmapError(
            f"features must have shape (C, h, w) or (N, C, h, w) with C >= 1; "
            f"got {tuple(features.shape)}"
        )
    if isinstance(features, torch.Tensor):
        return _to_numpy(features.detach().float().sum(-3))
    return _to_numpy(features).sum(axis=-3)


HEATMAP_LAYERS = ("mid", "senior")
"""Which feature map is sum-pooled: ``"mid"``, the 28×28 mid-level map the agent cuts, or
``"senior"``, ``upper``'s 7×7 output."""


def heatmaps(world: CutWorld, index: int, crops: np.ndarray, layer: str = "mid") -> np.ndarray:
    """Sum over channels of the feature maps of zero-padded crops (paper §2.3).

    Args:
        world: the classifier world.
        index: dataset image index.
        crops: ``(N, 4)`` grid crops; ``FULL_CROP`` gives the whole image's heat-map.
        layer: ``"mid"`` (the 28×28 mid-level map, zero outside the crop) or ``"senior"``
            (``upper``'s 7×7 output on the zero-padded crop, zeroed outside the crop's cells).

    Returns:
        ``(N, h, w)`` float64 heat-maps (``h = w = 28`` or 7).
    """
    if layer not in HEATMAP_LAYERS:
        raise HeatmapError(f"heat-map layer {layer!r}: expected one of {HEATMAP_LAYERS}")
    mid = world.mid_maps([index])
    crops_t = torch.as_tensor(np.asarray(crops), dtype=torch.long, device=mid.device)
    mask = crop_masks(crops_t, mid.shape[-1]).to(mid.dtype)
    x = mid * mask
    if layer == "mid":
        return channel_sum(x)
    with torch.inference_mode():
        feats = world.model.upper(x.to(world.param_dtype))
    small = torch.nn.functional.adaptive_max_pool2d(mask.float(), feats.shape[-1])
    return channel_sum(feats) * small[:, 0].cpu().double().numpy()


HEATMAP_REGIONS = ("peak", "mass", "drop")
"""Which connected region of the binarised heat-map is boxed: ``"peak"``, the one holding the
maximum (the paper's "maximal response region"); ``"mass"``, the one with the largest sum of
normalised response (a large object beats a small, brighter fragment of clutter); ``"drop"``,
of the :data:`DROP_CANDIDATES` regions of largest mass, the one whose rectangle, zeroed in the
crop, lowers the class score most (:func:`refined_box`: the heat-map is blind to the class, the
classifier is not; one classifier call per candidate)."""
DROP_CANDIDATES = 3
"""How many regions (the largest by mass) the ``"drop"`` rule scores by occlusion."""


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
            (ties: the region whose first cell comes first in row-major order); ``"drop"``
            needs the classifier (:func:`refined_box`): here, without it, the ``"mass"`` region.

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
    box = _regions(hmap, threshold, 1, peak=region == "peak")[0]  # "drop" here: the "mass" one
    if image_size is None:
        return box
    return scale_box(box, width / cols, height / rows, width, height)


def _regions(hmap: np.ndarray, threshold: float, k: int, peak: bool = False) -> list[Box]:
    """Rectangles (1-based cell boxes) around the ``k`` connected regions of largest summed
    normalised response of the binarised map, largest first (ties: the region whose first cell
    comes first in row-major order); ``peak``: only the region holding the first maximum. A
    constant map gives the whole map."""
    rows, cols = hmap.shape
    lo, hi = float(hmap.min()), float(hmap.max())
    if hi == lo:
        return [_full_box(cols, rows)]
    norm = (hmap - lo) / (hi - lo)
    mask = (norm >= threshold).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if peak:
        chosen = [int(labels[np.unravel_index(int(np.argmax(hmap)), hmap.shape)])]
    else:  # labels are numbered in row-major order of first cell; 0 is the background
        mass = np.bincount(labels.ravel(), weights=norm.ravel())[1:]
        chosen = [1 + int(j) for j in np.argsort(-mass, kind="stable")[:k]]
    boxes = []
    for label in chosen:
        left, top, w, h = (int(v) for v in stats[label, :4])
        boxes.append((left + 1, top + 1, left + w, top + h))
    return boxes


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


Setting = tuple[str, str, float]
"""A refinement setting: heat-map ``(layer, region, threshold)``."""


def refined_box(
    world: CutWorld,
    index: int,
    crop: Crop,
    setting: Setting,
    image_size: tuple[int, int],
    heatmap: np.ndarray | None = None,
) -> tuple[Box, int]:
    """The refined box of one image's grid crop under a setting, and the classifier calls it cost.

    ``"peak"`` and ``"mass"``: :func:`refine` of the crop's box and :func:`heatmap_box` (no call).
    ``"drop"``: the :data:`DROP_CANDIDATES` regions of largest mass are candidates; each one's
    rectangle is zeroed in the crop's mid-level map and the crop scored again
    (:meth:`~cutbg_env.world.CutWorld.score_masks`); the candidate whose removal leaves the
    lowest class score (the largest drop: the crop's own score is the same for all) is the
    object's. One call per candidate, none when there is only one. ``heatmap``: the crop's
    heat-map of ``setting``'s layer when already computed (:func:`heatmaps`).
    """
    layer, region, threshold = setting
    width, height = image_size
    box = crop_to_box(crop, width, height)
    hmap = heatmaps(world, index, np.asarray([crop]), layer)[0] if heatmap is None else heatmap
    if region != "drop":
        return refine(box, heatmap_box(hmap, threshold, image_size, region=region)), 0
    candidates = _regions(_to_numpy(hmap), threshold, DROP_CANDIDATES)
    rows, cols = hmap.shape
    best, calls = 0, len(candidates) if len(candidates) > 1 else 0
    if calls:
        cell = GRID // rows  # grid cells per heat-map cell: 1 (mid) or 4 (senior)
        keep = np.zeros((len(candidates), GRID, GRID), np.float32)
        x0, y0, x1, y1 = crop
        keep[:, y0:y1, x0:x1] = 1.0
        for k, (left, top, right, bottom) in enumerate(candidates):
            keep[k, (top - 1) * cell : bottom * cell, (left - 1) * cell : right * cell] = 0.0
        best = int(np.argmin(world.score_masks(index, keep)))  # first of equal scores
    heat = scale_box(candidates[best], width / cols, height / rows, width, height)
    return refine(box, heat), calls


DEFAULT_SETTING: Setting = ("mid", "peak", 0.5)
"""The setting used when neither an agent nor the calibration chose one."""
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.1, 0.95, 0.1), 2))
"""Binarisation thresholds tried on the validation subset."""
REFINEMENT_FILE = "refinement.json"
"""Per-agent validation hit table and best setting, in the agent's run folder."""


def setting_key(setting: Setting) -> str:
    """``("mid", "mass", 0.4)`` → ``"mid/mass/0.4"`` (the JSON key of a setting)."""
    layer, region, thr = setting
    return f"{layer}/{region}/{float(thr):g}"


def parse_setting(key: str) -> Setting:
    """Inverse of :func:`setting_key`; raises ``ValueError`` naming a malformed key."""
    parts = key.split("/")
    try:
        layer, region, thr = parts
        setting = (layer, region, float(thr))
    except ValueError:
        raise ValueError(f"refinement setting {key!r}: expected 'layer/region/threshold'") from None
    if layer not in HEATMAP_LAYERS or region not in HEATMAP_REGIONS:
        raise ValueError(
            f"refinement setting {key!r}: layer must be one of {HEATMAP_LAYERS} and region one "
            f"of {HEATMAP_REGIONS}"
        )
    return setting


def best_setting(
    scores: Mapping[tuple[float, str, str, float], float],
) -> tuple[float, str, str, float]:
    """The ``(delta, layer, region, threshold)`` with the highest score; ties go to the smaller δ
    (the stricter reward), then the lower threshold, then the layer listed first in
    :data:`HEATMAP_LAYERS`, then the region listed first in :data:`HEATMAP_REGIONS` (the
    paper's peak region)."""
    return max(
        scores,
        key=lambda k: (
            scores[k],
            -k[0],
            -k[3],
            -HEATMAP_LAYERS.index(k[1]),
            -HEATMAP_REGIONS.index(k[2]),
        ),
    )


def pooled_setting(hits: Iterable[Mapping[str, int]]) -> Setting:
    """One refinement setting for several classes: the best summed validation hits.

    Args:
        hits: per class, ``{setting_key: number of validation images whose refined box is a
            CorLoc hit}``; settings missing from a class's table count 0 hits there.

    The heat-map is class-agnostic (a sum over channels), so one setting can serve every class,
    and pooling the classes' 15–25 validation images each is less noisy than choosing per class.
    Ties as :func:`best_setting` (lower threshold, then layer, then region order).
    """
    total: dict[Setting, float] = {}
    for table in hits:
        for key, n in table.items():
            s = parse_setting(key)
            total[s] = total.get(s, 0.0) + float(n)
    if not total:
        raise ValueError("pooled_setting: no validation table to pool")
    _, layer, region, thr = best_setting({(0.0, *s): v for s, v in total.items()})
    return layer, region, thr


def refinement_scores(
    world: CutWorld, crops: Mapping[int, Crop], truth: Mapping[int, Sequence[Box]]
) -> dict[Setting, float]:
    """Refined CorLoc (a fraction) of the boxes of ``crops`` (image index → grid crop) for every
    setting: each heat-map layer, region rule and threshold in :data:`THRESHOLDS`
    (:func:`refined_box`; the ``"drop"`` settings cost up to :data:`DROP_CANDIDATES` classifier
    calls an image each).

    ``truth`` maps each image index to its ground-truth boxes of the class."""
    data = world.data
    size = {i: (data.annotation(i).width, data.annotation(i).height) for i in crops}
    scores: dict[Setting, float] = {}
    for layer in HEATMAP_LAYERS:
        maps = {i: heatmaps(world, i, np.asarray([c]), layer)[0] for i, c in crops.items()}
        for region in HEATMAP_REGIONS:
            for t in THRESHOLDS:
                setting = (layer, region, t)
                hits = [
                    corloc_hit(refined_box(world, i, c, setting, size[i], maps[i])[0], truth[i])
                    for i, c in crops.items()
                ]
                scores[setting] = float(np.mean(hits))
    return scores


def hit_counts(scores: Mapping[Setting, float], images: int) -> dict[str, int]:
    """``{setting_key: hits}`` from :func:`refinement_scores`' CorLoc fractions on ``images``
    validation images (the table ``refinement.json`` and ``calibration.json`` store)."""
    return {setting_key(k): round(v * images) for k, v in scores.items()}


def write_refinement(
    path: str | Path, scores: Mapping[Setting, float], images: int, run_id: str | None = None
) -> dict:
    """Write an agent's ``refinement.json``: its best setting and the hit count of every setting
    on its ``images`` validation images (``scores`` from :func:`refinement_scores`), and the
    ``run_id`` of the training run that wrote it (:mod:`cutbg_env.runs`)."""
    _, layer, region, thr = best_setting({(0.0, *k): v for k, v in scores.items()})
    result = {
        "heatmap_layer": layer,
        "heatmap_region": region,
        "heatmap_threshold": thr,
        "validation": {
            "images": images,
            "agent_refined_corloc": 100 * scores[(layer, region, thr)],
            "hits": hit_counts(scores, images),
        },
        "rule": "best refined CorLoc of the agent's boxes on the calibration's validation subset",
    }
    if run_id is not None:
        result["run_id"] = run_id
    write_json(path, result)
    return result


def read_refinement(path: str | Path) -> dict[str, int] | None:
    """The validation hit table (``{setting_key: hits}``) of an agent's ``refinement.json``,
    or ``None`` when there is no such file (no validation image held the class).

    Raises :class:`CheckpointError` naming the file when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        hits = json.loads(path.read_text())["validation"]["hits"]
        return {setting_key(parse_setting(k)): int(v) for k, v in hits.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is unreadable ({exc!r}): delete it and retrain the agent in that folder"
        ) from exc


def calibrated_setting(calibration: Mapping, class_name: str) -> Setting:
    """The setting the calibration chose for a class on greedy-cut boxes (before any agent
    existed), else :data:`DEFAULT_SETTING`."""
    layer, region, thr = DEFAULT_SETTING
    return (
        str(calibration.get("heatmap_layer", {}).get(class_name, layer)),
        str(calibration.get("heatmap_region", {}).get(class_name, region)),
        float(calibration.get("heatmap_threshold", {}).get(class_name, thr)),
    )


def dataset_setting(calibration: Mapping) -> Setting | None:
    """The dataset's refinement setting: :func:`pooled_setting` over the calibration's
    ``refinement_hits`` (per class, the refined hits of greedy-cut boxes on its validation
    images, every setting), or ``None`` when the calibration has no such table (a file written
    before it existed)."""
    tables = _hit_tables(calibration)
    return pooled_setting(tables.values()) if tables else None


def dataset_setting_hits(calibration: Mapping) -> tuple[Setting, int, int] | None:
    """How well the dataset's setting localizes: ``(setting, hits, images)``, the validation
    images whose refined greedy-cut box is a CorLoc hit under :func:`dataset_setting`, summed
    over the classes with a ``refinement_hits`` table, and those classes' validation images
    (``validation[c]["images"]``); ``None`` when the calibration has no such table. The number
    to check before training agents on a new classifier: the refined rows box its heat-map."""
    chosen = dataset_setting(calibration)
    if chosen is None:
        return None
    key = setting_key(chosen)
    tables = _hit_tables(calibration)
    hits = sum(int(t.get(key, 0)) for t in tables.values())
    validation = calibration.get("validation", {})
    images = sum(int(validation.get(c, {}).get("images", 0)) for c in tables)
    return chosen, hits, images


def _hit_tables(calibration: Mapping) -> dict[str, Mapping[str, int]]:
    """The calibration's non-empty ``refinement_hits`` tables, per class."""
    return {c: t for c, t in calibration.get("refinement_hits", {}).items() if t}


def evaluation_settings(
    tables: Mapping[str, Mapping[str, int] | None], calibration: Mapping
) -> tuple[dict[str, Setting], str]:
    """The setting of each evaluated class, and a line saying how it was chosen.

    One setting serves every class of a dataset (the heat-map is a sum over channels, blind to
    the class). It is :func:`dataset_setting`, chosen at calibration on the validation images of
    every calibrated class (~180 on the embedded set) rather than on one agent's 15–25: chosen
    per agent, the setting followed the noise of those few images (docs/experiments.md,
    2026-12-06: sheep's refined CorLoc 44.8 ± 8.6 over seeds with each agent's own choice, 57.5
    ± 4.0 with the dataset's). A calibration file without ``refinement_hits`` falls back to
    :func:`pooled_setting` over ``tables`` (per class, its agent's validation hit table,
    :func:`read_refinement`; ``None`` when it has none), then to the calibration's per-class
    setting.
    """
    chosen = dataset_setting(calibration)
    if chosen is not None:
        n = len(_hit_tables(calibration))
        return (
            dict.fromkeys(tables, chosen),
            f"the dataset's, pooled over the calibration's validation images of {n} classes",
        )
    have = {c: t for c, t in tables.items() if t is not None}
    if not have:
        return (
            {c: calibrated_setting(calibration, c) for c in tables},
            "the calibration's setting per class (no agent has a validation table)",
        )
    pooled = pooled_setting(have.values())
    return {c: pooled for c in tables}, f"pooled over {', '.join(have)}"
