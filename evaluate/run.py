"""``python -m evaluate``: every method on the same test images, VOC AP / CorLoc, figures.

Methods (same classifier, same images: every test image, positives and negatives):

* ``full_image``: the whole image as the box (1 call).
* ``heatmap``: the refinement rectangle of the whole image's heat-map alone, no agent.
* ``random_agent``: uniform random actions with the env's stop rules and step budget.
* ``agent``: greedy rollout of the class's DQN agent.
* ``agent_refined``: the agent's box intersected with the heat-map rectangle of its crop (§2.3).
* ``exhaustive``: the highest-scoring of ~2,000 multi-scale windows (the proposal approach).
* ``greedy_cut``: the reward's own policy, all 12 cuts tried every step (~200 calls).
* ``agent_ensemble`` / ``agent_ensemble_refined`` (only when every class has ensemble members,
  ``make train-ensemble``): greedy actions on the mean Q-values of the class's agent and its
  members, and that box refined; the same classifier calls per step as ``agent``.

The confidence of every box is the full-image score ``p̄(c|x)`` (the paper's definition).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from stable_baselines3 import DQN

from cutbg_env import paths
from cutbg_env.backbone import load_classifier
from cutbg_env.core import CutWorld, load_calibration, resolve_delta
from cutbg_env.env import draw_crops
from cutbg_env.errors import CheckpointError
from cutbg_env.geometry import FULL_CROP, crop_to_box
from cutbg_env.io import atomic_path, write_json, write_text
from cutbg_env.localize import exhaustive, exhaustive_windows, greedy_cut, heatmaps
from evaluate.metrics import average_precision, corloc, plot_pr_curve, precision_recall
from evaluate.refine import heatmap_box, refine
from evaluate.rollout import (
    Policy,
    ensemble_options,
    ensemble_policy,
    observation_options,
    random_policy,
    rollout,
    sb3_policy,
)
from train.agent import REFINEMENT_FILE, ensemble_agents
from train.calibrate import Setting, parse_setting, pooled_setting, setting_key
from train.common import check_class, log, open_split, relpath, splits

METHODS = (
    "full_image",
    "heatmap",
    "random_agent",
    "agent",
    "agent_refined",
    "exhaustive",
    "greedy_cut",
)
ENSEMBLE_METHODS = ("agent_ensemble", "agent_ensemble_refined")
"""Rows added when every evaluated class has ensemble members (see :func:`ensemble_members`)."""


REFINEMENT_RULES = ("pooled", "own")
"""How :class:`EvalArgs` picks the refinement's heat-map setting (see :func:`agent_settings`)."""


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate every method on a test split and write results/eval.{json,md} and figures."""

    dataset: str = "animals"
    """Dataset: animals (embedded), voc2007, voc2012 or a VOC-layout folder."""
    root: str | None = None
    """Dataset folder overriding the default location of ``dataset``."""
    split: str | None = None
    """Test split (default: test; val for voc2012)."""
    classes: str | None = None
    """Comma-separated classes (default: every class with a trained agent)."""
    checkpoint: str | None = None
    """Classifier checkpoint (default: runs/<dataset>/classifier.pt)."""
    exhaustive_windows: int = 2025
    """Windows scored per image by ``exhaustive`` (2,025 = the full multi-scale set)."""
    max_images: int | None = None
    """Evaluate on the first N test images only (quick checks)."""
    figures: int = 4
    """Images per class drawn as cutting-process / refinement figures."""
    out: str = "results"
    """Output folder."""
    refinement: str = field(default="pooled", metadata={"choices": REFINEMENT_RULES})
    """Heat-map setting of heatmap and agent_refined: pooled (one for all classes) or own."""
    seed: int = 0
    """Seed of the random agent."""
    ensemble: bool = True
    """Add the agent_ensemble rows when every class has ensemble members (make train-ensemble)."""
    device: str = "cpu"
    """Torch device."""


def ensemble_members(args: EvalArgs, classes: list[str]) -> dict[str, list[Path]]:
    """Per class, the zips of the ensemble evaluated as ``agent_ensemble`` (the agent first): all
    of :func:`~train.agent.ensemble_agents` when ``args.ensemble`` and every class has a member,
    else ``{}`` (and a log line names the classes without one)."""
    if not args.ensemble:
        return {}
    members = {c: ensemble_agents(args.dataset, c) for c in classes}
    lacking = [c for c, m in members.items() if len(m) < 2]
    if len(lacking) < len(classes) and lacking:
        log(
            f"no agent_ensemble rows: {', '.join(lacking)} has no ensemble member "
            f"(`make train-ensemble CLASS={lacking[0]}`)"
        )
    return {} if lacking else members


def _agent_path(dataset: str, cls: str) -> Path:
    return paths.agent_dir(dataset, cls) / "agent.zip"


def _agent_refinement(dataset: str, cls: str) -> dict | None:
    """The agent's ``refinement.json`` (``None`` when there is none)."""
    path = paths.agent_dir(dataset, cls) / REFINEMENT_FILE
    if not path.is_file():
        return None
    try:
        own = json.loads(path.read_text())
        hits = own.get("validation", {}).get("hits")
        own["setting"] = (
            str(own["heatmap_layer"]),
            str(own.get("heatmap_region", "peak")),
            float(own["heatmap_threshold"]),
        )
        if hits is not None:
            own["hits"] = {setting_key(parse_setting(k)): int(v) for k, v in hits.items()}
        return own
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path} is unreadable ({exc!r}): delete it or retrain with `make train CLASS={cls}`"
        ) from exc


