"""A batched ``VecEnv``: N episodes of ``CutBackground-v0`` stepped with one forward.

Stable-Baselines3's ``DummyVecEnv`` steps N single envs one after the other, so each env step is
one batch-1 forward of ``upper`` + ``head``. :class:`BatchedCutBackgroundVecEnv` keeps N
:class:`~cutbg_env.episode.Episode` states over one shared :class:`~cutbg_env.world.CutWorld` and
scores all their planned crops in a single batched forward. Mid-level maps and whole-map scores
are cached per image, so a reset costs no forward after an image's first episode.

Transitions equal those of N single envs (``gym.make("CutBackground-v0")``) seeded
``seed + i``, auto-reset as SB3 expects: at an episode end the returned observation is the next
episode's first one, and ``info["terminal_observation"]`` holds the last one;
``info["TimeLimit.truncated"]`` is True when the step limit (not the agent) ended it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from cutbg_env import MAX_EPISODE_STEPS
from cutbg_env.env import CutBackgroundEnv, draw_crops, parse_action
from cutbg_env.episode import Episode, ImageSampler, stack_obs, step_episodes
from cutbg_env.world import CutWorld


class BatchedCutBackgroundVecEnv(VecEnv):
    """N episodes of ``CutBackground-v0`` in one batched forward per step.

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
        self._template = tpl = CutBackgroundEnv(world=world, **env_kwargs)
        self.world = tpl.world
        self.delta, self.eta = tpl.delta, tpl.eta
        self.obs_dtype = tpl.obs_dtype
        self.max_episode_steps = max_episode_steps
        self.render_mode = tpl.render_mode
        super().__init__(n_envs, tpl.observation_space, tpl.action_space)
        self._rngs: list[np.random.Generator | None] = [None] * n_envs
        self._samplers = [ImageSampler(self.world) for _ in range(n_envs)]
        self._episodes: list[Episode | None] = [None] * n_envs
        self._actions: np.ndarray | None = None

    # -- helpers ---------------------------------------------------------------------------
    def _start(self, i: int, seed: int | None, options: dict[str, Any] | None) -> Episode:
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
            self._samplers[i].clear()
        rng = self._rngs[i]
        assert rng is not None
        ep = self._template.episode_at(self._samplers[i].pick(rng, options))
        self._episodes[i] = ep
        return ep

    # -- VecEnv API ------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        obs = []
        for i in range(self.num_envs):
            ep = self._start(i, self._seeds[i], self._options[i] or None)
            obs.append(ep.obs(self.obs_dtype))
        self._reset_seeds()
        self._reset_options()
        return stack_obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None or any(ep is None for ep in self._episodes):
            raise RuntimeError("BatchedCutBackgroundVecEnv.step() called before reset()")
        episodes: list[Episode] = self._episodes  # type: ignore[assignment]
        acts = [parse_action(a) for a in self._actions.reshape(self.num_envs)]
        outcomes = step_episodes(self.world, episodes, acts)
        obs, rewards = [], np.zeros(self.num_envs, dtype=np.float32)
        dones = np.zeros(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = []
        for i, (ep, (reward, terminated)) in enumerate(zip(episodes, outcomes, strict=True)):
            truncated = not terminated and ep.steps >= self.max_episode_steps
            info = ep.info()
            o = ep.obs(self.obs_dtype)
            if terminated or truncated:
                info["terminal_observation"] = o
                info["TimeLimit.truncated"] = truncated
                o = self._start(i, None, None).obs(self.obs_dtype)
            rewards[i], dones[i] = reward, terminated or truncated
            obs.append(o)
            infos.append(info)
        self._actions = None
        return stack_obs(obs), rewards, dones, infos

    def close(self) -> None:
        self._episodes = [None] * self.num_envs

    def get_images(self) -> Sequence[np.ndarray | None]:
        data = self.world.data
        return [
            None
            if ep is None
            else draw_crops(
                data.load_image(ep.index),
                ep.trail,
                ep.crop,
                [b for b, _ in data.gt_boxes(ep.index, self.world.class_name)],
            )
            for ep in self._episodes
        ]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        method = getattr(self._template, method_name)
        return [method(*method_args, **kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices


__all__ = ["BatchedCutBackgroundVecEnv"]
