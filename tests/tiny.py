"""Shared helpers of the env tests: a tiny dataset, a random-init classifier, env kwargs.

Plain functions (no fixtures here): each test module wraps them in module/session-scoped
fixtures built with ``tmp_path_factory`` (or reuses ``tests/conftest.py``'s ``tiny_animals``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from cutbg_env.backbone import BackboneConfig, Classifier, save_classifier
from cutbg_env.data import GeneratorConfig, VOCDataset, generate
from cutbg_env.world import CutWorld

TINY_CONFIG = GeneratorConfig(n_trainval=24, n_test=12, seed=0)
"""The tiny cluttered-animals dataset (same config as ``conftest.TINY_ANIMALS``)."""

TINY_CLASSIFIER: dict[str, Any] = {"minutes": 2.0, "steps": 16, "batch_size": 8}
"""The tiny pipeline's classifier (``tests/conftest.py``): a step budget, so its weights are the
same on every run and machine load (the minutes only cap it)."""

TINY_CLASS = "dog"
"""A class with several images in the tiny trainval split (6 with seed 0)."""


def make_tiny_dataset(root: str | Path) -> Path:
    """Generate the tiny dataset at ``root`` (a no-op when it is already there); return it."""
    return generate(TINY_CONFIG, Path(root))


def dataset_classes(root: str | Path, split: str = "trainval") -> tuple[str, ...]:
    """Class names of a VOC-layout dataset folder."""
    return VOCDataset(root, split).classes


def pick_class(root: str | Path, split: str = "trainval", min_images: int = 3) -> str:
    """:data:`TINY_CLASS` when it has ``min_images`` positives, else the class with the most."""
    ds = VOCDataset(root, split)
    counts = {c: len(ds.positives(c)) for c in ds.classes}
    if counts.get(TINY_CLASS, 0) >= min_images:
        return TINY_CLASS
    return max(counts, key=lambda c: counts[c])


def make_tiny_checkpoint(path: str | Path, classes: tuple[str, ...] | list[str]) -> Path:
    """Save a random-init CPU-default :class:`Classifier` (seeded) at ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Classifier(BackboneConfig(), classes).eval()
    save_classifier(model, path)
    return path


def tiny_env_kwargs(root: str | Path, ckpt: str | Path, class_name: str, **extra: Any) -> dict:
    """JSON-serialisable keyword arguments of ``gym.make("CutBackground-v0", ...)``."""
    kwargs: dict[str, Any] = {
        "dataset": str(root),
        "checkpoint": str(ckpt),
        "class_name": class_name,
        "delta": 0.1,
    }
    kwargs.update(extra)
    return kwargs


