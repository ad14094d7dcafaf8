"""Stage 2: per-class δ and heat-map threshold, from a small validation subset with boxes.

The only place boxes are used in training (as in the paper): a seeded ≤ 5% subset of trainval.

Rule for δ (per class): crop each validation image's mid-level map to the tight grid crop of
its ground-truth box of the class (the crop an ideal agent should end in) and measure the score
drop ``p̄ − p̂`` there. δ is the ``quantile`` (default 0.8) of those drops, clipped to
``[min_delta, max_delta]``: the smallest threshold that lets an agent which respects the reward
reach the true box on that share of the images, and no larger, so that cuts into the object are
still punished.

Heat-map threshold (per class): the greedy cutting policy (the reward's own policy) runs at the
chosen δ on the same images; for each layer and threshold in the grid, its box is refined with
the heat-map of its crop, and the pair with the highest CorLoc is kept (ties: the lower threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cutbg_env import paths
from cutbg_env.backbone import load_classifier
from cutbg_env.core import CutWorld
from cutbg_env.geometry import FULL_CROP, box_to_crop, crop_to_box, iou
from cutbg_env.io import write_json
from cutbg_env.localize import HEATMAP_LAYERS, greedy_cut, heatmaps
from evaluate.refine import heatmap_box, refine
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


def best_setting(scores: dict[tuple[str, float], float]) -> tuple[str, float]:
    """The ``(layer, threshold)`` with the highest score; ties go to the lower threshold, then
    to the layer listed first in :data:`HEATMAP_LAYERS`."""
    return max(scores, key=lambda k: (scores[k], -k[1], -HEATMAP_LAYERS.index(k[0])))


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
    subset = validation_subset(len(data), args.fraction, args.seed)
    calib = load_calibration(args.dataset) or {}
    calib.setdefault("delta", {})
    calib.setdefault("heatmap_layer", {})
    calib.setdefault("heatmap_threshold", {})
    calib.setdefault("validation", {})
    for c in classes:
        world = CutWorld(
            args.dataset, train_split, c, root=args.root, device=args.device, model=model
        )
        world.data = data
        images = [i for i in subset if i in set(world.positives)]
        if not images:
            log(f"calibrate {c}: no validation image contains it; keeping defaults")
            continue
        mids = world.mid_maps(images)
        gt = {i: [b for b, d in data.gt_boxes(i, c) if not d] for i in images}
        size = {i: (data.annotation(i).width, data.annotation(i).height) for i in images}
        rows = [(j, box_to_crop(b, *size[i])) for j, i in enumerate(images) for b in gt[i]]
        _, p_full = world.full(images)
        _, p_gt = world.evaluate(mids[[j for j, _ in rows]], np.asarray([cr for _, cr in rows]))
        drops = np.asarray([p_full[j] - p for (j, _), p in zip(rows, p_gt, strict=True)])
        delta = delta_from_drops(drops, args.quantile, args.min_delta, args.max_delta)
        greedy = greedy_cut(world, images, delta)

        boxes = {i: crop_to_box(g.crop, *size[i]) for i, g in zip(images, greedy, strict=True)}
        scores = {}
        maps = {
            layer: {
                i: heatmaps(world, i, np.asarray([g.crop]), layer)[0]
                for i, g in zip(images, greedy, strict=True)
            }
            for layer in HEATMAP_LAYERS
        }
        for layer in HEATMAP_LAYERS:
            for t in THRESHOLDS:
                refined = {
                    i: refine(boxes[i], heatmap_box(maps[layer][i], float(t), size[i]))
                    for i in images
                }
                scores[(layer, float(t))] = float(
                    np.mean([_hit(gt[i], refined[i]) for i in images])
                )
        layer, thr = best_setting(scores)
        calib["delta"][c] = delta
        calib["heatmap_layer"][c] = layer
        calib["heatmap_threshold"][c] = thr
        calib["validation"][c] = {
            "images": len(images),
            "gt_drop_median": float(np.median(drops)),
            "greedy_corloc": 100 * float(np.mean([_hit(gt[i], boxes[i]) for i in images])),
            "refined_corloc": 100 * scores[(layer, thr)],
            "full_image_corloc": 100
            * float(np.mean([_hit(gt[i], crop_to_box(FULL_CROP, *size[i])) for i in images])),
        }
        log(
            f"calibrate {c}: δ={delta:.3f} heat-map {layer}@{thr:.1f} "
            f"(greedy CorLoc {calib['validation'][c]['greedy_corloc']:.0f} → refined "
            f"{calib['validation'][c]['refined_corloc']:.0f} on {len(images)} images)"
        )
    calib["rule"] = {
        "delta": f"quantile {args.quantile} of the drop at the GT crop, clipped to "
        f"[{args.min_delta}, {args.max_delta}]",
        "subset": f"{args.fraction:.0%} of {train_split}, seed {args.seed}",
    }
    path = paths.calibration_path(args.dataset)
    write_json(path, calib)
    log(f"calibration -> {relpath(path)}")
    return calib
