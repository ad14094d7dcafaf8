"""evaluate.tracking: the crops it scores, its measurements on the tiny pipeline, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate.tracking import (
    MISS_KINDS,
    beside_crop,
    edge_crops,
    half_crops,
    main,
    miss_kind,
    object_crop,
    track_class,
)


def test_object_crop_covers_the_union_of_the_boxes() -> None:
    # 280 x 140 px image: a cell is 10 px wide and 5 px high
    assert object_crop([(11, 6, 30, 20)], 280, 140) == (1, 1, 3, 4)
    assert object_crop([(11, 6, 30, 20), (201, 101, 280, 140)], 280, 140) == (1, 1, 28, 28)


def test_half_crops_are_the_four_halves() -> None:
    assert half_crops((2, 4, 10, 8)) == [(2, 4, 6, 8), (6, 4, 10, 8), (2, 4, 10, 6), (2, 6, 10, 8)]
    # one cell wide: that side is not halved; three cells: halves of one cell
    assert half_crops((5, 0, 6, 3)) == [(5, 0, 6, 3), (5, 0, 6, 3), (5, 0, 6, 1), (5, 2, 6, 3)]


def test_edge_crops_cut_one_cell_off_each_side() -> None:
    assert edge_crops((2, 4, 10, 8)) == [(3, 4, 10, 8), (2, 4, 9, 8), (2, 5, 10, 8), (2, 4, 10, 7)]
    # a side one cell thick is not cut
    assert edge_crops((5, 0, 6, 3)) == [(5, 0, 6, 3), (5, 0, 6, 3), (5, 1, 6, 3), (5, 0, 6, 2)]


def test_miss_kind_places_a_box_against_the_object() -> None:
    obj = (4, 4, 10, 10)
    assert miss_kind((0, 0, 28, 28), obj) == "holds"
    assert miss_kind(obj, obj) == "holds"
    assert miss_kind((5, 5, 9, 9), obj) == "inside"
    assert miss_kind((4, 6, 10, 10), obj) == "inside"  # cut into the top only
    assert miss_kind((0, 6, 10, 10), obj) == "across"  # background left, object top cut
    assert miss_kind((12, 0, 28, 28), obj) == "across"  # beside the object
    assert MISS_KINDS == ("holds", "inside", "across")


def test_beside_crop_is_the_largest_object_free_side() -> None:
    assert beside_crop((2, 4, 10, 8)) == (0, 8, 28, 28)  # 20 rows below beat 18 columns right
    assert beside_crop((2, 4, 10, 25)) == (10, 0, 28, 28)
    assert beside_crop((0, 0, 28, 20)) == (0, 20, 28, 28)
    assert beside_crop((0, 0, 28, 28)) is None


@pytest.mark.slow
def test_track_class_on_the_tiny_pipeline(tiny_pipeline: dict) -> None:
    from cutbg_env.geometry import crop_to_box
    from cutbg_env.localize import greedy_cut
    from cutbg_env.metrics import corloc_hit
    from cutbg_env.world import CutWorld

    world = CutWorld("animals", "trainval", "dog")  # the tiny test split has no dog
    world.require_positives()
    r = track_class(world, world.positives, 0.1)
    mids = world.mid_maps(world.positives)
    _, p_full = world.full(world.positives)
    data = world.data
    crops = []
    for i in world.positives:
        a = data.annotation(i)
        crops.append(object_crop([b for b, _ in data.gt_boxes(i, "dog")], a.width, a.height))
    _, p_obj = world.score_crops(mids, np.asarray(crops))
    drop = np.asarray(p_full) - p_obj
    assert r["images"] == len(world.positives) and r["delta"] == 0.1
    assert r["p_full"] == pytest.approx(np.mean(p_full))
    assert r["bg_drop"] == pytest.approx(drop.mean())
    assert r["bg_valid"] == pytest.approx((drop <= 0.1).mean())
    assert 0 <= r["half_invalid"] <= 1 and -1 <= r["half_drop"] <= 1
    edges = np.asarray([edge_crops(c) for c in crops]).reshape(-1, 4)
    _, p_edge = world.score_crops(mids.repeat_interleave(4, dim=0), edges)
    edge_drop = np.asarray(p_full)[:, None] - p_edge.reshape(-1, 4)
    assert r["edge_drop"] == pytest.approx(edge_drop.mean())
    assert r["edge_invisible"] == pytest.approx((edge_drop <= 0.1).mean())
    model = world.model
    with torch.inference_mode():  # the all-zero map scored directly by the network
        logit = model.head(model.upper(torch.zeros_like(mids[:1])))[0, world.class_idx]
    assert r["empty_score"] == pytest.approx(float(torch.sigmoid(logit)), abs=1e-6)
    greedy = greedy_cut(world, world.positives, 0.1)
    assert r["greedy_cut_area"] == pytest.approx(
        np.mean([(c.crop[2] - c.crop[0]) * (c.crop[3] - c.crop[1]) for c in greedy]) / 784
    )
    assert 0 <= r["greedy_cut_corloc"] <= 100
    # every image is a hit or one kind of miss
    misses = r["greedy_cut_misses"]
    assert set(misses) == set(MISS_KINDS)
    assert sum(misses.values()) + r["greedy_cut_corloc"] / 100 == pytest.approx(1.0)
    missed = []
    for loc, i, o in zip(greedy, world.positives, crops, strict=True):
        a = data.annotation(i)
        gt = [b for b, _ in data.gt_boxes(i, "dog")]
        if not corloc_hit(crop_to_box(loc.crop, a.width, a.height), gt):
            missed.append(miss_kind(loc.crop, o))
    for kind in MISS_KINDS:
        assert misses[kind] == pytest.approx(missed.count(kind) / len(greedy))


@pytest.mark.slow
def test_tracking_command_writes_its_table(
    tiny_pipeline: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(["--classes", "dog", "--split", "trainval", "--delta", "0.2", "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("| dog | ")
    result = json.loads((tmp_path / "tracking.json").read_text())
    assert set(result["classes"]) == {"dog"} and result["classes"]["dog"]["delta"] == 0.2


def test_tracking_bad_classes_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["--classes", " , "]) == 2
    err = capsys.readouterr().err
    assert err == "error: --classes ' , ' names no class: pass e.g. --classes dog,cat\n"
