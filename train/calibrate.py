"""Stage 2: per-class δ and heat-map threshold, from a small validation subset with boxes.

The only place boxes are used in training (as in the paper): a seeded ≤ 5% subset of trainval.

Rule (per class), jointly for δ and the refinement's heat-map layer, region rule and threshold:

* δ candidates: :data:`DELTAS` plus the *quantile rule*'s value — crop each validation image's
  mid-level map to the grid cells of its ground-truth box (where an ideal agent ends) and take the
  ``quantile`` (0.8) of the score drops ``p̄ − p̂`` there, clipped to ``[min_delta, max_delta]``:
  the smallest δ that lets an agent respecting the reward reach the true box on 80% of images.
* For each δ the greedy cutting policy (the reward's own policy, which the agent learns) runs on
  the validation images; its boxes are refined with the heat-map of their crop for every layer,
  region rule (:data:`~cutbg_env.refine.HEATMAP_REGIONS`) and threshold in the grid.
* The (δ, layer, region, threshold) with the highest refined CorLoc is kept (ties: smaller δ,
  then lower threshold, then the mid-level layer, then the peak region).
* At that δ, every setting's hit count is stored (``refinement_hits``): evaluation pools them
  over all calibrated classes into the dataset's one refinement setting
  (:func:`cutbg_env.refine.dataset_setting`), chosen on ~180 images instead of one class's ~20.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from filelock import FileLock

from cutbg_env import checks, paths
from cutbg_env.backbone import load_classifier
from cutbg_env.calibration import (
    CALIBRATION_TABLES,
    VALIDATION_FRACTION,
    VALIDATION_SEED,
    load_calibration,
    validation_images,
    validation_truth,
)
from cutbg_env.cli import StageArgs
from cutbg_env.data import dataset_splits, open_split
from cutbg_env.geometry import FULL_CROP, box_to_crop, crop_to_box
from cutbg_env.io import file_sha256, log, relpath, remove_stale_temps, write_json
from cutbg_env.localize import greedy_cut
from cutbg_env.metrics import corloc_hit
from cutbg_env.refine import best_setting, hit_counts, refinement_scores
from cutbg_env.world import CutWorld


@dataclass(frozen=True)
class CalibrateArgs(StageArgs):
    """Choose δ and the refinement threshold of every class on a small validation subset."""

    classes: str | None = None
    """Comma-separated classes to calibrate (default: all); others keep their stored values."""
    fraction: float = VALIDATION_FRACTION
    """Share of trainval images in the validation subset (at most 0.05, as the paper's)."""
    quantile: float = 0.8
    """δ = this quantile of the score drop at the ground-truth crop."""
    min_delta: float = 0.02
    """Lower clip of δ."""
    max_delta: float = 0.5
    """Upper clip of δ."""
    seed: int = VALIDATION_SEED
    """Seed of the validation subset."""

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        checks.real("--fraction", self.fraction, 0.0, 0.05, lo_open=True)
        checks.real("--quantile", self.quantile, 0.0, 1.0)
        checks.real("--min-delta", self.min_delta, 0.0, 1.0)
        checks.real("--max-delta", self.max_delta, self.min_delta, 1.0)
        checks.integer("--seed", self.seed, 0)
        checks.names("--classes", self.classes)
        super().__post_init__()


DELTAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
"""δ candidates tried besides the quantile rule's value."""


def delta_from_drops(drops: np.ndarray, quantile: float, lo: float, hi: float) -> float:
    """The δ rule: ``clip(quantile(drops, q), lo, hi)``; ``lo`` when there are no drops."""
    drops = np.asarray(drops, dtype=np.float64)
    if drops.size == 0:
        return float(lo)
    return float(np.clip(np.quantile(drops, quantile), lo, hi))


def calibrate(args: CalibrateArgs) -> dict:
    """Calibrate and merge the result into ``runs/<dataset>/calibration.json``."""
    train_split, _ = dataset_splits(args.dataset)
    data = open_split(args.dataset, train_split, args.root)
    classes = args.classes.split(",") if args.classes else list(data.classes)
    for c in classes:
        data.class_index(c)  # UnknownClassError listing the classes
    hint = paths.make_command("train-classifier", args.dataset)
    ckpt = args.classifier_file()
    model, _ = load_classifier(ckpt, args.device, hint=hint)
    digest = file_sha256(ckpt)
    load_calibration(args.dataset)  # a corrupt file is named now, not after the whole stage
    calib: dict[str, dict] = {key: {} for key in CALIBRATION_TABLES}
    for c in classes:
        world = CutWorld(
            args.dataset, train_split, c, root=args.root, device=args.device, model=model, data=data
        )
        images = validation_images(world, args.fraction, args.seed)
        if not images:
            log(f"calibrate {c}: no validation image contains it; keeping defaults")
            continue
        mids = world.mid_maps(images)
        gt = validation_truth(world, images)
        size = {i: (data.annotation(i).width, data.annotation(i).height) for i in images}
        rows = [(j, box_to_crop(b, *size[i])) for j, i in enumerate(images) for b in gt[i]]
        _, p_full = world.full(images)
        _, p_gt = world.score_crops(mids[[j for j, _ in rows]], np.asarray([cr for _, cr in rows]))
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
                np.mean([corloc_hit(crop_to_box(crops[i], *size[i]), gt[i]) for i in images])
            )
            for (layer, region, t), v in refinement_scores(world, crops, gt).items():
                scores[(delta, layer, region, t)] = v
        delta, layer, region, thr = best_setting(scores)
        calib["delta"][c] = delta
        calib["heatmap_layer"][c] = layer
        calib["heatmap_region"][c] = region
        calib["heatmap_threshold"][c] = thr
        calib["classifier"][c] = digest
        calib["refinement_hits"][c] = hit_counts(
            {k[1:]: v for k, v in scores.items() if k[0] == delta}, len(images)
        )
        calib["validation"][c] = {
            "images": len(images),
            "gt_drop_median": float(np.median(drops)),
            "greedy_corloc": 100 * greedy_hits[delta],
            "refined_corloc": 100 * scores[(delta, layer, region, thr)],
            "full_image_corloc": 100
            * float(np.mean([corloc_hit(crop_to_box(FULL_CROP, *size[i]), gt[i]) for i in images])),
        }
        log(
            f"calibrate {c}: δ={delta:.3f} heat-map {layer}/{region}@{thr:.1f} "
            f"(greedy CorLoc {calib['validation'][c]['greedy_corloc']:.0f} → refined "
            f"{calib['validation'][c]['refined_corloc']:.0f} on {len(images)} images)"
        )
    calib["rule"] = {
        "delta": f"best refined CorLoc over {DELTAS} and the {args.quantile} quantile of the "
        f"drop at the GT crop, within [{args.min_delta}, {args.max_delta}]",
        "refinement": "evaluation: the best summed refinement_hits over the calibrated classes",
        "subset": f"{args.fraction:.0%} of {train_split}, seed {args.seed}",
    }
    path = paths.calibration_path(args.dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-modify-write under a lock: a calibration of other classes running at the same time
    # merges its classes into the same file instead of overwriting them.
    with FileLock(path.parent / f".{path.name}.lock"):
        remove_stale_temps(path.parent)  # of killed writers
        merged = load_calibration(args.dataset)
        for key in CALIBRATION_TABLES:
            merged.setdefault(key, {}).update(calib[key])
        merged["rule"] = calib["rule"]
        write_json(path, merged)
    log(f"calibration -> {relpath(path)}")
    return merged
