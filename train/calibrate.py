"""Stage 2: per-class δ and heat-map threshold, from a small validation subset with boxes.

The only place boxes are used in training (as in the paper): a seeded ≤ 5% subset of trainval.

Rule (per class), jointly for δ and the refinement's heat-map layer, region rule and threshold:

* δ candidates: :data:`DELTAS` plus the *quantile rule*'s value — crop each validation image's
  mid-level map to the grid cells of its ground-truth box (where an ideal agent ends) and take the
  ``quantile`` (0.8) of the score drops ``p̄ − p̂`` there, clipped to ``[min_delta, max_delta]``:
  the smallest δ that lets an agent respecting the reward reach the true box on 80% of images.
* For each δ the greedy cutting policy (the reward's own policy, which the agent learns) runs on
  the validation images; its boxes are refined with the heat-map of their crop for every layer,
  region rule (:data:`~evaluate.refine.HEATMAP_REGIONS`) and threshold in the grid.
* The (δ, layer, region, threshold) with the highest refined CorLoc is kept (ties: smaller δ,
  then lower threshold, then the mid-level layer, then the peak region).

After training, each agent re-chooses layer, region and threshold on its own boxes of the same
images (:func:`train.agent.choose_refinement`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cutbg_env import paths
from cutbg_env.backbone import load_classifier
from cutbg_env.core import CutWorld
from cutbg_env.geometry import FULL_CROP, Box, Crop, box_to_crop, crop_to_box, iou
from cutbg_env.io import write_json
from cutbg_env.localize import HEATMAP_LAYERS, greedy_cut, heatmaps
from evaluate.refine import HEATMAP_REGIONS, heatmap_box, refine
from train.common import check_class, log, open_split, relpath, splits


@dataclass(frozen=True)
class CalibrateArgs:
    """Choose δ and the refinement threshold of every class on a small validation subset."""

    dataset: str = "animals"
    """Dataset: animals (embedded), voc2007, voc2012 or a VOC-layout folder."""
    root: str | None = None
    """Dataset folder overriding the default location of ``dataset``."""
    checkpoint: str | None = None
    """Classifier checkpoint (default: runs/<dataset>/classifier.pt)."""
    classes: str | None = None
    """Comma-separated classes to calibrate (default: all); others keep their stored values."""
    fraction: float = 0.05
    """Share of trainval images in the validation subset (at most 0.05, as the paper's)."""
    quantile: float = 0.8
    """δ = this quantile of the score drop at the ground-truth crop."""
    min_delta: float = 0.02
    """Lower clip of δ."""
    max_delta: float = 0.5
    """Upper clip of δ."""
    seed: int = 0
    """Seed of the validation subset."""
    device: str = "cpu"
    """Torch device."""


THRESHOLDS = tuple(np.round(np.arange(0.1, 0.95, 0.1), 2))
DELTAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
"""δ candidates tried besides the quantile rule's value."""


def validation_subset(n_images: int, fraction: float, seed: int) -> list[int]:
    """Indices of the validation subset: a seeded ``fraction`` (≤ 5%) of ``n_images``."""
    if not 0 < fraction <= 0.05:
        raise ValueError(f"fraction={fraction}: the validation subset must be 0 < f ≤ 0.05")
    rng = np.random.default_rng(seed)
    k = max(1, round(n_images * fraction))
    return sorted(rng.permutation(n_images)[:k].tolist())


def delta_from_drops(drops: np.ndarray, quantile: float, lo: float, hi: float) -> float:
    """The δ rule: ``clip(quantile(drops, q), lo, hi)``; ``lo`` when there are no drops."""
    drops = np.asarray(drops, dtype=np.float64)
    if drops.size == 0:
        return float(lo)
    return float(np.clip(np.quantile(drops, quantile), lo, hi))


def _hit(gts: list, box: tuple[int, int, int, int]) -> bool:
    """CorLoc's test: IoU ≥ 0.5 with some ground-truth box."""
    return max(iou(box, g) for g in gts) >= 0.5


def _truth(
    world: CutWorld, images: Iterable[int]
) -> tuple[dict[int, list[Box]], dict[int, tuple[int, int]]]:
    """Per image: the class's non-difficult ground-truth boxes and the ``(width, height)``."""
    data, cls = world.data, world.class_name
    gt = {i: [b for b, d in data.gt_boxes(i, cls) if not d] for i in images}
    size = {i: (data.annotation(i).width, data.annotation(i).height) for i in gt}
    return gt, size


def refinement_scores(
    world: CutWorld, crops: dict[int, Crop]
) -> dict[tuple[str, str, float], float]:
    """Refined CorLoc (fraction) of the boxes of ``crops`` (image index → grid crop) for every
    ``(layer, region, threshold)``: heat-map layer, region rule and threshold in
    :data:`THRESHOLDS`."""
    gt, size = _truth(world, crops)
    boxes = {i: crop_to_box(c, *size[i]) for i, c in crops.items()}
    scores: dict[tuple[str, str, float], float] = {}
    for layer in HEATMAP_LAYERS:
        maps = {i: heatmaps(world, i, np.asarray([c]), layer)[0] for i, c in crops.items()}
        for region in HEATMAP_REGIONS:
            for t in THRESHOLDS:
                hits = [
                    _hit(gt[i], refine(boxes[i], heatmap_box(maps[i], t, size[i], region=region)))
                    for i in crops
                ]
                scores[(layer, region, float(t))] = float(np.mean(hits))
    return scores


def validation_images(world: CutWorld, fraction: float = 0.05, seed: int = 0) -> list[int]:
    """The images of the validation subset that contain the world's class."""
    positives = set(world.positives)
    return [i for i in validation_subset(len(world.data), fraction, seed) if i in positives]


def best_setting(
    scores: dict[tuple[float, str, str, float], float],
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


Setting = tuple[str, str, float]
"""A refinement setting: heat-map ``(layer, region, threshold)``."""


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


def pooled_setting(hits: Iterable[dict[str, int]]) -> Setting:
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


def calibrate(args: CalibrateArgs) -> dict:
    """Calibrate and merge the result into ``runs/<dataset>/calibration.json``."""
    from cutbg_env.core import load_calibration

    train_split, _ = splits(args.dataset)
    data = open_split(args.dataset, args.root, train_split)
    classes = args.classes.split(",") if args.classes else list(data.classes)
    for c in classes:
        check_class(data, c, args.dataset)
    ckpt = args.checkpoint or str(paths.classifier_path(args.dataset))
    model, _ = load_classifier(ckpt, args.device)
    calib = load_calibration(args.dataset) or {}
    calib.setdefault("delta", {})
    calib.setdefault("heatmap_layer", {})
    calib.setdefault("heatmap_region", {})
    calib.setdefault("heatmap_threshold", {})
    calib.setdefault("validation", {})
    for c in classes:
        world = CutWorld(
            args.dataset, train_split, c, root=args.root, device=args.device, model=model, data=data
        )
        images = validation_images(world, args.fraction, args.seed)
        if not images:
            log(f"calibrate {c}: no validation image contains it; keeping defaults")
            continue
        mids = world.mid_maps(images)
        gt, size = _truth(world, images)
        rows = [(j, box_to_crop(b, *size[i])) for j, i in enumerate(images) for b in gt[i]]
        _, p_full = world.full(images)
        _, p_gt = world.evaluate(mids[[j for j, _ in rows]], np.asarray([cr for _, cr in rows]))
        drops = np.asarray([p_full[j] - p for (j, _), p in zip(rows, p_gt, strict=True)])
        candidates = sorted(
            {delta_from_drops(drops, args.quantile, args.min_delta, args.max_delta)}
            | {float(d) for d in DELTAS if args.min_delta <= d <= args.max_delta}
        )
        scores: dict[tuple[float, str, str, float], float] = {}
        greedy_hits: dict[float, float] = {}
        for delta in candidates:
            greedy = greedy_cut(world, images, delta)
            crops = {i: g.crop for i, g in zip(images, greedy, strict=True)}
            greedy_hits[delta] = float(
                np.mean([_hit(gt[i], crop_to_box(crops[i], *size[i])) for i in images])
            )
            for (layer, region, t), v in refinement_scores(world, crops).items():
                scores[(delta, layer, region, t)] = v
        delta, layer, region, thr = best_setting(scores)
        calib["delta"][c] = delta
        calib["heatmap_layer"][c] = layer
        calib["heatmap_region"][c] = region
        calib["heatmap_threshold"][c] = thr
        calib["validation"][c] = {
            "images": len(images),
            "gt_drop_median": float(np.median(drops)),
            "greedy_corloc": 100 * greedy_hits[delta],
            "refined_corloc": 100 * scores[(delta, layer, region, thr)],
            "full_image_corloc": 100
            * float(np.mean([_hit(gt[i], crop_to_box(FULL_CROP, *size[i])) for i in images])),
        }
        log(
            f"calibrate {c}: δ={delta:.3f} heat-map {layer}/{region}@{thr:.1f} "
            f"(greedy CorLoc {calib['validation'][c]['greedy_corloc']:.0f} → refined "
            f"{calib['validation'][c]['refined_corloc']:.0f} on {len(images)} images)"
        )
    calib["rule"] = {
        "delta": f"best refined CorLoc over {DELTAS} and the {args.quantile} quantile of the "
        f"drop at the GT crop, within [{args.min_delta}, {args.max_delta}]",
        "subset": f"{args.fraction:.0%} of {train_split}, seed {args.seed}",
    }
    path = paths.calibration_path(args.dataset)
    write_json(path, calib)
    log(f"calibration -> {relpath(path)}")
    return calib
