"""The classifier's pseudo-box stage (train.pseudo): crops, moves, shares and targets."""

from __future__ import annotations

import re

import pytest
import torch

from cutbg_env.errors import OptionError
from train.classifier import ClassifierArgs, _augment
from train.pseudo import augmented_crops, kept_share, move_crop, pseudo_crop_batch, sample_crop


def test_move_crop_flips_then_shifts_and_clips() -> None:
    assert move_crop((2, 3, 5, 7), False, (0, 0), 10) == (2, 3, 5, 7)
    assert move_crop((2, 3, 5, 7), True, (0, 0), 10) == (5, 3, 8, 7)  # x ↦ 10 - x
    assert move_crop((2, 3, 5, 7), True, (1, -6), 10) == (0, 4, 2, 8)  # clipped at the left
    assert move_crop((2, 3, 5, 7), False, (5, 0), 10) == (2, 8, 5, 10)  # clipped at the bottom
    assert move_crop((0, 0, 2, 2), False, (0, -3), 10) is None  # moved off the map
    assert move_crop((0, 0, 2, 2), True, (0, 8), 10) is None


def test_kept_share_counts_the_box_cells_inside_the_crop() -> None:
    assert kept_share((2, 2, 6, 4), (3, 0, 10, 10)) == 0.75  # 3 of 4 columns, both rows
    assert kept_share((2, 2, 6, 4), (0, 0, 10, 10)) == 1.0
    assert kept_share((2, 2, 6, 4), (6, 0, 10, 10)) == 0.0  # touching, not overlapping
    assert kept_share((2, 2, 6, 4), (2, 3, 4, 4)) == 0.25


def test_sample_crop_holds_the_box_or_cuts_one_side_into_it() -> None:
    gen = torch.Generator().manual_seed(0)
    box = (4, 6, 12, 10)  # 8 wide, 4 high
    for _ in range(200):
        x0, y0, x1, y1 = sample_crop(box, 0.0, gen, grid=16)
        assert 0 <= x0 <= 4 and 0 <= y0 <= 6 and 12 <= x1 <= 16 and 10 <= y1 <= 16
    depths = {0: set(), 1: set(), 2: set(), 3: set()}
    for _ in range(400):
        crop = sample_crop(box, 1.0, gen, grid=16)
        inside = [crop[0] - box[0], crop[1] - box[1], box[2] - crop[2], box[3] - crop[3]]
        (side,) = [k for k, d in enumerate(inside) if d > 0]  # exactly one side cuts in
        assert all(d <= 0 for k, d in enumerate(inside) if k != side)
        depths[side].add(inside[side])
    # 1 … half the box's side: 4 columns from the left or right, 2 rows from the top or bottom
    assert depths == {0: {1, 2, 3, 4}, 1: {1, 2}, 2: {1, 2, 3, 4}, 3: {1, 2}}


def test_sample_crop_is_seeded() -> None:
    draws = [
        [sample_crop((3, 3, 9, 9), 0.5, g, 12) for _ in range(20)]
        for g in (torch.Generator().manual_seed(7), torch.Generator().manual_seed(7))
    ]
    assert draws[0] == draws[1]


def test_pseudo_crop_batch_scales_positive_targets_by_the_kept_share() -> None:
    neg, pos = 0.05, 0.95
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    y = labels * 0.9 + 0.05
    w = torch.ones(3, 3)
    boxes = [{0: (1, 1, 3, 3)}, {}, {2: (0, 0, 4, 2)}]
    gen = torch.Generator().manual_seed(0)
    keep, y2, w2 = pseudo_crop_batch(boxes, labels, y, w, 1.0, gen, neg, pos, grid=4)
    assert keep.shape == (3, 1, 4, 4)
    # image 0: class 0's box, cut into; class 1 is positive without a box: out of the loss
    share0 = float(keep[0, 0, 1:3, 1:3].mean())
    assert 0.0 < share0 < 1.0
    assert y2[0, 0].item() == pytest.approx(pos * share0 + neg * (1 - share0))
    assert w2[0].tolist() == [1.0, 0.0, 1.0] and y2[0, 2].item() == pytest.approx(neg)
    # image 1: no pseudo-box: the whole map and its targets
    assert torch.equal(keep[1], torch.ones(1, 4, 4)) and torch.equal(y2[1], y[1])
    share2 = float(keep[2, 0, 0:2, 0:4].mean())
    assert y2[2, 2].item() == pytest.approx(pos * share2 + neg * (1 - share2))
    assert torch.equal(w, torch.ones(3, 3)) and torch.equal(y, labels * 0.9 + 0.05)  # copies
    # cut 0: every crop keeps all of its box, so every boxed positive keeps its full target
    keep, y3, _ = pseudo_crop_batch(boxes, labels, y, w, 0.0, gen, neg, pos, grid=4)
    assert torch.all(keep[0, 0, 1:3, 1:3] == 1) and y3[0, 0].item() == pytest.approx(pos)
    assert torch.all(keep[2, 0, 0:2, 0:4] == 1) and y3[2, 2].item() == pytest.approx(pos)


