"""Localizers that need no learning, batched over images: the policy the reward describes
(greedy cutting) and the proposal-based baseline (exhaustive windows), and the scores of all 12
cuts of a crop that greedy cutting and ``evaluate.diagnose`` judge cuts by. All work on a
:class:`~cutbg_env.world.CutWorld`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cutbg_env.actions import CUT_ACTIONS, apply_cut
from cutbg_env.geometry import FULL_CROP, GRID, Crop
from cutbg_env.world import CutWorld


@dataclass(frozen=True)
class Localization:
    """One image's result: the grid crop, the classifier calls it cost, and the steps taken."""

    crop: Crop
    calls: int
    steps: int


def score_cuts(
    world: CutWorld, mids: torch.Tensor, crops: Sequence[Crop]
) -> tuple[np.ndarray, np.ndarray]:
    """Score all 12 cuts of each crop in one batched forward.

    Args:
        world: the classifier world.
        mids: ``(N, C_mid, 28, 28)`` mid-level maps, one per crop.
        crops: ``N`` current grid crops.

    Returns:
        ``(scores, removed)``, both ``(N, 12)`` in :data:`~cutbg_env.actions.CUT_ACTIONS` order:
        ``p̂`` of each cut's crop (NaN for a cut that can remove nothing, which is not scored and
        costs no call) and the cells each cut removes.
    """
    plans = [[apply_cut(crop, a) for a in CUT_ACTIONS] for crop in crops]
    removed = np.asarray([[r for _, r in row] for row in plans], dtype=np.int64).reshape(
        len(crops), len(CUT_ACTIONS)
    )
    scores = np.full(removed.shape, np.nan)
    rows, cols = np.nonzero(removed)
    if len(rows):
        sel = torch.as_tensor(rows, device=mids.device)
        cand = np.asarray([plans[j][k][0] for j, k in zip(rows, cols, strict=True)])
        _, scores[rows, cols] = world.score_crops(mids[sel], cand)
    return scores, removed


def greedy_cut(
    world: CutWorld,
    indices: Sequence[int],
    delta: float,
    max_steps: int = 100,
    chunk: int = 32,
) -> list[Localization]:
    """At every step try all 12 cuts and take the largest whose drop ``p̄ − p̂`` stays ≤ δ (ties:
    the one keeping the highest score); stop when none does.

    Costs 1 call for ``p̄`` plus one per tried cut. Images are processed ``chunk`` at a time, all
    their candidate cuts in one forward (:func:`score_cuts`).
    """
    out: list[Localization] = []
    for start in range(0, len(indices), chunk):
        idx = list(indices[start : start + chunk])
        mids = world.mid_maps(idx)
        _, p_full = world.full(idx)
        crops: list[Crop] = [FULL_CROP] * len(idx)
        calls = [1] * len(idx)
        steps = [0] * len(idx)
        active = list(range(len(idx)))
        while active:
            scores, removed = score_cuts(world, mids[active], [crops[j] for j in active])
            still = []
            for row, j in enumerate(active):
                calls[j] += int((removed[row] > 0).sum())
                ok = removed[row] > 0
                ok[ok] = p_full[j] - scores[row][ok] <= delta
                if not ok.any() or steps[j] >= max_steps:
                    continue
                k = max(np.flatnonzero(ok), key=lambda k: (removed[row, k], scores[row, k]))
                crops[j] = apply_cut(crops[j], CUT_ACTIONS[k])[0]
                steps[j] += 1
                still.append(j)
            active = still
        out += [Localization(c, n, s) for c, n, s in zip(crops, calls, steps, strict=True)]
    return out


def exhaustive_windows(sizes: Sequence[int] | None = None, stride: int = 3) -> np.ndarray:
    """Multi-scale windows on the 28×28 grid: widths and heights in ``sizes`` (default 4, 7, …,
    28), positions every ``stride`` cells. The default gives 2,025 windows.

    Returns ``(M, 4)`` int64 ``(x0, y0, x1, y1)`` crops.
    """
    sizes = list(range(4, GRID + 1, 3)) if sizes is None else list(sizes)
    spans = [(o, o + s) for s in sizes for o in range(0, GRID - s + 1, stride)]
    return np.asarray([(x0, y0, x1, y1) for x0, x1 in spans for y0, y1 in spans], dtype=np.int64)


def exhaustive(world: CutWorld, indices: Sequence[int], windows: np.ndarray) -> list[Localization]:
    """Score every window on the zero-padded map and keep the highest-scoring one (the
    proposal-based approach of the paper's Table 5). Costs ``len(windows)`` calls an image; the
    world scores them ``forward_batch`` at a time (:meth:`~cutbg_env.world.CutWorld.score_crops`)."""
    out = []
    for i in indices:
        mid = world.mid_maps([i])
        _, scores = world.score_crops(mid.expand(len(windows), -1, -1, -1), windows)
        best = windows[int(np.argmax(scores))]
        out.append(Localization(tuple(int(v) for v in best), len(windows), 0))  # type: ignore[arg-type]
    return out
