"""``CutBackground-v0``: localize an object by cutting background off a feature map."""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import gymnasium as gym
import numpy as np
from gymnasium import spaces

from cutbg_env import checks
from cutbg_env.actions import N_ACTIONS, Action
from cutbg_env.calibration import resolve_delta
from cutbg_env.episode import HISTORY, Episode, ImageSampler, new_episode, step_episodes
from cutbg_env.geometry import Crop, crop_to_box
from cutbg_env.threads import configure_threads
from cutbg_env.world import FEATURE_HIGH, CutWorld


class CutBackgroundEnv(gym.Env[dict[str, np.ndarray], int]):
    """
    ## Description

    The agent world of Zheng & Zhang, *Weakly-Supervised Object Localization by Cutting
    Background with Deep Reinforcement Learning* (§2.2). An image that contains an object of the
    target class is passed through the frozen classifier's ``lower`` part once, giving a square
    mid-level map of 28×28 cells. The agent cuts strips of 1–3 cells off the sides of its current
    crop; everything outside the crop is zero in every channel and the map keeps its size (so the
    aspect ratio and the classifier's input statistics stay as they were). After each cut the
    classifier's ``upper`` + ``head`` score the zero-padded map. The agent should cut away
    background and stop when the next cut would remove part of the object.

    ## Action Space

    ``Discrete(13)``, see :class:`cutbg_env.actions.Action`:

    | Num   | Action                                        |
    |-------|-----------------------------------------------|
    | 0–2   | cut 1, 2, 3 rows off the top (``UP_k``)       |
    | 3–5   | cut 1, 2, 3 rows off the bottom (``DOWN_k``)  |
    | 6–8   | cut 1, 2, 3 columns off the left (``LEFT_k``) |
    | 9–11  | cut 1, 2, 3 columns off the right (``RIGHT_k``)|
    | 12    | stop (``STOP``)                               |

    A crop always keeps at least one cell in each direction: a cut is clamped to leave one, and a
    cut that can remove nothing is a no-op (see Rewards).

    ## Observation Space

    ``Dict``:

    * ``"features"``: ``Box(0, 65504, (C, 7, 7), float32)``: the classifier's senior features
      (``upper``'s output) of the zero-padded crop, channels first so that convolutions can read
      them as a map. ``C`` = 64 for the CPU default (1/8-width VGG-16), 512 for VGG-16.
    * ``"history"``: ``Box(0, 1, (4, 13), float32)``: one-hot rows of the last 4 actions, the most
      recent first; zeros before the first action.

    * ``"score"`` (only with ``observe_score=True``): ``Box([0, -1], [1, 1], (2,))``: ``p̂`` and
      the drop ``p̄ − p̂`` of the current crop (see Rewards), from the same forward as the
      features. Not in the paper's state; the trainer adds it by default.

    Bytes per observation (float32): ``4·(C·49 + 52)`` = 12,752 for ``C`` = 64 and 100,560 for
    ``C`` = 512; ``obs_dtype="float16"`` halves that (a replay buffer stores two per transition).

    ## Rewards

    With ``p̄`` the score ``sigmoid(logit)`` of the target class on the whole map and ``p̂`` on the
    crop after the action (paper eq. 1–2):

    * a cut of scale ``s`` ∈ {1, 2, 3}: ``+s`` if ``p̄ − p̂ ≤ δ`` else ``−s``;
    * a cut that removes nothing (the crop is already one cell thick there): ``−s``, the crop and
      ``p̂`` unchanged, no classifier call;
    * stop: ``+η`` if ``p̄ − p̂ ≤ δ`` else ``−η``.

    With ``undo_drop=True`` a cut whose drop exceeds δ is still rewarded ``−s`` but undone: the
    crop, features and ``p̂`` stay as before it (its classifier call counts), the action enters
    the history, as a cut that removes nothing does, and ``info["refused"]`` is ``True``.

    ## Starting State

    The whole map, ``crop = (0, 0, 28, 28)``, of an image drawn from the images of the split that
    contain a non-difficult object of the class: a fresh random permutation of them (from
    ``self.np_random``) is walked through, one image per episode, so every image is seen once per
    epoch. ``reset(options={"index": i})`` picks the ``i``-th of those images and
    ``options={"image_id": "..."}`` a named one.

    ## Episode End

    Termination: the agent stops, or (the paper's second stop case) a cut makes the score fall
    below the threshold, i.e. ``p̄ − p̂ > δ`` after a cut: that cut is rewarded ``−s`` and ends the
    episode (``terminate_on_drop=True``, the default). ``info["last_valid_crop"]`` is then the crop
    before that cut, the localization result. With ``undo_drop=True`` only stop ends it (the
    test-time retry rule of :func:`cutbg_env.rollout.rollout` is this rule). Truncation: only
    through ``max_episode_steps`` (20 for the registered id).

    ## Arguments

    ```python
    gym.make("CutBackground-v0", dataset="animals", split="trainval", class_name="dog",
             checkpoint=None, delta=None, eta=3.0, device="cpu", render_mode=None)
    ```

    * ``dataset``/``root``/``split``/``class_name``/``checkpoint``/``device``/``max_images``: see
      :class:`cutbg_env.world.CutWorld`. ``checkpoint=None`` reads ``runs/<dataset>/classifier.pt``,
      else on ``"animals"`` the classifier shipped with the package; on other datasets a missing
      file raises an error saying which command creates it.
    * ``delta``: the score-drop threshold δ, in [0, 1]; ``None`` reads the calibrated per-class value from
      ``runs/<dataset>/calibration.json`` (``python -m train calibrate``; an entry calibrated with
      another classifier is ignored, with a warning), else, with the shipped classifier, the
      shipped calibration's (:mod:`cutbg_env.shipped`), else 0.1.
    * ``eta``: η, the absolute reward of the stop action.
      ``delta`` and ``eta`` may be set later (``env.unwrapped.delta = 0.05``, or a vector env's
      ``set_attr``) with the same checks; they apply from the next episode.
    * ``terminate_on_drop``: end the episode on a cut whose drop exceeds δ; ``False`` goes on
      from the cut crop.
    * ``undo_drop``: undo such a cut instead, and go on from the crop before it (see Rewards);
      it cannot be combined with ``terminate_on_drop=False``.
    * ``obs_dtype``: ``"float32"`` (default) or ``"float16"`` for the features and history.
    * ``observe_score``: add the ``"score"`` observation (default ``False``: the paper's state).
    * ``render_mode``: ``"rgb_array"`` draws the image with each cut (green), the current crop
      (blue) and the class's ground-truth boxes (red), like the paper's Fig. 3.
    * ``num_threads``: torch's CPU threads (process-wide); ``None`` = one thread when the env is
      built in a worker process (``AsyncVectorEnv``, ``SubprocVecEnv``: fork-safe and no
      oversubscription, see :mod:`cutbg_env.threads`), torch's setting otherwise.
    * ``crop_cache_mb``: memory (MiB) for the features and score of every crop scored, so a crop
      a later episode revisits costs no forward (:meth:`CutWorld.score_image_crops`; about a
      third of a training's crops are revisits); ``0`` (default) keeps none. A given ``world``
      keeps its own setting; a vector env's sub-envs share one cache.
    * ``world``: a :class:`~cutbg_env.world.CutWorld` to share (its classifier, data and caches)
      instead of building one from the arguments above.

    ``info`` after reset and every step: ``crop``/``box`` (grid cells / VOC pixel box of the
    current crop), ``last_valid_crop``/``last_valid_box`` (the last crop whose drop was ≤ δ),
    ``p_full`` (p̄), ``p_crop`` (p̂), ``drop`` (p̄ − p̂), ``calls`` (classifier forwards of
    ``upper`` + ``head`` this episode, the full map included), ``refused`` (the last action was
    a cut that ``undo_drop`` undid), ``action_mask`` (``(13,)`` int8, 1 where the action can
    change the crop: ``STOP``, and every cut that removes cells and that ``undo_drop`` has not
    undone at this crop; for ``action_space.sample(mask=...)`` or a masking agent), ``image_id``,
    ``index``.

    ## Version History

    * v0: initial version; ``observe_score`` and ``undo_drop`` are optional additions (off by
      default), which change nothing else; ``info["refused"]`` and ``info["action_mask"]`` are
      always there.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(
        self,
        dataset: str = "animals",
        split: str = "trainval",
        class_name: str = "dog",
        checkpoint: str | None = None,
        root: str | None = None,
        delta: float | None = None,
        eta: float = 3.0,
        device: str = "cpu",
        terminate_on_drop: bool = True,
        undo_drop: bool = False,
        obs_dtype: str = "float32",
        observe_score: bool = False,
        max_images: int | None = None,
        render_mode: str | None = None,
        num_threads: int | None = None,
        crop_cache_mb: float = 0.0,
        world: CutWorld | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: supported modes are ['rgb_array']")
        checks.delta("delta=", delta)
        self.eta = eta  # its setter checks it, before the world loads like delta above
        checks.integer("max_images=", max_images, 1)
        if undo_drop and not terminate_on_drop:
            raise ValueError(
                "undo_drop=True with terminate_on_drop=False: a cut past δ is either undone or "
                "kept; pass only one of them"
            )
        self.num_threads = configure_threads(num_threads)
        """Torch's CPU threads after this env was built (see :mod:`cutbg_env.threads`)."""
        self.world = world or CutWorld(
            dataset,
            split,
            class_name,
            checkpoint,
            root,
            device,
            max_images=max_images,
            crop_cache_mb=crop_cache_mb,
        )
        self.world.require_positives()
        self.delta = resolve_delta(
            self.world.dataset_name, class_name, delta, getattr(self.world, "classifier_path", None)
        )
        self.terminate_on_drop = terminate_on_drop
        self.undo_drop = bool(undo_drop)
        self.render_mode = render_mode
        if obs_dtype not in ("float32", "float16"):
            raise ValueError(f"obs_dtype={obs_dtype!r}: expected 'float32' or 'float16'")
        self.obs_dtype = np.dtype(obs_dtype)
        self.observe_score = bool(observe_score)
        channels = self.world.model.senior_channels
        self.action_space = spaces.Discrete(N_ACTIONS)
        obs_spaces = {
            "features": spaces.Box(0.0, FEATURE_HIGH, (channels, 7, 7), self.obs_dtype),
            "history": spaces.Box(0.0, 1.0, (HISTORY, N_ACTIONS), self.obs_dtype),
        }
        if self.observe_score:
            obs_spaces["score"] = spaces.Box(
                np.asarray([0.0, -1.0], self.obs_dtype),
                np.asarray([1.0, 1.0], self.obs_dtype),
                (2,),
                self.obs_dtype,
            )
        self.observation_space = spaces.Dict(obs_spaces)
        self._sampler = ImageSampler(self.world)
        self._episode: Episode | None = None

    # -- episode rules: set after construction (by hand or ``set_attr``) with the same checks --
    @property
    def delta(self) -> float:
        """δ, the score-drop threshold of the episodes started from now on."""
        return self._delta

    @delta.setter
    def delta(self, value: float) -> None:
        self._delta = checks.env_attr("delta", value)

    @property
    def eta(self) -> float:
        """η, the stop reward's magnitude of the episodes started from now on."""
        return self._eta

    @eta.setter
    def eta(self, value: float) -> None:
        self._eta = checks.env_attr("eta", value)

    # -- gymnasium API ---------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._sampler.clear()
        self._episode = self.episode_at(self._sampler.pick(self.np_random, options))
        return self._episode.obs(self.obs_dtype), self._episode.info()

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        ep = self.live_episode()
        ((reward, terminated),) = step_episodes(self.world, [ep], [parse_action(action)])
        return ep.obs(self.obs_dtype), reward, terminated, False, ep.info()

    def live_episode(self) -> Episode:
        """The current episode, which the next step acts on; ``RuntimeError`` before the first
        reset and after the episode ended (the batched vector env steps it too)."""
        ep = self._episode
        if ep is None:
            raise RuntimeError("CutBackgroundEnv.step() called before reset(): call reset() first")
        if ep.done:
            raise RuntimeError(
                "CutBackgroundEnv.step() called after the episode ended: call reset() first"
            )
        return ep

    def episode_at(self, index: int) -> Episode:
        """A new episode on dataset image ``index`` with this env's rules and observations (the
        batched VecEnv starts its episodes here too)."""
        return new_episode(
            self.world,
            index,
            self.delta,
            self.eta,
            self.terminate_on_drop,
            self.observe_score,
            self.undo_drop,
        )

    def render(self) -> np.ndarray | None:
        """The image (RGB uint8, its own size) with cuts (green), crop (blue), GT (red)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without render_mode; pass render_mode='rgb_array'")
            return None
        if self._episode is None:
            raise RuntimeError("CutBackgroundEnv.render() called before reset()")
        return self.draw()

    def draw(self) -> np.ndarray | None:
        """The current episode drawn as :meth:`render` draws it, whatever ``render_mode`` is;
        ``None`` before the first reset."""
        ep = self._episode
        if ep is None:
            return None
        return draw_crops(
            self.world.data.load_image(ep.index),
            ep.trail,
            ep.crop,
            [b for b, _ in self.world.data.gt_boxes(ep.index, self.world.class_name)],
        )


def parse_action(action: Any) -> Action:
    """The :class:`Action` for an int-like action in ``0..12``; anything else raises ``ValueError``
    naming the value."""
    ok = isinstance(action, (int, np.integer)) and not isinstance(action, bool)
    if isinstance(action, np.ndarray) and action.shape in ((), (1,)) and action.dtype.kind in "iu":
        action, ok = action.reshape(()).item(), True
    if not ok or not 0 <= int(action) < N_ACTIONS:
        raise ValueError(
            f"invalid action {action!r}: expected an integer in 0..{N_ACTIONS - 1} "
            "(see cutbg_env.Action)"
        )
    return Action(int(action))


def draw_crops(
    image: np.ndarray,
    trail: list[Crop],
    crop: Crop | None,
    gt_boxes: list[tuple[int, int, int, int]],
    final_box: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Draw a cutting process on a copy of ``image`` (``(H, W, 3)`` uint8 RGB).

    ``trail``: every crop of the episode (green); ``crop``: the current crop (blue); ``gt_boxes``:
    VOC boxes (red); ``final_box``: an optional refined VOC box (yellow). Returns the copy.
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 224))

    def rect(box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
        cv2.rectangle(out, (box[0] - 1, box[1] - 1), (box[2] - 1, box[3] - 1), colour, thick)

    for c in trail:
        rect(crop_to_box(c, w, h), (0, 200, 0))
    for b in gt_boxes:
        rect(tuple(int(v) for v in b), (230, 0, 0))  # type: ignore[arg-type]
    if crop is not None:
        rect(crop_to_box(crop, w, h), (0, 90, 255))
    if final_box is not None:
        rect(final_box, (255, 220, 0))
    return out