def make_registered(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` after ``import cutbg_env`` (registers the ids in a fresh spawned process)."""
    import cutbg_env  # noqa: F401

    return gym.make(env_id, **kwargs)


# -- a duck-typed CutWorld with scores worked out by hand ------------------------------------
class BlockWorld:
    """A stand-in for :class:`~cutbg_env.world.CutWorld` whose classifier is a known function.

    Image ``i``'s mid-level map is ``(2, 28, 28)``: channel 0 is 1 on the grid cells of its
    "object" ``blocks[i]`` (a crop ``(x0, y0, x1, y1)``) and 0 elsewhere, channel 1 is
    ``extra[i]`` (zeros by default). The score of a crop is the share of the object's cells it
    keeps (``score="kept"``, so the whole map scores 1) or the crop's IoU with the object in
    cells (``score="iou"``). ``model.upper`` is a 4×4 average pool plus 0.25 (a bias, like a real
    convolution's), giving ``(2, 7, 7)`` senior features. Every image is ``width × height`` pixels.

    ``batches`` counts calls of :meth:`score_crops` and ``scored`` the crops they scored (the
    whole-map scores of :meth:`full`, cached by the real world, are not counted).
    """

    def __init__(
        self,
        blocks: dict[int, tuple[int, int, int, int]],
        score: str = "kept",
        extra: dict[int, torch.Tensor] | None = None,
        width: int = 112,
        height: int = 56,
    ) -> None:
        from types import SimpleNamespace

        import torch.nn.functional as F

        self.blocks, self.score, self.extra = blocks, score, extra or {}
        self.param_dtype = torch.float32
        self.model = SimpleNamespace(upper=lambda x: F.avg_pool2d(x, 4) + 0.25)
        ids = [f"{i:06d}" for i in range(max(blocks) + 1)]
        self.data = SimpleNamespace(
            ids=ids,
            split="trainval",
            annotation=lambda i: SimpleNamespace(image_id=ids[i], width=width, height=height),
        )
        self.class_name = "block"
        self.positives = sorted(blocks)
        self.batches = self.scored = 0
        self.crop_cache_bytes = self.crop_hits = self.crop_misses = 0

    # the real world's crop-cache front end, over this world's score_crops (the cache is off)
    score_image_crops = CutWorld.score_image_crops

    def mid_maps(self, indices) -> torch.Tensor:
        maps = torch.zeros((len(indices), 2, 28, 28))
        for k, i in enumerate(indices):
            x0, y0, x1, y1 = self.blocks[i]
            maps[k, 0, y0:y1, x0:x1] = 1.0
            if i in self.extra:
                maps[k, 1] = self.extra[i]
        return maps

    def score_crops(self, mids: torch.Tensor, crops) -> tuple:
        self.batches += 1
        self.scored += len(crops)
        return self._score(mids, crops)

    def _score(self, mids: torch.Tensor, crops) -> tuple:
        import numpy as np

        crops = np.asarray(crops).reshape(-1, 4)
        scores = np.zeros(len(crops))
        for k, (x0, y0, x1, y1) in enumerate(crops.tolist()):
            obj = mids[k, 0].double()
            kept = float(obj[y0:y1, x0:x1].sum())
            if self.score == "kept":
                scores[k] = kept / float(obj.sum())
            else:
                scores[k] = kept / ((x1 - x0) * (y1 - y0) + float(obj.sum()) - kept)
        return np.zeros((len(crops), 1, 7, 7), np.float32), scores

    def score_masks(self, index: int, masks) -> Any:
        """The share of the object's cells (``score="kept"``) each ``(28, 28)`` mask keeps."""
        import numpy as np

        self.batches += 1
        self.scored += len(masks)
        obj = self.mid_maps([index])[0, 0].double().numpy()
        return np.asarray([float((obj * m).sum()) / float(obj.sum()) for m in masks])

    def full(self, indices) -> tuple[list, list[float]]:
        from cutbg_env.geometry import FULL_CROP

        feats, scores = self._score(self.mid_maps(indices), [FULL_CROP] * len(indices))
        return list(feats), [float(s) for s in scores]


PLAIN = ("features", "history")
"""Observation keys of a fake agent trained without the score observation."""
UP3_Q = [0.5, 0.6, 1.0, 0.55, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3, -1.0]
"""Q-values of the 12 cuts (UP_1..3, DOWN_1..3, LEFT_1..3, RIGHT_1..3) and STOP: UP_3 first,
then UP_2, DOWN_1, UP_1, ...; STOP last."""


def fake_q_model(q, keys: tuple[str, ...] = ("features", "history", "score")):
    """The parts of an SB3 DQN that rollouts and ensembles read: ``observation_space`` with
    ``keys``, a pass-through ``policy.obs_to_tensor`` and a ``q_net`` giving Q-values: the list
    ``q`` for every observation, or ``q(obs)`` when it is callable."""
    from types import SimpleNamespace

    from gymnasium import spaces

    space = spaces.Dict({k: spaces.Box(0, 1, (1,)) for k in keys})
    net = q if callable(q) else (lambda obs: torch.tensor([list(q)] * len(obs["history"])))
    return SimpleNamespace(
        observation_space=space,
        policy=SimpleNamespace(obs_to_tensor=lambda obs: (obs, True)),
        q_net=net,
    )


def assert_env_transitions(actions, rewards, next_history, eta: float = 3.0, mask=None) -> int:
    """Assert that transitions an RL library recorded are the env's: the reward's magnitude is
    the cut's scale (1, 2 or 3 cells) or η for STOP, and the next observation's newest history
    row is the one-hot of the action taken. Arrays are flattened over steps (and envs);
    ``mask`` selects the transitions to check. Returns how many were checked."""
    import numpy as np

    from cutbg_env.actions import Action

    actions = np.asarray(actions).reshape(-1).astype(int)
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    newest = np.asarray(next_history).reshape(len(actions), -1, 13)[:, 0]
    keep = np.ones(len(actions), bool) if mask is None else np.asarray(mask).reshape(-1)
    for a, r, h in zip(actions[keep], rewards[keep], newest[keep], strict=True):
        magnitude = eta if a == Action.STOP else Action(a).scale
        assert abs(r) == magnitude, (Action(a), r)
        assert h.tolist() == [float(k == a) for k in range(13)], (Action(a), h)
    return int(keep.sum())


FULL_SCORE_RAISE = 0.05
"""What :func:`raise_full_scores` adds to the whole-map score p̄."""


def raise_full_scores(monkeypatch: Any, by: float = FULL_SCORE_RAISE) -> None:
    """Add ``by`` to the whole-map score p̄ of every :class:`~cutbg_env.world.CutWorld` (its
    features and the caches unchanged) for one test. The random-init classifier scores a crop
    within ~1e-3 of its whole map, so every cut's drop p̄ − p̂ is then about ``by``: past δ = 0
    (each cut ends the episode on its drop), within δ = 0.1 (no cut does)."""
    from cutbg_env.world import CutWorld

    full = CutWorld.full

    def raised(self: CutWorld, indices: Any) -> tuple[list, list[float]]:
        feats, scores = full(self, indices)
        return feats, [p + by for p in scores]

    monkeypatch.setattr(CutWorld, "full", raised)
