"""Training pipeline: tiny end-to-end run, save/reload, resume, calibration, CLI and bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from stable_baselines3 import DQN
from tiny import TINY_CLASSIFIER

from cutbg_env.calibration import validation_images, validation_subset, validation_truth
from cutbg_env.cli import StageArgs
from cutbg_env.dqn import CutDQN, DQNArgs, per_dataset
from cutbg_env.errors import CheckpointError, DataError, OptionError
from cutbg_env.refine import (
    REFINEMENT_FILE,
    THRESHOLDS,
    best_setting,
    calibrated_setting,
    dataset_setting,
    dataset_setting_hits,
    parse_setting,
    pooled_setting,
    refinement_scores,
    setting_key,
)
from train.__main__ import main as train_main
from train.agent import AgentArgs, fit_agent, make_vec_env
from train.calibrate import CalibrateArgs, calibrate, needs_context, pooled_delta, small_deltas
from train.schedules import EpochClock, EpsilonSchedule, LrSchedule, last_checkpoint

slow = pytest.mark.slow


# -- the tiny pipeline's outputs ---------------------------------------------------------------
@slow
def test_classifier_checkpoint_and_results(tiny_pipeline: dict) -> None:
    from cutbg_env.backbone import load_classifier

    model, meta = load_classifier(tiny_pipeline["classifier"])
    assert model.classes == (
        "bear",
        "bird",
        "cat",
        "cow",
        "dog",
        "elephant",
        "giraffe",
        "horse",
        "sheep",
        "zebra",
    )
    assert meta["steps"] > 0 and set(meta["test_ap"]) == set(model.classes)
    assert meta["args"]["lr"] is None  # the default, resolved to 2e-3 inside
    assert meta["args"]["checkpoint"] is None and "out" not in meta["args"]
    # the recipe's three stages, recorded in the checkpoint and in the JSON beside it
    assert [s["name"] for s in meta["stages"]] == ["scratch", "cutmix_finetune", "pseudo_crops"]
    assert sum(s["steps"] for s in meta["stages"]) == meta["steps"]
    record = json.loads(tiny_pipeline["classifier"].with_suffix(".json").read_text())
    assert record["command"] == "python -m train classifier --minutes 2.0 --steps 16 --batch-size 8"
    assert [st["steps"] for st in record["stages"]] == [12, 2, 2]  # the steps, split 30 : 4 : 4
    assert [s["name"] for s in record["stages"]] == ["scratch", "cutmix_finetune", "pseudo_crops"]
    # the pseudo-box stage found a box for every trainval image holding a class (all 24)
    assert record["stages"][2]["pseudo_box_images"] == 24
    assert record["stages"][2]["pseudo_box_seconds"] >= 0
    assert record["test_map"] == pytest.approx(meta["test_map"])
    assert record["test_map"] == pytest.approx(float(np.mean(list(meta["test_ap"].values()))))
    assert record["test_ap"] == pytest.approx(meta["test_ap"])  # the same numbers in both places
    assert record["steps"] == meta["steps"] and Path(record["checkpoint"]).name == "classifier.pt"
    assert not (tiny_pipeline["base"] / "results" / "classifier.json").exists()


@slow
def test_classifier_skips_same_config(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    from train.classifier import ClassifierArgs, train_classifier

    before = tiny_pipeline["classifier"].stat().st_mtime_ns
    path = train_classifier(ClassifierArgs(**TINY_CLASSIFIER))
    assert path == tiny_pipeline["classifier"]
    assert tiny_pipeline["classifier"].stat().st_mtime_ns == before
    assert "exists for this config: skipping (use --force to retrain)" in capsys.readouterr().err


def test_recipe_budget_splits_in_the_shipped_proportions() -> None:
    from train.classifier import RECIPE_MINUTES, ClassifierArgs, split_minutes, training_seconds

    assert RECIPE_MINUTES == (30.0, 4.0, 4.0)
    default = ClassifierArgs()
    assert default.minutes == 38.0
    assert split_minutes(default.minutes, default.shares()) == pytest.approx([30.0, 4.0, 4.0])
    assert split_minutes(3.8, default.shares()) == pytest.approx([3.0, 0.4, 0.4])
    assert split_minutes(2.0, (0.75, 0.25)) == [1.5, 0.5]
    assert split_minutes(2.0, (1.0, 0.0, 0.0)) == [2.0, 0.0, 0.0]
    first, second, third = ClassifierArgs(minutes=3.8).stages()
    assert (first.name, first.lr, first.cutmix, first.pseudo) == ("scratch", 2e-3, 0.0, False)
    assert (second.name, second.lr, second.cutmix) == ("cutmix_finetune", 5e-4, 0.8)
    assert (third.name, third.lr, third.cutmix) == ("pseudo_crops", 5e-4, 0.0)
    assert [s.minutes for s in (first, second, third)] == pytest.approx([3.0, 0.4, 0.4])
    # the existing flags keep their meaning for the first stage
    (only,) = ClassifierArgs(
        init="a.pt", cutmix=0.5, lr=1e-3, finetune_share=0.0, pseudo_share=0.0
    ).stages()
    assert (only.name, only.lr, only.cutmix, only.pseudo, only.minutes) == (
        "init",
        1e-3,
        0.5,
        False,
        38.0,
    )
    # what loading leaves is split between the stages' training in the same proportions
    half = ClassifierArgs(minutes=2.0, finetune_share=0.25, pseudo_share=0.0).stages()
    assert training_seconds(100.0, half, 2.0) == [75.0, 25.0]
    assert training_seconds(-5.0, half, 2.0) == [1.0, 1.0]  # a spent budget: one second each
    assert ClassifierArgs(dataset="voc2007", finetune_lr=1e-5).stages()[1].lr == 1e-5
    assert ClassifierArgs(dataset="voc2007").stages()[1].lr == pytest.approx(2.5e-5)


def test_step_budget_splits_like_the_minutes() -> None:
    from train.classifier import ClassifierArgs, split_steps

    shares = ClassifierArgs().shares()
    assert split_steps(380, shares) == [300, 40, 40]
    assert split_steps(16, shares) == [12, 2, 2]  # the later stages' shares rounded
    assert split_steps(7, (0.5, 0.5)) == [3, 4]
    stages = ClassifierArgs(steps=380).stages()
    assert [s.step_budget for s in stages] == [300, 40, 40]
    assert [s.minutes for s in stages] == pytest.approx([30.0, 4.0, 4.0])  # still the time cap
    assert [s.step_budget for s in ClassifierArgs().stages()] == [0, 0, 0]  # none by default
    (only,) = ClassifierArgs(steps=5, finetune_share=0.0, pseudo_share=0.0).stages()
    assert only.step_budget == 5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--minutes", "0"],
            "error: --minutes 0.0: must be a finite number > 0",
        ),
        (
            ["--finetune-share", "1.5"],
            "error: --finetune-share 1.5: must be a finite number in [0, 1]",
        ),
        (
            ["--finetune-share", "0.9"],
            "error: --finetune-share 0.9 + --pseudo-share 0.105263 leave the first stage no "
            "time: their sum must be below 1 (or at most 1 with --init)",
        ),
        (["--steps", "-1"], "error: --steps -1: must be an integer ≥ 0"),
        (
            ["--steps", "4"],
            "error: --steps 4: leaves a stage no step at --finetune-share 0.105263 and "
            "--pseudo-share 0.105263; give more steps or set a share to 0 (no such stage)",
        ),
    ],
)
def test_recipe_bad_budget_is_one_line(
    flags: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert train_main(["classifier", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err and err.count("\n") == 1


def test_empty_negatives_append_all_zero_maps_with_negative_targets() -> None:
    import torch

    from train.classifier import _add_empty

    mid = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2) + 1
    y = torch.tensor([[0.95, 0.05, 0.05], [0.05, 0.5, 0.95]])
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    m2, y2, w2 = _add_empty(mid, y, w, 2, 0.05)
    assert m2.shape == (4, 1, 2, 2) and torch.equal(m2[:2], mid)
    assert torch.equal(m2[2:], torch.zeros(2, 1, 2, 2))
    assert torch.equal(y2[:2], y) and torch.equal(y2[2:], torch.full((2, 3), 0.05))
    assert torch.equal(w2[:2], w) and torch.equal(w2[2:], torch.ones(2, 3))
    same = _add_empty(mid, y, w, 0, 0.05)
    assert all(a is b for a, b in zip(same, (mid, y, w), strict=True))


def test_empty_negatives_flag_is_checked_and_recorded() -> None:
    from train.classifier import ClassifierArgs, command_line

    for bad in (-1, 1.5):
        message = f"--empty-negatives {bad}: must be an integer ≥ 0"
        with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
            ClassifierArgs(empty_negatives=bad)  # type: ignore[arg-type]
    assert command_line(ClassifierArgs(empty_negatives=4)) == (
        "python -m train classifier --empty-negatives 4"
    )


def _halves(root: Path, ckpt: Path, minutes: float, steps: int) -> Path:
    """Train the recipe's two stages at equal shares of ``minutes`` and ``steps`` on ``root``
    into ``ckpt``; return the path of its record."""
    from train.classifier import ClassifierArgs, train_classifier

    args = ClassifierArgs(
        root=str(root),
        checkpoint=str(ckpt),
        minutes=minutes,
        steps=steps,
        finetune_share=0.5,
        pseudo_share=0.0,
        batch_size=8,
    )
    train_classifier(args)
    return ckpt.with_suffix(".json")


@slow
def test_step_budget_repeats_the_weights(
    tiny_animals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trainings with the same ``--steps`` give the same weights and stop at their steps,
    however long each step took."""
    import torch

    from cutbg_env.backbone import load_classifier

    monkeypatch.chdir(tmp_path)
    weights, records = [], []
    for name in ("a", "b"):
        record = _halves(tiny_animals, tmp_path / name / "c.pt", minutes=2.0, steps=7)
        weights.append(load_classifier(record.with_suffix(".pt"))[0].state_dict())
        records.append(json.loads(record.read_text()))
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
    for record in records:
        assert [(s["step_budget"], s["steps"]) for s in record["stages"]] == [(3, 3), (4, 4)]
        assert record["steps"] == 7
    assert records[0]["test_ap"] == records[1]["test_ap"]


