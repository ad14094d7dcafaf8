"""``python -m evaluate.diagnose --class dog``: where the agent's cutting goes wrong.

The agent's box is only as tight as its run of valid cuts is long: under the paper's rules the
first cut whose score drop exceeds δ ends the episode. This command replays the trained agent
(greedy actions, the env's rules) on the positive images of a split and, at every state it
visits, also scores all 12 cuts (diagnostic calls only; they do not change the episode), to
measure:

* how the episodes ended: ``stop`` (the agent chose STOP), ``drop`` (a cut past δ) or
  ``step_limit``; and, for ``stop``, how often a valid cut was still left;
* per step band (0–4, 5–9, 10–19): the share of the 12 cuts that are valid (the base rate a
  random cut would hit) against the share of the agent's chosen cuts that are valid;
* ``q_auc``: how well the agent's Q-values rank valid above invalid cuts (the probability that
  a random valid cut of a state has the higher Q than a random invalid one, ties ½, averaged
  over states that have both). 1.0 = it knows which cuts keep the object; 0.5 = chance.

``greedy_cut`` (``python -m evaluate``) is the same rule with the 12 verdicts known at each step;
an agent with ``q_auc`` near 1 and chosen-valid near 1 matches it. ``--ensemble`` replays the
class's agents of every trained seed (``make seeds``) acting on their mean Q-values, as
``agent_ensemble`` does. The verdicts use the δ the agent was trained with (its
``config.json``). Writes ``results/diagnose_<class>.json`` and prints a table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
from stable_baselines3 import DQN

from cutbg_env import MAX_EPISODE_STEPS
from cutbg_env.actions import CUT_ACTIONS, Action
from cutbg_env.cli import StageArgs, command_main
from cutbg_env.episode import Episode
from cutbg_env.errors import OptionError
from cutbg_env.io import write_json
from cutbg_env.localize import score_cuts
from cutbg_env.rollout import ensemble_options, mean_q_values, rollout
from cutbg_env.runs import check_classifier, trained_agent, trained_delta, trained_seeds
from cutbg_env.world import CutWorld

STEP_BANDS = ((0, 5), (5, 10), (10, MAX_EPISODE_STEPS))
"""Step ranges ``[lo, hi)`` the per-step rates are reported over."""


@dataclass(frozen=True)
class DiagnoseArgs(StageArgs):
    """Validity of the agent's cuts against all 12 cuts' verdicts, state by state."""

    class_name: Annotated[str, tyro.conf.arg(aliases=("--class",))] = "dog"
    """Class whose agent is diagnosed."""
    split: str = "test"
    """Split whose positive images are replayed."""
    agent: str | None = None
    """Agent zip (default: runs/<dataset>/<class>/agent.zip)."""
    ensemble: bool = False
    """Replay the class's agent and its ensemble members on their mean Q-values instead."""
    max_images: int | None = None
    """Use only the first N positive images."""
    out: str = "results"
    """Folder of ``diagnose_<class>.json``."""


def ranking_auc(q: np.ndarray, valid: np.ndarray) -> float | None:
    """Probability that a valid cut outranks an invalid one by ``q`` (ties count ½).

    Args:
        q: ``(K,)`` float scores of K actions.
        valid: ``(K,)`` bool verdicts.

    Returns the AUC, or ``None`` when every or no action is valid (nothing to rank).
    """
    q, valid = np.asarray(q, dtype=np.float64), np.asarray(valid, dtype=bool)
    if q.shape != valid.shape or q.ndim != 1:
        raise ValueError(f"ranking_auc: q {q.shape} and valid {valid.shape} must be equal (K,)")
    pos, neg = q[valid], q[~valid]
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def cut_verdicts(world: CutWorld, episodes: Sequence[Episode]) -> np.ndarray:
    """``(N, 12)`` bool: would each cut of each episode's current crop keep the drop ≤ δ?

    One batched forward (:func:`~cutbg_env.localize.score_cuts`); a cut that can remove nothing
    is not valid (the env penalises it)."""
    mids = world.mid_maps([ep.index for ep in episodes])
    scores, removed = score_cuts(world, mids, [ep.crop for ep in episodes])
    drops = np.asarray([ep.p_full for ep in episodes])[:, None] - scores  # NaN: no cut
    return (drops <= np.asarray([ep.delta for ep in episodes])[:, None]) & (removed > 0)


