"""The batched env as a Stable-Baselines3 ``VecEnv``: a thin adapter over
:class:`~cutbg_env.vector.CutBackgroundVectorEnv`.

Stable-Baselines3's ``DummyVecEnv`` steps N single envs one after the other, so each env step is
one batch-1 forward of ``upper`` + ``head``. :class:`BatchedCutBackgroundVecEnv` steps the
Gymnasium vector env's N sub-envs with one batched forward (its
:meth:`~cutbg_env.vector.CutBackgroundVectorEnv.step_envs`, the one implementation of the batched
step) and translates its same-step autoreset into SB3's convention: at an episode end the
returned observation is the next episode's first one, the info is the ended episode's last one,
``info["terminal_observation"]`` holds its last observation and ``info["TimeLimit.truncated"]`` is
True when the step limit (not the agent) ended it.

Transitions equal those of N single envs (``gym.make("CutBackground-v0")``) seeded ``seed + i``
(``venv.seed(seed)``, then ``reset()``). ``get_attr`` / ``set_attr`` / ``env_method`` act on the
sub-envs that ``indices`` name: ``set_attr("eta", 5.0, indices=[0])`` changes the η of sub-env 0's
episodes from its next episode on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from cutbg_env import MAX_EPISODE_STEPS
from cutbg_env.env import CutBackgroundEnv
from cutbg_env.episode import stack_obs
from cutbg_env.vector import CutBackgroundVectorEnv
from cutbg_env.world import CutWorld


class BatchedCutBackgroundVecEnv(VecEnv):
    """N episodes of ``CutBackground-v0`` in one batched forward per step, for SB3.

    Args:
        n_envs: number of parallel episodes.
        max_episode_steps: truncation limit, as the registered env's ``TimeLimit``.
        world: share an existing :class:`CutWorld` (else one is built from the kwargs).
        **env_kwargs: the single env's keyword arguments (``dataset``, ``class_name``,
            ``delta``, ``eta``, ``obs_dtype``, ...).
    """

    def __init__(
        self,
        n_envs: int,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        world: CutWorld | None = None,
        **env_kwargs: Any,
    ) -> None:
        if n_envs < 1:
            raise ValueError(f"n_envs={n_envs}: need at least one env")
        self.vector = CutBackgroundVectorEnv(n_envs, max_episode_steps, world, **env_kwargs)
        self.envs: list[CutBackgroundEnv] = self.vector.envs
        self.world = self.vector.world
        self.max_episode_steps = max_episode_steps
        self.obs_dtype = self.envs[0].obs_dtype
        super().__init__(
            n_envs, self.vector.single_observation_space, self.vector.single_action_space
        )
        self._actions: np.ndarray | None = None

    @property
    def delta(self) -> float:
        """The δ of the sub-envs (:meth:`get_attr` when they differ)."""
        return self._common("delta")

    @property
    def eta(self) -> float:
        """The η of the sub-envs (:meth:`get_attr` when they differ)."""
        return self._common("eta")

    def _common(self, name: str) -> Any:
        values = {getattr(env, name) for env in self.envs}
        if len(values) != 1:
            raise AttributeError(
                f"the sub-envs' {name} differ ({sorted(values)}): use get_attr({name!r})"
            )
        return values.pop()

    # -- VecEnv API ------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        obs, infos = self.vector.reset_envs(self._seeds, [o or None for o in self._options])
        self.reset_infos = [info or {} for info in infos]
        self._reset_seeds()
        self._reset_options()
        return stack_obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("BatchedCutBackgroundVecEnv.step() called before reset()")
        actions, self._actions = self._actions, None
        out = self.vector.step_envs(actions)
        infos: list[dict[str, Any]] = []
        for i, info in enumerate(out.infos):
            final = out.final_infos[i]
            if final is not None:
                info = dict(final)
                info["terminal_observation"] = out.final_obs[i]
                info["TimeLimit.truncated"] = bool(out.truncated[i] and not out.terminated[i])
            infos.append(info)
        rewards = out.rewards.astype(np.float32)
        return stack_obs(out.obs), rewards, out.done, infos

    def close(self) -> None:
        self.vector.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [env.draw() for env in self.envs]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        targets = list(self._get_indices(indices))
        self.vector.set_attr_at(attr_name, [value] * len(targets), targets)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        return [
            getattr(self.envs[i], method_name)(*method_args, **kwargs)
            for i in self._get_indices(indices)
        ]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


__all__ = ["BatchedCutBackgroundVecEnv"]
