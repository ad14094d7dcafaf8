"""cutbg_env: weakly-supervised object localization by cutting background, as a Gymnasium env.

``import cutbg_env`` registers ``CutBackground-v0`` (also reachable as
``gym.make("cutbg_env:CutBackground-v0")``) and ``CutBackgroundBatched-v0``'s VecEnv factory lives
in :mod:`cutbg_env.vec_env`.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from cutbg_env.actions import Action

__all__ = ["ENV_IDS", "MAX_EPISODE_STEPS", "Action"]
__version__ = "0.1.0"

MAX_EPISODE_STEPS = 20
"""Truncation limit of the registered env: at most 20 actions, so at most 21 classifier calls."""

ENV_IDS = ("CutBackground-v0",)

if "CutBackground-v0" not in registry:
    register(
        id="CutBackground-v0",
        entry_point="cutbg_env.env:CutBackgroundEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )
