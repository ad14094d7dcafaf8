"""The agent world shared by :class:`~cutbg_env.env.CutBackgroundEnv` and the batched
:class:`~cutbg_env.vec_env.BatchedCutBackgroundVecEnv`.

Everything an env step needs is a pure function of ``(mid-level map, crop, class)``:
:meth:`CutWorld.evaluate` takes a *batch* of them and runs ``upper`` + ``head`` once, so one
episode or N episodes cost one forward. Mid-level maps are computed once per image (``lower``)
and cached; a whole split can be precomputed.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cutbg_env import paths
from cutbg_env.actions import CUT_ACTIONS, N_ACTIONS, Action, apply_cut
from cutbg_env.backbone import Classifier, load_classifier, preprocess
from cutbg_env.data import VOCDataset, resolve_dataset
from cutbg_env.errors import DataError
from cutbg_env.geometry import FULL_CROP, Crop, crop_masks, crop_to_box

DEFAULT_DELTA = 0.1
"""δ used when neither the caller nor a calibration file gives one."""
SLICE_BATCH = 64
"""Up to this many crops, :meth:`CutWorld.evaluate` zero-pads by slicing instead of masks."""
HISTORY = 4
"""Past actions kept in the observation."""
FEATURE_HIGH = float(np.finfo(np.float16).max)
"""Upper bound of the observation's features (finite, and representable in float16)."""
OPTIONAL_OBSERVATIONS = ("score", "cut_mass")
"""The observation keys the env adds on request (``observe_<key>=True``), in this order."""


def load_calibration(dataset: str) -> dict:
    """The calibration file of a dataset (``{}`` when there is none)."""
    path = paths.calibration_path(dataset)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"calibration file {path} is unreadable ({exc}): recreate it with "
            f"`python -m train calibrate --dataset {dataset}`"
        ) from exc


