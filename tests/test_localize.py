"""Exact results of the rule-based localizers and the heat-maps on a world whose classifier is
a known function of the crop (:class:`tiny.BlockWorld`: the share of a hand-placed object block
the crop keeps, or the crop's IoU with it), so every crop, call and step is worked out by hand.

Crops are ``(x0, y0, x1, y1)`` half-open grid cells; cut actions come in the order
``UP_1..3, DOWN_1..3, LEFT_1..3, RIGHT_1..3``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import BlockWorld

from cutbg_env.geometry import FULL_CROP, crop_to_box
from cutbg_env.localize import Localization, exhaustive, exhaustive_windows, greedy_cut, score_cuts
from cutbg_env.refine import (
    DROP_CANDIDATES,
    HEATMAP_LAYERS,
    HEATMAP_REGIONS,
    THRESHOLDS,
    HeatmapError,
    best_setting,
    heatmaps,
    refined_box,
    refinement_scores,
)

BLOCK = (10, 8, 18, 14)
"""Image 0's object: 8 columns × 6 rows, 8 rows from the top, 14 from the bottom, 10 columns from
the left and from the right."""
TALL = (0, 0, 12, 28)
"""Image 1's object: the 12 left columns, the whole height."""


@pytest.fixture
def world() -> BlockWorld:
    return BlockWorld({0: BLOCK, 1: TALL})


# -- score_cuts --------------------------------------------------------------------------------
def test_score_cuts_scores_every_cut_that_removes_something(world: BlockWorld) -> None:
    crops = [BLOCK, (5, 0, 6, 28), (12, 9, 14, 11)]
    scores, removed = score_cuts(world, world.mid_maps([0, 0, 0]), crops)
    nan = np.nan
    # the object itself: UP/DOWN_k keep (6 - k) of 6 rows, LEFT/RIGHT_k (8 - k) of 8 columns
    expected_0 = [5 / 6, 4 / 6, 3 / 6] * 2 + [7 / 8, 6 / 8, 5 / 8] * 2
    # one column beside the object: it keeps nothing; LEFT/RIGHT cannot cut a 1-wide crop
    expected_1 = [0.0] * 6 + [nan] * 6
    # 2 × 2 cells inside the object: every cut is clamped to 1 and keeps 2 of its 48 cells
    expected_2 = [2 / 48] * 12
    np.testing.assert_array_equal(scores, [expected_0, expected_1, expected_2])
    np.testing.assert_array_equal(
        removed, [[1, 2, 3] * 4, [1, 2, 3, 1, 2, 3, 0, 0, 0, 0, 0, 0], [1] * 12]
    )
    assert scores.shape == removed.shape == (3, 12) and removed.dtype == np.int64
    assert (world.batches, world.scored) == (1, 12 + 6 + 12)  # one forward, no no-op scored


def test_score_cuts_of_a_one_cell_crop_scores_nothing(world: BlockWorld) -> None:
    scores, removed = score_cuts(world, world.mid_maps([0]), [(3, 3, 4, 4)])
    assert np.isnan(scores).all() and not removed.any()
    assert world.batches == 0  # no classifier call at all


# -- greedy_cut --------------------------------------------------------------------------------
def test_greedy_cut_at_zero_delta_ends_on_the_object(world: BlockWorld) -> None:
    """δ = 0 allows only cuts that keep the whole object; each side is cut by 3 while 3 cells are
    left, then by the rest: top 8 = 3+3+2, bottom 14 = 3·4+2, left and right 10 = 3·3+1, so
    16 steps. Each of the 17 rounds (16 steps + the last, where no cut is valid) tries all 12
    cuts: 1 + 17·12 = 205 calls."""
    assert greedy_cut(world, [0], 0.0) == [Localization(BLOCK, 205, 16)]


