"""Episodes of the cutting game (paper §2.2): state, rules and the batched step.

An :class:`Episode` holds one episode's crop, action history and scores; it never calls the
classifier itself. :func:`step_episodes` applies one action to each of several episodes and
scores all their planned crops in one batched forward of the :class:`~cutbg_env.world.CutWorld`:
the single env, the batched vector env and evaluation rollouts all step through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cutbg_env.actions import CUT_ACTIONS, N_ACTIONS, Action, apply_cut
from cutbg_env.geometry import FULL_CROP, Crop, crop_to_box
from cutbg_env.world import CutWorld

HISTORY = 4
"""Past actions kept in the observation."""
SIDE_CUTS = tuple(
    tuple(a for a in CUT_ACTIONS if a.side == side) for side in ("up", "down", "left", "right")
)
"""The cuts of each side (scale 1 first)."""


def stack_obs(obs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch of observations from per-episode observations (same keys), key by key."""
    return {k: np.stack([o[k] for o in obs]) for k in obs[0]}


class ImageSampler:
    """Episode images of one env: walks fresh random permutations of the positive images.

    ``rng`` is the env's ``np_random``; ``options`` of ``reset`` may name an image by position
    (``{"index": i}``) or id (``{"image_id": "..."}``).
    """

    def __init__(self, world: CutWorld) -> None:
        self.world = world
        self._order: list[int] = []

    def clear(self) -> None:
        """Forget the current permutation (after re-seeding)."""
        self._order = []

    def pick(self, rng: np.random.Generator, options: dict[str, Any] | None = None) -> int:
        """Dataset index of the next episode's image."""
        positives = self.world.positives
        if options and "index" in options:
            i = int(options["index"])
            if not 0 <= i < len(positives):
                raise IndexError(
                    f"options['index']={i}: this split has {len(positives)} images of "
                    f"{self.world.class_name!r} (0..{len(positives) - 1})"
                )
            return positives[i]
        if options and "image_id" in options:
            image_id = str(options["image_id"])
            ids = self.world.data.ids
            if image_id not in ids or ids.index(image_id) not in positives:
                raise ValueError(
                    f"options['image_id']={image_id!r} is not an image of "
                    f"{self.world.class_name!r} in split {self.world.data.split!r}"
                )
            return ids.index(image_id)
        if not self._order:
            self._order = [positives[i] for i in rng.permutation(len(positives))]
        return self._order.pop()