class CutWorld:
    """Dataset + frozen classifier + mid-level-map cache for one class.

    Args:
        dataset: ``"animals"`` (embedded default, generated on first use), ``"voc2007"``,
            ``"voc2012"`` or a folder in VOC layout.
        split: image set, e.g. ``"trainval"`` or ``"test"``.
        class_name: the class the agent localizes.
        checkpoint: classifier checkpoint; ``None`` = ``runs/<dataset>/classifier.pt``.
        root: dataset folder overriding the one ``dataset`` names.
        device: torch device string.
        cache_dtype: ``"float32"`` or ``"float16"``: storage of cached mid-level maps.
        max_images: use only the first ``max_images`` positive images (small experiments).
        model: an already loaded classifier (shares it instead of reading ``checkpoint``).
        data: an already opened split (shares its annotation cache instead of reopening it).
    """

    def __init__(
        self,
        dataset: str = "animals",
        split: str = "trainval",
        class_name: str = "dog",
        checkpoint: str | None = None,
        root: str | None = None,
        device: str = "cpu",
        cache_dtype: str = "float32",
        max_images: int | None = None,
        model: Classifier | None = None,
        data: VOCDataset | None = None,
    ) -> None:
        self.dataset_name = dataset
        self.data = data if data is not None else VOCDataset(resolve_dataset(dataset, root), split)
        self.class_name = class_name
        self.data.class_index(class_name)  # raises UnknownClassError listing the classes
        self.device = torch.device(device)
        if model is None:
            ckpt = Path(checkpoint) if checkpoint else paths.classifier_path(dataset)
            hint = (
                "make train-classifier"
                if dataset == "animals"
                else f"make train-classifier DATASET={dataset}"
            )
            model, _ = load_classifier(ckpt, self.device, hint=hint)
        self.model = model
        self.class_idx = model.class_index(class_name)
        self.input_size = model.config.input_size
        self.positives: list[int] = self.data.positives(class_name)
        if max_images is not None:
            self.positives = self.positives[:max_images]
        if cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype={cache_dtype!r}: expected 'float32' or 'float16'")
        self.cache_dtype = getattr(torch, cache_dtype)
        self._cache: dict[int, torch.Tensor] = {}
        self._full: dict[int, tuple[np.ndarray, float]] = {}
        self._heat: dict[int, np.ndarray] = {}
        self.amp = self.device.type == "cuda"
        self.param_dtype = next(model.parameters()).dtype
        # Zero-padded crops drive many activations to subnormal floats, which run several times
        # slower on x86 CPUs; flushing them to zero changes no score at float32 precision.
        torch.set_flush_denormal(True)

    def require_positives(self) -> None:
        """Raise :class:`DataError` when the split has no image of the class (episodes need one)."""
        if not self.positives:
            raise DataError(
                f"split {self.data.split!r} of {self.data.root} has no image of class "
                f"{self.class_name!r}: pick another class or split"
            )

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA; nothing on the CPU."""
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def mid_maps(self, indices: Sequence[int], batch_size: int = 64) -> torch.Tensor:
        """Mid-level maps of dataset images, computed once and cached.

        Returns ``(len(indices), C_mid, 28, 28)`` in ``cache_dtype`` on the device.
        """
        if len(indices) == 1 and indices[0] in self._cache:  # the single env's step
            return self._cache[indices[0]].unsqueeze(0)
        missing = [i for i in dict.fromkeys(indices) if i not in self._cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            x = preprocess([self.data.load_image(i) for i in chunk], self.input_size)
            with torch.inference_mode(), self.autocast():
                mids = self.model.lower(x.to(self.device))
            for i, m in zip(chunk, mids, strict=True):
                self._cache[i] = m.to(self.cache_dtype)
        return torch.stack([self._cache[i] for i in indices])

    def precompute(self, indices: Sequence[int] | None = None) -> None:
        """Fill the caches (mid-level maps and whole-map features/scores) for ``indices``
        (default: every positive image of the class), so that no reset costs a forward."""
        indices = self.positives if indices is None else list(indices)
        self.mid_maps(indices)
        self.full(indices)

    def evaluate(
        self, mids: torch.Tensor, crops: np.ndarray | torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Classify a batch of zero-padded crops: the one step-time computation.

        Args:
            mids: ``(N, C_mid, 28, 28)`` mid-level maps.
            crops: ``(N, 4)`` integer ``(x0, y0, x1, y1)`` grid crops.

        Returns:
            ``(features, scores)``: ``(N, C_top, 7, 7)`` float32 senior features clipped to
            ``[0, FEATURE_HIGH]`` and ``(N,)`` float64 ``p(c|crop) = sigmoid(logit)``.
        """
        crops = np.asarray(crops)
        with torch.inference_mode(), self.autocast():
            if len(crops) <= SLICE_BATCH:  # a few slice copies beat building masks
                x = torch.zeros_like(mids, dtype=self.param_dtype)
                for k, (x0, y0, x1, y1) in enumerate(crops.tolist()):
                    x[k, :, y0:y1, x0:x1] = mids[k, :, y0:y1, x0:x1]
            else:
                crops_t = torch.as_tensor(crops, dtype=torch.long, device=mids.device)
                mask = crop_masks(crops_t, mids.shape[-1]).to(mids.dtype)
                x = (mids * mask).to(self.param_dtype)
            feats = self.model.upper(x)
            logits = self.model.head(feats)[:, self.class_idx].float()
            features = feats.float().clamp_max_(FEATURE_HIGH).cpu().numpy()
        scores = 1.0 / (1.0 + np.exp(-logits.cpu().numpy().astype(np.float64)))
        return features, scores

    def heat_integral(self, index: int) -> np.ndarray:
        """Summed-area table of the image's sum-pooled mid-level heat-map (paper §2.3: the sum
        over channels of the 28×28 map), cached: ``(29, 29)`` float64, ``S[y, x]`` = the mass of
        cells ``[0, y) × [0, x)``; see :func:`cut_mass`."""
        if index not in self._heat:
            heat = self.mid_maps([index])[0].float().sum(0).clamp_min(0).cpu().double().numpy()
            table = np.zeros((heat.shape[0] + 1, heat.shape[1] + 1))
            table[1:, 1:] = heat.cumsum(0).cumsum(1)
            self._heat[index] = table
        return self._heat[index]

    def full(self, indices: Sequence[int]) -> tuple[list[np.ndarray], list[float]]:
        """Senior features and score ``p̄`` of whole maps, computed once per image and cached
        (they are the same every episode). Returns per index ``(C_top, 7, 7)`` float32 features
        and the float score."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._full]
        if missing:
            full = np.tile(np.asarray(FULL_CROP), (len(missing), 1))
            feats, scores = self.evaluate(self.mid_maps(missing), full)
            for i, f, p in zip(missing, feats, scores, strict=True):
                self._full[i] = (f, float(p))
        return [self._full[i][0] for i in indices], [self._full[i][1] for i in indices]


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


def _mass(table: np.ndarray, crop: Crop) -> float:
    x0, y0, x1, y1 = crop
    return float(table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0])


def cut_mass(table: np.ndarray, crop: Crop) -> np.ndarray:
    """Share of the crop's heat-map mass that each cut would remove.

    Args:
        table: ``(29, 29)`` summed-area table of a non-negative 28×28 heat-map
            (:meth:`CutWorld.heat_integral`).
        crop: the current ``(x0, y0, x1, y1)`` grid crop.

    Returns:
        ``(12,)`` float32 in ``[0, 1]``, in :data:`~cutbg_env.actions.CUT_ACTIONS` order; 0 for a
        cut that removes nothing, and all 0 when the crop holds no mass.
    """
    total = _mass(table, crop)
    out = np.zeros(len(CUT_ACTIONS), dtype=np.float32)
    if total <= 0:
        return out
    for k, action in enumerate(CUT_ACTIONS):
        kept, removed = apply_cut(crop, action)
        if removed:
            out[k] = (total - _mass(table, kept)) / total
    return np.clip(out, 0.0, 1.0)


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
        heat_table: np.ndarray | None = None,
    ) -> None:
        self.index, self.image_id = index, image_id
        self.observe_score = observe_score
        self.heat_table = heat_table  # observe "cut_mass" when given
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

    def clone(self) -> Episode:
        """An independent copy (for trying another action from the same state)."""
        twin = copy.copy(self)
        twin.history = self.history.copy()
        twin.trail = list(self.trail)
        return twin

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
        if action is Action.STOP:
            ok = self.p_full - self.p_crop <= self.delta
            reward, terminated = (self.eta if ok else -self.eta), True
        elif crop is None:
            reward, terminated = -float(action.scale), False
        else:
            assert features is not None and score is not None
            self.calls += 1
            self.crop, self.features, self.p_crop = crop, features, float(score)
            self.trail.append(crop)
            ok = self.p_full - self.p_crop <= self.delta
            if ok:
                self.valid_crop = crop
            reward = float(action.scale) if ok else -float(action.scale)
            terminated = (not ok) and self.terminate_on_drop
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
        if self.heat_table is not None:
            obs["cut_mass"] = cut_mass(self.heat_table, self.crop).astype(dtype)
        return obs

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
        mids = world.mid_maps([episodes[k].index for k in need])
        feats, scores = world.evaluate(mids, np.asarray([plans[k] for k in need]))
        scored = {k: (feats[n], float(scores[n])) for n, k in enumerate(need)}
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
    observe_cut_mass: bool = False,
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
        world.heat_integral(index) if observe_cut_mass else None,
    )


def resolve_delta(dataset: str, class_name: str, delta: float | None) -> float:
    """δ for a class: the given value, else the calibrated one, else :data:`DEFAULT_DELTA`."""
    if delta is not None:
        return float(delta)
    calib = load_calibration(dataset).get("delta", {})
    if class_name in calib:
        return float(calib[class_name])
    warnings.warn(
        f"no calibrated delta for {dataset}/{class_name} ({paths.calibration_path(dataset)}); "
        f"using {DEFAULT_DELTA}. Run `python -m train calibrate --dataset {dataset}`.",
        stacklevel=3,
    )
    return DEFAULT_DELTA