def test_greedy_cut_takes_the_largest_cut_then_the_first(world: BlockWorld) -> None:
    """Every valid 3-cut keeps the score at 1, so the first in action order is taken: UP_3 twice
    (the top has 8 rows), then UP_3 would cut the object and DOWN_3 comes next."""
    assert greedy_cut(world, [0], 0.0, max_steps=5) == [Localization((0, 6, 28, 19), 73, 5)]
    assert greedy_cut(world, [0], 0.0, max_steps=1) == [Localization((0, 3, 28, 28), 25, 1)]
    # no step allowed: the whole map, the call of p̄ and the 12 tried cuts
    assert greedy_cut(world, [0], 0.0, max_steps=0) == [Localization(FULL_CROP, 13, 0)]


def test_greedy_cut_breaks_size_ties_by_the_score_kept(world: BlockWorld) -> None:
    """Image 1 at δ = 0.11: UP_3 and DOWN_3 drop 3/28 ≈ 0.107 (valid, score 25/28), LEFT_3
    drops 3/12 (invalid), RIGHT_3 removes no object (score 1): RIGHT_3 wins although UP_3 comes
    first, and again while the right side has 3 empty columns left."""
    assert greedy_cut(world, [1], 0.11, max_steps=1) == [Localization((0, 0, 25, 28), 25, 1)]
    assert greedy_cut(world, [1], 0.11, max_steps=4) == [Localization((0, 0, 16, 28), 61, 4)]


def test_greedy_cut_batches_images_without_changing_them(world: BlockWorld) -> None:
    # image 1 at δ = 0: only the 16 empty right columns go, 3·5 + 1: 6 steps, 7 rounds
    expected = [Localization(BLOCK, 205, 16), Localization(TALL, 85, 6)]
    assert greedy_cut(world, [0, 1], 0.0) == expected
    assert world.batches == 17  # one forward a round for both images: max(17, 7) rounds
    alone = BlockWorld(world.blocks)
    assert greedy_cut(alone, [0, 1], 0.0, chunk=1) == expected
    assert alone.batches == 17 + 7
    assert greedy_cut(BlockWorld(world.blocks), [1, 0, 1], 0.0, chunk=2) == [
        expected[1],
        expected[0],
        expected[1],
    ]


def test_greedy_cut_with_delta_one_cuts_to_one_object_cell(world: BlockWorld) -> None:
    """δ = 1 accepts every cut, and a 3-cut exists while an axis is 4 or more cells thick: each
    axis goes 28 → 25 → ... → 4 → 1 in 9 cuts, 18 steps. Among 3-cuts the one keeping the most
    of the object wins, so the last cell is an object cell. Cuts that can remove nothing (an
    axis already one cell thick) are neither scored nor counted."""
    (loc,) = greedy_cut(world, [0], 1.0)
    x0, y0, x1, y1 = loc.crop
    assert (x1 - x0, y1 - y0) == (1, 1) and loc.steps == 18
    assert BLOCK[0] <= x0 < BLOCK[2] and BLOCK[1] <= y0 < BLOCK[3]
    assert loc.calls == 1 + world.scored < 1 + 19 * 12


# -- exhaustive windows ------------------------------------------------------------------------
def test_exhaustive_windows_default_set() -> None:
    windows = exhaustive_windows()
    # sizes 4, 7, ..., 28 every 3 cells: 9 + 8 + 7 + 6 + 5 + 4 + 3 + 2 + 1 = 45 spans a side
    assert windows.shape == (2025, 4) and windows.dtype == np.int64
    assert windows[0].tolist() == [0, 0, 4, 4] and windows[1].tolist() == [0, 3, 4, 7]
    assert windows[-1].tolist() == list(FULL_CROP)
    widths, heights = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    assert set(widths.tolist()) == set(heights.tolist()) == set(range(4, 29, 3))
    assert windows.min() == 0 and windows.max() == 28
    assert len({tuple(w) for w in windows.tolist()}) == 2025