def refinement_setting(dataset: str, cls: str, calib: dict) -> Setting:
    """Heat-map ``(layer, region, threshold)`` of a class: the agent's own choice
    (``runs/<dataset>/<class>/refinement.json``, written after training) when there is one, else
    the calibration's (chosen on greedy boxes), else ``("mid", "peak", 0.5)``."""
    return _setting(_agent_refinement(dataset, cls), cls, calib)


def _setting(own: dict | None, cls: str, calib: dict) -> Setting:
    """:func:`refinement_setting` from an already read ``refinement.json`` (or ``None``)."""
    if own is not None:
        return own["setting"]
    return (
        str(calib.get("heatmap_layer", {}).get(cls, "mid")),
        str(calib.get("heatmap_region", {}).get(cls, "peak")),
        float(calib.get("heatmap_threshold", {}).get(cls, 0.5)),
    )


def agent_settings(
    dataset: str, classes: list[str], calib: dict, rule: str = "pooled"
) -> tuple[dict[str, Setting], str]:
    """The refinement setting of each class, and a line saying how it was chosen.

    ``own``: each class's :func:`refinement_setting`. ``pooled``: one setting for every class,
    :func:`~train.calibrate.pooled_setting` over the validation hit tables in the agents'
    ``refinement.json``; when a class has no table (an agent trained before the tables were
    written), every class keeps its own setting and the line says so.
    """
    if rule not in REFINEMENT_RULES:
        raise ValueError(f"refinement={rule!r}: expected one of {REFINEMENT_RULES}")
    files = {c: _agent_refinement(dataset, c) for c in classes}
    own = {c: _setting(files[c], c, calib) for c in classes}
    if rule == "own":
        return own, "each agent's own setting"
    tables = {c: (files[c] or {}).get("hits") for c in classes}
    missing = [c for c, t in tables.items() if t is None]
    if missing:
        return own, (
            f"each agent's own setting: no validation table for {', '.join(missing)} "
            f"(retrain with `make train CLASS={missing[0]}` to pool)"
        )
    pooled = pooled_setting(t for t in tables.values() if t is not None)
    return {c: pooled for c in classes}, f"pooled over {', '.join(classes)}"


def _windows(n: int) -> np.ndarray:
    full = exhaustive_windows()
    if n >= len(full):
        return full
    return full[np.linspace(0, len(full) - 1, n).round().astype(int)]


