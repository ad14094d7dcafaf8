"""The agent world: a dataset split, the frozen classifier and their caches, for one class.

Everything an env step needs is a pure function of ``(mid-level map, crop, class)``:
:meth:`CutWorld.score_crops` takes a *batch* of them and runs ``upper`` + ``head`` once, so one
episode or N episodes cost one forward. Mid-level maps are computed once per image (``lower``)
and cached; a whole split can be precomputed. With ``crop_cache_mb`` the scored crops of each
image are kept too (least recently used first out), so an episode that revisits a crop, as
training's repeated passes over the same images do, costs no forward
(:meth:`CutWorld.score_image_crops`). The episode rules live in :mod:`cutbg_env.episode`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from cutbg_env import checks, paths, shipped
from cutbg_env.backbone import Classifier, load_classifier, preprocess
from cutbg_env.data import VOCDataset, resolve_dataset
from cutbg_env.errors import DataError
from cutbg_env.geometry import FULL_CROP, crop_masks

SLICE_BATCH = 64
"""Up to this many crops, :meth:`CutWorld.score_crops` zero-pads by slicing instead of masks."""
CPU_FORWARD_BATCH = 128
"""At most this many crops go through ``upper`` in one forward on the CPU: past it the
activations no longer fit the caches and each crop costs more (``make bench``'s
``ceiling_forwards_per_s`` on the 2-core CPU: 1,852/s at batch 128, 1,181/s at 512)."""
FEATURE_HIGH = float(np.finfo(np.float16).max)
"""Upper bound of the observation's features (finite, and representable in float16)."""


def classifier_file(dataset: str, checkpoint: str | Path | None = None) -> Path:
    """The classifier a world of ``dataset`` loads: ``checkpoint`` when given, else
    ``runs/<dataset>/classifier.pt``, else, on the embedded default dataset (``"animals"``), the
    classifier shipped with the package (:func:`cutbg_env.shipped.classifier_path`)."""
    if checkpoint:
        return Path(checkpoint)
    path = paths.classifier_path(dataset)
    if not path.is_file() and dataset == shipped.DATASET:
        return shipped.classifier_path()
    return path


def _classifier_hint(dataset: str) -> str:
    """How to create a missing classifier, as a command that works where the user is."""
    command = paths.make_command("train-classifier", dataset)
    if paths.in_checkout():
        return command
    # load_classifier puts the hint in backticks: "create it with `<hint>`"
    return f"{command}` {paths.CHECKOUT_HINT}, or pass `checkpoint=<a classifier of {dataset!r}>"


