"""cutbg_env: weakly-supervised object localization by cutting background, as a Gymnasium env.

``import cutbg_env`` registers the ids of :data:`ENV_KWARGS` (also reachable without the import
as ``gym.make("cutbg_env:CutBackground-v0")``). Each has an ``entry_point`` (the single env,
:class:`cutbg_env.env.CutBackgroundEnv`) and a ``vector_entry_point`` (the batched Gymnasium
vector env, :class:`cutbg_env.vector.CutBackgroundVectorEnv`): ``gym.make_vec(id, num_envs=N)``
steps N episodes with one forward. :mod:`cutbg_env.vec_env` has the same as an SB3 ``VecEnv``.
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

from cutbg_env.actions import Action

__all__ = ["ENV_IDS", "ENV_KWARGS", "MAX_EPISODE_STEPS", "Action"]
__version__ = "0.1.0"

MAX_EPISODE_STEPS = 20
"""Truncation limit of the registered env: at most 20 actions, so at most 21 classifier calls."""

ENV_KWARGS: dict[str, dict[str, Any]] = {
    "CutBackground-v0": {},
    "CutBackgroundScore-v0": {"observe_score": True, "obs_dtype": "float16"},
}
"""Every registered id and the keyword arguments it fixes (any other may still be passed):
``CutBackground-v0`` is the paper's state (senior features + action history);
``CutBackgroundScore-v0`` is the state ``make train``'s agent learns on (plus the ``"score"``
observation, in float16)."""

ENV_IDS = tuple(ENV_KWARGS)
"""The registered ids."""

for _id, _kwargs in ENV_KWARGS.items():
    if _id not in registry:
        register(
            id=_id,
            entry_point="cutbg_env.env:CutBackgroundEnv",
            vector_entry_point="cutbg_env.vector:CutBackgroundVectorEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs=dict(_kwargs),
        )
