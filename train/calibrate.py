"""Stage 2: per-class δ and heat-map threshold, from a small validation subset with boxes.

The only place boxes are used in training (as in the paper): a seeded ≤ 5% subset of trainval.

Rule for δ (``--delta-rule pooled``, the default): one δ for the dataset, the δ of the grid
:data:`DELTAS` at which greedy cutting (the reward's own policy, which the agent learns) hits
the most validation images of all the calibrated classes together (~180 images on the embedded
set; ties: the smaller δ). Why (docs/experiments.md, 2026-12-07): on a classifier trained on
pseudo-box crops (:mod:`train.pseudo`) background cuts are nearly free, so the per-class rule
below gives 0.02 to most classes, where greedy cutting stops early (horse 14.5 test CorLoc
against 28.9 at 0.1), while the pooled count of greedy hits peaks where the test's does.

Rule ``per-class`` (the default before 2026-12-07, for classifiers whose background cuts cost):

* The *context test*: crop each validation image's mid-level map to the grid cells of its
  ground-truth box (where an ideal agent ends) and take the median score drop ``p̄ − p̂`` there.
  A class whose median reaches ``drop_split`` (0.15) keeps its score only with some background,
  so a small δ ends every episode before the object: it takes ``context_delta`` (0.2).
* Every other class chooses δ from :data:`DELTAS` below ``context_delta`` (from ``min_delta``):
  the greedy cutting policy (the reward's own policy, which the agent learns) runs on the
  validation images at each, its boxes are refined with the heat-map of their crop for every
  layer, region rule (:data:`~cutbg_env.refine.HEATMAP_REGIONS`) and threshold in the grid, and
  the δ with the highest refined CorLoc is kept (ties: the smaller δ).
Either way, for the refinement's heat-map layer, region rule and threshold:

* At the class's δ, the best setting (ties: lower threshold, then the mid-level layer, then the
  peak region) and every setting's hit count (``refinement_hits``) are stored: evaluation pools
  the hits over all calibrated classes into the dataset's one refinement setting
  (:func:`cutbg_env.refine.dataset_setting`), chosen on ~180 images instead of one class's ~20.

Why not the refined hits for every δ: on 15–23 images they tie or point the wrong way between
a small δ and 0.2, while the median drop sorted every class whose agents were trained at both
(docs/experiments.md, 2026-12-06).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
from cutbg_env.refine import (
    best_setting,
    dataset_setting_hits,
    hit_counts,
    refinement_scores,
    setting_key,
)
from cutbg_env.world import CutWorld


@dataclass(frozen=True)
class CalibrateArgs(StageArgs):
    """Choose δ and the refinement threshold of every class on a small validation subset."""

    classes: str | None = None
    """Comma-separated classes to calibrate (default: all); others keep their stored values."""
    fraction: float = VALIDATION_FRACTION
    """Share of trainval images in the validation subset (at most 0.05, as the paper's)."""
    drop_split: float = 0.15
    """Median validation score drop at the GT crop from which a class takes ``context_delta``."""
    context_delta: float = 0.2
    """δ of the classes whose median drop reaches ``drop_split``."""
    min_delta: float = 0.02
    """Smallest δ of the grid the other classes choose from (up to ``context_delta``)."""
    seed: int = VALIDATION_SEED
    """Seed of the validation subset."""
    delta_rule: str = "pooled"
    """``pooled``: one δ for the calibrated classes, the grid's δ with the most greedy-cut
    validation hits over all of them; ``per-class``: the context test, else each class's best
    refined CorLoc (the module docstring)."""

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        checks.real("--fraction", self.fraction, 0.0, 0.05, lo_open=True)
        checks.real("--drop-split", self.drop_split, -1.0, 1.0)
        checks.real("--context-delta", self.context_delta, 0.0, 1.0, lo_open=True)
        checks.real("--min-delta", self.min_delta, 0.0, 1.0)
        checks.rule(
            bool(small_deltas(self.min_delta, self.context_delta)),
            f"--min-delta {self.min_delta:g}: no δ of the grid {DELTAS} lies in "
            f"[{self.min_delta:g}, --context-delta {self.context_delta:g}); lower --min-delta",
        )
        checks.integer("--seed", self.seed, 0)
        checks.choice("--delta-rule", self.delta_rule, DELTA_RULES)
        checks.names("--classes", self.classes)
        super().__post_init__()


DELTAS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
"""The δ grid: the pooled rule chooses from all of it; with the per-class rule, classes below
``drop_split`` choose from its values under ``context_delta``."""
DELTA_RULES = ("pooled", "per-class")
"""The values of ``--delta-rule``."""


def small_deltas(lo: float, context_delta: float) -> list[float]:
    """The grid's δ in ``[lo, context_delta)``: the candidates of a class below the split."""
    return [float(d) for d in DELTAS if lo <= d < context_delta]


def needs_context(drops: np.ndarray, split: float) -> bool:
    """The context test: the median score drop at the GT crops reaches ``split`` (no drops: no)."""
    drops = np.asarray(drops, dtype=np.float64)
    return bool(drops.size) and float(np.median(drops)) >= split


def pooled_delta(hits: Iterable[Mapping[float, int]]) -> float:
    """The δ with the most greedy-cut hits summed over classes (per class ``{δ: hits}``; a δ
    missing from a table counts 0 there); ties go to the smaller δ."""
    total: dict[float, int] = {}
    for table in hits:
        for delta, n in table.items():
            total[float(delta)] = total.get(float(delta), 0) + int(n)
    if not total:
        raise ValueError("pooled_delta: no greedy-cut hits to pool")
    return max(total, key=lambda d: (total[d], -d))


@dataclass
class _Validation:
    """One class's validation images and what the δ rules need of them."""

    world: CutWorld
    images: list[int]
    gt: dict[int, list]
    size: dict[int, tuple[int, int]]
    drops: np.ndarray
    crops: dict[float, dict[int, tuple[int, int, int, int]]]
    """Greedy cutting's crop per δ of the grid and image."""
    hits: dict[float, int]
    """Per δ, the validation images whose greedy-cut box is a CorLoc hit."""


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
    found: dict[str, _Validation] = {}
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
        crops = {
            float(d): {i: g.crop for i, g in zip(images, greedy_cut(world, images, d), strict=True)}
            for d in sorted({*DELTAS, args.context_delta})
        }
        hits = {
            d: sum(corloc_hit(crop_to_box(cr[i], *size[i]), gt[i]) for i in images)
            for d, cr in crops.items()
        }
        found[c] = _Validation(world, images, gt, size, drops, crops, hits)
    pooled = (
        pooled_delta({d: v.hits[d] for d in DELTAS} for v in found.values())
        if found and args.delta_rule == "pooled"
        else None
    )
    for c, v in found.items():
        context = needs_context(v.drops, args.drop_split)
        if pooled is not None:
            candidates = [pooled]
        else:
            candidates = (
                [args.context_delta]
                if context
                else small_deltas(args.min_delta, args.context_delta)
            )
        scores: dict[tuple[float, str, str, float], float] = {}
        for delta in candidates:
            for (layer, region, t), value in refinement_scores(
                v.world, v.crops[delta], v.gt
            ).items():
                scores[(delta, layer, region, t)] = value
        delta, layer, region, thr = best_setting(scores)
        images, size, gt = v.images, v.size, v.gt
        calib["delta"][c] = delta
        calib["heatmap_layer"][c] = layer
        calib["heatmap_region"][c] = region
        calib["heatmap_threshold"][c] = thr
        calib["classifier"][c] = digest
        calib["refinement_hits"][c] = hit_counts(
            {k[1:]: val for k, val in scores.items() if k[0] == delta}, len(images)
        )
        calib["validation"][c] = {
            "images": len(images),
            "gt_drop_median": float(np.median(v.drops)),
            "needs_context": context,
            "greedy_corloc": 100 * v.hits[delta] / len(images),
            "greedy_hits": {f"{d:g}": v.hits[d] for d in DELTAS},
            "refined_corloc": 100 * scores[(delta, layer, region, thr)],
            "full_image_corloc": 100
            * float(np.mean([corloc_hit(crop_to_box(FULL_CROP, *size[i]), gt[i]) for i in images])),
        }
        log(
            f"calibrate {c}: δ={delta:.3f} heat-map {layer}/{region}@{thr:.1f} "
            f"(greedy CorLoc {calib['validation'][c]['greedy_corloc']:.0f} → refined "
            f"{calib['validation'][c]['refined_corloc']:.0f} on {len(images)} images)"
        )
    per_class = (
        f"{args.context_delta:g} where the median score drop at the GT crops is "
        f"≥ {args.drop_split:g}, else the best refined CorLoc of greedy cutting over "
        f"{small_deltas(args.min_delta, args.context_delta)}"
    )
    pooled_rule = (
        f"one δ for the {len(found)} classes calibrated together: the most greedy-cut hits "
        f"over their validation images, of {list(DELTAS)}"
    )
    calib["rule"] = {
        "delta": pooled_rule if pooled is not None else per_class,
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
    summary = dataset_setting_hits(merged)
    if summary is not None:
        setting, hits, images = summary
        share = f" ({100 * hits / images:.0f} %)" if images else ""
        log(
            f"calibrate: the dataset's heat-map setting {setting_key(setting)} refines greedy-cut "
            f"boxes into hits on {hits} of {images} validation images{share}"
        )
    return merged
