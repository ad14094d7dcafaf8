"""Localizers that need no learning, batched over images: the policy the reward describes
(greedy cutting), the proposal-based baseline (exhaustive windows) and the sum-pooled heat-maps
used for refinement (paper §2.3). All work on a :class:`~cutbg_env.core.CutWorld`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cutbg_env.actions import CUT_ACTIONS, apply_cut
from cutbg_env.core import CutWorld
from cutbg_env.geometry import FULL_CROP, GRID, Crop, crop_masks


@dataclass(frozen=True)
class Localization:
    """One image's result: the grid crop, the classifier calls it cost, and the steps taken."""

    crop: Crop
    calls: int
    steps: int


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
    their candidate cuts in one forward.
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
            cand: list[tuple[int, Crop, int]] = []
            for j in active:
                for a in CUT_ACTIONS:
                    c, removed = apply_cut(crops[j], a)
                    if removed:
                        cand.append((j, c, removed))
            if not cand:
                break
            sel = torch.as_tensor([j for j, _, _ in cand], device=mids.device)
            _, scores = world.evaluate(mids[sel], np.asarray([c for _, c, _ in cand]))
            best: dict[int, tuple[int, float, Crop]] = {}
            for (j, c, removed), p in zip(cand, scores, strict=True):
                calls[j] += 1
                if p_full[j] - p <= delta:
                    key = (removed, float(p))
                    if j not in best or key > best[j][:2]:
                        best[j] = (removed, float(p), c)
            still = []
            for j in active:
                if j in best and steps[j] < max_steps:
                    crops[j] = best[j][2]
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


def exhaustive(
    world: CutWorld, indices: Sequence[int], windows: np.ndarray, batch: int = 512
) -> list[Localization]:
    """Score every window on the zero-padded map and keep the highest-scoring one (the
    proposal-based approach of the paper's Table 5). Costs ``len(windows)`` calls an image."""
    out = []
    for i in indices:
        mid = world.mid_maps([i])
        scores = np.concatenate(
            [
                world.evaluate(mid.expand(len(w), -1, -1, -1), w)[1]
                for w in np.array_split(windows, max(1, -(-len(windows) // batch)))
            ]
        )
        best = windows[int(np.argmax(scores))]
        out.append(Localization(tuple(int(v) for v in best), len(windows), 0))  # type: ignore[arg-type]
    return out


HEATMAP_LAYERS = ("mid", "senior")


def heatmaps(world: CutWorld, index: int, crops: np.ndarray, layer: str = "mid") -> np.ndarray:
    """Sum over channels of the feature maps of zero-padded crops (paper §2.3).

    Args:
        world: the classifier world.
        index: dataset image index.
        crops: ``(N, 4)`` grid crops; ``FULL_CROP`` gives the whole image's heat-map.
        layer: ``"mid"`` (the 28×28 mid-level map, zero outside the crop) or ``"senior"``
            (``upper``'s 7×7 output on the zero-padded crop, zeroed outside the crop's cells).

    Returns:
        ``(N, h, w)`` float64 heat-maps (``h = w = 28`` or 7).
    """
    if layer not in HEATMAP_LAYERS:
        raise ValueError(f"heat-map layer {layer!r}: expected one of {HEATMAP_LAYERS}")
    mid = world.mid_maps([index])
    crops_t = torch.as_tensor(np.asarray(crops), dtype=torch.long, device=mid.device)
    mask = crop_masks(crops_t, mid.shape[-1]).to(mid.dtype)
    x = mid * mask
    if layer == "mid":
        return x.float().sum(1).cpu().double().numpy()
    with torch.inference_mode():
        feats = world.model.upper(x.to(next(world.model.parameters()).dtype)).float()
    small = torch.nn.functional.adaptive_max_pool2d(mask.float(), feats.shape[-1])
    return (feats.sum(1) * small[:, 0]).cpu().double().numpy()
