"""``CutBackground-v0`` as a Gymnasium-native batched ``VectorEnv``: N episodes, one forward.

``gym.make_vec("CutBackground-v0", num_envs=N)`` (``vectorization_mode="vector_entry_point"``,
the default for ids that have one) returns a :class:`CutBackgroundVectorEnv`. It holds N
:class:`~cutbg_env.env.CutBackgroundEnv` sub-envs over one shared
:class:`~cutbg_env.world.CutWorld` and scores all their planned crops in a single batched forward
per step (:func:`~cutbg_env.episode.step_episodes`), where ``SyncVectorEnv`` or
``AsyncVectorEnv`` run one batch-1 forward per sub-env. Mid-level maps and whole-map scores are
cached per image, so a reset costs no forward after an image's first episode.

Transitions equal those of N single envs ``gym.make("CutBackground-v0")`` reset with seeds
``seed + i`` (``reset(seed=seed)``; a list gives one seed per sub-env), truncated at
``max_episode_steps`` as the registered id's ``TimeLimit`` truncates.

Autoreset: ``metadata["autoreset_mode"]`` is :attr:`AutoresetMode.SAME_STEP
<gymnasium.vector.AutoresetMode>`. A sub-env whose episode ends is reset within the same
``step``: that step returns the next episode's first observation, and ``infos["final_obs"]`` /
``infos["final_info"]`` (masked by ``infos["_final_obs"]``) hold the ended episode's last
observation and info, exactly as ``SyncVectorEnv(..., autoreset_mode=AutoresetMode.SAME_STEP)``
of single envs. Every action of every step acts (no ignored reset step), and it is the
convention of Stable-Baselines3, whose ``VecEnv`` (:mod:`cutbg_env.vec_env`) is a thin adapter
over this class. ``reset(options={"reset_mask": mask})`` resets only the masked sub-envs.

``get_attr`` / ``set_attr`` / ``call`` act on the sub-envs: ``set_attr("eta", 5.0)`` (or a list
of one value per sub-env) changes the η of each sub-env's episodes from its next episode on;
``delta`` and ``terminate_on_drop`` likewise. ``delta`` and ``eta`` get the constructor's checks
(``delta=nan: must be a finite number in [0, 1]``, :class:`~cutbg_env.errors.OptionError`).
Attributes that shape the shared observation space
or world (``obs_dtype``, ``observe_score``, the spaces, ``world``) cannot be set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from cutbg_env import MAX_EPISODE_STEPS, checks
from cutbg_env.env import CutBackgroundEnv, parse_action
from cutbg_env.episode import stack_obs, step_episodes
from cutbg_env.world import CutWorld

Obs = dict[str, np.ndarray]

FROZEN_ATTRS = frozenset(
    {"obs_dtype", "observe_score", "observation_space", "action_space", "world", "np_random"}
)
"""Sub-env attributes that :meth:`CutBackgroundVectorEnv.set_attr` refuses to change."""


class StepResult:
    """One batched step, per sub-env (the Gymnasium and SB3 interfaces both build on it).

    ``obs[i]``/``infos[i]``: the observation and info the step returns for sub-env ``i``: the
    next episode's first ones where its episode ended (``done[i]``), whose last ones are then
    ``final_obs[i]``/``final_infos[i]`` (``None`` elsewhere).
    """

    __slots__ = ("final_infos", "final_obs", "infos", "obs", "rewards", "terminated", "truncated")

    def __init__(self, n: int) -> None:
        self.obs: list[Obs] = []
        self.infos: list[dict[str, Any]] = []
        self.rewards = np.zeros(n, dtype=np.float64)
        self.terminated = np.zeros(n, dtype=bool)
        self.truncated = np.zeros(n, dtype=bool)
        self.final_obs: list[Obs | None] = [None] * n
        self.final_infos: list[dict[str, Any] | None] = [None] * n

    @property
    def done(self) -> np.ndarray:
        """Where an episode ended (terminated or truncated)."""
        return self.terminated | self.truncated


class CutBackgroundVectorEnv(VectorEnv):
    """N episodes of ``CutBackground-v0`` in one batched forward per step.

    Args:
        num_envs: number of sub-envs (parallel episodes).
        max_episode_steps: truncation limit, as the registered env's ``TimeLimit`` (``None``: none).
        world: share an existing :class:`CutWorld` (else one is built from the kwargs).
        **env_kwargs: the single env's keyword arguments (``dataset``, ``class_name``,
            ``delta``, ``eta``, ``obs_dtype``, ``observe_score``, ``render_mode``, ...).
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = MAX_EPISODE_STEPS,
        world: CutWorld | None = None,
        **env_kwargs: Any,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}: need at least one env")
        first = CutBackgroundEnv(world=world, **env_kwargs)
        # The others share its world and δ (resolved, and warned about, once).
        rest = {**env_kwargs, "delta": first.delta}
        self.envs: list[CutBackgroundEnv] = [first] + [
            CutBackgroundEnv(world=first.world, **rest) for _ in range(num_envs - 1)
        ]
        self.world = first.world
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(first.observation_space, num_envs)
        self.action_space = batch_space(first.action_space, num_envs)
        self._started = False

    # -- the batched core, shared with the SB3 adapter ---------------------------------------
    def reset_envs(
        self,
        seeds: Sequence[int | None],
        options: Sequence[dict[str, Any] | None],
        mask: np.ndarray | None = None,
    ) -> tuple[list[Obs], list[dict[str, Any] | None]]:
        """Reset sub-env ``i`` with ``seeds[i]`` and ``options[i]`` where ``mask`` (default: all);
        return every sub-env's current observation and the reset ones' infos (``None`` for the
        others)."""
        if len(seeds) != self.num_envs or len(options) != self.num_envs:
            raise ValueError(
                f"got {len(seeds)} seeds and {len(options)} options for {self.num_envs} envs"
            )
        infos: list[dict[str, Any] | None] = [None] * self.num_envs
        for i, env in enumerate(self.envs):
            if mask is None or mask[i]:
                _, infos[i] = env.reset(seed=seeds[i], options=options[i])
        self._started = True
        return [env.live_episode().obs(env.obs_dtype) for env in self.envs], infos

    def step_envs(self, actions: Any) -> StepResult:
        """Apply one action per sub-env, scoring every planned crop in one batched forward, and
        reset the sub-envs whose episode ended (same step)."""
        if not self._started:
            raise RuntimeError(
                f"{type(self).__name__}.step() called before reset(): call reset() first"
            )
        flat = np.asarray(actions).reshape(-1)
        if flat.shape != (self.num_envs,):
            raise ValueError(
                f"expected {self.num_envs} actions (one per env), got {np.shape(actions)}"
            )
        acts = [parse_action(a) for a in flat]
        episodes = [env.live_episode() for env in self.envs]
        outcomes = step_episodes(self.world, episodes, acts)
        out = StepResult(self.num_envs)
        limit = self.max_episode_steps
        for i, (env, ep, (reward, terminated)) in enumerate(
            zip(self.envs, episodes, outcomes, strict=True)
        ):
            truncated = limit is not None and ep.steps >= limit
            obs, info = ep.obs(env.obs_dtype), ep.info()
            if terminated or truncated:
                out.final_obs[i], out.final_infos[i] = obs, info
                obs, info = env.reset()
            out.obs.append(obs)
            out.infos.append(info)
            out.rewards[i], out.terminated[i], out.truncated[i] = reward, terminated, truncated
        return out

    # -- gymnasium.vector.VectorEnv ---------------------------------------------------------
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """Reset every sub-env (``seed``: ``None``, an int giving ``seed + i`` to sub-env ``i``,
        or one seed per sub-env); ``options`` go to every sub-env's reset, except
        ``"reset_mask"``, a ``(num_envs,)`` bool array choosing the sub-envs to reset."""
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
            super().reset(seed=int(seed))
        else:
            seeds = list(seed)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a ({self.num_envs},) bool array with a True, "
                    f"got {mask!r}"
                )
            if not self._started:
                raise RuntimeError("reset_mask needs a full reset() first")
        obs, reset_infos = self.reset_envs(seeds, [options or None] * self.num_envs, mask)
        infos: dict[str, Any] = {}
        for i, info in enumerate(reset_infos):
            if info is not None:
                infos = self._add_info(infos, info, i)
        return stack_obs(obs), infos

    def step(self, actions: Any) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        out = self.step_envs(actions)
        infos: dict[str, Any] = {}
        for i, info in enumerate(out.infos):
            if out.final_obs[i] is not None:
                final = {"final_obs": out.final_obs[i], "final_info": out.final_infos[i]}
                infos = self._add_info(infos, final, i)
            infos = self._add_info(infos, info, i)
        return stack_obs(out.obs), out.rewards, out.terminated, out.truncated, infos

    def render(self) -> tuple[np.ndarray | None, ...] | None:
        """Every sub-env's frame (``render_mode="rgb_array"``), see the single env's render."""
        if self.render_mode is None:
            return None
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()
        self._started = False

    # -- sub-env attributes -----------------------------------------------------------------
    def get_attr(self, name: str) -> tuple[Any, ...]:
        """``name`` of every sub-env."""
        return tuple(getattr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``name`` on every sub-env: ``values`` is one value per sub-env (list or tuple) or
        one value for all. Episode rules (``delta``, ``eta``, ``terminate_on_drop``) apply from
        each sub-env's next episode."""
        self.set_attr_at(name, values, range(self.num_envs))

    def set_attr_at(self, name: str, values: Any, indices: Sequence[int]) -> None:
        """:meth:`set_attr` on the sub-envs ``indices`` only."""
        if name in FROZEN_ATTRS:
            raise AttributeError(
                f"set_attr({name!r}): the {self.num_envs} envs share one observation space and "
                f"world; build a new vector env with {name}=... instead"
            )
        indices = list(indices)
        if not isinstance(values, (list, tuple)):
            values = [values] * len(indices)
        if len(values) != len(indices):
            raise ValueError(f"set_attr({name!r}): {len(values)} values for {len(indices)} envs")
        # the constructor's checks, every value before any is set
        values = [checks.env_attr(name, v) for v in values]
        for i, value in zip(indices, values, strict=True):
            setattr(self.envs[i], name, value)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every sub-env (or read attribute ``name``)."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def __repr__(self) -> str:
        spec = f"{self.spec.id}, " if self.spec is not None else ""
        return f"{type(self).__name__}({spec}num_envs={self.num_envs})"


__all__ = ["CutBackgroundVectorEnv", "StepResult"]
