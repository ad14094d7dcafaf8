"""``python -m evaluate.returns --class dog``: the learned agent against a random agent.

Runs one episode of ``CutBackground-v0`` (test split, calibrated δ) per test image that contains
the class, for the trained agent (greedy actions) and for uniform random actions, and prints the
mean episode return and the mean IoU of the final box (``info["last_valid_box"]``) with the
closest ground-truth box.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from stable_baselines3 import DQN

import cutbg_env  # noqa: F401 - registers the env
from cutbg_env.config import command_main
from cutbg_env.geometry import iou
from evaluate.rollout import observation_options
from train.agent import trained_agent


@dataclass(frozen=True)
class ReturnsArgs:
    """Mean episode return and final-box IoU of the agent and of a random agent."""

    class_name: str = field(default="dog", metadata={"flags": ("--class",)})
    """Class whose agent is evaluated."""
    dataset: str = "animals"
    """Dataset name or VOC-layout folder."""
    split: str = "test"
    """Split whose positive images are used."""
    seed: int = 0
    """Seed of the random agent."""


def episode_stats(env: gym.Env, n: int, act) -> tuple[float, float]:
    """Mean return and mean final IoU over images ``0..n-1`` of the env's class."""
    returns, ious = [], []
    for k in range(n):
        obs, info = env.reset(options={"index": k})
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, info = env.step(act(obs))
            total += r
            done = term or trunc
        world = env.unwrapped.world  # type: ignore[attr-defined]
        gts = [b for b, _ in world.data.gt_boxes(info["index"], world.class_name)]
        returns.append(total)
        ious.append(max(iou(info["last_valid_box"], g) for g in gts))
    return float(np.mean(returns)), float(np.mean(ious))


def report(args: ReturnsArgs) -> None:
    """Print the agent's and a random agent's mean return and final IoU."""
    model = DQN.load(trained_agent(args.dataset, args.class_name))
    env = gym.make(
        "CutBackground-v0",
        dataset=args.dataset,
        split=args.split,
        class_name=args.class_name,
        **observation_options(model),
    )
    n = len(env.unwrapped.world.positives)  # type: ignore[attr-defined]
    rng = np.random.default_rng(args.seed)
    agent = episode_stats(env, n, lambda o: int(model.predict(o, deterministic=True)[0]))
    random = episode_stats(env, n, lambda o: int(rng.integers(0, 13)))
    print(f"{args.class_name} ({n} {args.split} images)   mean return   mean final IoU")
    print(f"agent                          {agent[0]:11.2f}   {agent[1]:14.3f}")
    print(f"random agent                   {random[0]:11.2f}   {random[1]:14.3f}")


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m evaluate.returns", __doc__, ReturnsArgs, report, argv)


if __name__ == "__main__":
    sys.exit(main())
