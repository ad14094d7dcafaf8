"""``python -m evaluate.ceiling --class dog``: how well can the agent's state tell valid cuts?

The agent's own box is only as tight as its run of valid cuts is long (``evaluate.diagnose``).
This command measures how far that skill can go on the agent's state. It uses a supervision
the agent never gets:

1. Random walks of valid cuts on the class's trainval images. Every state is labelled with all
   12 cuts' verdicts (would the drop stay ≤ δ?), which costs 12 classifier calls a state.
2. A network of the Q-network's shape (:class:`train.agent.CutFeatures` with the agent's
   default sizes, one hidden layer, 12 validity logits), trained on those labels with binary
   cross-entropy.
3. Two measures on the test images:

   * ``auc``: on walks over the test images, how well the logits rank valid above invalid cuts.
     This is the measure of ``evaluate.diagnose``'s ``q_auc``.
   * ``corloc``: the network used as a policy under the env's rules, on the test positives. At
     each step it takes the cut with the highest expected reward ``P·(s + W) − (1 − P)·s``
     (``W`` = ``--continuation``), and it stops when no cut has ``P ≥ 0.5``.

An agent whose ``q_auc`` and CorLoc come near these numbers has learned what its state allows.
Greedy cutting, which knows each verdict before it cuts, is the bound above both. The command
writes ``results/ceiling_<class>.json`` and prints a summary.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cutbg_env import MAX_EPISODE_STEPS
from cutbg_env.actions import CUT_ACTIONS, Action
from cutbg_env.config import command_main
from cutbg_env.core import CutWorld, new_episode, resolve_delta, step_episodes
from cutbg_env.env import CutBackgroundEnv
from cutbg_env.geometry import crop_to_box
from cutbg_env.io import write_json
from evaluate.diagnose import cut_verdicts, ranking_auc
from evaluate.metrics import corloc
from evaluate.rollout import rollout
from train.agent import AgentArgs, CutFeatures
from train.common import splits


@dataclass(frozen=True)
class CeilingArgs:
    """Validity prediction trained with all 12 verdicts per state: the state's ceiling."""

    class_name: str = field(default="dog", metadata={"flags": ("--class",)})
    """Class whose cuts are judged."""
    dataset: str = "animals"
    """Dataset name or VOC-layout folder."""
    split: str | None = None
    """Split of the test walks and the policy (default: the dataset's test split)."""
    walks: int = 2
    """Random valid walks per trainval image (1 per test image)."""
    epochs: int = 6
    """Passes over the trainval states."""
    continuation: float = 10.0
    """``W`` of the policy's expected reward ``P·(s + W) − (1 − P)·s``."""
    observe_cut_mass: bool = False
    """Also give the network the env's ``cut_mass`` observation (the ``score`` one is always in)."""
    max_images: int | None = None
    """Use only the first N positive images of each split."""
    seed: int = 0
    """Seed of the walks and of the network."""
    out: str = "results"
    """Folder of ``ceiling_<class>.json``."""
    device: str = "cpu"
    """Torch device of the classifier."""


@dataclass
class Walks:
    """States of random valid walks, each with all 12 verdicts.

    ``observations``: the env's observation keys, each stacked to ``(N, ...)`` float32;
    ``verdicts``: ``(N, 12)`` bool in :data:`~cutbg_env.actions.CUT_ACTIONS` order;
    ``steps``: ``(N,)`` int, the step at which each state was reached.
    """

    observations: dict[str, np.ndarray]
    verdicts: np.ndarray
    steps: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)


def valid_walks(
    world: CutWorld,
    indices: Sequence[int],
    delta: float,
    walks: int,
    seed: int,
    observe_cut_mass: bool = False,
    chunk: int = 32,
) -> Walks:
    """Random walks from the whole map: at each state, score all 12 cuts, then take one of the
    valid ones uniformly at random. A walk ends when no cut is valid or after
    ``MAX_EPISODE_STEPS`` cuts. Every visited state is recorded, including the last one.

    Walk ``k`` (``walks`` per image, in ``indices`` order) draws from its own generator seeded
    ``[seed, k]``, so ``chunk`` (walks stepped together) changes no result."""
    if walks < 1:
        raise ValueError(f"walks={walks}: need at least one walk per image")
    starts = [i for i in indices for _ in range(walks)]
    rngs = [np.random.default_rng([seed, k]) for k in range(len(starts))]
    per_walk: list[list[tuple[dict[str, np.ndarray], np.ndarray, int]]] = [[] for _ in starts]
    for lo in range(0, len(starts), chunk):
        active = [
            (k, new_episode(world, starts[k], delta, 3.0, True, True, observe_cut_mass))
            for k in range(lo, min(lo + chunk, len(starts)))
        ]
        while active:
            rows = cut_verdicts(world, [ep for _, ep in active])
            moving, cuts = [], []
            for (k, ep), row in zip(active, rows, strict=True):
                per_walk[k].append((ep.obs(np.dtype(np.float32)), row, ep.steps))
                ok = np.flatnonzero(row)
                if len(ok) and ep.steps < MAX_EPISODE_STEPS:
                    moving.append((k, ep))
                    cuts.append(CUT_ACTIONS[int(rngs[k].choice(ok))])
            step_episodes(world, [ep for _, ep in moving], cuts)
            active = moving
    states = [state for walk in per_walk for state in walk]
    return Walks(
        {k: np.stack([o[k] for o, _, _ in states]) for k in states[0][0]},
        np.asarray([row for _, row, _ in states], dtype=bool),
        np.asarray([step for _, _, step in states], dtype=np.int64),
    )