def evaluate_class(
    args: EvalArgs,
    world: CutWorld,
    cls: str,
    indices: list[int],
    figdir: Path,
    setting: Setting,
    ensemble: Sequence[Path] = (),
) -> dict[str, dict]:
    """Boxes, calls and seconds of every method for one class on ``indices``; ``setting`` is
    the heat-map ``(layer, region, threshold)`` of ``heatmap`` and the refined rows; a non-empty
    ``ensemble`` (agent zips, the class's agent first) adds the ``agent_ensemble`` rows."""
    data = world.data
    delta = resolve_delta(args.dataset, cls, None)
    layer, region, thr = setting
    model = DQN.load(_agent_path(args.dataset, cls), device=args.device)
    sizes = {i: (data.annotation(i).width, data.annotation(i).height) for i in indices}
    world.mid_maps(indices)
    _, p_full = world.full(indices)
    score = dict(zip(indices, p_full, strict=True))

    def box(i: int, crop: tuple) -> tuple:
        return crop_to_box(crop, *sizes[i])

    def heat(i: int, crop: tuple) -> tuple:
        hmap = heatmaps(world, i, np.asarray([crop]), layer)[0]
        return heatmap_box(hmap, thr, sizes[i], region=region)

    res: dict[str, dict] = {}

    def record(name: str, boxes: dict, calls: float, seconds: float) -> None:
        res[name] = {"boxes": boxes, "calls": calls, "seconds": seconds}

    t = time.perf_counter()
    record("full_image", {i: box(i, FULL_CROP) for i in indices}, 1.0, time.perf_counter() - t)
    t = time.perf_counter()
    record("heatmap", {i: heat(i, FULL_CROP) for i in indices}, 1.0, time.perf_counter() - t)

    def run_policy(
        name: str, policy: Policy, options: dict[str, bool], refined: bool = True
    ) -> tuple[dict[int, tuple], dict[int, list]]:
        """Record ``name`` (and ``<name>_refined`` when ``refined``); return the final grid
        crops and the trails of crops, per image."""
        t = time.perf_counter()
        out = rollout(world, indices, policy, delta, **options)
        secs = time.perf_counter() - t
        crops = {i: loc.crop for i, (loc, _) in zip(indices, out, strict=True)}
        calls = float(np.mean([loc.calls for loc, _ in out]))
        record(name, {i: box(i, crops[i]) for i in indices}, calls, secs)
        if refined:
            t = time.perf_counter()
            boxes = {i: refine(res[name]["boxes"][i], heat(i, crops[i])) for i in indices}
            record(f"{name}_refined", boxes, calls, secs + time.perf_counter() - t)
        return crops, {i: trail for i, (_, trail) in zip(indices, out, strict=True)}

    run_policy("random_agent", random_policy(args.seed), observation_options(model), False)
    crops, trails = run_policy("agent", sb3_policy(model), observation_options(model))
    if ensemble:
        models = [model, *(DQN.load(z, device=args.device) for z in ensemble[1:])]
        options = ensemble_options(models, [relpath(z) for z in ensemble])
        run_policy("agent_ensemble", ensemble_policy(models), options)
    t = time.perf_counter()
    ex = exhaustive(world, indices, _windows(args.exhaustive_windows))
    record(
        "exhaustive",
        {i: box(i, loc.crop) for i, loc in zip(indices, ex, strict=True)},
        float(np.mean([loc.calls for loc in ex])),
        time.perf_counter() - t,
    )
    t = time.perf_counter()
    gr = greedy_cut(world, indices, delta)
    record(
        "greedy_cut",
        {i: box(i, loc.crop) for i, loc in zip(indices, gr, strict=True)},
        float(np.mean([loc.calls for loc in gr])),
        time.perf_counter() - t,
    )
    for name in res:
        res[name]["seconds"] /= max(len(indices), 1)
        res[name]["scores"] = score
    positives = [i for i in indices if data.gt_boxes(i, cls)]
    for i in positives[: args.figures]:
        _figure(world, cls, i, trails[i], crops[i], res, layer, figdir)
    return res