def test_exhaustive_windows_hand_made_sets() -> None:
    np.testing.assert_array_equal(
        exhaustive_windows([14], stride=14),
        [[0, 0, 14, 14], [0, 14, 14, 28], [14, 0, 28, 14], [14, 14, 28, 28]],
    )
    np.testing.assert_array_equal(exhaustive_windows([28]), [list(FULL_CROP)])
    # 10 every 9 cells: 0, 9, 18; 20: only 0 (9 + 20 > 28): 4 spans a side
    spans = [(0, 10), (9, 19), (18, 28), (0, 20)]
    expected = [(x0, y0, x1, y1) for x0, x1 in spans for y0, y1 in spans]
    np.testing.assert_array_equal(exhaustive_windows([10, 20], stride=9), expected)


def test_exhaustive_keeps_the_best_window() -> None:
    world = BlockWorld({2: (16, 2, 24, 10), 3: FULL_CROP}, score="iou")
    fine = exhaustive_windows([8, 14], stride=2)  # 11 + 8 spans a side: 361 windows
    assert len(fine) == 361
    # the object's own crop is one of the windows: IoU 1, the only one
    assert exhaustive(world, [2], fine) == [Localization((16, 2, 24, 10), 361, 0)]
    assert world.batches == 1 and world.scored == 361
    # four quadrants: only the top right one overlaps the object (IoU 64/196)
    quads = exhaustive_windows([14], stride=14)
    assert exhaustive(world, [2, 3], quads) == [
        Localization((14, 0, 28, 14), 4, 0),
        Localization((0, 0, 14, 14), 4, 0),  # a whole-map object: all tie at 1/4, first wins
    ]


# -- heat-maps ---------------------------------------------------------------------------------
@pytest.fixture
def heat_world() -> BlockWorld:
    """Image 4: object block rows 4..11, columns 8..15 (channel 0); channel 1 is 2 at row 20,
    column 3 only."""
    extra = torch.zeros((28, 28))
    extra[20, 3] = 2.0
    return BlockWorld({4: (8, 4, 16, 12)}, extra={4: extra})


def test_mid_heatmap_is_the_channel_sum_inside_the_crop(heat_world: BlockWorld) -> None:
    crops = np.asarray([(4, 2, 20, 22), FULL_CROP])
    maps = heatmaps(heat_world, 4, crops, "mid")
    assert maps.shape == (2, 28, 28) and maps.dtype == np.float64
    inside = np.zeros((28, 28))
    inside[4:12, 8:16] = 1.0  # the object; channel 1's cell (x = 3) lies left of the crop
    whole = inside.copy()
    whole[20, 3] = 2.0
    np.testing.assert_array_equal(maps, [inside, whole])
    np.testing.assert_array_equal(heatmaps(heat_world, 4, crops[1:]), [whole])  # "mid": default


def test_senior_heatmap_is_zero_outside_the_crops_cells(heat_world: BlockWorld) -> None:
    """``upper`` = 4×4 average + 0.25 per channel, so each senior cell sums to 0.5 + the mean
    of the two channels' cells; the cells of the 7×7 map the crop does not touch are zeroed."""
    maps = heatmaps(heat_world, 4, np.asarray([(4, 2, 20, 22), FULL_CROP]), "senior")
    assert maps.shape == (2, 7, 7)
    crop = np.zeros((7, 7))
    crop[0:6, 1:5] = 0.5  # columns 4..19 touch senior columns 1..4, rows 2..21 rows 0..5
    crop[1:3, 2:4] = 1.5  # + the object's mean 1 in the four cells it fills
    whole = np.full((7, 7), 0.5)
    whole[1:3, 2:4] = 1.5
    whole[5, 0] = 0.5 + 2 / 16  # channel 1's one cell in its 4×4 block
    np.testing.assert_array_equal(maps, [crop, whole])


def test_heatmaps_reject_an_unknown_layer(heat_world: BlockWorld) -> None:
    with pytest.raises(
        HeatmapError, match=r"heat-map layer 'deep': expected one of \('mid', 'senior'\)"
    ):
        heatmaps(heat_world, 4, np.asarray([FULL_CROP]), "deep")


