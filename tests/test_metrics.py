"""Exact checks of the VOC metrics on tiny hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from cutbg_env.metrics import (
    average_precision,
    corloc,
    corloc_hit,
    plot_pr_curve,
    precision_recall,
    seed_summary,
)

BOX = (1, 1, 10, 10)  # a 10×10 object, area 100 with the +1 widths
FAR = (50, 50, 60, 60)  # overlaps nothing

# One object on each of three images.
GT3 = {"a": [(BOX, False)], "b": [(BOX, False)], "c": [(BOX, False)]}

# Five detections, given out of score order on purpose. Sorted by score:
#   0.9 a BOX  -> TP (finds a)
#   0.8 c FAR  -> FP (IoU 0)
#   0.7 b BOX  -> TP (finds b)
#   0.6 a BOX  -> FP (duplicate: a is already found)
#   0.5 c BOX  -> TP (finds c)
# cum TP 1 1 2 2 3, cum FP 0 1 1 2 2, npos 3:
#   recall    1/3 1/3 2/3 2/3 1
#   precision 1   1/2 2/3 1/2 3/5
# Envelope (running max from the right): 1 2/3 2/3 3/5 3/5.
#   Area: 1/3·1 + 1/3·2/3 + 1/3·3/5 = 15/45 + 10/45 + 9/45 = 34/45.
#   11-point: t = 0, .1, .2, .3 -> 1 (4×); t = .4, .5, .6 -> 2/3 (3×);
#             t = .7, .8, .9, 1 -> 3/5 (4×); (4 + 2 + 12/5) / 11 = 8.4/11 = 42/55.
DETS5 = [
    ("b", 0.7, BOX),
    ("a", 0.6, BOX),
    ("a", 0.9, BOX),
    ("c", 0.5, BOX),
    ("c", 0.8, FAR),
]


def test_hand_worked_pr_curve() -> None:
    recall, precision = precision_recall(DETS5, GT3)
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 3 / 5])


def test_hand_worked_ap_area() -> None:
    assert average_precision(DETS5, GT3) == pytest.approx(100 * 34 / 45)


def test_hand_worked_ap_11_point() -> None:
    assert average_precision(DETS5, GT3, use_07_metric=True) == pytest.approx(100 * 42 / 55)


@pytest.mark.parametrize("use_07", [False, True])
def test_perfect_detections_give_100(use_07: bool) -> None:
    dets = [("a", 0.9, BOX), ("b", 0.8, BOX), ("c", 0.7, BOX)]
    assert average_precision(dets, GT3, use_07_metric=use_07) == pytest.approx(100.0)


@pytest.mark.parametrize("use_07", [False, True])
def test_no_detections_give_0(use_07: bool) -> None:
    assert average_precision([], GT3, use_07_metric=use_07) == 0.0
    recall, precision = precision_recall([], GT3)
    assert recall.shape == precision.shape == (0,)


@pytest.mark.parametrize("use_07", [False, True])
def test_no_positive_ground_truth_gives_0_not_nan(use_07: bool) -> None:
    gt = {"a": [(BOX, True)], "b": []}  # only a difficult object
    assert average_precision([("a", 0.9, BOX)], gt, use_07_metric=use_07) == 0.0


def test_difficult_match_is_neither_tp_nor_fp() -> None:
    gt = {**GT3, "d": [(BOX, True)]}
    with_difficult = [*DETS5, ("d", 0.75, BOX)]  # ranks 3rd of 6
    recall, precision = precision_recall(with_difficult, gt)
    # the ignored detection repeats the values before it (cum TP 1, FP 1)
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1 / 2, 1 / 2, 2 / 3, 1 / 2, 3 / 5])
    for use_07 in (False, True):
        assert average_precision(with_difficult, gt, use_07_metric=use_07) == pytest.approx(
            average_precision(DETS5, gt, use_07_metric=use_07)
        )


def test_difficult_objects_do_not_count_as_positives() -> None:
    gt = {"a": [(BOX, False), (FAR, True)]}  # npos = 1: only a is to be found
    assert average_precision([("a", 0.9, BOX)], gt) == pytest.approx(100.0)


def test_duplicate_detection_is_fp() -> None:
    gt = {"a": [(BOX, False)]}
    dets = [("a", 0.9, BOX), ("a", 0.8, (1, 1, 10, 9))]
    recall, precision = precision_recall(dets, gt)
    np.testing.assert_allclose(recall, [1, 1])
    np.testing.assert_allclose(precision, [1, 1 / 2])


def test_best_overlap_already_matched_is_fp_as_devkit() -> None:
    # Two objects; the second detection overlaps the found one best (IoU 1) and the other by
    # 80/120: the devkit matches only the best-overlapping box, so it is a duplicate FP.
    gt = {"a": [(BOX, False), ((3, 1, 12, 10), False)]}
    dets = [("a", 0.9, BOX), ("a", 0.8, BOX)]
    _, precision = precision_recall(dets, gt)
    np.testing.assert_allclose(precision, [1, 1 / 2])


def test_detection_on_image_without_ground_truth_is_fp() -> None:
    gt = {"a": [(BOX, False)], "empty": []}
    dets = [("unknown", 0.95, BOX), ("empty", 0.9, BOX), ("a", 0.8, BOX)]
    recall, precision = precision_recall(dets, gt)
    np.testing.assert_allclose(recall, [0, 0, 1])
    np.testing.assert_allclose(precision, [0, 0, 1 / 3])
    # envelope 1/3 over the whole recall range
    assert average_precision(dets, gt) == pytest.approx(100 / 3)


def test_ties_keep_input_order() -> None:
    gt = {"a": [(BOX, False)]}
    tp_first = [("a", 0.5, BOX), ("a", 0.5, FAR)]
    assert precision_recall(tp_first, gt)[1].tolist() == [1.0, 0.5]
    assert precision_recall(tp_first[::-1], gt)[1].tolist() == [0.0, 0.5]


def test_iou_boundary_strict_for_ap_inclusive_for_corloc() -> None:
    # (1, 1, 10, 5) lies inside BOX: IoU = 50 / 100 = 0.5 exactly. The devkit (ovmax > ovthresh)
    # and the paper ("exceeds 0.5") reject it for AP; CorLoc (IoU >= 0.5) accepts it.
    gt = {"a": [(BOX, False)]}
    assert average_precision([("a", 1.0, (1, 1, 10, 5))], gt) == 0.0
    assert average_precision([("a", 1.0, (1, 1, 10, 6))], gt) == pytest.approx(100.0)
    assert average_precision([("a", 1.0, (1, 1, 10, 5))], gt, iou_threshold=0.49) == 100.0
    assert corloc({"a": (1, 1, 10, 5)}, gt) == 100.0
    assert corloc({"a": (1, 1, 10, 4)}, gt) == 0.0  # IoU 0.4
    assert corloc({"a": (1, 1, 10, 6)}, gt) == 100.0


def test_nan_score_is_rejected() -> None:
    with pytest.raises(ValueError, match="detection scores must be finite; got NaN or inf"):
        average_precision([("a", float("nan"), BOX)], GT3)


def test_corloc_hand_case() -> None:
    gt = {
        "a": [(BOX, False)],  # positive, hit
        "b": [(BOX, False)],  # positive, IoU 0.4 -> miss
        "c": [(BOX, True)],  # only difficult -> not a positive image
        "d": [(FAR, False), (BOX, True)],  # positive, hit through its difficult box
        "e": [(BOX, False)],  # positive, no prediction -> miss
        "f": [],  # no object -> not a positive image
    }
    boxes = {
        "a": (2, 2, 10, 10),  # IoU 81/100
        "b": (1, 1, 10, 4),
        "c": BOX,
        "d": BOX,
        "z": BOX,  # not in the ground truth: ignored
    }
    assert corloc(boxes, gt) == pytest.approx(100 * 2 / 4)


def test_corloc_hit_is_corlocs_test_for_one_image() -> None:
    assert corloc_hit((1, 1, 10, 5), [BOX])  # IoU 0.5 exactly: a hit (>=)
    assert not corloc_hit((1, 1, 10, 4), [BOX])  # IoU 0.4
    assert corloc_hit((1, 1, 10, 4), [FAR, (1, 1, 10, 4)])  # any of the boxes
    assert not corloc_hit(BOX, [])  # no ground truth: never a hit
    assert corloc_hit((1, 1, 10, 4), [BOX], iou_threshold=0.4)
    # the same verdicts as corloc's, image by image
    gt = {"a": [(BOX, False)], "b": [(BOX, False)], "c": [(FAR, False), (BOX, False)]}
    boxes = {"a": (1, 1, 10, 5), "b": (1, 1, 10, 4), "c": BOX}
    hits = [corloc_hit(boxes[i], [b for b, _ in gt[i]]) for i in gt]
    assert hits == [True, False, True]
    assert corloc(boxes, gt) == pytest.approx(100 * sum(hits) / 3)


def test_corloc_no_positive_image_gives_0() -> None:
    assert corloc({"a": BOX}, {"a": [(BOX, True)]}) == 0.0


def test_plot_pr_curve_writes_png_atomically(tmp_path) -> None:
    recall, precision = precision_recall(DETS5, GT3)
    out = tmp_path / "plots" / "pr.png"
    plot_pr_curve(recall, precision, out, "toy class")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["pr.png"]  # no temp file left behind
    plot_pr_curve([], [], out, "empty")  # overwrite in place
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_classification_ap_hand_case() -> None:
    from cutbg_env.metrics import classification_ap

    # ranking by score: pos, neg, pos, (masked pos), neg -> precision 1, 1/2, 2/3 at recall .5, .5, 1
    scores = [0.9, 0.8, 0.7, 0.65, 0.6]
    labels = [1, 0, 1, 1, 0]
    mask = [1, 1, 1, 0, 1]
    # envelope: recall 0.5 at precision 1, recall 1.0 at precision 2/3 -> 0.5*1 + 0.5*2/3
    assert classification_ap(scores, labels, mask) == pytest.approx(100 * (0.5 + 1 / 3))
    assert classification_ap(scores, [0, 0, 0, 0, 0]) == 0.0
    assert classification_ap([0.1, 0.9], [0, 1]) == pytest.approx(100.0)


def test_seed_summary_hand_case() -> None:
    """2 seeds × 2 classes: aggregate means 1.5 and 3.5 (std √2). Resampling the seeds within
    each class, the aggregate is 1.5 with probability 1/16 > 2.5 %, 3.5 likewise: the 95 %
    interval is [1.5, 3.5]."""
    summary = seed_summary([[1.0, 2.0], [3.0, 4.0]])
    assert summary == {
        "mean": 2.5,
        "std": pytest.approx(2**0.5),
        "ci_low": 1.5,
        "ci_high": 3.5,
        "runs": 2,
    }
    assert seed_summary([[1.0, 2.0], [3.0, 4.0]], reps=500, seed=3) == seed_summary(
        [[1.0, 2.0], [3.0, 4.0]], reps=500, seed=3
    )  # seeded


def test_seed_summary_of_one_run_and_of_equal_runs() -> None:
    assert seed_summary([0.5]) == {
        "mean": 0.5,
        "std": 0.0,
        "ci_low": 0.5,
        "ci_high": 0.5,
        "runs": 1,
    }
    same = seed_summary([[40.0, 60.0]] * 3)
    assert (same["mean"], same["std"], same["ci_low"], same["ci_high"]) == (50.0, 0.0, 50.0, 50.0)
    assert same["runs"] == 3


@pytest.mark.parametrize(
    ("scores", "shape"),
    [([[float("nan")]], r"\(1, 1\)"), ([[]], r"\(0, 0\)"), ([], r"\(0, 0\)")],
)
def test_seed_summary_rejects_bad_scores(scores: list, shape: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^seed_summary: need finite scores of shape \(runs, tasks\); got {shape}$",
    ):
        seed_summary(scores)
