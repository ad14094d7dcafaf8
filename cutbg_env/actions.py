"""The agent's 13 actions and how a cut changes a grid crop.

A cut removes a strip of 1, 2 or 3 cells of the 28-cell grid from one side of the current crop
(paper §2.2, scales 1/28, 2/28, 3/28); ``STOP`` ends the episode. Crops follow
:mod:`cutbg_env.geometry`: ``(x0, y0, x1, y1)``, 0-based half-open cells.

Cuts that would empty the crop: a crop always keeps at least ``MIN_CELLS`` cells in each
direction. A cut is clamped to leave that many; a cut that can remove nothing at all (the crop is
already ``MIN_CELLS`` thick in that direction) leaves the crop unchanged and is reported as a
*no-op* (:func:`apply_cut` returns ``removed == 0``): the env then rewards it ``-scale`` without
calling the classifier, so repeating an impossible cut never pays.
"""

from __future__ import annotations

from enum import IntEnum

from cutbg_env.geometry import Crop

MIN_CELLS = 1
"""Smallest crop thickness, in cells, that a cut may leave."""


class Action(IntEnum):
    """The ``Discrete(13)`` action space. ``UP_k`` removes ``k`` rows from the top edge,
    ``DOWN_k`` from the bottom, ``LEFT_k`` columns from the left, ``RIGHT_k`` from the right."""

    UP_1 = 0
    UP_2 = 1
    UP_3 = 2
    DOWN_1 = 3
    DOWN_2 = 4
    DOWN_3 = 5
    LEFT_1 = 6
    LEFT_2 = 7
    LEFT_3 = 8
    RIGHT_1 = 9
    RIGHT_2 = 10
    RIGHT_3 = 11
    STOP = 12

    @property
    def scale(self) -> int:
        """Cells a cut removes (1, 2 or 3); 0 for ``STOP``."""
        return 0 if self is Action.STOP else int(self) % 3 + 1

    @property
    def side(self) -> str:
        """``"up"``, ``"down"``, ``"left"``, ``"right"`` or ``"stop"``."""
        return "stop" if self is Action.STOP else ("up", "down", "left", "right")[int(self) // 3]


N_ACTIONS = len(Action)
CUT_ACTIONS: tuple[Action, ...] = tuple(a for a in Action if a is not Action.STOP)


def apply_cut(crop: Crop, action: Action | int) -> tuple[Crop, int]:
    """Apply a cut to a crop.

    Args:
        crop: ``(x0, y0, x1, y1)`` half-open grid cells.
        action: one of the 12 cut actions (``STOP`` is not a cut).

    Returns:
        ``(new_crop, removed)``: the clamped crop and how many cells thick the removed strip is
        (``0`` when the cut was impossible and the crop is unchanged).
    """
    action = Action(action)
    if action is Action.STOP:
        raise ValueError("apply_cut: STOP is not a cut")
    x0, y0, x1, y1 = crop
    side, k = action.side, action.scale
    if side == "up":
        removed = max(0, min(k, y1 - y0 - MIN_CELLS))
        y0 += removed
    elif side == "down":
        removed = max(0, min(k, y1 - y0 - MIN_CELLS))
        y1 -= removed
    elif side == "left":
        removed = max(0, min(k, x1 - x0 - MIN_CELLS))
        x0 += removed
    else:
        removed = max(0, min(k, x1 - x0 - MIN_CELLS))
        x1 -= removed
    return (x0, y0, x1, y1), removed
