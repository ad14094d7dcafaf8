"""Exact answers of cutbg_env.geometry: VOC boxes (1-based inclusive) and grid crops (half-open)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cutbg_env.geometry import (
    FULL_CROP,
    GRID,
    box_area,
    box_to_crop,
    clip_box,
    crop_area,
    crop_masks,
    crop_to_box,
    intersection,
    iou,
    iou_matrix,
    scale_box,
)


def test_constants() -> None:
    assert GRID == 28
    assert FULL_CROP == (0, 0, 28, 28)


@pytest.mark.parametrize(
    ("box", "area"),
    [
        ((1, 1, 10, 10), 100.0),
        ((1, 1, 1, 1), 1.0),  # one pixel: +1 widths
        ((5, 7, 14, 9), 30.0),
        ((5, 5, 3, 3), 0.0),  # empty
        ((5, 5, 4, 9), 0.0),  # zero width
    ],
)
def test_box_area(box: tuple[int, ...], area: float) -> None:
    assert box_area(box) == area


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((1, 1, 10, 10), (1, 1, 10, 10), 1.0),
        ((1, 1, 10, 10), (6, 6, 15, 15), 25 / 175),
        ((1, 1, 10, 10), (10, 10, 19, 19), 1 / 199),  # share one pixel
        ((1, 1, 10, 10), (11, 1, 20, 10), 0.0),  # adjacent, no shared pixel
        ((1, 1, 10, 10), (50, 50, 60, 60), 0.0),  # far apart
        ((1, 1, 10, 10), (3, 3, 4, 4), 4 / 100),  # contained
        ((1, 1, 1, 1), (1, 1, 1, 1), 1.0),  # single pixel boxes
        ((1, 1, 4, 2), (3, 1, 6, 2), 4 / 12),  # 4x2 boxes overlapping by 2 columns
    ],
)
def test_iou_hand_worked(a: tuple, b: tuple, expected: float) -> None:
    assert iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert iou(b, a) == pytest.approx(expected, abs=1e-12)


def test_iou_matrix_matches_iou() -> None:
    rng = np.random.default_rng(0)
    xy0 = rng.integers(1, 80, size=(9, 2))
    wh = rng.integers(0, 60, size=(9, 2))
    a = np.concatenate([xy0, xy0 + wh], axis=1)
    xy0 = rng.integers(1, 80, size=(7, 2))
    wh = rng.integers(0, 60, size=(7, 2))
    b = np.concatenate([xy0, xy0 + wh], axis=1)
    b[0] = a[0]  # one exact match
    m = iou_matrix(a, b)
    assert m.shape == (9, 7)
    assert m.dtype == np.float64
    expected = np.array([[iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-12)
    assert m[0, 0] == 1.0
    assert ((m >= 0) & (m <= 1)).all()


def test_iou_matrix_shapes() -> None:
    assert iou_matrix(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    single = iou_matrix(np.array([1, 1, 10, 10]), np.array([[6, 6, 15, 15]]))
    assert single.shape == (1, 1)
    assert single[0, 0] == pytest.approx(25 / 175)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((1, 1, 10, 10), (6, 6, 15, 15), (6, 6, 10, 10)),
        ((1, 1, 10, 10), (10, 10, 19, 19), (10, 10, 10, 10)),
        ((1, 1, 10, 10), (3, 3, 4, 4), (3, 3, 4, 4)),
        ((1, 1, 10, 10), (11, 1, 20, 10), None),
        ((1, 1, 10, 10), (1, 11, 10, 20), None),
        ((1, 1, 10, 10), (50, 50, 60, 60), None),
    ],
)
def test_intersection(a: tuple, b: tuple, expected: tuple | None) -> None:
    assert intersection(a, b) == expected
    assert intersection(b, a) == expected


def test_crop_to_box_exact() -> None:
    assert crop_to_box((0, 0, 28, 28), 224, 224) == (1, 1, 224, 224)
    assert crop_to_box((1, 2, 3, 4), 224, 224) == (9, 17, 24, 32)
    assert crop_to_box((0, 0, 1, 1), 224, 224) == (1, 1, 8, 8)
    assert crop_to_box((27, 27, 28, 28), 224, 224) == (217, 217, 224, 224)
    # Non-multiple sizes: every touched pixel is included.
    assert crop_to_box((0, 0, 28, 28), 500, 375) == (1, 1, 500, 375)
    # x: 1*100/28 = 3.57 -> 4 ; 3*100/28 = 10.7 -> 11 ; y: 2*50/28 = 3.57 -> 4 ; 4*50/28 = 7.1 -> 8
    assert crop_to_box((1, 2, 3, 4), 100, 50) == (4, 4, 11, 8)
    # A tiny image: a cell is smaller than a pixel, the box still holds one pixel.
    assert crop_to_box((5, 5, 6, 6), 10, 10) == (2, 2, 3, 3)
    assert crop_to_box((0, 0, 1, 1), 10, 10) == (1, 1, 1, 1)


def test_box_to_crop_exact() -> None:
    assert box_to_crop((1, 1, 224, 224), 224, 224) == FULL_CROP
    assert box_to_crop((9, 17, 24, 32), 224, 224) == (1, 2, 3, 4)
    assert box_to_crop((1, 1, 1, 1), 224, 224) == (0, 0, 1, 1)
    assert box_to_crop((1, 1, 500, 375), 500, 375) == FULL_CROP
    # One pixel past a cell edge needs the next cell.
    assert box_to_crop((9, 9, 25, 25), 224, 224) == (1, 1, 4, 4)
    # Boxes beyond the image are clamped into the grid and keep one cell.
    assert box_to_crop((-20, -20, 400, 400), 224, 224) == FULL_CROP
    assert box_to_crop((224, 224, 224, 224), 224, 224) == (27, 27, 28, 28)


def test_crop_box_round_trip_on_multiples() -> None:
    # 224 = 8 * 28: crop -> box -> crop is the identity for every crop.
    spans = list(itertools.combinations(range(GRID + 1), 2))
    crops = [(a, 0, b, GRID) for a, b in spans] + [(3, a, 9, b) for a, b in spans]
    for crop in crops:
        for w, h in ((224, 224), (112, 56), (448, 224)):
            assert box_to_crop(crop_to_box(crop, w, h), w, h) == crop


@pytest.mark.parametrize(("width", "height"), [(100, 50), (500, 375), (37, 301), (17, 13)])
def test_crop_box_round_trip_covers(width: int, height: int) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        x0, x1 = sorted(rng.choice(GRID + 1, size=2, replace=False))
        y0, y1 = sorted(rng.choice(GRID + 1, size=2, replace=False))
        crop = (int(x0), int(y0), int(x1), int(y1))
        box = crop_to_box(crop, width, height)
        assert 1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height
        back = box_to_crop(box, width, height)
        # The covering crop of the box contains the crop.
        assert back[0] <= crop[0] and back[1] <= crop[1]
        assert back[2] >= crop[2] and back[3] >= crop[3]
        # And the box of the covering crop of a box contains the box.
        bx0 = int(rng.integers(1, width + 1))
        by0 = int(rng.integers(1, height + 1))
        b = (bx0, by0, int(rng.integers(bx0, width + 1)), int(rng.integers(by0, height + 1)))
        c = box_to_crop(b, width, height)
        assert 0 <= c[0] < c[2] <= GRID and 0 <= c[1] < c[3] <= GRID
        cb = crop_to_box(c, width, height)
        assert cb[0] <= b[0] and cb[1] <= b[1] and cb[2] >= b[2] and cb[3] >= b[3]


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((-5, 0, 300, 50), (1, 1, 224, 50)),
        ((10, 20, 30, 40), (10, 20, 30, 40)),
        ((250, 250, 300, 300), (224, 224, 224, 224)),
        ((10, 10, 5, 5), (10, 10, 10, 10)),  # inverted: stays one pixel
        ((0.4, 1.7, 223.9, 224.0), (1, 1, 223, 224)),
    ],
)
def test_clip_box(box: tuple, expected: tuple) -> None:
    out = clip_box(box, 224, 224)
    assert out == expected
    assert all(isinstance(v, int) for v in out)


def test_scale_box() -> None:
    assert scale_box((1, 1, 224, 224), 0.5, 0.5, 112, 112) == (1, 1, 112, 112)
    assert scale_box((9, 17, 24, 32), 2.0, 2.0, 448, 448) == (17, 33, 48, 64)
    assert scale_box((1, 1, 224, 224), 2.0, 2.0, 300, 300) == (1, 1, 300, 300)  # clipped


def test_crop_masks_tiny_grid() -> None:
    crops = torch.tensor([[0, 0, 4, 4], [1, 2, 3, 3], [3, 0, 4, 1]])
    masks = crop_masks(crops, grid=4)
    assert masks.shape == (3, 1, 4, 4)
    assert masks.dtype == torch.bool
    expected = np.zeros((3, 4, 4), dtype=bool)
    expected[0] = True
    expected[1, 2, 1:3] = True  # row y=2, columns x=1,2
    expected[2, 0, 3] = True  # row y=0, column x=3
    np.testing.assert_array_equal(masks[:, 0].numpy(), expected)


def test_crop_masks_match_crop_area() -> None:
    rng = np.random.default_rng(2)
    crops = []
    for _ in range(50):
        x0, x1 = sorted(rng.choice(GRID + 1, size=2, replace=False))
        y0, y1 = sorted(rng.choice(GRID + 1, size=2, replace=False))
        crops.append((int(x0), int(y0), int(x1), int(y1)))
    masks = crop_masks(torch.tensor(crops))
    assert masks.shape == (50, 1, GRID, GRID)
    for m, c in zip(masks, crops, strict=True):
        assert int(m.sum()) == crop_area(c)
        ys, xs = np.nonzero(m[0].numpy())
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == c


def test_crop_area() -> None:
    assert crop_area(FULL_CROP) == 784
    assert crop_area((1, 2, 3, 4)) == 4
    assert crop_area((5, 5, 5, 9)) == 0
