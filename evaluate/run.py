"""``python -m evaluate``: every method on the same test images, VOC AP / CorLoc, figures.

Methods (same classifier, same images: the test images that hold the class, difficult objects
included; on the others every method's detection is the whole image at ``p̄``, see below):

* ``full_image``: the whole image as the box (1 call).
* ``heatmap``: the refinement rectangle of the whole image's heat-map alone, no agent (1 call,
  plus the ``"drop"`` rule's occlusion calls when the setting has it).
* ``random_agent``: uniform random actions with the env's stop rules and step budget.
* ``agent``: greedy rollout of the class's DQN agent.
* ``agent_refined``: the agent's box intersected with the heat-map rectangle of its crop (§2.3;
  :func:`~cutbg_env.refine.refined_box`, whose classifier calls the refined rows count).
* ``agent_retry`` / ``agent_retry_refined``: the same agent where a cut past δ, instead of
  ending the episode (the paper's rule), is undone (the env's ``undo_drop``: the refused cut
  enters the action history) and the agent takes its best action not refused there
  (:func:`~cutbg_env.rollout.rollout` with ``retry=True``), within 20 classifier calls per
  image; and that box refined.
* ``exhaustive``: the highest-scoring of ~2,000 multi-scale windows (the proposal approach).
* ``greedy_cut``: the reward's own policy, all 12 cuts tried every step (~200 calls).
* ``agent_ensemble`` / ``agent_ensemble_refined`` (with ``--ensemble``; every class needs
  agents of several seeds, ``make seeds``): greedy actions on the mean Q-values of the class's
  agents of every trained seed, and that box refined; the same classifier calls per step as
  ``agent``.

With ``--seeds N`` the agent rows are measured for the agents of seeds 0..N-1 and every row
reports the mean over seeds, the standard deviation and a 95 % bootstrap confidence interval
(:func:`~cutbg_env.metrics.seed_summary`); the rows without an agent are computed once per δ and
heat-map setting.

A class with no positive image among the evaluated ones (no object not marked difficult) has
no AP or CorLoc: with other classes that have one, it is evaluated no further, its entries are
``null`` in eval.json and ``–`` in eval.md, it is left out of the means, and a warning line
says so (``unmeasurable`` in eval.json names it); without any such class it is an error.

The confidence of every box is the full-image score ``p̄(c|x)`` (the paper's definition). So on
an image without an object of the class a method's detection is a false positive at ``p̄``
whatever its box: every image enters AP, but only those holding the class are localized (on a
class with 92 positives of 500 images, a fifth of the work; every row's AP and CorLoc
unchanged but the random agent's, whose draws follow the images: ``tests/test_evaluate.py``), and
calls and seconds per image are those of the localized images.
Every rule-based row of a class runs at the δ its agent was trained with (its ``config.json``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cutbg_env import checks, paths
from cutbg_env.backbone import load_classifier
from cutbg_env.calibration import load_calibration
from cutbg_env.cli import StageArgs
from cutbg_env.data import VOCDataset, dataset_splits, open_split
from cutbg_env.errors import CheckpointError, DataError
from cutbg_env.geometry import FULL_CROP, crop_to_box
from cutbg_env.io import check_writable, log, relpath, remove_stale_temps, write_json, write_text
from cutbg_env.localize import exhaustive, exhaustive_windows, greedy_cut
from cutbg_env.metrics import (
    plot_pr_curve,
)
from cutbg_env.refine import (
    REFINEMENT_FILE,
    Setting,
    evaluation_settings,
    read_refinement,
    refined_box,
    setting_key,
)
from cutbg_env.rollout import (
    RETRY_STEPS,
    MaskedPolicy,
    Policy,
    ensemble_options,
    ensemble_policy,
    observation_options,
    random_policy,
    rollout,
    sb3_policy,
)
from cutbg_env.runs import (
    check_classifier,
    check_run,
    load_agent,
    run_state,
    trained_agent,
    trained_delta,
    trained_seeds,
)
from cutbg_env.world import CutWorld
from evaluate.figures import write_figure
from evaluate.tables import (
    ENSEMBLE_METHODS,
    METHODS,
    markdown_table,
    over_seeds,
    score_boxes,
    seed_rows,
)

AGENT_FREE = ("full_image", "heatmap", "exhaustive", "greedy_cut")
"""Rows that do not depend on the agent (only on δ and the heat-map setting)."""


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
    """Add the agent_ensemble rows: every trained seed's agent of a class acting together."""
    seeds: int = 1
    """Evaluate the agents of seeds 0..N-1 (make eval SEEDS=N trains missing ones first) and
    report the mean, standard deviation and 95 % bootstrap CI over seeds."""
    progress: bool = True
    """Show a progress bar of the images × methods evaluated."""

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        checks.integer("--exhaustive-windows", self.exhaustive_windows, 1)
        checks.integer("--max-images", self.max_images, 1)
        checks.integer("--figures", self.figures, 0)
        checks.integer("--seed", self.seed, 0)
        checks.integer("--seeds", self.seeds, 1)
        checks.names("--classes", self.classes)
        super().__post_init__()