class Episode:
    """State and rules of one episode (paper eq. 1–2); see :class:`~cutbg_env.env.CutBackgroundEnv`.

    The classifier is not called here: :meth:`plan` says which crop needs scoring, the caller
    scores it (alone or batched with other episodes) and hands the result to :meth:`finish`.
    """

    def __init__(
        self,
        index: int,
        image_id: str,
        image_size: tuple[int, int],
        features: np.ndarray,
        p_full: float,
        delta: float,
        eta: float,
        terminate_on_drop: bool = True,
        observe_score: bool = False,
        undo_drop: bool = False,
    ) -> None:
        self.index, self.image_id = index, image_id
        self.undo_drop = undo_drop
        self.observe_score = observe_score
        self.height, self.width = image_size
        self.delta, self.eta, self.terminate_on_drop = delta, eta, terminate_on_drop
        self.crop: Crop = FULL_CROP
        self.valid_crop: Crop = FULL_CROP
        self.trail: list[Crop] = [FULL_CROP]
        self.history = np.zeros((HISTORY, N_ACTIONS), dtype=np.float32)
        self.features = features
        self.p_full = self.p_crop = p_full
        self.calls = 1
        self.steps = 0
        self.done = False
        self.refused = False
        """The last action was a cut past δ that :attr:`undo_drop` undid."""
        self.refused_here: set[Action] = set()
        """The cuts :attr:`undo_drop` undid at the current crop (cleared when it changes)."""

    def plan(self, action: Action) -> Crop | None:
        """The crop this action asks to score, or ``None`` (stop, or a cut that removes nothing)."""
        if action is Action.STOP:
            return None
        crop, removed = apply_cut(self.crop, action)
        return crop if removed else None

    def finish(
        self,
        action: Action,
        crop: Crop | None,
        features: np.ndarray | None = None,
        score: float | None = None,
    ) -> tuple[float, bool]:
        """Apply the action (with the score of ``crop`` when one was planned); return
        ``(reward, terminated)``."""
        self.history[1:] = self.history[:-1].copy()
        self.history[0] = 0.0
        self.history[0, action] = 1.0
        self.steps += 1
        self.refused = False
        if action is Action.STOP:
            ok = self.p_full - self.p_crop <= self.delta
            reward, terminated = (self.eta if ok else -self.eta), True
        elif crop is None:
            reward, terminated = -float(action.scale), False
        else:
            assert features is not None and score is not None
            self.calls += 1
            ok = self.p_full - float(score) <= self.delta
            self.refused = not ok and self.undo_drop
            if self.refused:
                self.refused_here.add(action)
            else:
                self.crop, self.features, self.p_crop = crop, features, float(score)
                self.trail.append(crop)
                self.refused_here.clear()
            if ok:
                self.valid_crop = crop
            reward = float(action.scale) if ok else -float(action.scale)
            terminated = (not ok) and self.terminate_on_drop and not self.undo_drop
        self.done = terminated
        return reward, terminated

    def obs(self, dtype: np.dtype) -> dict[str, np.ndarray]:
        """The observation (see the env's Observation Space)."""
        obs = {
            "features": self.features.astype(dtype, copy=True),
            "history": self.history.astype(dtype, copy=True),
        }
        if self.observe_score:
            obs["score"] = np.asarray([self.p_crop, self.p_full - self.p_crop], dtype=dtype)
        return obs

    def action_mask(self) -> np.ndarray:
        """``(13,)`` int8, 1 where an action can change the crop: ``STOP``, and each cut that
        removes cells and was not undone at this crop already (:attr:`refused_here`). The
        convention of ``Discrete.sample(mask=...)``."""
        mask = np.ones(N_ACTIONS, dtype=np.int8)
        for cuts in SIDE_CUTS:
            # a cut is clamped to what its side can give: a side's scales all remove cells or none
            if not apply_cut(self.crop, cuts[0])[1]:
                mask[list(cuts)] = 0
        for a in self.refused_here:
            mask[a] = 0
        return mask

    def info(self) -> dict[str, Any]:
        """The info dict (see the env's docstring)."""
        return {
            "crop": self.crop,
            "box": crop_to_box(self.crop, self.width, self.height),
            "last_valid_crop": self.valid_crop,
            "last_valid_box": crop_to_box(self.valid_crop, self.width, self.height),
            "p_full": self.p_full,
            "p_crop": self.p_crop,
            "drop": self.p_full - self.p_crop,
            "calls": self.calls,
            "refused": self.refused,
            "action_mask": self.action_mask(),
            "image_id": self.image_id,
            "index": self.index,
        }


def step_episodes(
    world: CutWorld, episodes: Sequence[Episode], actions: Sequence[Action]
) -> list[tuple[float, bool]]:
    """Apply one action to each episode, scoring every planned crop in one batched forward.

    The one step rule shared by the single env, the batched VecEnv and evaluation rollouts.
    Returns ``(reward, terminated)`` per episode.
    """
    plans = [ep.plan(a) for ep, a in zip(episodes, actions, strict=True)]
    need = [k for k, c in enumerate(plans) if c is not None]
    scored: dict[int, tuple[np.ndarray, float]] = {}
    if need:
        results = world.score_image_crops(
            [episodes[k].index for k in need], [plans[k] for k in need]
        )
        scored = dict(zip(need, results, strict=True))
    return [
        ep.finish(a, plans[k], *scored.get(k, (None, None)))
        for k, (ep, a) in enumerate(zip(episodes, actions, strict=True))
    ]


def new_episode(
    world: CutWorld,
    index: int,
    delta: float,
    eta: float,
    terminate_on_drop: bool,
    observe_score: bool = False,
    undo_drop: bool = False,
) -> Episode:
    """Start an episode on dataset image ``index`` (its whole-map score comes from the cache)."""
    ann = world.data.annotation(index)
    (features,), (p_full,) = world.full([index])
    return Episode(
        index,
        ann.image_id,
        (ann.height, ann.width),
        features,
        p_full,
        delta,
        eta,
        terminate_on_drop,
        observe_score,
        undo_drop,
    )
