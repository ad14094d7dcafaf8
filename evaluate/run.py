"""``python -m evaluate``: every method on the same test images, VOC AP / CorLoc, figures.

Methods (same classifier, same images: every test image, positives and negatives):

* ``full_image``: the whole image as the box (1 call).
* ``heatmap``: the refinement rectangle of the whole image's heat-map alone, no agent.
* ``random_agent``: uniform random actions with the env's stop rules and step budget.
* ``agent``: greedy rollout of the class's DQN agent.
* ``agent_refined``: the agent's box intersected with the heat-map rectangle of its crop (§2.3).
* ``exhaustive``: the highest-scoring of ~2,000 multi-scale windows (the proposal approach).
* ``greedy_cut``: the reward's own policy, all 12 cuts tried every step (~200 calls).
* ``agent_ensemble`` / ``agent_ensemble_refined`` (with ``--ensemble``; every class needs
  ensemble members, ``make train-ensemble``): greedy actions on the mean Q-values of the class's
  agent and its members, and that box refined; the same classifier calls per step as ``agent``.

The confidence of every box is the full-image score ``p̄(c|x)`` (the paper's definition). Every
rule-based row of a class runs at the δ its agent was trained with (its ``config.json``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3 import DQN

from cutbg_env import paths
from cutbg_env.backbone import load_classifier
from cutbg_env.calibration import load_calibration
from cutbg_env.cli import StageArgs
from cutbg_env.data import dataset_splits, open_split
from cutbg_env.errors import CheckpointError
from cutbg_env.geometry import FULL_CROP, crop_to_box
from cutbg_env.io import log, relpath, write_json, write_text
from cutbg_env.localize import exhaustive, exhaustive_windows, greedy_cut
from cutbg_env.metrics import average_precision, corloc, plot_pr_curve, precision_recall
from cutbg_env.refine import (
    REFINEMENT_FILE,
    Setting,
    evaluation_settings,
    heatmap_box,
    heatmaps,
    read_refinement,
    refine,
    setting_key,
)
from cutbg_env.rollout import (
    Policy,
    ensemble_options,
    ensemble_policy,
    observation_options,
    random_policy,
    rollout,
    sb3_policy,
)
from cutbg_env.runs import ensemble_agents, trained_agent, trained_delta
from cutbg_env.world import CutWorld
from evaluate.figures import write_figure

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


@dataclass(frozen=True)
class EvalArgs(StageArgs):
    """Evaluate every method on a test split and write results/eval.{json,md} and figures."""

    split: str | None = None
    """Test split (default: test; val for voc2012)."""
    classes: str | None = None
    """Comma-separated classes (default: every class with a trained agent)."""
    exhaustive_windows: int = 2025
    """Windows scored per image by ``exhaustive`` (2,025 = the full multi-scale set)."""
    max_images: int | None = None
    """Evaluate on the first N test images only (quick checks)."""
    figures: int = 4
    """Images per class drawn as cutting-process / refinement figures."""
    out: str = "results"
    """Output folder."""
    seed: int = 0
    """Seed of the random agent."""
    ensemble: bool = False
    """Add the agent_ensemble rows (every class needs ensemble members: make train-ensemble)."""


def ensemble_members(dataset: str, classes: Sequence[str]) -> dict[str, list[Path]]:
    """Per class, the zips of the ensemble evaluated as ``agent_ensemble`` (the agent first,
    :func:`~cutbg_env.runs.ensemble_agents`). Raises :class:`CheckpointError` naming the first
    class without a member and the command that trains them."""
    members = {c: ensemble_agents(dataset, c) for c in classes}
    lacking = [c for c, m in members.items() if len(m) < 2]
    if lacking:
        raise CheckpointError(
            f"--ensemble: {', '.join(lacking)} has no ensemble member in "
            f"{paths.ensemble_dir(dataset, lacking[0])}: train them with "
            f"`{paths.make_command('train-ensemble', dataset, CLASS=lacking[0])}`"
        )
    return members


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
    agent: Path,
    ensemble: Sequence[Path] = (),
) -> dict[str, dict]:
    """Boxes, calls and seconds of every method for one class on ``indices``.

    ``setting`` is the heat-map ``(layer, region, threshold)`` of ``heatmap`` and the refined
    rows; ``agent`` the class's agent zip, whose δ (:func:`~cutbg_env.runs.trained_delta`) every
    rule-based method uses; a non-empty ``ensemble`` (agent zips, the class's agent first) adds
    the ``agent_ensemble`` rows."""
    data = world.data
    delta = trained_delta(agent)
    layer, region, thr = setting
    model = DQN.load(agent, device=args.device)
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
        write_figure(world, i, trails[i], crops[i], res["agent_refined"]["boxes"][i], layer, figdir)
    return res


def run(args: EvalArgs) -> dict:
    """Evaluate and write ``results/eval.json``, ``eval.md``, PR curves and figures."""
    _, test_split = dataset_splits(args.dataset)
    split = args.split or test_split
    data = open_split(args.dataset, split, args.root)
    if args.classes:
        classes = args.classes.split(",")
        for c in classes:
            data.class_index(c)  # UnknownClassError listing the classes
    else:
        classes = [
            c
            for c in data.classes
            if (paths.agent_dir(args.dataset, c) / paths.AGENT_FILE).is_file()
        ]
    if not classes:
        raise CheckpointError(
            f"no trained agent for any class of {args.dataset!r} in "
            f"{paths.runs_dir() / paths.dataset_key(args.dataset)}: train one with "
            f"`{paths.make_command('train', args.dataset, CLASS='dog')}`"
        )
    agents = {c: trained_agent(args.dataset, c) for c in classes}
    deltas = {c: trained_delta(agents[c]) for c in classes}
    hint = paths.make_command("train-classifier", args.dataset)
    model, _ = load_classifier(args.classifier_file(), args.device, hint=hint)
    indices = list(range(len(data)))[: args.max_images]
    out = Path(args.out)
    ensembles = ensemble_members(args.dataset, classes) if args.ensemble else {}
    methods = METHODS + ENSEMBLE_METHODS if ensembles else METHODS
    table: dict[str, dict] = {
        m: {"ap": {}, "ap07": {}, "corloc": {}, "calls": [], "secs": []} for m in methods
    }
    tables = {c: read_refinement(agents[c].parent / REFINEMENT_FILE) for c in classes}
    settings, how = evaluation_settings(tables, load_calibration(args.dataset))
    log(f"refinement heat-map: {how}")
    for cls in classes:
        world = CutWorld(
            args.dataset, split, cls, root=args.root, device=args.device, model=model, data=data
        )
        log(f"evaluating {cls} on {len(indices)} {split} images")
        res = evaluate_class(
            args,
            world,
            cls,
            indices,
            out / "figures",
            settings[cls],
            agents[cls],
            ensembles.get(cls, ()),
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
        "delta": {
            "values": deltas,
            "source": {c: relpath(agents[c].parent / paths.CONFIG_FILE) for c in classes},
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
    if "delta" in result:
        chosen = ", ".join(f"{c} {d:g}" for c, d in result["delta"]["values"].items())
        lines += [
            "",
            f"δ of every rule-based row: {chosen} (each agent's training δ, config.json).",
        ]
    if "ensemble" in result:
        sizes = ", ".join(f"{c} {len(z)}" for c, z in result["ensemble"].items())
        lines += ["", f"agent_ensemble: mean Q-values of each class's agents ({sizes})."]
    return "\n".join(lines) + "\n"