def ensemble_members(dataset: str, classes: Sequence[str]) -> dict[str, list[Path]]:
    """Per class, the zips of the ensemble evaluated as ``agent_ensemble``: the agents of every
    trained seed (seed 0 first). Raises :class:`CheckpointError` naming the first class with
    fewer than two and the command that trains more."""
    members = {
        c: [trained_agent(dataset, c, seed=n) for n in trained_seeds(dataset, c)] for c in classes
    }
    lacking = [c for c, m in members.items() if len(m) < 2]
    if lacking:
        raise CheckpointError(
            f"--ensemble: {lacking[0]} has {len(members[lacking[0]])} trained seed(s) in "
            f"{paths.agent_dir(dataset, lacking[0])} (an ensemble needs two or more"
            + (f"; so do {', '.join(lacking[1:])}" if lacking[1:] else "")
            + "): train them "
            f"with `{paths.make_command('seeds', dataset, CLASS=lacking[0], SEEDS=10)}`"
        )
    return members


def located_images(data: VOCDataset, cls: str, indices: Sequence[int]) -> list[int]:
    """The images of ``indices`` that hold an object of ``cls`` (difficult ones included: a
    detection matched to one is ignored by AP, so its box matters): the ones methods localize."""
    return [i for i in indices if data.gt_boxes(i, cls)]


