"""Batched rollouts of a policy over many images, with the env's rules, and the policies they
run: a trained SB3 model's greedy actions, the mean Q-values of an ensemble of DQN agents, and
uniform random actions. Any callable from a batch of observations to actions is a policy, so a
researcher's own agent is evaluated the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cutbg_env import MAX_EPISODE_STEPS
from cutbg_env.actions import Action
from cutbg_env.episode import Episode, new_episode, stack_obs, step_episodes
from cutbg_env.errors import OptionError
from cutbg_env.localize import Localization
from cutbg_env.world import CutWorld

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Maps a batch of observations (``features (N, C, 7, 7)``, ``history (N, 4, 13)``) to
``(N,)`` int actions."""
MaskedPolicy = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
"""A :data:`Policy` that also takes an ``(N, 13)`` bool mask of the actions it must not take
(:func:`rollout`'s retry rule; ``STOP`` is never masked). :func:`ensemble_policy`'s policies
accept one."""
RETRY_STEPS = MAX_EPISODE_STEPS - 1
"""Attempts of a retrying rollout in evaluation: with the whole image's call, at most 20
classifier calls per image."""
StepHook = Callable[[list[Episode], list[Action]], None]
"""Called before each batched step with the live episodes and the actions about to be applied
(e.g. to score other actions from the same states); it must not change the episodes."""


def rollout(
    world: CutWorld,
    indices: Sequence[int],
    policy: Policy | MaskedPolicy,
    delta: float,
    eta: float = 3.0,
    max_steps: int = MAX_EPISODE_STEPS,
    chunk: int = 64,
    obs_dtype: str = "float32",
    observe_score: bool = False,
    on_step: StepHook | None = None,
    retry: bool = False,
) -> list[tuple[Localization, list]]:
    """Run one episode per image, ``chunk`` images per batched forward.

    ``observe_score`` adds the env's ``"score"`` observation (needed by agents trained with it:
    :func:`observation_options`).
    ``on_step`` sees every step before it is applied (see :data:`StepHook`). An episode ended by
    the env has ``done`` set (by STOP when its last action, ``history[0]``, is STOP; by a cut
    past δ otherwise); one that is not ``done`` hit ``max_steps``.

    ``retry=True`` (``policy`` is a :data:`MaskedPolicy`): the env's undo rule (``undo_drop``):
    a cut past δ does not end the episode but is undone (the crop, features and score stay as
    before it; the action enters the history; the call and the step count), and the policy is
    given the env's action mask (:meth:`Episode.action_mask`, ``info["action_mask"]``): the cut
    is refused at that crop, so the policy picks again among the actions not refused there, and
    cuts that remove nothing are masked too (they would cost a step and no call). The episode ends by
    STOP, when every cut of a crop is refused or removes nothing, or after ``max_steps``
    attempts: at most ``1 + max_steps`` calls.

    Returns, per image, the localization (the episode's last valid crop, i.e. the last crop
    whose drop stayed ≤ δ, and its classifier calls) and the trail of crops (for figures).
    """
    dtype = np.dtype(obs_dtype)
    out: list[tuple[Localization, list]] = []
    for start in range(0, len(indices), chunk):
        eps: list[Episode] = [
            new_episode(world, i, delta, eta, True, observe_score, undo_drop=retry)
            for i in indices[start : start + chunk]
        ]
        active = list(range(len(eps)))
        while active:
            batch = stack_obs([eps[j].obs(dtype) for j in active])
            if retry:
                mask = np.stack([eps[j].action_mask() == 0 for j in active])
                actions = np.asarray(policy(batch, mask)).reshape(-1)  # type: ignore[call-arg]
                if mask[np.arange(len(active)), actions].any():
                    raise OptionError(
                        "rollout(retry=True): the policy took a masked action; it must be a "
                        "MaskedPolicy that never takes one (e.g. ensemble_policy([model]))"
                    )
            else:
                actions = np.asarray(policy(batch)).reshape(-1)  # type: ignore[call-arg]
            acts = [Action(int(a)) for a in actions]
            live = [eps[j] for j in active]
            if on_step is not None:
                on_step(live, acts)
            outcomes = step_episodes(world, live, acts)
            still = []
            for j, (_, terminated) in zip(active, outcomes, strict=True):
                if eps[j].refused:  # a cut past δ, undone (retry): refused at this crop now
                    terminated = not eps[j].action_mask()[: Action.STOP].any()
                if not terminated and eps[j].steps < max_steps:
                    still.append(j)
            active = still
        out += [(Localization(e.valid_crop, e.calls, e.steps), list(e.trail)) for e in eps]
    return out


def random_policy(seed: int) -> Policy:
    """Uniform random actions over all 13 (cuts and stop)."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.integers(0, len(Action), size=len(obs["history"]))


def observation_options(model) -> dict[str, bool]:
    """The env's optional observations an SB3 model was trained with, as the keyword arguments
    of :func:`rollout` (and of the env): ``{"observe_score": bool}``; its rollouts must provide
    them."""
    return {"observe_score": "score" in getattr(model.observation_space, "spaces", {})}


def sb3_policy(model) -> Policy:
    """Greedy actions of a trained SB3 model."""
    return lambda obs: model.predict(obs, deterministic=True)[0]


def ensemble_options(models: Sequence, names: Sequence[str]) -> dict[str, bool]:
    """The :func:`observation_options` every model of an ensemble shares; an
    :class:`~cutbg_env.errors.OptionError` naming the first model (by ``names``) that was trained
    with other observations."""
    first = observation_options(models[0])
    for model, name in zip(models[1:], names[1:], strict=True):
        other = observation_options(model)
        if other != first:
            raise OptionError(
                f"{name} was trained with observations {other}, {names[0]} with {first}: "
                "an ensemble's members must share them (retrain the member with the same flags)"
            )
    return first


def mean_q_values(models: Sequence, obs: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, 13)`` float32: the mean over SB3 DQN ``models`` of their Q-values for a batch of
    observations (one model: its own Q-values)."""
    total = None
    for model in models:
        tensors, _ = model.policy.obs_to_tensor(obs)
        with torch.no_grad():
            q = model.q_net(tensors).float().cpu().numpy()
        total = q if total is None else total + q
    if total is None:
        raise ValueError("mean_q_values: no model given")
    return total / len(models)


def ensemble_policy(models: Sequence) -> MaskedPolicy:
    """Greedy actions on the mean Q-values of several SB3 DQN models (an ensemble of
    independently trained agents; one model gives :func:`sb3_policy`'s actions), among the
    actions a ``mask`` leaves (all of them without one: a :data:`Policy` too)."""

    def act(obs: dict[str, np.ndarray], mask: np.ndarray | None = None) -> np.ndarray:
        q = mean_q_values(models, obs)
        return (q if mask is None else np.where(mask, -np.inf, q)).argmax(1)

    return act