def test_refinement_scores_on_the_hand_made_heatmaps(heat_world: BlockWorld) -> None:
    """The whole image as the agent's box, the object's box as the truth (112 × 56 pixels, so
    the block is pixels 33..64 × 9..24):

    * mid, peak: the brightest cell is channel 1's lone cell, away from the object: no hit;
    * mid, mass: up to threshold 0.5 the object (normalised 0.5 a cell, 64 cells) outweighs the
      lone cell (1.0); above it only the lone cell is left: no hit;
    * mid, drop: the same (the object, the heavier region, is also the one the score needs);
    * senior: the object's four cells are the peak and the mass at every threshold: a hit.
    """
    truth = {4: [crop_to_box((8, 4, 16, 12), 112, 56)]}
    assert truth[4] == [(33, 9, 64, 24)]
    scores = refinement_scores(heat_world, {4: FULL_CROP}, truth)
    expected = {}
    for layer in HEATMAP_LAYERS:
        for region in HEATMAP_REGIONS:
            for t in THRESHOLDS:
                if layer == "senior":
                    expected[(layer, region, t)] = 1.0
                else:
                    expected[(layer, region, t)] = float(region != "peak" and t <= 0.5)
    assert scores == expected
    # the best: a hit, the lowest threshold, the mid-level layer
    assert best_setting({(0.0, *k): v for k, v in scores.items()}) == (0.0, "mid", "mass", 0.1)
    # with a truth far from the object every setting misses
    far = refinement_scores(heat_world, {4: FULL_CROP}, {4: [(100, 50, 112, 56)]})
    assert set(far.values()) == {0.0}


def clutter_world(blocks: int) -> BlockWorld:
    """Image 5: a 4×4 object (channel 0, value 1: normalised 0.5) at columns 2..5, rows 2..5,
    and ``blocks`` 6×6 clutter blocks of value 2 (channel 1: normalised 1.0, 36 cells, each
    heavier than the object) in rows 14..19, at columns 1, 9 and 17 onward."""
    extra = torch.zeros((28, 28))
    for k in range(blocks):
        extra[14:20, 1 + 8 * k : 7 + 8 * k] = 2.0
    return BlockWorld({5: (2, 2, 6, 6)}, extra={5: extra})


def test_drop_region_is_the_one_the_score_needs() -> None:
    """ "mass" boxes the clutter block (heavier); "drop" zeroes each candidate in turn, and
    only removing the object lowers the score (kept share 0 against 1): the object's box, at
    two classifier calls. The object is (2, 2, 6, 6) in cells: pixels 9..24 × 5..12."""
    world = clutter_world(1)
    size = (112, 56)
    mass, calls = refined_box(world, 5, FULL_CROP, ("mid", "mass", 0.3), size)
    assert (mass, calls) == (crop_to_box((1, 14, 7, 20), *size), 0)
    before = world.scored
    drop, calls = refined_box(world, 5, FULL_CROP, ("mid", "drop", 0.3), size)
    assert (drop, calls) == ((9, 5, 24, 12), 2)
    assert world.scored - before == 2
    # inside a crop that cuts the clutter block off, one region is left: no call
    assert refined_box(world, 5, (0, 0, 28, 12), ("mid", "drop", 0.3), size) == ((9, 5, 24, 12), 0)
    # above the object's normalised 0.5 only the clutter is left
    assert refined_box(world, 5, FULL_CROP, ("mid", "drop", 0.6), size) == (mass, 0)


def test_drop_scores_only_the_heaviest_candidates() -> None:
    """Three clutter blocks outweigh the object, which is then not among the DROP_CANDIDATES
    (3) scored: every candidate keeps the whole object, the first (heaviest, then row-major:
    the left block) is taken, at three calls."""
    assert DROP_CANDIDATES == 3
    world = clutter_world(3)
    box, calls = refined_box(world, 5, FULL_CROP, ("mid", "drop", 0.3), (112, 56))
    assert (box, calls) == (crop_to_box((1, 14, 7, 20), 112, 56), 3)