def diagnose(
    models: Sequence[DQN],
    world: CutWorld,
    indices: Sequence[int],
    delta: float,
    chunk: int = 32,
    names: Sequence[str] | None = None,
) -> dict:
    """Replay the agent on ``indices`` and measure its cuts (see the module docstring).

    ``models``: one trained agent, or an ensemble acting on its mean Q-values (they must share
    their observations; ``names``, e.g. their files, name a member that does not). The replay
    is :func:`~cutbg_env.rollout.rollout` itself (greedy Q actions); its step hook scores all 12
    cuts of each state before the action is applied."""
    last_q: list[np.ndarray] = []  # the Q-values of the batch the policy saw last

    def policy(obs: dict[str, np.ndarray]) -> np.ndarray:
        q = mean_q_values(models, obs)
        last_q[:] = [q]
        return q.argmax(1)

    episodes: list[Episode] = []
    steps, base, chosen, aucs = [], [], [], []  # per state; chosen = NaN for STOP
    stop_with_valid_left = 0

    def on_step(batch: list[Episode], actions: list[Action]) -> None:
        nonlocal stop_with_valid_left
        valid = cut_verdicts(world, batch)
        for ep, qs, a, v in zip(batch, last_q[0], actions, valid, strict=True):
            if ep.steps == 0:
                episodes.append(ep)
            steps.append(ep.steps)
            base.append(v.mean())
            chosen.append(np.nan if a is Action.STOP else float(v[a]))
            auc = ranking_auc(qs[: len(CUT_ACTIONS)], v)
            if auc is not None:
                aucs.append(auc)
            if a is Action.STOP:
                stop_with_valid_left += bool(v.any())

    rollout(
        world,
        indices,
        policy,
        delta,
        chunk=chunk,
        **ensemble_options(models, names or [f"models[{k}]" for k in range(len(models))]),
        on_step=on_step,
    )
    ends = {"stop": 0, "drop": 0, "step_limit": 0}
    for ep in episodes:
        if not ep.done:
            ends["step_limit"] += 1
        else:
            ends["stop" if ep.history[0].argmax() == Action.STOP else "drop"] += 1
    steps_a, base_a, chosen_a = np.asarray(steps), np.asarray(base), np.asarray(chosen)
    bands = []
    for lo, hi in STEP_BANDS:
        sel = (steps_a >= lo) & (steps_a < hi)
        cuts = sel & ~np.isnan(chosen_a)
        bands.append(
            {
                "steps": [lo, hi - 1],
                "states": int(sel.sum()),
                "valid_cut_rate": float(base_a[sel].mean()) if sel.any() else None,
                "chosen_cut_valid_rate": float(chosen_a[cuts].mean()) if cuts.any() else None,
            }
        )
    return {
        "images": len(indices),
        "delta": delta,
        "ends": ends,
        "stops_with_a_valid_cut_left": stop_with_valid_left,
        "states": len(steps),
        "q_auc": float(np.mean(aucs)) if aucs else None,
        "q_auc_states": len(aucs),
        "bands": bands,
    }


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:4.0f}%"


def report(args: DiagnoseArgs) -> dict:
    """Run :func:`diagnose` for one class, write the JSON and print the table."""
    if args.ensemble and args.agent:
        raise OptionError("--ensemble replays the class's agent and its members: drop --agent")
    zips = (
        [
            trained_agent(args.dataset, args.class_name, seed=n)
            # no seed at all: seed 0's CheckpointError names the command that trains it
            for n in trained_seeds(args.dataset, args.class_name) or [0]
        ]
        if args.ensemble
        else [trained_agent(args.dataset, args.class_name, args.agent)]
    )
    models = [DQN.load(z, device="cpu") for z in zips]
    names = [str(z) for z in zips]
    world = CutWorld(
        args.dataset, args.split, args.class_name, args.checkpoint, args.root, args.device
    )
    world.require_positives()
    if world.classifier_path is not None:  # None only for a world given a model
        for z in zips:
            check_classifier(z, world.classifier_path, "diagnose it with its --checkpoint")
    indices = world.positives[: args.max_images]
    delta = trained_delta(zips[0])
    result = {
        "dataset": args.dataset,
        "split": args.split,
        "class": args.class_name,
        "agents": names,
    }
    result |= diagnose(models, world, indices, delta, names=names)
    path = Path(args.out) / f"diagnose_{args.class_name}.json"
    write_json(path, result)
    e = result["ends"]
    print(
        f"{args.class_name}: {result['images']} {args.split} images, δ {delta:g}; episodes ended by "
        f"STOP {e['stop']} ({result['stops_with_a_valid_cut_left']} with a valid cut left), "
        f"a cut past δ {e['drop']}, the step limit {e['step_limit']}"
    )
    auc = result["q_auc"]
    print(f"Q ranks valid above invalid cuts: AUC {'n/a' if auc is None else f'{auc:.3f}'}")
    print("steps    states   valid cuts (base rate)   agent's cuts valid")
    for b in result["bands"]:
        lo, hi = b["steps"]
        print(
            f"{lo:2d}-{hi:<2d}    {b['states']:6d}   {_pct(b['valid_cut_rate']):>22}   "
            f"{_pct(b['chosen_cut_valid_rate']):>18}"
        )
    print(f"-> {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m evaluate.diagnose", __doc__, DiagnoseArgs, report, argv)


if __name__ == "__main__":
    sys.exit(main())
