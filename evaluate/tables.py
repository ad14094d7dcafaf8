"""From the boxes of every method to the tables: AP, CorLoc and calls per method and class, one
seed's rows, their summary over seeds, and the markdown a person reads (results/eval.md)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cutbg_env.geometry import FULL_CROP, crop_to_box
from cutbg_env.metrics import average_precision, corloc, precision_recall, seed_summary

METHODS = (
    "full_image",
    "heatmap",
    "random_agent",
    "agent",
    "agent_refined",
    "agent_retry",
    "agent_retry_refined",
    "exhaustive",
    "greedy_cut",
)
ENSEMBLE_METHODS = ("agent_ensemble", "agent_ensemble_refined")
"""Rows added with ``--ensemble`` (see :func:`evaluate.run.ensemble_members`)."""


def score_boxes(res: dict[str, dict], data, cls: str, indices: list[int]) -> dict[str, dict]:
    """AP (VOC and VOC07), CorLoc, calls and seconds per image of each method's boxes.

    Every image of ``indices`` enters AP with one detection at its ``scores`` entry; an image
    without a box in ``boxes`` (one not holding the class, which a method need not localize:
    its detection is a false positive whatever the box) is given the whole image."""
    gt = {i: data.gt_boxes(i, cls) for i in indices}
    gt_pos = {i: g for i, g in gt.items() if g}
    size = {i: (data.annotation(i).width, data.annotation(i).height) for i in indices}
    whole = {i: crop_to_box(FULL_CROP, *size[i]) for i in indices}
    out = {}
    for m, r in res.items():
        boxes = r["boxes"]
        dets = [(i, float(r["scores"][i]), boxes.get(i) or whole[i]) for i in indices]
        out[m] = {
            "ap": average_precision(dets, gt),
            "ap07": average_precision(dets, gt, use_07_metric=True),
            "corloc": corloc(r["boxes"], gt_pos),
            "calls": r["calls"],
            "seconds": r["seconds"],
            "pr": precision_recall(dets, gt),
        }
    return out


def seed_rows(
    per_class: dict[str, dict[str, dict]],
    methods: Sequence[str],
    classes: Sequence[str] | None = None,
) -> dict[str, dict]:
    """One seed's rows: per method, AP / CorLoc per class and their means over classes.

    ``classes`` (default: those of ``per_class``) orders the per-class entries; one without
    scores in ``per_class`` (no positive image: not measurable) is ``None`` there and left out
    of the means."""
    order = list(per_class) if classes is None else list(classes)
    rows = {}
    for m in methods:
        cells = {c: per_class[c][m] for c in per_class if m in per_class[c]}
        if not cells:
            continue

        def entry(key: str, cells: dict[str, dict] = cells) -> dict[str, float | None]:
            return {c: cells[c][key] if c in cells else None for c in order}

        rows[m] = {
            "ap": entry("ap"),
            "ap07": entry("ap07"),
            "map": float(np.mean([v["ap"] for v in cells.values()])),
            "map07": float(np.mean([v["ap07"] for v in cells.values()])),
            "corloc": entry("corloc"),
            "mean_corloc": float(np.mean([v["corloc"] for v in cells.values()])),
            "calls_per_image": float(np.mean([v["calls"] for v in cells.values()])),
            "seconds_per_image": float(np.mean([v["seconds"] for v in cells.values()])),
        }
    return rows


def over_seeds(
    per_seed: list[dict[str, dict]], methods: Sequence[str], classes: Sequence[str]
) -> dict[str, dict]:
    """Per method, the seed-0 row plus ``over_seeds``: :func:`~cutbg_env.metrics.seed_summary`
    of mAP and mean CorLoc over the seeds that have the row (seeds × classes, stratified by
    class), the per-seed values, and each class's AP and CorLoc averaged over the seeds
    (``per_class_ap``, ``per_class_corloc``; ``classes`` are the measured ones)."""
    out = {}
    for m in methods:
        rows = [r[m] for r in per_seed if m in r]
        if not rows:
            continue
        out[m] = dict(rows[0])
        out[m]["over_seeds"] = {
            "map": seed_summary([[r["ap"][c] for c in classes] for r in rows]),
            "corloc": seed_summary([[r["corloc"][c] for c in classes] for r in rows]),
            "per_seed_map": [r["map"] for r in rows],
            "per_seed_corloc": [r["mean_corloc"] for r in rows],
            "calls_per_image": float(np.mean([r["calls_per_image"] for r in rows])),
            "per_class_ap": _class_means(rows, "ap", classes),
            "per_class_corloc": _class_means(rows, "corloc", classes),
        }
    return out


def _class_means(rows: list[dict], key: str, classes: Sequence[str]) -> dict[str, float]:
    """Each class's ``key`` (``ap`` or ``corloc``) averaged over the seeds' rows."""
    return {c: float(np.mean([r[key][c] for r in rows])) for c in classes}


def seeds_table(result: dict) -> list[str]:
    """The rows over seeds: mean ± standard deviation [95 % CI] of mAP and CorLoc."""
    n = len(result["seeds"]["seeds"])
    lines = [
        f"# Localization on {result['dataset']} / {result['split']} ({result['images']} images), "
        f"{n} seeds",
        "",
        "| method | seeds | mAP mean ± std | mAP 95 % CI | CorLoc mean ± std | CorLoc 95 % CI | "
        "calls / image | CorLoc per seed |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in (m for m in METHODS + ENSEMBLE_METHODS if m in result):
        o = result[m]["over_seeds"]
        a, c = o["map"], o["corloc"]
        lines.append(
            f"| {m} | {a['runs']} | {a['mean']:.1f} ± {a['std']:.1f} | "
            f"{a['ci_low']:.1f}–{a['ci_high']:.1f} | {c['mean']:.1f} ± {c['std']:.1f} | "
            f"{c['ci_low']:.1f}–{c['ci_high']:.1f} | {o['calls_per_image']:.1f} | "
            + " / ".join(f"{v:.1f}" for v in o["per_seed_corloc"])
            + " |"
        )
    return lines + _class_table(result)


def _class_table(result: dict) -> list[str]:
    """With several classes: each class's CorLoc, mean over the seeds (method × class; a class
    not measured is shown as :data:`NOT_MEASURED`)."""
    classes = result["classes"]
    if len(classes) < 2:
        return []
    lines = [
        "",
        f"CorLoc per class, mean over the {len(result['seeds']['seeds'])} seeds:",
        "",
        "| method | " + " | ".join(classes) + " | mean |",
        "|---|" + "---:|" * (len(classes) + 1),
    ]
    for m in (m for m in METHODS + ENSEMBLE_METHODS if m in result):
        o = result[m]["over_seeds"]
        lines.append(
            f"| {m} | "
            + " | ".join(_cell(o["per_class_corloc"].get(c)) for c in classes)
            + f" | {o['corloc']['mean']:.1f} |"
        )
    return lines


def markdown_table(result: dict) -> str:
    """The table a person reads (like the paper's Tables 2–5); over seeds with ``--seeds``."""
    classes = result["classes"]
    if "seeds" in result:
        return "\n".join([*seeds_table(result), *_notes(result)]) + "\n"
    lines = [
        f"# Localization on {result['dataset']} / {result['split']} ({result['images']} images)",
        "",
        ONE_SEED,
        "",
        "| method | mAP | mAP (VOC07 11-pt) | mean CorLoc | calls / image | ms / image | "
        + " | ".join(f"AP {c}" for c in classes)
        + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(classes),
    ]
    for m in (m for m in METHODS + ENSEMBLE_METHODS if m in result):
        r = result[m]
        lines.append(
            f"| {m} | {r['map']:.1f} | {r['map07']:.1f} | {r['mean_corloc']:.1f} | "
            f"{r['calls_per_image']:.1f} | {1000 * r['seconds_per_image']:.1f} | "
            + " | ".join(_cell(r["ap"][c]) for c in classes)
            + " |"
        )
    return "\n".join(lines + _notes(result)) + "\n"


ONE_SEED = (
    "One training seed (the agents of seed 0); one run is several CorLoc points from the next: "
    "`--seeds 5` (`make eval SEEDS=5`) reports the mean, std and 95 % CI over five."
)
"""The line under the heading of a one-seed table (``make demo``'s)."""
NOT_MEASURED = "–"
"""The table's entry of a class that has no positive image (``null`` in eval.json)."""


def _cell(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.1f}"


def _notes(result: dict) -> list[str]:
    """The lines under the table: classes not measured, heat-map setting, δ, ensemble sizes."""
    lines: list[str] = []
    for c, why in result.get("unmeasurable", {}).items():
        lines += [
            "",
            f"{c}: {NOT_MEASURED}, not measurable ({why}); left out of the means.",
        ]
    ref = result.get("refinement")
    if ref:
        chosen = ", ".join(f"{c} {k}" for c, k in ref["settings"].items())
        lines += [
            "",
            f"Heat-map (layer/region/threshold) of heatmap and the refined rows: {chosen} "
            f"({ref['rule']}).",
        ]
    if "delta" in result:
        chosen = ", ".join(f"{c} {d:g}" for c, d in result["delta"]["values"].items())
        lines += [
            "",
            f"δ of every rule-based row: {chosen} (each agent's training δ, config.json).",
        ]
    if "ensemble" in result:
        sizes = ", ".join(f"{c} {len(z)}" for c, z in result["ensemble"].items())
        lines += ["", f"agent_ensemble: mean Q-values of each class's agents ({sizes})."]
    if "seeds" in result:
        lines += ["", "Heat-map and δ lines: seed 0's; eval.json has every seed's."]
    return lines
