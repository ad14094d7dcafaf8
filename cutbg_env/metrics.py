"""Localization metrics: VOC average precision, precision/recall, CorLoc, PR-curve plots.

Conventions (paper §3.2, PASCAL VOC devkit ``voc_eval.py``):

* Boxes are VOC boxes ``(xmin, ymin, xmax, ymax)``, 1-based inclusive; overlaps are
  :func:`cutbg_env.geometry.iou_matrix` (``+1`` widths, as the devkit).
* A prediction is correct when its IoU with a ground-truth box **exceeds** the threshold:
  ``iou > iou_threshold`` (strict), as the devkit (``ovmax > ovthresh``) and the paper ("exceeds
  0.5") say. An IoU of exactly 0.5 is therefore a miss for AP. CorLoc follows its usual
  definition: IoU **≥** the threshold counts; the two differ only at an
  IoU of exactly 0.5.
* ``detections`` is a sequence of ``(image_id, score, box)``; ``ground_truth`` maps
  ``image_id -> [(box, difficult), ...]`` for one class. Image ids are any hashable values.
* Results are percentages in ``[0, 100]``, never NaN: with no non-difficult ground truth (nothing
  to find) or no detections, AP is ``0.0``; with no positive image, CorLoc is ``0.0``.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from cutbg_env.geometry import iou, iou_matrix
from cutbg_env.io import atomic_path

Detection = tuple[Hashable, float, Sequence[float]]
"""``(image_id, score, (xmin, ymin, xmax, ymax))``."""

GroundTruth = Mapping[Hashable, Sequence[tuple[Sequence[float], bool]]]
"""``image_id -> [((xmin, ymin, xmax, ymax), difficult), ...]`` for one class."""

_EPS = np.finfo(np.float64).eps


def _is_hit(overlap: float, iou_threshold: float) -> bool:
    """The PASCAL criterion: the overlap must *exceed* the threshold (strict ``>``)."""
    return overlap > iou_threshold


def _gt_arrays(ground_truth: GroundTruth) -> dict[Hashable, tuple[np.ndarray, np.ndarray]]:
    """Per image: ``(N, 4)`` float64 boxes and ``(N,)`` bool difficult flags."""
    out = {}
    for image_id, objects in ground_truth.items():
        boxes = np.array([box for box, _ in objects], dtype=np.float64).reshape(-1, 4)
        difficult = np.array([bool(d) for _, d in objects], dtype=bool)
        out[image_id] = (boxes, difficult)
    return out


def _match(
    detections: Sequence[Detection], ground_truth: GroundTruth, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Label detections as the devkit does.

    Returns:
        ``tp``, ``fp``: float64 ``(D,)`` 0/1 flags in descending-score order (a detection matched
        to a difficult box has both 0); ``npos``: number of non-difficult ground-truth boxes.
    """
    gts = _gt_arrays(ground_truth)
    npos = int(sum(int((~difficult).sum()) for _, difficult in gts.values()))
    scores = np.array([float(d[1]) for d in detections], dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("detection scores must be finite; got NaN or inf")
    order = np.argsort(-scores, kind="stable")  # ties keep input order
    matched = {image_id: np.zeros(len(d), dtype=bool) for image_id, (_, d) in gts.items()}
    tp = np.zeros(len(detections), dtype=np.float64)
    fp = np.zeros(len(detections), dtype=np.float64)
    for rank, idx in enumerate(order):
        image_id, _, box = detections[idx]
        gt_boxes, difficult = gts.get(image_id, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        if len(gt_boxes) == 0:
            fp[rank] = 1.0  # no ground truth of the class in this image
            continue
        overlaps = iou_matrix(np.asarray(box, dtype=np.float64)[None], gt_boxes)[0]
        j = int(np.argmax(overlaps))  # best-overlapping GT, matched or not (devkit)
        if not _is_hit(float(overlaps[j]), iou_threshold):
            fp[rank] = 1.0
        elif difficult[j]:
            pass  # ignored: neither TP nor FP
        elif not matched[image_id][j]:
            tp[rank] = 1.0
            matched[image_id][j] = True
        else:
            fp[rank] = 1.0  # duplicate detection of an already-found object
    return tp, fp, npos


def _curve(
    detections: Sequence[Detection], ground_truth: GroundTruth, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    tp, fp, npos = _match(detections, ground_truth, iou_threshold)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos > 0 else np.zeros_like(tp)
    precision = tp / np.maximum(tp + fp, _EPS)
    return recall, precision, npos


def precision_recall(
    detections: Sequence[Detection], ground_truth: GroundTruth, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision over detections sorted by descending score.

    Args:
        detections: ``(image_id, score, box)`` triples for one class; sorted here by descending
            score with a stable sort (equal scores keep their input order).
        ground_truth: ``image_id -> [(box, difficult), ...]``; an image missing from it has no
            ground truth, so every detection on it is a false positive.
        iou_threshold: a detection is a hit when its best IoU is strictly greater than this.

    Returns:
        ``(recall, precision)``, two float64 arrays of length ``len(detections)``, entry ``k``
        being the values after the ``k+1`` best detections. As in the devkit, a detection matched
        to a *difficult* box is neither TP nor FP, so it repeats the previous values (or gives
        precision 0 if nothing precedes it). With no non-difficult ground truth, recall is all 0.

    Raises:
        ValueError: a score is NaN or infinite.
    """
    recall, precision, _ = _curve(detections, ground_truth, iou_threshold)
    return recall, precision


def average_precision(
    detections: Sequence[Detection],
    ground_truth: GroundTruth,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> float:
    """VOC average precision of one class, in percent (0–100).

    Args:
        detections, ground_truth, iou_threshold: as :func:`precision_recall`.
        use_07_metric: ``True``: VOC2007 11-point interpolated AP, the mean over
            ``t = 0, 0.1, ..., 1`` (exactly ``k/10``) of the highest precision at recall ``>= t``
            (0 where no recall reaches ``t``). ``False``: VOC2010+ area under the monotone
            (right-to-left running max) precision envelope.

    Returns:
        AP in percent; ``0.0`` when there are no detections or no non-difficult ground truth
        (the devkit would give NaN there).
    """
    recall, precision, npos = _curve(detections, ground_truth, iou_threshold)
    if npos == 0 or len(recall) == 0:
        return 0.0
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            reached = recall >= t
            ap += float(precision[reached].max()) if reached.any() else 0.0
        return 100.0 * ap / 11.0
    return _area(recall, precision)


def _area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area (percent) under the monotone precision envelope (VOC2010+ AP)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return 100.0 * float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def corloc(
    boxes: Mapping[Hashable, Sequence[float]],
    ground_truth: GroundTruth,
    iou_threshold: float = 0.5,
) -> float:
    """Correct localization: the share (percent) of positive images localized correctly.

    Positive images are the keys of ``ground_truth`` with at least one *non-difficult* box. A
    positive image counts as correct when its predicted box has IoU greater than or equal to
    ``iou_threshold`` with any of its ground-truth boxes (difficult ones included). A positive
    image with no entry in ``boxes`` is a miss; predictions for other images are ignored.

    Returns:
        CorLoc in percent; ``0.0`` when there is no positive image.
    """
    hits = positives = 0
    for image_id, (gt_boxes, difficult) in _gt_arrays(ground_truth).items():
        if difficult.all():  # also true for an image with no box
            continue
        positives += 1
        box = boxes.get(image_id)
        if box is None:
            continue
        overlaps = iou_matrix(np.asarray(box, dtype=np.float64)[None], gt_boxes)[0]
        hits += bool(overlaps.max() >= iou_threshold)
    return 100.0 * hits / positives if positives else 0.0


def corloc_hit(
    box: Sequence[float], gt_boxes: Sequence[Sequence[float]], iou_threshold: float = 0.5
) -> bool:
    """CorLoc's test for one image: IoU ≥ ``iou_threshold`` with some ground-truth box (``False``
    when there is none)."""
    return any(iou(box, g) >= iou_threshold for g in gt_boxes)


def plot_pr_curve(
    recall: Sequence[float] | np.ndarray,
    precision: Sequence[float] | np.ndarray,
    path: str | os.PathLike[str],
    title: str,
) -> None:
    """Write a precision/recall curve as a PNG at ``path``, atomically.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change). The image is
    written with :func:`~cutbg_env.io.atomic_path`, so ``path`` is either the old file or the
    complete new one.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(np.asarray(recall, dtype=float), np.asarray(precision, dtype=float), lw=1.5)
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def classification_ap(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Image-level classification AP (percent) of one class, as VOC's classification task.

    Args:
        scores: ``(N,)`` float scores, higher = more confident.
        labels: ``(N,)`` 0/1 ground truth.
        mask: ``(N,)`` 0/1, 0 for images that count neither way (VOC's "difficult only").

    Returns:
        Area under the precision envelope in percent; 0.0 without positives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.ones(len(scores), bool) if mask is None else np.asarray(mask) > 0
    labels = np.asarray(labels)[keep] > 0
    order = np.argsort(-scores[keep], kind="stable")
    tp = labels[order].astype(np.float64)
    npos = tp.sum()
    if npos == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / npos
    precision = ctp / np.arange(1, len(tp) + 1)
    return _area(recall, precision)


def seed_summary(
    scores: Sequence[Sequence[float]] | np.ndarray,
    confidence: float = 0.95,
    reps: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean, standard deviation and bootstrap confidence interval of a score over seeds.

    Args:
        scores: ``(runs, tasks)`` (e.g. seeds × classes) or ``(runs,)``: one score per run and
            task. The aggregate is the mean over all entries.
        confidence: coverage of the interval.
        reps: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``{"mean", "std", "ci_low", "ci_high", "runs"}``: ``std`` is over the runs' aggregates
        (ddof 1; 0 for one run); the interval is the percentile interval of the aggregate under
        the stratified bootstrap (runs resampled with replacement within each task), as rliable's
        ``get_interval_estimates`` computes it.
    """
    x = np.asarray(scores, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.size else x.reshape(0, 0)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"seed_summary: need finite scores of shape (runs, tasks); got {x.shape}")
    runs = x.shape[0]
    per_run = x.mean(axis=1)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, runs, size=(reps, runs, x.shape[1]))
    boot = np.take_along_axis(x[None].repeat(reps, 0), picks, axis=1).mean(axis=(1, 2))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return {
        "mean": float(x.mean()),
        "std": float(per_run.std(ddof=1)) if runs > 1 else 0.0,
        "ci_low": float(low),
        "ci_high": float(high),
        "runs": runs,
    }
