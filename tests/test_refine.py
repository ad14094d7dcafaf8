"""Exact checks of the heat-map refinement on tiny hand-made maps."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cutbg_env.errors import CutbgError
from cutbg_env.refine import HeatmapError, channel_sum, heatmap_box, refine

# 4 rows × 5 columns; the peak 10 is at row 2, column 2 (0-based), i.e. cell box (3, 3, 3, 3).
MAP45 = np.array(
    [
        [0, 0, 0, 0, 0],
        [0, 5, 9, 0, 0],
        [0, 6, 10, 2, 0],
        [0, 0, 0, 0, 0],
    ],
    dtype=np.float64,
)


# A 3×3 block of 8s and a lone, brighter 9 at row 2, column 4 (0-based).
BLOBS = np.array(
    [
        [8, 8, 8, 0, 0],
        [8, 8, 8, 0, 0],
        [8, 8, 8, 0, 9],
        [0, 0, 0, 0, 0],
    ],
    dtype=np.float64,
)


@pytest.mark.parametrize(
    ("threshold", "box"),
    [
        (0.5, (2, 2, 3, 3)),  # cells >= 5: rows 1-2, cols 1-2
        (0.1, (2, 2, 4, 3)),  # cells >= 1 add the 2 at row 2, col 3
        (1.0, (3, 3, 3, 3)),  # only the peak
        (0.0, (1, 1, 5, 4)),  # every cell: the whole map
    ],
)
def test_threshold_effects_in_cell_coordinates(threshold: float, box: tuple) -> None:
    assert heatmap_box(MAP45, threshold) == box


def test_scaled_to_image_size() -> None:
    # 100×80 image: 20 pixels a cell each way; cells 1..2 (0-based) -> pixels 21..60.
    assert heatmap_box(MAP45, 0.5, image_size=(100, 80)) == (21, 21, 60, 60)
    # 50×30 image: 10 × 7.5 pixels a cell; x: [10, 30) -> 11..30; y: [7.5, 22.5) -> 8..23.
    assert heatmap_box(MAP45, 0.5, image_size=(50, 30)) == (11, 8, 30, 23)


def test_normalisation_is_min_max() -> None:
    # Adding a constant or scaling by a positive factor changes nothing.
    assert heatmap_box(3 * MAP45 - 7, 0.5) == (2, 2, 3, 3)
    # Negative map: -3 -> 0, -2 -> 0.5, -1 -> 1; the two kept cells touch diagonally.
    assert heatmap_box(np.array([[-3.0, -1.0], [-2.0, -3.0]]), 0.5) == (1, 1, 2, 2)


def test_peak_in_smaller_blob_wins() -> None:
    hmap = BLOBS.copy()
    assert heatmap_box(hmap, 0.5) == (5, 3, 5, 3)
    # Joining the blobs through a bridge cell at row 2, col 3 gives their union.
    hmap[2, 3] = 8
    assert heatmap_box(hmap, 0.5) == (1, 1, 5, 3)


def test_mass_region_takes_the_largest_summed_response() -> None:
    # Peak 9 alone on the right; the 3×3 block of 8s holds far more response.
    hmap = BLOBS.copy()
    assert heatmap_box(hmap, 0.5, region="peak") == (5, 3, 5, 3)
    assert heatmap_box(hmap, 0.5, region="mass") == (1, 1, 3, 3)
    assert heatmap_box(hmap, 0.5, image_size=(100, 80), region="mass") == (1, 1, 60, 60)
    # Sums, not areas: two cells at 1.0 (sum 2) beat three at 0.6 (sum 1.8).
    two = np.array([[10, 10, 0, 6, 6, 6]], dtype=np.float64)
    assert heatmap_box(two, 0.5, region="mass") == (1, 1, 2, 1)
    two[0, 5] = 7.0  # now 0.6 + 0.6 + 0.7 = 1.9 < 2 still
    assert heatmap_box(two, 0.5, region="mass") == (1, 1, 2, 1)
    two[0, 3] = 9.0  # 0.9 + 0.6 + 0.7 = 2.2 > 2
    assert heatmap_box(two, 0.5, region="mass") == (4, 1, 6, 1)
    # Equal sums: the region met first in row-major order.
    tie = np.array([[5, 0, 5]], dtype=np.float64)
    assert heatmap_box(tie, 0.5, region="mass") == (1, 1, 1, 1)
    # A constant map has no region: the whole map, whatever the rule.
    assert heatmap_box(np.full((4, 5), 2.0), 0.5, region="mass") == (1, 1, 5, 4)


def test_unknown_region_is_rejected() -> None:
    with pytest.raises(
        HeatmapError, match=r"region must be one of \('peak', 'mass', 'drop'\); got 'max'"
    ):
        heatmap_box(MAP45, 0.5, region="max")


def test_eight_connectivity() -> None:
    hmap = np.zeros((4, 5))
    hmap[0, 0], hmap[1, 1], hmap[3, 3] = 9.0, 7.0, 7.0
    assert heatmap_box(hmap, 0.5) == (1, 1, 2, 2)  # diagonal neighbour joins; (3, 3) does not


def test_tied_maxima_take_first_in_row_major_order() -> None:
    hmap = np.zeros((4, 5))
    hmap[3, 0] = hmap[0, 4] = 10.0
    assert heatmap_box(hmap, 0.5) == (5, 1, 5, 1)


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_map_is_rejected(bad: float, word: str) -> None:
    hmap = MAP45.copy()
    hmap[0, 0] = bad
    with pytest.raises(
        HeatmapError,
        match=rf"^heat-map holds {word} values; check the features it was summed from$",
    ):
        heatmap_box(hmap, 0.5)


def test_heatmap_error_is_value_and_cutbg_error() -> None:
    assert issubclass(HeatmapError, ValueError) and issubclass(HeatmapError, CutbgError)


@pytest.mark.parametrize("shape", [(0, 5), (5,), (1, 4, 5)])
def test_bad_shape_is_rejected(shape: tuple) -> None:
    with pytest.raises(
        HeatmapError,
        match=rf"^heat-map must be a non-empty 2-D \(h, w\) array; got {re.escape(str(shape))}$",
    ):
        heatmap_box(np.ones(shape), 0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_bad_threshold_is_rejected(threshold: float) -> None:
    with pytest.raises(
        HeatmapError,
        match=rf"^threshold must be in \[0, 1\] \(a fraction of the peak\); got {threshold}$",
    ):
        heatmap_box(MAP45, threshold)


def test_constant_map_falls_back_to_whole_map() -> None:
    assert heatmap_box(np.full((4, 5), 3.0), 0.5) == (1, 1, 5, 4)
    assert heatmap_box(np.zeros((4, 5)), 0.5, image_size=(100, 80)) == (1, 1, 100, 80)


def test_upsample_option() -> None:
    # 2×2 map with the peak at the bottom right, resized bilinearly to 4×4 (half-pixel centres):
    # weights along each axis 0, .25, .75, 1, so the 4×4 map is their outer product.
    hmap = np.array([[0.0, 0.0], [0.0, 1.0]])
    # >= 0.2 keeps .25 (rows/cols 1 and 3), .5625, .75 and 1: rows 1..3, cols 1..3.
    assert heatmap_box(hmap, 0.2, image_size=(4, 4), upsample=True) == (2, 2, 4, 4)
    # Without upsampling only the peak cell survives, scaled to pixels 3..4.
    assert heatmap_box(hmap, 0.2, image_size=(4, 4)) == (3, 3, 4, 4)
    with pytest.raises(HeatmapError, match=r"^upsample=True needs image_size=\(width, height\)$"):
        heatmap_box(hmap, 0.2, upsample=True)
    with pytest.raises(
        HeatmapError,
        match=r"^image_size must be positive integers \(width, height\); got \(0, 4\)$",
    ):
        heatmap_box(hmap, 0.2, image_size=(0, 4))


def test_accepts_torch_tensor() -> None:
    assert heatmap_box(torch.from_numpy(MAP45).float(), 0.5) == (2, 2, 3, 3)


@pytest.mark.parametrize(
    ("agent", "heat", "expected"),
    [
        ((1, 1, 50, 50), (30, 20, 80, 40), (30, 20, 50, 40)),  # overlap
        ((1, 1, 50, 50), (10, 10, 20, 20), (10, 10, 20, 20)),  # heat box inside
        ((1, 1, 10, 10), (10, 5, 20, 20), (10, 5, 10, 10)),  # share one column of pixels
        ((1, 1, 10, 10), (20, 20, 30, 30), (1, 1, 10, 10)),  # disjoint: agent's box kept
        ((1, 1, 10, 10), (11, 1, 20, 10), (1, 1, 10, 10)),  # adjacent, no shared pixel
    ],
)
def test_refine(agent: tuple, heat: tuple, expected: tuple) -> None:
    assert refine(agent, heat) == expected


def test_channel_sum_torch_and_numpy() -> None:
    feats = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    expected = np.arange(12).reshape(3, 4) * 2 + 12.0  # x + (x + 12)
    np.testing.assert_array_equal(channel_sum(feats), expected)
    np.testing.assert_array_equal(channel_sum(feats.numpy()), expected)
    assert channel_sum(feats).shape == (3, 4) and channel_sum(feats).dtype == np.float64


def test_channel_sum_of_a_batch_sums_each_item_alone() -> None:
    batch = torch.arange(48, dtype=torch.float32).reshape(2, 2, 3, 4)  # (N, C, h, w)
    # item 0 is the (2, 3, 4) map above; item 1 adds 24 to each of its two channels
    first = np.arange(12).reshape(3, 4) * 2 + 12.0
    expected = np.stack([first, first + 48.0])
    np.testing.assert_array_equal(channel_sum(batch), expected)
    np.testing.assert_array_equal(channel_sum(batch.numpy()), expected)
    np.testing.assert_array_equal(channel_sum(batch[1:]), expected[1:])  # N = 1 keeps its axis


@pytest.mark.parametrize(
    ("shape", "got"),
    [
        ((3, 4), r"\(3, 4\)"),
        ((0, 3, 4), r"\(0, 3, 4\)"),
        ((2, 0, 3, 4), r"\(2, 0, 3, 4\)"),
        ((1, 1, 2, 3, 4), r"\(1, 1, 2, 3, 4\)"),
    ],
)
def test_channel_sum_rejects_bad_shape(shape: tuple, got: str) -> None:
    message = r"features must have shape \(C, h, w\) or \(N, C, h, w\) with C >= 1; got "
    with pytest.raises(HeatmapError, match=message + got):
        channel_sum(np.zeros(shape))
    with pytest.raises(HeatmapError, match=message + got):
        channel_sum(torch.zeros(shape))


def test_pipeline_channel_sum_then_box_then_refine() -> None:
    feats = np.zeros((2, 4, 5))
    feats[0] = MAP45
    feats[1, 1:3, 1:3] = 1.0  # raise the whole blob a little; the peak stays at row 2, col 2
    heat = heatmap_box(channel_sum(feats), 0.5, image_size=(100, 80))
    assert heat == (21, 21, 60, 60)
    assert refine((1, 1, 40, 80), heat) == (21, 21, 40, 60)