class CutWorld:
    """Dataset + frozen classifier + mid-level-map cache for one class.

    Args:
        dataset: ``"animals"`` (embedded default, generated on first use), ``"voc2007"``,
            ``"voc2012"`` or a folder in VOC layout.
        split: image set, e.g. ``"trainval"`` or ``"test"``.
        class_name: the class the agent localizes.
        checkpoint: classifier checkpoint; ``None`` = ``runs/<dataset>/classifier.pt``, else on
            ``"animals"`` the classifier shipped with the package (:func:`classifier_file`).
        root: dataset folder overriding the one ``dataset`` names.
        device: torch device string.
        cache_dtype: ``"float32"`` or ``"float16"``: storage of cached mid-level maps.
        max_images: use only the first ``max_images`` positive images (small experiments).
        model: an already loaded classifier (shares it instead of reading ``checkpoint``).
        data: an already opened split (shares its annotation cache instead of reopening it).
        amp: run the classifier's forwards under bf16 autocast; ``None`` = on CUDA only (the
            GPU path; ``True`` on the CPU runs the same code path there, for tests).
        crop_cache_mb: memory for the scored crops of :meth:`score_image_crops` (features and
            score per image and crop, least recently used evicted first); 0 = none.
        forward_batch: at most this many crops per forward of :meth:`score_crops` (a larger
            batch is scored in slices); ``None`` = :data:`CPU_FORWARD_BATCH` on the CPU, no
            limit on CUDA.
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
        amp: bool | None = None,
        crop_cache_mb: float = 0.0,
        forward_batch: int | None = None,
    ) -> None:
        checks.integer("max_images=", max_images, 1)
        checks.integer("forward_batch=", forward_batch, 1)
        checks.real("crop_cache_mb=", crop_cache_mb, 0.0, required=True)
        checks.device("device=", device)
        self.dataset_name = dataset
        self.data = data if data is not None else VOCDataset(resolve_dataset(dataset, root), split)
        self.class_name = class_name
        self.data.class_index(class_name)  # raises UnknownClassError listing the classes
        self.device = torch.device(device)
        self.classifier_path: Path | None = None
        """The classifier file the world loaded (``None`` when given a ``model``): the env's δ
        comes from its calibration (:func:`~cutbg_env.calibration.resolve_delta`)."""
        if model is None:
            self.classifier_path = classifier_file(dataset, checkpoint)
            model, _ = load_classifier(
                self.classifier_path, self.device, hint=_classifier_hint(dataset)
            )
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
        self._crops: OrderedDict[tuple[int, ...], tuple[np.ndarray, float]] = OrderedDict()
        self._crop_bytes = 0
        self.crop_cache_bytes = int(crop_cache_mb * 2**20)
        self.crop_hits = 0
        """Crops :meth:`score_image_crops` returned without a forward: found in the crop cache,
        or a repeat of another crop of the same batch (counted even with no cache)."""
        self.crop_misses = 0
        """Crops :meth:`score_image_crops` scored with a forward."""
        self.amp = self.device.type == "cuda" if amp is None else amp
        if forward_batch is None and self.device.type == "cpu":
            forward_batch = CPU_FORWARD_BATCH
        self.forward_batch = forward_batch
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
        """bf16 autocast on the world's device when :attr:`amp` (by default on CUDA only)."""
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
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

    def score_crops(
        self, mids: torch.Tensor, crops: np.ndarray | torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Classify a batch of zero-padded crops: the one step-time computation.

        Args:
            mids: ``(N, C_mid, 28, 28)`` mid-level maps.
            crops: ``(N, 4)`` integer ``(x0, y0, x1, y1)`` grid crops.

        Returns:
            ``(features, scores)``: ``(N, C_top, 7, 7)`` float32 senior features clipped to
            ``[0, FEATURE_HIGH]`` and ``(N,)`` float64 ``p(c|crop) = sigmoid(logit)``.

        More than :attr:`forward_batch` crops are scored that many at a time.
        """
        crops = np.asarray(crops)
        step = self.forward_batch
        if step is not None and len(crops) > step:
            parts = [
                self.score_crops(mids[s : s + step], crops[s : s + step])
                for s in range(0, len(crops), step)
            ]
            return np.concatenate([f for f, _ in parts]), np.concatenate([p for _, p in parts])
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

    def score_masks(self, index: int, masks: np.ndarray) -> np.ndarray:
        """Class scores of one image's mid-level map multiplied by each of ``masks``
        (``(N, 28, 28)``, 1 keeps a cell, 0 zeroes it): the occlusion scores of the ``"drop"``
        refinement (:func:`cutbg_env.refine.refined_box`). One batched forward, uncached.
        Returns ``(N,)`` float64 ``p(c|masked map)``."""
        mid = self.mid_maps([index])
        keep = torch.as_tensor(np.asarray(masks), device=mid.device).to(mid.dtype)
        with torch.inference_mode(), self.autocast():
            logits = self.model.head(self.model.upper((mid * keep[:, None]).to(self.param_dtype)))
        logits = logits[:, self.class_idx].float().cpu().numpy().astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))

    @property
    def shipped(self) -> bool:
        """Whether the world runs the classifier shipped with the package (whose calibration the
        env then falls back on); ``False`` when given a ``model``."""
        return self.classifier_path is not None and shipped.is_shipped_classifier(
            self.classifier_path
        )

    def score_image_crops(
        self, indices: Sequence[int], crops: Sequence[tuple[int, int, int, int]]
    ) -> list[tuple[np.ndarray, float]]:
        """:meth:`score_crops` of the crops of dataset images (``indices[k]``'s map cut to
        ``crops[k]``), through the crop cache: each distinct miss is scored once, in one batch.
        Returns per crop its ``(C_top, 7, 7)`` features (shared with the cache: do not modify
        them) and its score."""
        keys = [(i, *c) for i, c in zip(indices, crops, strict=True)]
        found: dict[tuple[int, ...], tuple[np.ndarray, float]] = {}
        if self.crop_cache_bytes:
            for k in keys:
                hit = self._crops.get(k)
                if hit is not None:
                    self._crops.move_to_end(k)
                    found[k] = hit
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        self.crop_hits += len(keys) - len(missing)
        self.crop_misses += len(missing)
        if missing:
            mids = self.mid_maps([k[0] for k in missing])
            feats, scores = self.score_crops(mids, np.asarray([k[1:] for k in missing]))
            for k, f, p in zip(missing, feats, scores, strict=True):
                found[k] = (f.copy() if self.crop_cache_bytes else f, float(p))
            if self.crop_cache_bytes:
                self._keep(missing, found)
        return [found[k] for k in keys]

    def _keep(
        self, keys: list[tuple[int, ...]], found: dict[tuple[int, ...], tuple[np.ndarray, float]]
    ) -> None:
        """Add scored crops to the crop cache, evicting the least recently used past its size."""
        for k in keys:
            self._crops[k] = found[k]
            self._crop_bytes += found[k][0].nbytes
        while self._crop_bytes > self.crop_cache_bytes and self._crops:
            _, (f, _) = self._crops.popitem(last=False)
            self._crop_bytes -= f.nbytes

    def full(self, indices: Sequence[int]) -> tuple[list[np.ndarray], list[float]]:
        """Senior features and score ``p̄`` of whole maps, computed once per image and cached
        (they are the same every episode). Returns per index ``(C_top, 7, 7)`` float32 features
        and the float score."""
        missing = [i for i in dict.fromkeys(indices) if i not in self._full]
        if missing:
            full = np.tile(np.asarray(FULL_CROP), (len(missing), 1))
            feats, scores = self.score_crops(self.mid_maps(missing), full)
            for i, f, p in zip(missing, feats, scores, strict=True):
                self._full[i] = (f, float(p))
        return [self._full[i][0] for i in indices], [self._full[i][1] for i in indices]