def _figure(
    world: CutWorld, cls: str, i: int, trail: list, crop: tuple, res: dict, layer: str, figdir: Path
) -> None:
    """Fig. 3 + Fig. 4 of the paper for one image: cutting process | heat-map | refined box."""
    data = world.data
    img = data.load_image(i)
    gts = [b for b, _ in data.gt_boxes(i, cls)]
    left = draw_crops(img, trail, crop, gts)
    hm = heatmaps(world, i, np.asarray([crop]), layer)[0]
    hm = (255 * (hm - hm.min()) / max(float(np.ptp(hm)), 1e-12)).astype(np.uint8)
    hm = cv2.applyColorMap(
        cv2.resize(hm, img.shape[1::-1], interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_JET
    )[:, :, ::-1]
    right = draw_crops(img, [], crop, gts, final_box=res["agent_refined"]["boxes"][i])
    panel = np.concatenate([left, hm, right], axis=1)
    with atomic_path(figdir / f"{cls}_{data.ids[i]}.png", suffix=".png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))


def run(args: EvalArgs) -> dict:
    """Evaluate and write ``results/eval.json``, ``eval.md``, PR curves and figures."""
    _, test_split = splits(args.dataset)
    split = args.split or test_split
    data = open_split(args.dataset, args.root, split)
    if args.classes:
        classes = args.classes.split(",")
        for c in classes:
            check_class(data, c, args.dataset)
    else:
        classes = [c for c in data.classes if _agent_path(args.dataset, c).is_file()]
    missing = [c for c in classes if not _agent_path(args.dataset, c).is_file()]
    if not classes or missing:
        which = missing[0] if missing else "dog"
        raise CheckpointError(
            f"no trained agent for {missing or 'any class'} of {args.dataset!r} "
            f"(looked for {_agent_path(args.dataset, which)}): train one with "
            f"`make train CLASS={which}`"
            + ("" if args.dataset == "animals" else f" DATASET={args.dataset}")
        )
    ckpt = args.checkpoint or str(paths.classifier_path(args.dataset))
    model, _ = load_classifier(ckpt, args.device)
    indices = list(range(len(data)))[: args.max_images]
    out = Path(args.out)
    ensembles = ensemble_members(args, classes)
    methods = METHODS + ENSEMBLE_METHODS if ensembles else METHODS
    table: dict[str, dict] = {
        m: {"ap": {}, "ap07": {}, "corloc": {}, "calls": [], "secs": []} for m in methods
    }
    settings, how = agent_settings(
        args.dataset, classes, load_calibration(args.dataset), args.refinement
    )
    log(f"refinement heat-map: {how}")
    for cls in classes:
        world = CutWorld(
            args.dataset, split, cls, root=args.root, device=args.device, model=model, data=data
        )
        log(f"evaluating {cls} on {len(indices)} {split} images")
        res = evaluate_class(
            args, world, cls, indices, out / "figures", settings[cls], ensembles.get(cls, ())
        )
        gt = {i: data.gt_boxes(i, cls) for i in indices}
        gt_pos = {i: g for i, g in gt.items() if g}
        for m, r in res.items():
            dets = [(i, float(r["scores"][i]), r["boxes"][i]) for i in indices]
            table[m]["ap"][cls] = average_precision(dets, gt)
            table[m]["ap07"][cls] = average_precision(dets, gt, use_07_metric=True)
            table[m]["corloc"][cls] = corloc(r["boxes"], gt_pos)
            table[m]["calls"].append(r["calls"])
            table[m]["secs"].append(r["seconds"])
            rec, prec = precision_recall(dets, gt)
            plot_pr_curve(
                rec,
                prec,
                out / "pr" / f"{cls}_{m}.png",
                f"{cls} / {m}: AP {table[m]['ap'][cls]:.1f}",
            )
    result: dict = {
        "dataset": args.dataset,
        "split": split,
        "classes": classes,
        "images": len(indices),
        "args": dataclasses.asdict(args),
        "refinement": {
            "rule": how,
            "settings": {c: setting_key(settings[c]) for c in classes},
        },
    }
    if ensembles:
        result["ensemble"] = {c: [relpath(z) for z in zips] for c, zips in ensembles.items()}
    for m in methods:
        t = table[m]
        result[m] = {
            "ap": t["ap"],
            "ap07": t["ap07"],
            "map": float(np.mean(list(t["ap"].values()))),
            "map07": float(np.mean(list(t["ap07"].values()))),
            "corloc": t["corloc"],
            "mean_corloc": float(np.mean(list(t["corloc"].values()))),
            "calls_per_image": float(np.mean(t["calls"])),
            "seconds_per_image": float(np.mean(t["secs"])),
        }
    write_json(out / "eval.json", result)
    md = markdown_table(result)
    write_text(out / "eval.md", md)
    print(md)
    log(f"results -> {relpath(out / 'eval.json')}, {relpath(out / 'eval.md')}")
    return result


def markdown_table(result: dict) -> str:
    """The table a person reads (like the paper's Tables 2–5)."""
    classes = result["classes"]
    lines = [
        f"# Localization on {result['dataset']} / {result['split']} ({result['images']} images)",
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
            + " | ".join(f"{r['ap'][c]:.1f}" for c in classes)
            + " |"
        )
    ref = result.get("refinement")
    if ref:
        chosen = ", ".join(f"{c} {k}" for c, k in ref["settings"].items())
        lines += [
            "",
            f"Heat-map (layer/region/threshold) of heatmap and the refined rows: {chosen} "
            f"({ref['rule']}).",
        ]
    if "ensemble" in result:
        sizes = ", ".join(f"{c} {len(z)}" for c, z in result["ensemble"].items())
        lines += ["", f"agent_ensemble: mean Q-values of each class's agents ({sizes})."]
    return "\n".join(lines) + "\n"