@slow
def test_a_step_budget_cut_short_by_the_time_says_so(
    tiny_animals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    # 0.01 minutes leave each stage its minimum of one second: far fewer than 50,000 steps
    record = json.loads(_halves(tiny_animals, tmp_path / "c.pt", 0.01, 100_000).read_text())
    err = capsys.readouterr().err
    for stage in record["stages"]:
        assert 0 < stage["steps"] < stage["step_budget"] == 50_000
        assert (
            f"classifier stage {stage['name']}: its time ran out at step {stage['steps']} of "
            "50000 (raise --minutes for a run that repeats on any machine)"
        ) in err


@slow
def test_recipe_stages_run_and_the_record_is_written_atomically(
    tiny_animals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import cutbg_env.io
    from cutbg_env.backbone import load_classifier
    from train.classifier import ClassifierArgs, train_classifier

    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def replace(src: str, dst: str | Path) -> None:
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(cutbg_env.io.os, "replace", replace)
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "out" / "c.pt"
    args = ClassifierArgs(
        root=str(tiny_animals),
        checkpoint=str(ckpt),
        minutes=0.06,
        finetune_share=0.5,
        pseudo_share=0.0,
        batch_size=8,
    )
    assert train_classifier(args) == ckpt
    record_file = ckpt.with_suffix(".json")
    (src,) = [s for s, d in replaced if d == record_file]  # one temp file, renamed over it
    assert src.parent == record_file.parent and src.name.startswith(".c.json.")
    # no temp file left; the (released) lock stays beside the checkpoint, as a run folder's
    files = sorted(p.name for p in ckpt.parent.iterdir() if p.is_file())
    assert files == [".c.pt.lock", "c.json", "c.pt"]
    record = json.loads(record_file.read_text())
    assert set(record) == {
        "what",
        "command",
        "dataset",
        "test_split",
        "checkpoint",
        "minutes",
        "stages",
        "steps",
        "seconds",
        "test_ap",
        "test_map",
        "machine",
    }
    assert record["command"] == (
        f"python -m train classifier --root {tiny_animals} --checkpoint {ckpt} --minutes 0.06 "
        "--finetune-share 0.5 --pseudo-share 0.0 --batch-size 8"
    )
    scratch, finetune = record["stages"]
    assert (scratch["name"], finetune["name"]) == ("scratch", "cutmix_finetune")
    assert scratch["minutes"] == finetune["minutes"] == pytest.approx(0.03)
    assert (scratch["cutmix"], finetune["cutmix"], finetune["lr"]) == (0.0, 0.8, 5e-4)
    for stage in record["stages"]:
        assert stage["steps"] > 0 and stage["epochs"] >= 1
        assert set(stage["test_ap"]) == set(load_classifier(ckpt)[0].classes)
        assert stage["test_map"] == pytest.approx(np.mean(list(stage["test_ap"].values())))
    assert record["test_map"] == finetune["test_map"]
    assert scratch["training_budget_s"] == finetune["training_budget_s"]  # share 0.5
    assert record["seconds"] > 0


@slow
def test_agent_run_folder_records_the_run(tiny_pipeline: dict) -> None:
    """config.json holds the resolved arguments, the δ, the images, and the run's length; one
    checkpoint per epoch; the final zip is the trained model."""
    run_dir = tiny_pipeline["agent"].parent
    config = json.loads((run_dir / "config.json").read_text())
    resolved = tiny_pipeline["args"].resolved()
    assert config["args"] == dataclasses.asdict(resolved)
    assert config["args"]["epochs"] == 12 and config["args"]["decay_epochs"] == 8
    assert config["delta"] == tiny_pipeline["calibration"]["delta"]["dog"]
    assert config["images"] == 6  # the tiny trainval split's dogs
    assert config["timesteps"] == tiny_pipeline["model"].num_timesteps
    # training stops after the step that completes epoch 12 (2 envs: up to 2 episodes a step)
    assert 12.0 <= config["epochs"] < 12.0 + 2 / 6
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("epoch_*.zip"))
    assert names == ["epoch_012.zip"]  # only the newest epoch is kept: all resume needs
    ckpt, state = last_checkpoint(run_dir)
    assert ckpt.name == "epoch_012.zip" and state["epoch"] == 12
    assert 72 <= state["episodes"] <= 73 and (run_dir / "tb").is_dir()


@slow
def test_agent_saved_and_reloaded_gives_same_greedy_actions(tiny_pipeline: dict) -> None:
    model: DQN = tiny_pipeline["model"]
    reloaded = DQN.load(tiny_pipeline["agent"])
    venv = make_vec_env(tiny_pipeline["args"], "trainval")
    venv.seed(7)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(15):
        a1, _ = model.predict(obs, deterministic=True)
        a2, _ = reloaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a1, a2)
        obs, *_ = venv.step(rng.integers(0, 13, size=venv.num_envs))