def has_positive(data: VOCDataset, cls: str, indices: Sequence[int]) -> bool:
    """Whether one of the images ``indices`` is a positive of ``cls`` (:meth:`VOCDataset.positives`:
    an object not marked difficult, as VOC's AP and CorLoc count them): else the class's AP and
    CorLoc are undefined."""
    return not set(data.positives(cls)).isdisjoint(indices)


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
    figdir: Path | None,
    setting: Setting,
    agent: Path,
    ensemble: Sequence[Path] = (),
    cache: dict | None = None,
    advance: Callable[[int], object] | None = None,
) -> dict[str, dict]:
    """Boxes, calls and seconds per image of every method for one class: ``scores`` (the
    full-image score ``p̄``) on every image of ``indices``, ``boxes``, calls and seconds on those
    it localizes (:func:`located_images`; :func:`~evaluate.tables.score_boxes` gives the others
    the whole image).

    ``setting`` is the heat-map ``(layer, region, threshold)`` of ``heatmap`` and the refined
    rows; ``agent`` the class's agent zip, whose δ (:func:`~cutbg_env.runs.trained_delta`) every
    rule-based method uses; a non-empty ``ensemble`` (agent zips) adds the ``agent_ensemble``
    rows. ``cache`` (a dict kept across calls for the same class and images) reuses the rows
    that do not depend on the agent (:data:`AGENT_FREE`) when δ and the setting are the same.
    ``figdir=None`` draws no figure. ``advance(n)`` is called with the number of localized
    images as each method's row is done (a progress bar of images × methods)."""
    cache = {} if cache is None else cache
    data = world.data
    delta = trained_delta(agent)
    layer = setting[0]
    model = load_agent(agent, args.device)
    _, p_full = world.full(indices)
    score = dict(zip(indices, p_full, strict=True))
    indices = located_images(data, cls, indices)
    sizes = {i: (data.annotation(i).width, data.annotation(i).height) for i in indices}
    per_image = max(len(indices), 1)

    def box(i: int, crop: tuple) -> tuple:
        return crop_to_box(crop, *sizes[i])

    def refined(crops: dict[int, tuple]) -> tuple[dict, float]:
        """The refined box of each image's crop, and the mean classifier calls refining cost."""
        out = {i: refined_box(world, i, c, setting, sizes[i]) for i, c in crops.items()}
        return {i: b for i, (b, _) in out.items()}, float(np.mean([n for _, n in out.values()]))

    res: dict[str, dict] = {}

    def done() -> None:
        if advance is not None:
            advance(len(indices))

    def record(name: str, boxes: dict, calls: float, seconds: float) -> None:
        res[name] = {"boxes": boxes, "calls": calls, "seconds": seconds / per_image}
        res[name]["scores"] = score

    def agent_free(name: str, key: object, compute) -> None:
        """Record an agent-free row, computed once per ``key``."""
        if (name, key) not in cache:
            t = time.perf_counter()
            boxes, calls = compute()
            record(name, boxes, calls, time.perf_counter() - t)
            cache[(name, key)] = res[name]
        res[name] = cache[(name, key)]
        done()

    def localized(locs: list) -> tuple[dict, float]:
        boxes = {i: box(i, loc.crop) for i, loc in zip(indices, locs, strict=True)}
        return boxes, float(np.mean([loc.calls for loc in locs]))

    agent_free("full_image", None, lambda: ({i: box(i, FULL_CROP) for i in indices}, 1.0))

    def heatmap_row() -> tuple[dict, float]:
        boxes, calls = refined(dict.fromkeys(indices, FULL_CROP))
        return boxes, 1.0 + calls

    agent_free("heatmap", setting, heatmap_row)

    def run_policy(
        name: str,
        policy: Policy | MaskedPolicy,
        options: dict[str, bool],
        refine: bool = True,
        retry: bool = False,
    ) -> tuple[dict[int, tuple], dict[int, list]]:
        """Record ``name`` (and ``<name>_refined`` when ``refine``); return the final grid
        crops and the trails of crops, per image. ``retry``: the rollout's retry rule, within
        :data:`~cutbg_env.rollout.RETRY_STEPS` attempts."""
        t = time.perf_counter()
        rule = {"retry": True, "max_steps": RETRY_STEPS} if retry else {}
        out = rollout(world, indices, policy, delta, **options, **rule)
        secs = time.perf_counter() - t
        crops = {i: loc.crop for i, (loc, _) in zip(indices, out, strict=True)}
        calls = float(np.mean([loc.calls for loc, _ in out]))
        record(name, {i: box(i, crops[i]) for i in indices}, calls, secs)
        done()
        if refine:
            t = time.perf_counter()
            boxes, extra = refined(crops)
            record(f"{name}_refined", boxes, calls + extra, secs + time.perf_counter() - t)
            done()
        return crops, {i: trail for i, (_, trail) in zip(indices, out, strict=True)}

    run_policy("random_agent", random_policy(args.seed), observation_options(model), False)
    crops, trails = run_policy("agent", sb3_policy(model), observation_options(model))
    run_policy("agent_retry", ensemble_policy([model]), observation_options(model), retry=True)
    if ensemble:
        models = [load_agent(z, args.device) for z in ensemble]
        options = ensemble_options(models, [relpath(z) for z in ensemble])
        run_policy("agent_ensemble", ensemble_policy(models), options)
    windows = _windows(args.exhaustive_windows)
    agent_free("exhaustive", len(windows), lambda: localized(exhaustive(world, indices, windows)))
    agent_free("greedy_cut", delta, lambda: localized(greedy_cut(world, indices, delta)))
    if figdir is not None:
        for i in indices[: args.figures]:  # the localized images: each holds the class
            refined = res["agent_refined"]["boxes"][i]
            write_figure(world, i, trails[i], crops[i], refined, layer, figdir)
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
        # every class with a run (an interrupted one is named by trained_agent with --resume)
        classes = [
            c for c in data.classes if run_state(paths.agent_dir(args.dataset, c)) != "empty"
        ]
    if not classes:
        raise CheckpointError(
            f"no trained agent for any class of {args.dataset!r} in "
            f"{paths.runs_dir() / paths.dataset_key(args.dataset)}: train one with "
            f"`{paths.make_command('train', args.dataset, CLASS='dog')}`"
        )
    seeds = list(range(args.seeds))
    agents = {(c, n): trained_agent(args.dataset, c, seed=n) for n in seeds for c in classes}
    ckpt = args.classifier_file()
    for (c, n), zip_path in agents.items():  # files of one run only, never a mix
        variables = {"CLASS": c} | ({"SEED": n} if n else {})
        command = paths.make_command("train", args.dataset, **variables, FORCE=1)
        check_run(zip_path.parent, f"retrain it with `{command}`")
        check_classifier(zip_path, ckpt, f"retrain it with `{command}` or pass its --checkpoint")
    hint = paths.make_command("train-classifier", args.dataset)
    model, _ = load_classifier(ckpt, args.device, hint=hint)
    indices = list(range(len(data)))[: args.max_images]
    unmeasurable = [c for c in classes if not has_positive(data, c, indices)]
    if len(unmeasurable) == len(classes):
        named = (
            f"a {classes[0]}: its" if len(classes) == 1 else f"any of {', '.join(classes)}: their"
        )
        raise DataError(
            f"none of the {len(indices)} evaluated {split} images of {data.root} holds {named} "
            "AP and CorLoc are undefined; evaluate more images (--max-images) or another split, "
            "or leave the class out (--classes)"
        )
    for c in unmeasurable:
        log(
            f"warning: {c}: none of the {len(indices)} evaluated {split} images holds a {c} (no "
            "positive image): its AP and CorLoc are not measurable (– in eval.md, null in "
            "eval.json) and left out of the means"
        )
    measured = [c for c in classes if c not in unmeasurable]
    out = Path(args.out)
    if args.ensemble and args.seeds > 1:
        ensembles = {c: [agents[c, n] for n in seeds] for c in classes}
    else:
        ensembles = ensemble_members(args.dataset, classes) if args.ensemble else {}
    methods = METHODS + ENSEMBLE_METHODS if ensembles else METHODS
    check_writable(out, "--out")  # before the evaluation, not after it
    remove_stale_temps(out, recursive=True)  # of killed evaluations
    calibration = load_calibration(args.dataset, ckpt)
    worlds = {
        c: CutWorld(
            args.dataset, split, c, root=args.root, device=args.device, model=model, data=data
        )
        for c in classes
    }
    caches: dict[str, dict] = {c: {} for c in classes}
    n_methods = len(METHODS) * len(seeds) + len(ENSEMBLE_METHODS) * bool(ensembles)
    located = {c: len(located_images(data, c, indices)) for c in measured}
    bar = tqdm(
        total=n_methods * sum(located.values()),
        desc="evaluating",
        unit="image",
        disable=not args.progress,
    )
    per_seed, settings_of, how_of, deltas_of = [], [], [], []
    for n in seeds:
        tables = {c: read_refinement(agents[c, n].parent / REFINEMENT_FILE) for c in classes}
        settings, how = evaluation_settings(tables, calibration)
        log(f"refinement heat-map{f' (seed {n})' if args.seeds > 1 else ''}: {how}")
        per_class = {}
        for cls in measured:
            log(
                f"evaluating {cls}{f' seed {n}' if args.seeds > 1 else ''} on {len(indices)} {split} "
                f"images, localizing the {located[cls]} that hold one"
            )
            res = evaluate_class(
                args,
                worlds[cls],
                cls,
                indices,
                out / "figures" if n == 0 else None,
                settings[cls],
                agents[cls, n],
                ensembles.get(cls, ()) if n == 0 else (),
                caches[cls],
                bar.update,
            )
            per_class[cls] = score_boxes(res, data, cls, indices)
            for m, v in per_class[cls].items():
                if n == 0:
                    plot_pr_curve(
                        *v["pr"], out / "pr" / f"{cls}_{m}.png", f"{cls} / {m}: AP {v['ap']:.1f}"
                    )
        per_seed.append(seed_rows(per_class, methods, classes))
        settings_of.append({c: setting_key(settings[c]) for c in classes})
        how_of.append(how)
        deltas_of.append({c: trained_delta(agents[c, n]) for c in classes})
    bar.close()
    result: dict = {
        "dataset": args.dataset,
        "split": split,
        "classes": classes,
        "images": len(indices),
        "args": dataclasses.asdict(args),
        "refinement": {"rule": how_of[0], "settings": settings_of[0]},
        "delta": {
            "values": deltas_of[0],
            "source": {c: relpath(agents[c, 0].parent / paths.CONFIG_FILE) for c in classes},
        },
    }
    if unmeasurable:
        result["unmeasurable"] = {
            c: f"none of the {len(indices)} evaluated {split} images holds a {c}"
            for c in unmeasurable
        }
    if ensembles:
        result["ensemble"] = {c: [relpath(z) for z in zips] for c, zips in ensembles.items()}
    if args.seeds == 1:
        result |= per_seed[0]
    else:
        result["seeds"] = {
            "seeds": seeds,
            "refinement": settings_of,
            "delta": deltas_of,
            "agents": {c: [relpath(agents[c, n]) for n in seeds] for c in classes},
        }
        result |= over_seeds(per_seed, methods, measured)
    write_json(out / "eval.json", result)
    md = markdown_table(result)
    write_text(out / "eval.md", md)
    print(md)
    log(f"results -> {relpath(out / 'eval.json')}, {relpath(out / 'eval.md')}")
    return result