def test_augment_reports_the_flips_and_the_shift_it_made() -> None:
    x = torch.zeros(8, 1, 16, 16)
    x[:, 0, 2, 3] = 1.0  # one marked pixel, row 2, column 3
    out, flip, (dy, dx) = _augment(x, torch.Generator().manual_seed(5))
    for r in range(8):
        col = 15 - 3 if flip[r] else 3
        (where,) = torch.nonzero(out[r, 0]).tolist()
        assert where == [(2 + dy) % 16, (col + dx) % 16]


def test_augmented_crops_move_the_boxes_with_their_images() -> None:
    """A 112-pixel image's pseudo-boxes are flipped with it and shifted by its pixel shift
    rounded to 4-pixel cells: (5, -9) pixels are (1, -2) cells."""
    boxes = {7: {0: (4, 4, 12, 20)}, 9: {0: (4, 4, 12, 20)}}
    labels = torch.zeros(10, 1)
    labels[[7, 9]] = 1.0
    y = torch.full((2, 1), 0.95)
    keep, y2, w2 = augmented_crops(
        boxes,
        torch.tensor([7, 9]),
        labels,
        torch.tensor([False, True]),
        (5, -9),
        112,
        y,
        torch.ones(2, 1),
        torch.Generator().manual_seed(0),
        0.0,
        0.1,
    )
    for r, (x0, y0, x1, y1) in enumerate([(2, 5, 10, 21), (14, 5, 22, 21)]):
        assert torch.all(keep[r, 0, y0:y1, x0:x1] == 1)  # the moved box, kept whole (cut 0)
        assert y2[r, 0].item() == pytest.approx(0.95) and w2[r, 0].item() == 1.0
    # its only box moved off the map: the image keeps its whole map and its targets
    off = {7: {0: (0, 0, 1, 1)}}
    keep, _, w3 = augmented_crops(
        off,
        torch.tensor([7]),
        labels,
        torch.tensor([False]),
        (0, -9),
        112,
        y[:1],
        torch.ones(1, 1),
        torch.Generator().manual_seed(0),
        0.0,
        0.1,
    )
    assert torch.equal(keep[0], torch.ones(1, 28, 28)) and w3[0, 0].item() == 1.0


def test_pseudo_stage_shares_and_bad_values() -> None:
    stages = ClassifierArgs().stages()
    assert [s.name for s in stages] == ["scratch", "cutmix_finetune", "pseudo_crops"]
    assert [s.minutes for s in stages] == pytest.approx([30.0, 4.0, 4.0])
    assert [s.pseudo for s in stages] == [False, False, True]
    assert (stages[2].lr, stages[2].cutmix) == (5e-4, 0.0)
    # with --init, the later stages may take the whole budget
    (only,) = ClassifierArgs(init="a.pt", finetune_share=0.0, pseudo_share=1.0).stages()
    assert (only.name, only.minutes, only.pseudo) == ("pseudo_crops", 38.0, True)
    # shares summing to 1 up to rounding leave the first stage out, not a sliver of it
    names = [
        s.name for s in ClassifierArgs(init="a.pt", finetune_share=0.18, pseudo_share=0.82).stages()
    ]
    assert names == ["cutmix_finetune", "pseudo_crops"]
    message = (
        "--finetune-share 0.5 + --pseudo-share 0.5 leave the first stage no time: their sum "
        "must be below 1 (or at most 1 with --init)"
    )
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        ClassifierArgs(finetune_share=0.5, pseudo_share=0.5)
    message = "--pseudo-setting: refinement setting 'mid/drop': expected 'layer/region/threshold'"
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        ClassifierArgs(pseudo_setting="mid/drop")
    with pytest.raises(OptionError, match=re.escape("--pseudo-cut 1.5: must be a finite number")):
        ClassifierArgs(pseudo_cut=1.5)
