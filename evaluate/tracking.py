"""``python -m evaluate.tracking --classes dog,cat``: does the class score track the object?

The reward thresholds the score drop ``p̄ − p̂``, so a localizer can only be as good as the
score's response to cutting: cutting background must cost (almost) nothing and cutting into the
object must cost more than δ. No agent is needed: on every positive image of a split this scores
the zero-padded mid-level map cut in three ways around the object's grid crop (the smallest crop
covering the union of the class's ground-truth boxes):

* ``bg_drop``: keep only the object's crop (all background cut off);
* ``half_drop``: keep half the object's crop (the mean over its left, right, top and bottom
  halves; all background cut too);
* ``edge_drop``: keep the object's crop less one cell on one side (the mean over the four
  sides): a cut into the object's edge, which should cost more than δ and often does not;
* ``none_score``: ``p̂`` of the largest crop beside the object (no object cell kept; NaN when
  the object touches every side), the score the object itself is responsible for;
* ``empty_score``: ``p̂`` of the all-zero map (a crop that keeps no cell), the class evidence of
  the zero padding alone. Every cut replaces map cells by this padding, so a class whose empty
  score is high gains score when clutter is cut (on the shipped classifier horse 0.26 and bear
  0.47 against 0.06–0.11: the two classes whose score rises at the ground-truth crop).

It reports their means, how often the verdicts at δ are right (``bg_valid``: the background-only
crop keeps the drop ≤ δ; ``half_invalid``: the half-object crop does not; ``edge_invisible``:
the edge cut keeps the drop ≤ δ, so nothing stops a cut into the object) and the ``greedy_cut``
CorLoc (:func:`~cutbg_env.localize.greedy_cut`, the reward's own policy, at the same δ) with the
kind of each miss (:func:`miss_kind`): a box that holds the whole object crop (cutting stopped
early: background cuts cost), one inside it (cut into the object: edge cuts cost nothing) or
one across its border (both at once). Writes ``results/tracking.json`` and prints a table.
Boxes are used only to measure.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cutbg_env.calibration import resolve_delta
from cutbg_env.cli import StageArgs, command_main
from cutbg_env.errors import OptionError
from cutbg_env.geometry import GRID, Crop, box_to_crop, crop_area, crop_to_box
from cutbg_env.io import write_json
from cutbg_env.localize import greedy_cut
from cutbg_env.metrics import corloc_hit
from cutbg_env.world import CutWorld


@dataclass(frozen=True)
class TrackingArgs(StageArgs):
    """Score drops when cutting background vs the object, and greedy-cutting CorLoc, per class."""

    classes: str = "dog,cat,horse,sheep,cow,bird"
    """Comma-separated classes."""
    split: str = "test"
    """Split whose positive images are measured."""
    delta: float | None = None
    """δ of the verdicts and of greedy cutting (default: each class's calibrated δ)."""
    max_images: int | None = None
    """Use only the first N positive images of each class."""
    out: str = "results"
    """Folder of ``tracking.json``."""


def object_crop(boxes: Sequence[Sequence[float]], width: int, height: int) -> Crop:
    """The smallest grid crop covering the union of VOC ``boxes`` in a ``width × height`` image."""
    crops = np.asarray([box_to_crop(b, width, height) for b in boxes])
    return (
        int(crops[:, 0].min()),
        int(crops[:, 1].min()),
        int(crops[:, 2].max()),
        int(crops[:, 3].max()),
    )


def half_crops(crop: Crop) -> list[Crop]:
    """The left, right, top and bottom halves of ``crop`` (a side of one cell is not halved: that
    half is the whole side)."""
    x0, y0, x1, y1 = crop
    xm, ym = x0 + max(1, (x1 - x0) // 2), y0 + max(1, (y1 - y0) // 2)
    return [
        (x0, y0, xm, y1),
        (x1 - (xm - x0), y0, x1, y1),
        (x0, y0, x1, ym),
        (x0, y1 - (ym - y0), x1, y1),
    ]


def edge_crops(crop: Crop) -> list[Crop]:
    """``crop`` less one cell on its left, right, top and bottom side (a side one cell thick is
    not cut: that crop is the whole ``crop``)."""
    x0, y0, x1, y1 = crop
    dx, dy = int(x1 - x0 > 1), int(y1 - y0 > 1)
    return [
        (x0 + dx, y0, x1, y1),
        (x0, y0, x1 - dx, y1),
        (x0, y0 + dy, x1, y1),
        (x0, y0, x1, y1 - dy),
    ]


MISS_KINDS = ("holds", "inside", "across")
"""How a box that misses (IoU < 0.5) lies against the object crop: :func:`miss_kind`."""


def miss_kind(crop: Crop, obj: Crop) -> str:
    """``"holds"`` when ``crop`` contains every cell of ``obj``, ``"inside"`` when it lies within
    ``obj`` (and is not ``obj`` itself), else ``"across"`` (it cuts into ``obj`` on one side and
    keeps background on another, or lies beside it)."""
    if crop[0] <= obj[0] and crop[1] <= obj[1] and crop[2] >= obj[2] and crop[3] >= obj[3]:
        return "holds"
    if crop[0] >= obj[0] and crop[1] >= obj[1] and crop[2] <= obj[2] and crop[3] <= obj[3]:
        return "inside"
    return "across"


def beside_crop(crop: Crop, grid: int = GRID) -> Crop | None:
    """The largest full-height or full-width crop beside ``crop`` that holds none of its cells
    (``None`` when ``crop`` touches every side)."""
    x0, y0, x1, y1 = crop
    sides = [(0, 0, x0, grid), (x1, 0, grid, grid), (0, 0, grid, y0), (0, y1, grid, grid)]
    sides = [s for s in sides if s[2] > s[0] and s[3] > s[1]]
    return max(sides, key=crop_area) if sides else None


def track_class(world: CutWorld, indices: Sequence[int], delta: float) -> dict:
    """The measurements of the module docstring for one class's images ``indices``."""
    data, cls = world.data, world.class_name
    obj, halves, edges, beside, sizes, gts = [], [], [], [], [], []
    for i in indices:
        ann = data.annotation(i)
        boxes = [b for b, _ in data.gt_boxes(i, cls)]
        sizes.append((ann.width, ann.height))
        gts.append(boxes)
        c = object_crop(boxes, ann.width, ann.height)
        obj.append(c)
        halves.append(half_crops(c))
        edges.append(edge_crops(c))
        beside.append(beside_crop(c))
    mids = world.mid_maps(list(indices))
    _, p_full = world.full(list(indices))
    p_full_a = np.asarray(p_full)
    _, p_obj = world.score_crops(mids, np.asarray(obj))
    rep = mids.repeat_interleave(4, dim=0)
    _, p_half = world.score_crops(rep, np.asarray(halves).reshape(-1, 4))
    p_half = p_half.reshape(len(indices), 4)
    _, p_edge = world.score_crops(rep, np.asarray(edges).reshape(-1, 4))
    edge_drop = p_full_a[:, None] - p_edge.reshape(len(indices), 4)
    p_none = np.full(len(indices), np.nan)
    has = [k for k, b in enumerate(beside) if b is not None]
    if has:
        _, p_none[has] = world.score_crops(mids[has], np.asarray([beside[k] for k in has]))
    _, p_empty = world.score_crops(mids[:1], np.zeros((1, 4), dtype=np.int64))
    bg_drop = p_full_a - p_obj
    half_drop = p_full_a[:, None] - p_half
    greedy = greedy_cut(world, indices, delta)
    hits = [
        corloc_hit(crop_to_box(loc.crop, *size), boxes)
        for loc, size, boxes in zip(greedy, sizes, gts, strict=True)
    ]
    misses = [
        miss_kind(loc.crop, c) for loc, c, hit in zip(greedy, obj, hits, strict=True) if not hit
    ]
    return {
        "images": len(indices),
        "delta": delta,
        "p_full": float(p_full_a.mean()),
        "bg_drop": float(bg_drop.mean()),
        "half_drop": float(half_drop.mean()),
        "edge_drop": float(edge_drop.mean()),
        "none_score": float(np.nanmean(p_none)) if has else None,
        "empty_score": float(p_empty[0]),
        "bg_valid": float((bg_drop <= delta).mean()),
        "half_invalid": float((half_drop > delta).mean()),
        "edge_invisible": float((edge_drop <= delta).mean()),
        "object_area": float(np.mean([crop_area(c) for c in obj]) / GRID**2),
        "greedy_cut_corloc": 100.0 * float(np.mean(hits)),
        "greedy_cut_area": float(np.mean([crop_area(loc.crop) for loc in greedy]) / GRID**2),
        "greedy_cut_misses": {k: misses.count(k) / len(indices) for k in MISS_KINDS},
    }


HEADER = (
    "| class | images | δ | p̄ | bg_drop | half_drop | edge_drop | none p̂ | empty p̂ | bg valid "
    "| half invalid | edge invisible | object area | greedy_cut area | greedy_cut CorLoc "
    "| misses: holds / inside / across |"
)


def table_row(cls: str, r: dict) -> str:
    """One markdown row of :data:`HEADER`."""
    none = "–" if r["none_score"] is None else f"{r['none_score']:.2f}"
    misses = " / ".join(f"{100 * r['greedy_cut_misses'][k]:.0f}%" for k in MISS_KINDS)
    return (
        f"| {cls} | {r['images']} | {r['delta']:g} | {r['p_full']:.2f} | {r['bg_drop']:+.2f} "
        f"| {r['half_drop']:+.2f} | {r['edge_drop']:+.2f} | {none} | {r['empty_score']:.2f} "
        f"| {100 * r['bg_valid']:.0f}% | {100 * r['half_invalid']:.0f}% "
        f"| {100 * r['edge_invisible']:.0f}% | {100 * r['object_area']:.0f}% "
        f"| {100 * r['greedy_cut_area']:.0f}% | {r['greedy_cut_corloc']:.1f} | {misses} |"
    )


def report(args: TrackingArgs) -> dict:
    """Measure every class of ``--classes``, write the JSON and print the table."""
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        raise OptionError(f"--classes {args.classes!r} names no class: pass e.g. --classes dog,cat")
    per_class: dict[str, dict] = {}
    first: CutWorld | None = None
    for cls in classes:
        world = CutWorld(
            args.dataset,
            args.split,
            cls,
            args.checkpoint,
            args.root,
            args.device,
            model=first.model if first else None,
            data=first.data if first else None,
        )
        first = first or world  # one classifier and one split for every class
        world.require_positives()
        delta = resolve_delta(args.dataset, cls, args.delta, first.classifier_path)
        per_class[cls] = track_class(world, world.positives[: args.max_images], delta)
    result = {"dataset": args.dataset, "split": args.split, "classes": per_class}
    path = Path(args.out) / "tracking.json"
    write_json(path, result)
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    for cls, r in per_class.items():
        print(table_row(cls, r))
    print(f"-> {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m evaluate.tracking", __doc__, TrackingArgs, report, argv)


if __name__ == "__main__":
    sys.exit(main())