@slow
def test_resume_continues_the_step_count(
    tiny_pipeline: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Its own run folder: one epoch, then ``--resume`` to three, from epoch 1's checkpoint."""
    base = dataclasses.replace(tiny_pipeline["args"], out=str(tmp_path / "run"), epochs=1)
    first, _ = fit_agent(base)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    state = json.loads((ckpt_dir / "state.json").read_text())
    assert state["epoch"] == 1 and state["timesteps"] <= first.num_timesteps
    assert sorted(p.name for p in ckpt_dir.glob("epoch_*.zip")) == ["epoch_001.zip"]
    capsys.readouterr()
    model, _ = fit_agent(dataclasses.replace(base, epochs=3, resume=True))
    err = capsys.readouterr().err
    # picked up where epoch 1 ended, from its checkpoint
    assert f"resuming {ckpt_dir / 'epoch_001.zip'} at epoch 1, {state['timesteps']} steps" in err
    after = json.loads((ckpt_dir / "state.json").read_text())
    assert after["epoch"] == 3 and after["episodes"] >= 18
    assert sorted(p.name for p in ckpt_dir.glob("epoch_*.zip")) == ["epoch_003.zip"]
    assert model.num_timesteps >= after["timesteps"] > state["timesteps"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["timesteps"] == model.num_timesteps and config["args"]["resume"] is True


@slow
def test_resume_without_checkpoint_says_so(tiny_pipeline: dict, tmp_path: Path) -> None:
    args = dataclasses.replace(tiny_pipeline["args"], out=str(tmp_path / "fresh"), resume=True)
    with pytest.raises(
        CheckpointError,
        match=r"--resume: no epoch checkpoint in .*fresh/checkpoints; train without --resume",
    ):
        fit_agent(args)
    assert not (tmp_path / "fresh").exists()


# -- calibration pieces ------------------------------------------------------------------------
def test_calibration_rule_on_hand_made_drops() -> None:
    # the context test: the median drop at the GT crops reaches the split
    assert needs_context(np.array([0.0, 0.1, 0.2, 0.3, 0.4]), 0.15)  # median 0.2
    assert needs_context([0.1, 0.2], 0.15)  # median 0.15: reaches it
    assert not needs_context([0.1, 0.19], 0.15)  # median 0.145
    assert not needs_context(np.array([-0.3, 0.9, -0.2]), 0.15)  # one large drop: median -0.2
    assert not needs_context(np.array([]), -1.0)  # no GT crop: no evidence
    # the other classes' grid: from min_delta up to, not including, the context δ
    assert small_deltas(0.02, 0.2) == [0.02, 0.05, 0.1]
    assert small_deltas(0.05, 0.3) == [0.05, 0.1, 0.2]
    assert small_deltas(0.03, 0.05) == []


def test_best_setting_prefers_score_then_smaller_delta_then_lower_threshold() -> None:
    scores = {
        (0.1, "mid", "peak", 0.3): 0.5,
        (0.1, "mid", "peak", 0.2): 0.5,
        (0.05, "senior", "peak", 0.1): 0.4,
    }
    assert best_setting(scores) == (0.1, "mid", "peak", 0.2)  # lower threshold
    scores[(0.05, "mid", "mass", 0.4)] = 0.5
    assert best_setting(scores) == (0.05, "mid", "mass", 0.4)  # smaller δ beats the threshold
    scores[(0.05, "mid", "peak", 0.4)] = 0.5  # same score: the paper's peak region first
    assert best_setting(scores) == (0.05, "mid", "peak", 0.4)
    scores[(0.05, "senior", "peak", 0.4)] = 0.5  # same again: the mid-level layer first
    assert best_setting(scores) == (0.05, "mid", "peak", 0.4)
    scores[(0.3, "senior", "mass", 0.1)] = 0.6  # a higher score beats every tie-break
    assert best_setting(scores) == (0.3, "senior", "mass", 0.1)


def test_best_setting_layer_beats_region_in_the_tie_break() -> None:
    scores = {(0.1, "senior", "peak", 0.5): 1.0, (0.1, "mid", "mass", 0.5): 1.0}
    assert best_setting(scores) == (0.1, "mid", "mass", 0.5)


def test_validation_subset_is_small_and_seeded() -> None:
    a = validation_subset(2000, 0.05, 0)
    assert len(a) == 100 and a == validation_subset(2000, 0.05, 0) and a == sorted(a)
    assert a[:5] == [41, 68, 72, 98, 135]  # numpy's seeded permutation, pinned
    assert a != validation_subset(2000, 0.05, 1)
    assert validation_subset(40, 0.05, 0) == [11, 27]
    assert validation_subset(24, 0.05, 0) == [18]  # the tiny dataset's one validation image
    assert validation_subset(10, 0.05, 3) == [9]  # round(0.5) = 0: still one image
    assert validation_subset(20, 0.01, 0) == validation_subset(20, 0.05, 0)  # both one image
    assert set(validation_subset(40, 0.025, 7)) <= set(range(40))
    for bad in (0.2, 0.0, -0.01):
        with pytest.raises(
            ValueError, match=rf"fraction={bad}: the validation subset must be 0 < f ≤ 0\.05"
        ):
            validation_subset(2000, bad, 0)


def test_validation_images_and_truth_on_the_tiny_dataset(tiny_animals: Path) -> None:
    from cutbg_env.data import VOCDataset

    data = VOCDataset(tiny_animals, "trainval")
    dog = SimpleNamespace(data=data, positives=data.positives("dog"), class_name="dog")
    cat = SimpleNamespace(data=data, positives=data.positives("cat"), class_name="cat")
    assert validation_images(dog) == [18]  # image 18 holds a dog and a zebra ...
    assert validation_images(cat) == []  # ... and no cat
    assert validation_images(dog, 0.05, 1) == [1]  # seed 1 draws image 1, a dog's too
    assert validation_truth(dog, [18]) == {18: [(1, 124, 99, 212)]}


def test_pooled_setting_sums_validation_hits_over_classes() -> None:
    dog = {"mid/peak/0.5": 7, "mid/mass/0.4": 5}  # dog alone would pick peak
    cat = {"mid/peak/0.5": 2, "mid/mass/0.4": 6}
    assert pooled_setting([dog, cat]) == ("mid", "mass", 0.4)  # 11 hits against 9
    assert pooled_setting([dog]) == ("mid", "peak", 0.5)
    # ties go to the lower threshold; a setting missing from a table counts 0 there
    assert pooled_setting([{"mid/mass/0.4": 3, "mid/mass/0.3": 3}]) == ("mid", "mass", 0.3)
    assert pooled_setting([{"senior/peak/0.2": 4}, {"mid/mass/0.4": 3}]) == ("senior", "peak", 0.2)
    # same hits: the mid-level layer, then the peak region
    assert pooled_setting([{"senior/peak/0.2": 4, "mid/mass/0.2": 4}]) == ("mid", "mass", 0.2)
    assert pooled_setting([{"mid/mass/0.2": 4, "mid/peak/0.2": 4}]) == ("mid", "peak", 0.2)
    # keys are parsed, so "0.40" and "0.4" are one setting
    assert pooled_setting([{"mid/mass/0.40": 2}, {"mid/mass/0.4": 2, "mid/peak/0.1": 3}]) == (
        "mid",
        "mass",
        0.4,
    )


def test_setting_keys_round_trip_and_name_bad_keys() -> None:
    assert setting_key(("mid", "mass", 0.4)) == "mid/mass/0.4"
    assert parse_setting("senior/peak/0.3") == ("senior", "peak", 0.3)
    assert all(
        parse_setting(setting_key(("mid", "peak", t))) == ("mid", "peak", t) for t in THRESHOLDS
    )
    with pytest.raises(ValueError, match=r"'mid/mass': expected 'layer/region/threshold'"):
        parse_setting("mid/mass")
    with pytest.raises(ValueError, match=r"'mid/mass/high': expected"):
        parse_setting("mid/mass/high")
    with pytest.raises(ValueError, match=r"'deep/mass/0.4': layer must be one of"):
        parse_setting("deep/mass/0.4")
    with pytest.raises(ValueError, match="pooled_setting: no validation table to pool"):
        pooled_setting([])


def test_pooled_delta_sums_greedy_hits_over_classes() -> None:
    dog = {0.02: 7, 0.05: 5, 0.1: 2}  # dog alone would pick 0.02
    cat = {0.02: 1, 0.05: 6, 0.1: 6}
    assert pooled_delta([dog, cat]) == 0.05  # 11 hits against 8 and 8
    assert pooled_delta([dog]) == 0.02
    assert pooled_delta([{0.05: 3, 0.1: 3}, {0.2: 2}]) == 0.05  # ties: the smaller δ
    assert pooled_delta([{0.05: 1}, {0.3: 2}]) == 0.3  # a δ missing from a table counts 0 there
    with pytest.raises(ValueError, match="pooled_delta: no greedy-cut hits to pool"):
        pooled_delta([])


def _greedy_crops(world: object, images: list[int], delta: float) -> dict[int, tuple]:
    """Greedy cutting's crop of each image at ``delta``."""
    from cutbg_env.localize import greedy_cut

    return {i: g.crop for i, g in zip(images, greedy_cut(world, images, delta), strict=True)}


def _check_refinement(calib: dict, world: object, images: list[int], truth: dict) -> float:
    """The stored setting is the best refined CorLoc of greedy cutting at the class's δ, and
    every setting's hits there are stored; return that CorLoc (a fraction)."""
    delta = calib["delta"]["dog"]
    scores = refinement_scores(world, _greedy_crops(world, images, delta), truth)
    top = best_setting({(0.0, *k): v for k, v in scores.items()})[1:]
    assert top == (
        calib["heatmap_layer"]["dog"],
        calib["heatmap_region"]["dog"],
        calib["heatmap_threshold"]["dog"],
    )
    assert 100 * scores[top] == pytest.approx(calib["validation"]["dog"]["refined_corloc"])
    hits = {setting_key(k): round(v * len(images)) for k, v in scores.items()}
    assert calib["refinement_hits"]["dog"] == hits and len(hits) == 54
    assert dataset_setting(calib) == pooled_setting(calib["refinement_hits"].values())
    return scores[top]


@slow
def test_pipeline_calibration_follows_its_rule(tiny_pipeline: dict) -> None:
    """The default rule: dog's δ is the grid's δ whose greedy cutting hits the most validation
    images of the calibrated classes (here dog's own), the smaller of ties."""
    from cutbg_env.geometry import crop_to_box
    from cutbg_env.metrics import corloc_hit
    from cutbg_env.world import CutWorld
    from train.calibrate import DELTAS

    calib = json.loads(
        (tiny_pipeline["base"] / "runs" / "animals" / "calibration.json").read_text()
    )
    assert calib == tiny_pipeline["calibration"]
    val = calib["validation"]["dog"]
    assert val["images"] == 1  # image 18, with one dog box
    world = CutWorld("animals", "trainval", "dog")
    images = validation_images(world)
    truth = validation_truth(world, images)
    size = {i: (world.data.annotation(i).width, world.data.annotation(i).height) for i in images}
    hits = {}
    for d in DELTAS:
        crops = _greedy_crops(world, images, d)
        hits[d] = sum(corloc_hit(crop_to_box(crops[i], *size[i]), truth[i]) for i in images)
    assert val["greedy_hits"] == {f"{d:g}": n for d, n in hits.items()}
    assert calib["delta"]["dog"] == pooled_delta([hits])
    assert val["greedy_corloc"] == 100 * hits[calib["delta"]["dog"]]
    assert calib["rule"]["delta"].startswith("one δ for the 1 classes calibrated together")
    _check_refinement(calib, world, images, truth)


@slow
def test_per_class_rule_follows_the_context_test(own_runs: Path) -> None:
    """``--delta-rule per-class``: 0.2 where dog's median GT-crop drop reaches 0.15, else the
    grid's δ below 0.2 whose refined CorLoc no other beats (a smaller one: not even ties)."""
    from cutbg_env.world import CutWorld

    calib = calibrate(CalibrateArgs(classes="dog", delta_rule="per-class"))
    val = calib["validation"]["dog"]
    context = val["gt_drop_median"] >= 0.15
    assert val["needs_context"] is context
    candidates = [0.2] if context else [0.02, 0.05, 0.1]
    delta = calib["delta"]["dog"]
    assert delta in candidates
    assert calib["rule"]["delta"].startswith("0.2 where the median score drop at the GT crops")
    world = CutWorld("animals", "trainval", "dog")
    images = validation_images(world)
    truth = validation_truth(world, images)
    chosen = _check_refinement(calib, world, images, truth)
    for d in candidates:
        scores = refinement_scores(world, _greedy_crops(world, images, d), truth)
        other = max(scores.values())
        assert other < chosen if d < delta else other <= chosen, d


@slow
def test_calibrate_writes_the_asked_classes_and_keeps_the_others(
    own_runs: Path, capsys: pytest.CaptureFixture
) -> None:
    path = own_runs / "calibration.json"
    stored = json.loads(path.read_text())
    stored["delta"]["cat"] = 0.42  # a class calibrated before, not asked for now
    stored["heatmap_threshold"]["cat"] = 0.7
    path.write_text(json.dumps(stored))
    # every median drop is ≥ -1: each class takes the context δ
    result = calibrate(
        CalibrateArgs(classes="zebra", drop_split=-1.0, context_delta=0.07, delta_rule="per-class")
    )
    saved = json.loads(path.read_text())
    assert saved == result
    # its last line: how well the dataset's heat-map setting localizes, over every stored class
    setting, hits, images = dataset_setting_hits(saved)
    assert images == sum(v["images"] for v in saved["validation"].values()) > 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"calibrate: the dataset's heat-map setting {setting_key(setting)} refines greedy-cut "
        f"boxes into hits on {hits} of {images} validation images ({100 * hits / images:.0f} %)"
    )
    assert saved["delta"] == {"dog": stored["delta"]["dog"], "cat": 0.42, "zebra": 0.07}
    assert saved["heatmap_threshold"]["cat"] == 0.7
    for key in ("heatmap_layer", "heatmap_region", "heatmap_threshold", "validation"):
        assert saved[key]["dog"] == stored[key]["dog"] and "zebra" in saved[key]
    assert saved["heatmap_threshold"]["zebra"] in THRESHOLDS
    assert saved["validation"]["zebra"]["images"] == 1
    # each class records the classifier it was calibrated with (cat: no record, as written)
    digest = hashlib.sha256((own_runs / "classifier.pt").read_bytes()).hexdigest()
    assert saved["classifier"] == {"dog": digest, "zebra": digest}
    assert saved["refinement_hits"]["dog"] == stored["refinement_hits"]["dog"]
    zebra, val = saved["refinement_hits"]["zebra"], saved["validation"]["zebra"]
    assert len(zebra) == 54  # the chosen setting's hits are its validation CorLoc
    key = setting_key(calibrated_setting(saved, "zebra"))  # present: checked above
    assert zebra[key] == round(val["refined_corloc"] * val["images"] / 100)
    assert saved["validation"]["zebra"]["needs_context"] is True
    assert saved["rule"]["delta"].startswith("0.07 where the median score drop at the GT crops")
    assert saved["rule"]["subset"] == "5% of trainval, seed 0"
    # a class without a validation image keeps its stored values (here: none)
    again = calibrate(
        CalibrateArgs(
            classes="cat,zebra", drop_split=-1.0, context_delta=0.3, delta_rule="per-class"
        )
    )
    assert again["delta"] == {"dog": stored["delta"]["dog"], "cat": 0.42, "zebra": 0.3}


@slow
def test_calibrate_unknown_class_is_one_line(own_runs: Path, capsys: pytest.CaptureFixture) -> None:
    before = (own_runs / "calibration.json").read_text()
    assert train_main(["calibrate", "--classes", "zebra,unicorn"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown class 'unicorn' for ")
    assert "valid classes: bear, bird, cat, cow, dog" in lines[0]
    assert (own_runs / "calibration.json").read_text() == before  # nothing calibrated


# -- schedules and arguments -------------------------------------------------------------------
def test_schedules_follow_the_paper_in_epochs() -> None:
    clock = EpochClock(images=10)
    eps = EpsilonSchedule(clock, decay=10, end=0.1)
    lr = LrSchedule(clock, decay=10, start=1e-5, end=1e-6)
    assert eps(1.0) == 1.0 and lr(1.0) == pytest.approx(1e-5)
    clock.episodes = 10 * 5  # epoch 5: ε has dropped 0.1 per 10/9 epochs -> 4 steps
    assert eps(0.5) == pytest.approx(0.6)
    assert lr(0.5) == pytest.approx(1e-5 * 0.1**0.5)  # geometric: halfway in log space
    clock.episodes = 10 * 10
    assert eps(0.0) == pytest.approx(0.1) and lr(0.0) == pytest.approx(1e-6)
    clock.episodes = 10 * 40
    assert eps(0.0) == pytest.approx(0.1) and lr(0.0) == pytest.approx(1e-6)


def test_zero_decay_epochs_means_no_decay() -> None:
    clock = EpochClock(images=10)
    assert EpsilonSchedule(clock, decay=0, end=0.1)(1.0) == 0.1
    assert LrSchedule(clock, decay=0, start=1e-3, end=1e-4)(1.0) == 1e-4


def test_defaults_resolve_per_dataset() -> None:
    a = AgentArgs(dataset="voc2007").resolved()
    assert (a.epochs, a.decay_epochs, a.lr_start, a.lr_end, a.gamma) == (50, 10, 1e-5, 1e-6, 0.95)
    assert (a.buffer_size, a.adapt_channels) == (30_000, 128)
    # replay memory at VOC defaults: 512x7x7 + 4x13 (+ 2 score) float16 values, obs and next obs
    assert a.observe_score
    per_obs = (512 * 49 + 52 + 2) * 2
    assert a.buffer_size * 2 * per_obs < 4 * 10**9
    e = AgentArgs().resolved()
    assert (e.epochs, e.decay_epochs, e.lr_start, e.lr_end, e.gamma) == (30, 8, 1e-3, 1e-4, 0.8)
    assert (e.buffer_size, e.adapt_channels) == (100_000, 32)
    assert e.buffer_size * 2 * (64 * 49 + 52 + 2) * 2 < 4 * 10**9
    assert AgentArgs(epochs=5).resolved().decay_epochs == 5  # decay never outlasts training
    assert isinstance(AgentArgs(), StageArgs) and isinstance(AgentArgs(), DQNArgs)
    # a value that is set wins on every dataset; a folder is not VOC even when named like it
    assert AgentArgs(dataset="voc2007", gamma=0.8).resolved().gamma == 0.8
    assert per_dataset(0, "voc2007", 1, 2) == 0
    assert (per_dataset(None, "voc2012", 1, 2), per_dataset(None, "data/voc2007", 1, 2)) == (1, 2)


def test_zero_is_a_value_not_a_default() -> None:
    z = AgentArgs(epochs=0, decay_epochs=0, learning_starts=0).resolved()
    assert (z.epochs, z.decay_epochs, z.learning_starts) == (0, 0, 0)
    assert AgentArgs(epochs=0).resolved().decay_epochs == 0
    # 0 is checked as a value, never replaced by the default: where it is out of range, it is
    # refused in one line naming the flag and the range
    for field, flag, allowed in [
        ("lr_start", "--lr-start 0.0", "a finite number > 0"),
        ("lr_end", "--lr-end 0.0", "a finite number > 0"),
        ("buffer_size", "--buffer-size 0", "an integer ≥ 1"),
        ("adapt_channels", "--adapt-channels 0", "an integer ≥ 1"),
    ]:
        zero = 0.0 if field.startswith("lr") else 0
        with pytest.raises(OptionError, match=f"^{re.escape(flag)}: must be {allowed}$"):
            AgentArgs(**{field: zero})


def test_build_needs_resolved_arguments() -> None:
    with pytest.raises(ValueError, match=r"DQNArgs\.build: call resolved_for\(dataset\) first"):
        DQNArgs().build(env=None)


def test_cli_flags_reach_the_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """tyro: ``--class`` is ``class_name``, ``--epochs 0`` stays 0 through ``resolved()``,
    booleans are ``--x/--no-x``."""
    import train.agent

    seen: list[AgentArgs] = []
    monkeypatch.setattr(train.agent, "train_agent", seen.append)
    argv = ["agent", "--class", "cat", "--epochs", "0", "--no-observe-score", "--lr-start", "0.5"]
    assert train_main(argv) == 0
    (args,) = seen
    assert (args.class_name, args.epochs, args.observe_score, args.lr_start) == (
        "cat",
        0,
        False,
        0.5,
    )
    resolved = args.resolved()
    assert (resolved.epochs, resolved.decay_epochs, resolved.lr_start) == (0, 0, 0.5)
    assert resolved.lr_end == 1e-4 and resolved.buffer_size == 100_000  # the rest: defaults
    assert train_main(["agent", "--class-name", "bear", "--seed", "3", "--heads", "2"]) == 0
    assert (seen[1].class_name, seen[1].seed, seen[1].heads) == ("bear", 3, 2)


def test_cli_rejects_a_bad_flag_value(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        train_main(["agent", "--epochs", "many"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and "many" in err


@slow
def test_epochs_zero_trains_nothing_and_says_so(tiny_pipeline: dict, tmp_path: Path) -> None:
    """``--epochs 0`` on the command line is a run of zero epochs (not the default 30): no step,
    no epoch checkpoint, an untrained agent saved, and config.json records 0."""
    out = tmp_path / "zero"
    argv = ["agent", "--class", "dog", "--epochs", "0", "--n-envs", "2", "--no-progress"]
    argv += ["--learning-starts", "64", "--buffer-size", "500", "--out", str(out)]
    assert train_main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["epochs"] == 0 and config["args"]["decay_epochs"] == 0
    assert config["timesteps"] == 0 and config["epochs"] == 0.0
    assert not (out / "checkpoints").exists() and (out / "agent.zip").is_file()
    assert DQN.load(out / "agent.zip").num_timesteps == 0


# -- CutDQN's losses ---------------------------------------------------------------------------
def _one_transition_batch(venv) -> tuple[SimpleNamespace, np.ndarray]:
    import torch

    venv.seed(1)
    obs = venv.reset()
    actions = np.array([0, 12])
    nxt, rewards, dones, _ = venv.step(actions)
    as_t = lambda o: {k: torch.as_tensor(v, dtype=torch.float32) for k, v in o.items()}  # noqa: E731
    batch = SimpleNamespace(
        observations=as_t(obs),
        next_observations=as_t(nxt),
        actions=torch.as_tensor(actions).reshape(-1, 1),
        rewards=torch.as_tensor(rewards).reshape(-1, 1),
        dones=torch.as_tensor(dones, dtype=torch.float32).reshape(-1, 1),
        discounts=None,
    )
    return batch, dones


@slow
@pytest.mark.parametrize(("double_q", "heads"), [(True, 1), (False, 1), (True, 2)])
def test_td_target_and_validity_loss(tiny_pipeline: dict, double_q: bool, heads: int) -> None:
    """One gradient step's loss, head by head: the Huber loss to r + γ(1−done)·Q_target(s', a*)
    with a* = argmax Q(s') (Double DQN) or argmax Q_target(s') (plain), each head against its
    own target head, + the validity BCE; both averaged over the heads."""
    import torch
    from stable_baselines3.common.logger import configure

    functional = torch.nn.functional
    venv = make_vec_env(tiny_pipeline["args"], "trainval")
    if heads == 1:  # the pipeline's trained agent
        model = CutDQN.load(tiny_pipeline["agent"], env=venv)
        assert model.double_q is True  # saved with the agent
    else:  # a fresh network with several heads
        model = (
            dataclasses.replace(tiny_pipeline["args"], heads=heads).resolved().build(venv, seed=0)
        )
    assert isinstance(model, CutDQN) and "score" in model.observation_space.spaces
    assert model.q_net.n_heads == model.q_net_target.n_heads == heads
    model.double_q = double_q
    model.set_logger(configure(None, []))
    batch, dones = _one_transition_batch(venv)
    with torch.no_grad():  # make every target head prefer another next action than its head
        w_next, l_next = model.q_net.heads(batch.next_observations)
        for k, head in enumerate(model.q_net_target.q_net):
            online = int(model.q_net.q_values(w_next[k], l_next[k])[0].argmax())
            other = 12 if online != 12 else 0  # STOP, else UP_1
            head[-1].bias[other] += 100.0  # its continuation value W
            if other == 0:
                head[-1].bias[13] += 100.0  # UP_1's validity logit: certainly valid
    model.replay_buffer = SimpleNamespace(sample=lambda *a, **k: batch)  # type: ignore[assignment]
    with torch.no_grad():
        w, logits = model.q_net.heads(batch.observations)
        assert w.shape == (heads, 2, 13) and logits.shape == (heads, 2, 12)
        # the network acts on the mean of its heads' Q-values
        torch.testing.assert_close(
            model.q_net(batch.observations), model.q_net.q_values(w, logits).mean(0)
        )
        w_next, l_next = model.q_net.heads(batch.next_observations)
        w_target, l_target = model.q_net_target.heads(batch.next_observations)
        huber, bce, disagree = [], [], []
        for k in range(heads):
            q = model.q_net.q_values(w[k], logits[k])
            online_next = model.q_net.q_values(w_next[k], l_next[k])
            target_next = model.q_net_target.q_values(w_target[k], l_target[k])
            pick = (online_next if double_q else target_next).argmax(1, keepdim=True)
            disagree.append(bool(online_next[0].argmax() != target_next[0].argmax()))
            y = batch.rewards + (1 - batch.dones) * model.gamma * target_next.gather(1, pick)
            huber.append(functional.smooth_l1_loss(q.gather(1, batch.actions), y).item())
            # the validity cross-entropy on the one sampled cut (env 0's action 0)
            label = (batch.rewards[0, 0] > 0).float()
            bce.append(functional.binary_cross_entropy_with_logits(logits[k, 0, 0], label).item())
        expected = float(np.mean(huber) + np.mean(bce))
    # the two rules pick different next actions for the transition that bootstraps
    assert all(disagree)
    assert bool(dones[1]) and not bool(dones[0])  # STOP ends, so one target has no bootstrap
    model.train(gradient_steps=1, batch_size=2)
    assert model.logger.name_to_value["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_heads_share_the_extractor_and_act_on_their_mean() -> None:
    import torch
    from gymnasium import spaces

    from cutbg_env.qnet import ValidityPolicy, policy_kwargs

    box = lambda *shape: spaces.Box(0, 1, shape, np.float32)  # noqa: E731
    space = spaces.Dict({"features": box(8, 7, 7), "history": box(4, 13)})

    def policy(n_heads: int) -> ValidityPolicy:
        kwargs = policy_kwargs(4, 1, 16)
        return ValidityPolicy(space, spaces.Discrete(13), lambda _: 1e-3, n_heads=n_heads, **kwargs)

    net = policy(3).q_net
    assert len(net.q_net) == 3 and net.n_heads == 3
    obs = {
        k: torch.rand((5, *s.shape), generator=torch.Generator().manual_seed(1))
        for k, s in space.spaces.items()
    }
    with torch.no_grad():
        w, logits = net.heads(obs)
        assert w.shape == (3, 5, 13) and logits.shape == (3, 5, 12)
        per_head = torch.stack([net.q_values(w[k], logits[k]) for k in range(3)])
        torch.testing.assert_close(net(obs), per_head.mean(0))
        assert not torch.allclose(per_head[0], per_head[1])  # heads initialised apart
    assert policy(3)._get_constructor_parameters()["n_heads"] == 3  # saved with the agent
    with pytest.raises(ValueError, match=r"^n_heads=0: a Q-network needs at least one head$"):
        policy(0)
    args = DQNArgs(heads=2, members=1, validity_head=False).resolved_for("animals")
    with pytest.raises(ValueError, match=r"^heads=2: several heads need the validity head$"):
        args.build(env=None)


def test_validity_q_values_on_hand_made_heads() -> None:
    """Q_cut = σ(ℓ)(scale + W) − (1 − σ(ℓ)) scale, Q_stop = W_stop."""
    import torch

    from cutbg_env.qnet import ValidityQNetwork

    w = torch.zeros(1, 13)
    w[0, 2], w[0, 12] = 10.0, 3.0  # UP_3 continues to a state worth 10; STOP worth 3
    logits = torch.full((1, 12), -1e4)  # every cut certainly invalid ...
    logits[0, 2] = float(np.log(3.0))  # ... but UP_3, valid with p = 0.75
    q = ValidityQNetwork.q_values(
        SimpleNamespace(scales=torch.tensor([1.0, 2.0, 3.0] * 4)),  # type: ignore[arg-type]
        w,
        logits,
    )
    # p = 0 for all cuts but UP_3: Q = −scale; UP_3: 0.75 · (3 + 10) − 0.25 · 3 = 9
    expected = [-1.0, -2.0, 9.0, -1.0, -2.0, -3.0, -1.0, -2.0, -3.0, -1.0, -2.0, -3.0, 3.0]
    np.testing.assert_allclose(q[0].numpy(), expected, rtol=1e-6)


def test_policy_kwargs_name_the_extractor_and_optimizer() -> None:
    import torch

    from cutbg_env.qnet import CutFeatures, policy_kwargs

    assert policy_kwargs(16, 3, 64) == {
        "features_extractor_class": CutFeatures,
        "features_extractor_kwargs": {"channels": 16, "kernel": 3},
        "net_arch": [64],
        "optimizer_class": torch.optim.RMSprop,
        "normalize_images": False,
    }


def test_cut_features_width_and_score_input() -> None:
    import torch
    from gymnasium import spaces

    from cutbg_env.qnet import CutFeatures

    box = lambda *shape: spaces.Box(0, 1, shape, np.float32)  # noqa: E731
    plain = spaces.Dict({"features": box(8, 7, 7), "history": box(4, 13)})
    scored = spaces.Dict({**plain.spaces, "score": box(2)})
    assert CutFeatures(plain, channels=4).features_dim == 4 * 49 + 52
    ext = CutFeatures(scored, channels=4)
    assert ext.features_dim == 4 * 49 + 52 + 2 and ext.extras == ["score"]
    obs = {k: torch.zeros((3, *s.shape)) for k, s in scored.spaces.items()}
    obs["score"][:, 1] = torch.tensor([0.25, 0.5, 0.75])
    out = ext(obs)
    assert out.shape == (3, ext.features_dim)
    torch.testing.assert_close(out[:, -1], obs["score"][:, 1])  # the score is passed through
    torch.testing.assert_close(out[:, -54:-2], torch.zeros(3, 52))  # an empty history


@slow
def test_validity_head_trains_and_reloads(tiny_pipeline: dict, tmp_path: Path) -> None:
    """One transition stored per env step, the validity loss on top of the TD loss, and an agent
    that reloads with plain ``DQN.load`` and acts the same."""
    import torch
    from stable_baselines3.common.logger import configure

    from cutbg_env.qnet import ValidityQNetwork

    args = dataclasses.replace(tiny_pipeline["args"], epochs=2, out=str(tmp_path / "v"))
    model, path = fit_agent(args)
    assert isinstance(model.q_net, ValidityQNetwork)
    buffer = model.replay_buffer
    stored = (buffer.buffer_size if buffer.full else buffer.pos) * buffer.n_envs
    # SB3 does not store the step on which the callback ends training
    assert stored == model.num_timesteps - args.n_envs
    loaded = DQN.load(path)  # the saved agent needs no custom class at load time
    assert isinstance(loaded.q_net, ValidityQNetwork)
    obs = {k: torch.as_tensor(v[None]).float() for k, v in model.observation_space.sample().items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded.q_net(obs), model.q_net(obs))
    # loss = Huber(Q(s, a), Double-DQN target) + BCE(ℓ_a, r > 0) over the sampled cuts
    model.set_logger(configure(None, []))
    batch = buffer.sample(32)
    with torch.no_grad():
        (w,), (logits,) = model.q_net.heads(batch.observations)  # one head
        current = model.q_net.q_values(w, logits).gather(1, batch.actions.long())
        best = model.q_net(batch.next_observations).argmax(1, keepdim=True)
        nxt = model.q_net_target(batch.next_observations).gather(1, best)
        y = batch.rewards + (1 - batch.dones) * model.gamma * nxt
        cut = batch.actions[:, 0] < 12
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[cut].gather(1, batch.actions[cut].long()).squeeze(1),
            (batch.rewards[cut, 0] > 0).float(),
        )
        expected = torch.nn.functional.smooth_l1_loss(current, y).item() + bce.item()
    assert bool(cut.any())
    model.replay_buffer = SimpleNamespace(sample=lambda *a, **k: batch)  # type: ignore[assignment]
    model.train(gradient_steps=1, batch_size=32)
    assert model.logger.name_to_value["train/loss"] == pytest.approx(expected, rel=1e-5)


# -- the agent's refinement table --------------------------------------------------------------
@slow
def test_agent_chooses_its_refinement(tiny_pipeline: dict) -> None:
    """refinement.json is the refined CorLoc of the agent's own validation boxes, every
    setting, and its best setting; evaluation pools the tables, else keeps the calibration's."""
    from cutbg_env.refine import evaluation_settings, read_refinement
    from cutbg_env.rollout import observation_options, rollout, sb3_policy
    from cutbg_env.world import CutWorld

    path = tiny_pipeline["agent"].parent / REFINEMENT_FILE
    own = json.loads(path.read_text())
    world = CutWorld("animals", "trainval", "dog")
    images = validation_images(world)
    model = tiny_pipeline["model"]
    delta = tiny_pipeline["calibration"]["delta"]["dog"]
    out = rollout(world, images, sb3_policy(model), delta, **observation_options(model))
    crops = {i: loc.crop for i, (loc, _) in zip(images, out, strict=True)}
    scores = refinement_scores(world, crops, validation_truth(world, images))
    assert len(scores) == 54  # 2 layers × 3 regions × 9 thresholds
    n = own["validation"]["images"]
    assert n == len(images) == 1
    assert own["validation"]["hits"] == {setting_key(k): round(v * n) for k, v in scores.items()}
    best = best_setting({(0.0, *k): v for k, v in scores.items()})[1:]
    assert (own["heatmap_layer"], own["heatmap_region"], own["heatmap_threshold"]) == best
    assert own["validation"]["agent_refined_corloc"] == 100 * scores[best]
    table = read_refinement(path)
    assert table == own["validation"]["hits"]
    calib = {
        "heatmap_layer": {"dog": "senior", "cat": "senior"},
        "heatmap_region": {"dog": "mass", "cat": "mass"},
        "heatmap_threshold": {"dog": 0.9, "cat": 0.3},
    }
    settings, how = evaluation_settings({"dog": table, "cat": None}, calib)
    assert settings == {"dog": best, "cat": best} and how == "pooled over dog"
    # no table at all: each class keeps the calibration's setting, else the default
    settings, how = evaluation_settings({"cat": None, "bear": None}, calib)
    assert settings == {"cat": ("senior", "mass", 0.3), "bear": ("mid", "peak", 0.5)}
    assert how == "the calibration's setting per class (no agent has a validation table)"
    assert read_refinement(tiny_pipeline["base"] / "nowhere" / REFINEMENT_FILE) is None


def test_evaluation_pools_the_tables_of_every_class() -> None:
    from cutbg_env.refine import evaluation_settings

    dog = {"mid/peak/0.5": 1, "senior/mass/0.9": 0}
    cat = {"mid/peak/0.5": 0, "senior/mass/0.9": 100}
    settings, how = evaluation_settings({"dog": dog, "cat": cat, "cow": None}, {})
    assert settings == dict.fromkeys(("dog", "cat", "cow"), ("senior", "mass", 0.9))
    assert how == "pooled over dog, cat"


def test_the_dataset_setting_is_pooled_over_the_calibrated_classes() -> None:
    from cutbg_env.refine import evaluation_settings

    calib = {
        "refinement_hits": {
            "dog": {"mid/peak/0.5": 7, "mid/mass/0.4": 5},
            "cat": {"mid/peak/0.5": 2, "mid/mass/0.4": 6},
            "bear": {},  # no validation hit table: not counted
        },
        "heatmap_threshold": {"dog": 0.9},  # the per-class setting: not used when pooled
    }
    assert dataset_setting(calib) == ("mid", "mass", 0.4)  # 11 hits against 9
    assert dataset_setting({}) is None and dataset_setting({"refinement_hits": {}}) is None
    # what calibrate reports: the chosen setting's hits over the classes with a table
    calib["validation"] = {"dog": {"images": 20}, "cat": {"images": 15}, "bear": {"images": 9}}
    assert dataset_setting_hits(calib) == (("mid", "mass", 0.4), 11, 35)
    assert dataset_setting_hits({"refinement_hits": {"bear": {}}}) is None
    # the agents' own tables (which alone would pick senior/mass/0.9) are not used
    agents = {"dog": {"senior/mass/0.9": 20}, "cow": None}
    settings, how = evaluation_settings(agents, calib)
    assert settings == {"dog": ("mid", "mass", 0.4), "cow": ("mid", "mass", 0.4)}
    assert how == "the dataset's, pooled over the calibration's validation images of 2 classes"
    # an older calibration file without hit tables: the agents' tables are pooled
    settings, how = evaluation_settings(agents, {"heatmap_threshold": {"dog": 0.9}})
    assert settings["cow"] == ("senior", "mass", 0.9) and how == "pooled over dog"


def test_corrupt_refinement_file_names_it(tmp_path: Path) -> None:
    from cutbg_env.refine import read_refinement

    path = tmp_path / "dog" / REFINEMENT_FILE
    path.parent.mkdir()
    for text in ("{not json", '{"validation": {}}', '{"validation": {"hits": {"mid/mass": 3}}}'):
        path.write_text(text)
        with pytest.raises(
            CheckpointError,
            match=r"dog/refinement\.json is unreadable .*: delete it and retrain the agent in "
            r"that folder",
        ):
            read_refinement(path)


# -- bad input ---------------------------------------------------------------------------------
@slow
def test_unknown_class_is_one_clear_error(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    runs = tiny_pipeline["base"] / "runs"
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert train_main(["agent", "--class", "aeroplane", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown class 'aeroplane' for ")
    assert "valid classes: bear, bird, cat" in lines[0]
    assert "'aeroplane' is a PASCAL VOC class" in lines[0] and "DATASET=voc2007" in lines[0]
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # no partial files


@slow
def test_nonsense_class_is_one_error_line_and_exit_2(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    assert train_main(["agent", "--class", "nosuchclass"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown class 'nosuchclass' for ")
    assert lines[0].endswith(
        "valid classes: bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra"
    )
    assert "PASCAL VOC" not in err and "Traceback" not in err


@slow
def test_voc_missing_says_where_it_goes(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    assert train_main(["agent", "--dataset", "voc2007", "--class", "dog", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset 'voc2007' not found at ")
    assert "VOCdevkit/VOC2007" in lines[0] and "download=True" in lines[0]


@slow
def test_missing_classifier_names_the_command(tiny_pipeline: dict, tmp_path: Path) -> None:
    args = AgentArgs(checkpoint=str(tmp_path / "none.pt"), progress=False)
    with pytest.raises(
        CheckpointError,
        match=r"classifier checkpoint .*none\.pt does not exist: create it with "
        r"`make train-classifier`",
    ):
        fit_agent(args)


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_each_seed_has_its_own_run_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cutbg_env import paths

    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    dog = tmp_path / "animals" / "dog"
    assert AgentArgs().run_dir() == dog == paths.seed_dir("animals", "dog")
    assert AgentArgs(seed=4).run_dir() == dog / "seeds" / "seed_4"
    assert AgentArgs(seed=4, out="elsewhere").run_dir() == Path("elsewhere")
    assert AgentArgs(dataset="voc2007", class_name="cat", seed=1).run_dir() == (
        tmp_path / "voc2007" / "cat" / "seeds" / "seed_1"
    )
    with pytest.raises(ValueError, match=r"^seed=-1: seeds are 0, 1, 2, \.\.\.$"):
        paths.seed_dir("animals", "dog", -1)