class ValidityNet(nn.Module):
    """The Q-network's shape with 12 validity logits: :class:`CutFeatures` → hidden → 12."""

    def __init__(self, features: CutFeatures, hidden: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(
            nn.Linear(features.features_dim, hidden), nn.ReLU(), nn.Linear(hidden, len(CUT_ACTIONS))
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(obs))


def fit_validity(
    net: ValidityNet, walks: Walks, epochs: int, seed: int, batch: int = 64, lr: float = 1e-3
) -> list[float]:
    """Train ``net`` on the walks' verdicts (Adam, binary cross-entropy); returns the mean loss
    of each epoch."""
    gen = torch.Generator().manual_seed(seed)
    data = {k: torch.as_tensor(v) for k, v in walks.observations.items()}
    target = torch.as_tensor(walks.verdicts, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(walks), generator=gen)
        total = 0.0
        for lo in range(0, len(order), batch):
            j = order[lo : lo + batch]
            loss = nn.functional.binary_cross_entropy_with_logits(
                net({k: v[j] for k, v in data.items()}), target[j]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(j)
        losses.append(total / len(walks))
    return losses


def logits_of(net: ValidityNet, observations: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, 12)`` validity logits of a batch of observations."""
    with torch.no_grad():
        return net({k: torch.as_tensor(v).float() for k, v in observations.items()}).numpy()


def validity_policy(net: ValidityNet, continuation: float):
    """Greedy policy of the validity network (see the module docstring)."""
    scales = np.asarray([float(a.scale) for a in CUT_ACTIONS])

    def policy(obs: dict[str, np.ndarray]) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-logits_of(net, obs)))
        value = p * (scales + continuation) - (1.0 - p) * scales
        actions = value.argmax(1)
        actions[p.max(1) < 0.5] = int(Action.STOP)
        return actions

    return policy


def mean_auc(logits: np.ndarray, verdicts: np.ndarray) -> tuple[float | None, int]:
    """Mean per-state :func:`~evaluate.diagnose.ranking_auc` and the number of states that have
    both valid and invalid cuts."""
    aucs = [a for a in map(ranking_auc, logits, verdicts) if a is not None]
    return (float(np.mean(aucs)) if aucs else None), len(aucs)


def ceiling(args: CeilingArgs) -> dict:
    """Collect the walks, train the network, measure it; write and print the result."""
    if args.epochs < 1:
        raise ValueError(f"epochs={args.epochs}: need at least one pass")
    train_split, test_split = splits(args.dataset)
    test_split = args.split or test_split
    train = CutWorld(args.dataset, train_split, args.class_name, device=args.device)
    test = CutWorld(
        args.dataset, test_split, args.class_name, device=args.device, model=train.model
    )
    for world in (train, test):
        world.require_positives()
    delta = resolve_delta(args.dataset, args.class_name, None)
    n = args.max_images
    fit_walks = valid_walks(
        train, train.positives[:n], delta, args.walks, args.seed, args.observe_cut_mass
    )
    test_walks = valid_walks(
        test, test.positives[:n], delta, 1, args.seed + 1, args.observe_cut_mass
    )
    space = CutBackgroundEnv(
        world=test, delta=delta, observe_score=True, observe_cut_mass=args.observe_cut_mass
    ).observation_space
    sizes = AgentArgs(dataset=args.dataset).resolved()
    torch.manual_seed(args.seed)
    net = ValidityNet(CutFeatures(space, sizes.adapt_channels, sizes.adapt_kernel), sizes.hidden)
    losses = fit_validity(net, fit_walks, args.epochs, args.seed)
    net.eval()
    auc, auc_states = mean_auc(logits_of(net, test_walks.observations), test_walks.verdicts)
    images = test.positives[:n]
    out = rollout(
        test,
        images,
        validity_policy(net, args.continuation),
        delta,
        observe_score=True,
        observe_cut_mass=args.observe_cut_mass,
    )
    data = test.data
    boxes, truth = {}, {}
    for i, (loc, _) in zip(images, out, strict=True):
        ann = data.annotation(i)
        boxes[i] = crop_to_box(loc.crop, ann.width, ann.height)
        truth[i] = data.gt_boxes(i, args.class_name)
    result = {
        "dataset": args.dataset,
        "class": args.class_name,
        "delta": delta,
        "observations": sorted(space.spaces),
        "train_states": len(fit_walks),
        "train_loss": losses,
        "test_states": len(test_walks),
        "auc": auc,
        "auc_states": auc_states,
        "valid_cut_rate": float(test_walks.verdicts.mean()),
        "policy": {
            "rule": "argmax P(s + W) - (1 - P)s; STOP when max P < 0.5",
            "continuation": args.continuation,
            "images": len(images),
            "corloc": corloc(boxes, truth),
            "calls_per_image": float(np.mean([loc.calls for loc, _ in out])),
            "steps_per_image": float(np.mean([loc.steps for loc, _ in out])),
        },
    }
    path = Path(args.out) / f"ceiling_{args.class_name}.json"
    write_json(path, result)
    pol = result["policy"]
    print(
        f"{args.class_name}: validity network trained on {len(fit_walks)} trainval states "
        f"({' + '.join(result['observations'])}), δ {delta:g}\n"
        f"test walks: {len(test_walks)} states, AUC "
        f"{'n/a' if auc is None else f'{auc:.3f}'} (compare diagnose's q_auc)\n"
        f"as a policy: CorLoc {pol['corloc']:.1f} on {len(images)} test images, "
        f"{pol['calls_per_image']:.1f} calls / image\n-> {path}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m evaluate.ceiling", __doc__, CeilingArgs, ceiling, argv)


if __name__ == "__main__":
    sys.exit(main())
