"""Evaluation driver on the tiny trained pipeline: every method, every output file, the agent's
δ, the ensemble rows; and the ensemble policy on fake agents."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny import fake_q_model

from cutbg_env.data import open_split
from cutbg_env.errors import CheckpointError, OptionError
from cutbg_env.geometry import FULL_CROP, box_to_crop, crop_to_box
from cutbg_env.io import file_sha256
from cutbg_env.localize import greedy_cut
from cutbg_env.metrics import average_precision, corloc
from cutbg_env.refine import dataset_setting, refined_box, setting_key
from cutbg_env.rollout import ensemble_options, ensemble_policy, observation_options
from cutbg_env.runs import check_classifier, trained_agent, trained_delta, trained_seeds
from cutbg_env.world import CutWorld
from evaluate.__main__ import main as eval_main
from evaluate.run import METHODS, EvalArgs, evaluate_class, run
from evaluate.tables import ONE_SEED, markdown_table, over_seeds, score_boxes, seed_rows

slow = pytest.mark.slow
ROW_KEYS = {
    "ap",
    "ap07",
    "map",
    "map07",
    "corloc",
    "mean_corloc",
    "calls_per_image",
    "seconds_per_image",
}


@slow
def test_eval_writes_every_method_and_file(tiny_pipeline: dict) -> None:
    out = tiny_pipeline["base"] / "results_eval"
    # the tiny test split has no dog: evaluate on trainval, which has six
    result = run(
        EvalArgs(classes="dog", split="trainval", exhaustive_windows=50, figures=2, out=str(out))
    )
    saved = json.loads((out / "eval.json").read_text())
    assert saved["dataset"] == "animals" and saved["split"] == "trainval"
    assert saved["classes"] == ["dog"] and saved["images"] == 24  # every image, negatives too
    assert set(saved) == {
        "dataset",
        "split",
        "classes",
        "images",
        "args",
        "refinement",
        "delta",
    } | set(METHODS)  # --ensemble is off by default: no ensemble rows
    for m in METHODS:
        assert set(saved[m]) == ROW_KEYS
        assert saved[m]["map"] == saved[m]["ap"]["dog"]  # one class: its mean is its AP
        assert saved[m]["mean_corloc"] == saved[m]["corloc"]["dog"]
        assert saved[m]["corloc"]["dog"] in {100 * k / 6 for k in range(7)}  # 6 positives
        assert (out / "pr" / f"dog_{m}.png").is_file()
    # calls per image: exact for the rule-based rows
    assert saved["exhaustive"]["calls_per_image"] == 50
    assert saved["full_image"]["calls_per_image"] == saved["heatmap"]["calls_per_image"] == 1
    assert saved["agent_refined"]["calls_per_image"] == saved["agent"]["calls_per_image"]
    assert 1 <= saved["agent"]["calls_per_image"] <= 21
    retry = saved["agent_retry"]["calls_per_image"]
    assert retry == saved["agent_retry_refined"]["calls_per_image"] and 1 <= retry <= 20
    # the whole image as the box, p̄ as the confidence: recomputed here
    data = open_split("animals", "trainval")
    world = CutWorld("animals", "trainval", "dog", data=data)
    indices = list(range(24))
    _, p_full = world.full(indices)
    gt = {i: data.gt_boxes(i, "dog") for i in indices}
    whole = {i: crop_to_box(FULL_CROP, 224, 224) for i in indices}
    dets = [(i, p, whole[i]) for i, p in zip(indices, p_full, strict=True)]
    assert saved["full_image"]["ap"]["dog"] == pytest.approx(average_precision(dets, gt))
    assert saved["full_image"]["corloc"]["dog"] == corloc(whole, {i: g for i, g in gt.items() if g})
    # greedy_cut ran at the agent's δ on the images holding a dog: the same mean calls as here
    delta = trained_delta(tiny_pipeline["agent"])
    dogs = [i for i in indices if gt[i]]
    calls = np.mean([loc.calls for loc in greedy_cut(world, dogs, delta)])
    assert saved["greedy_cut"]["calls_per_image"] == pytest.approx(calls)
    assert saved["delta"]["values"] == {"dog": delta}
    assert saved["delta"]["source"] == {"dog": "runs/animals/dog/config.json"}  # from the cwd
    md = (out / "eval.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS) and "agent_ensemble" not in md
    assert md.split("\n")[2] == ONE_SEED and "(the agents of seed 0)" in ONE_SEED
    assert f"δ of every rule-based row: dog {delta:g} (each agent's training δ, config.json)." in md
    figures = sorted((out / "figures").glob("dog_*.png"))
    assert [f.name for f in figures] == [f"dog_{data.ids[i]}.png" for i in (1, 7)]  # 2 dogs
    assert cv2.imread(str(figures[0])).shape == (224, 3 * 224, 3)  # three panels
    assert result["agent"]["map"] == saved["agent"]["map"]
    # the heat-map setting is the dataset's, pooled over the calibrated classes' hit tables
    calib = tiny_pipeline["calibration"]
    key = setting_key(dataset_setting(calib))
    n = sum(1 for t in calib["refinement_hits"].values() if t)
    rule = f"the dataset's, pooled over the calibration's validation images of {n} classes"
    assert saved["refinement"] == {"rule": rule, "settings": {"dog": key}}
    assert f"dog {key} ({rule})" in md


@slow
def test_a_class_without_positive_image_is_not_measured(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The first 8 trainval images hold two dogs and no bird: the dog is evaluated, the bird's
    entries are null / "–" with one warning line, and the means are the dog's."""
    shutil.copytree(own_runs / "dog", own_runs / "bird")  # an agent of the bird: the dog's
    out = tmp_path / "results"
    argv = ["--classes", "dog,bird", "--split", "trainval", "--max-images", "8"]
    argv += ["--exhaustive-windows", "4", "--figures", "0", "--no-progress", "--out", str(out)]
    assert eval_main(argv) == 0
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("warning")] == [
        "warning: bird: none of the 8 evaluated trainval images holds a bird (no positive "
        "image): its AP and CorLoc are not measurable (– in eval.md, null in eval.json) and "
        "left out of the means"
    ]
    saved = json.loads((out / "eval.json").read_text())
    assert saved["classes"] == ["dog", "bird"]
    assert saved["unmeasurable"] == {"bird": "none of the 8 evaluated trainval images holds a bird"}
    for m in METHODS:
        row = saved[m]
        assert list(row["ap"]) == ["dog", "bird"]  # the order of --classes
        assert row["ap"]["bird"] is row["ap07"]["bird"] is row["corloc"]["bird"] is None
        assert row["map"] == row["ap"]["dog"] and row["map07"] == row["ap07"]["dog"]
        assert row["mean_corloc"] == row["corloc"]["dog"] in {0.0, 50.0, 100.0}  # 2 dogs
        assert (out / "pr" / f"dog_{m}.png").is_file()
    assert not list((out / "pr").glob("bird_*"))
    md = (out / "eval.md").read_text()
    assert "| AP dog | AP bird |" in md
    assert all(ln.endswith(" | – |") for ln in md.splitlines() if ln.startswith("| agent"))
    assert (
        "bird: –, not measurable (none of the 8 evaluated trainval images holds a bird); left "
        "out of the means." in md
    )


@slow
def test_eval_uses_the_agents_training_delta(
    own_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rule-based row runs at the δ of the agent's config.json, not the calibration's."""
    import evaluate.run

    config_path = own_runs / "dog" / "config.json"
    config = json.loads(config_path.read_text())
    assert json.loads((own_runs / "calibration.json").read_text())["delta"]["dog"] != 0.37
    config["delta"] = 0.37
    config_path.write_text(json.dumps(config))
    seen: dict[str, list[float]] = {"greedy_cut": [], "rollout": []}

    def spy(name: str, fn):
        def wrapped(world, indices, policy_or_delta, *args, **kwargs):
            delta = policy_or_delta if name == "greedy_cut" else args[0]
            seen[name].append(delta)
            return fn(world, indices, policy_or_delta, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(evaluate.run, "greedy_cut", spy("greedy_cut", evaluate.run.greedy_cut))
    monkeypatch.setattr(evaluate.run, "rollout", spy("rollout", evaluate.run.rollout))
    out = tmp_path / "results"
    args = EvalArgs(
        classes="dog", split="trainval", max_images=8, exhaustive_windows=4, figures=0, out=str(out)
    )
    run(args)
    # random agent, agent, agent with retries
    assert seen == {"greedy_cut": [0.37], "rollout": [0.37, 0.37, 0.37]}
    saved = json.loads((out / "eval.json").read_text())
    assert saved["delta"]["values"] == {"dog": 0.37} and saved["images"] == 8
    md = (out / "eval.md").read_text()
    assert "δ of every rule-based row: dog 0.37 (each agent's training δ, config.json)." in md
    # an agent without its δ cannot be evaluated under the reward it learned
    del config["delta"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=rf"^{config_path} is missing or holds no delta .*: it is written by training; "
        rf"retrain the agent of {config_path.parent}$",
    ):
        run(args)


@slow
def test_eval_without_agent_names_the_command(tiny_pipeline: dict) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"^no trained agent at .*animals/cat/agent\.zip: train one with "
        r"`make train CLASS=cat`$",
    ):
        run(EvalArgs(classes="cat", out=str(tiny_pipeline["base"] / "r2")))


def test_eval_without_any_agent_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_animals: Path
) -> None:
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "runs"))
    with pytest.raises(
        CheckpointError,
        match=r"^no trained agent for any class of '.*cluttered-animals' in .*runs/cluttered-animals-[0-9a-f]{8}: "
        r"train one with `make train CLASS=dog DATASET=.*cluttered-animals`$",
    ):
        run(EvalArgs(dataset=str(tiny_animals), out=str(tmp_path / "r")))


@slow
def test_eval_cli_error_is_one_line(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--classes", "aeroplane"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown class 'aeroplane' for ")
    assert "valid classes: bear, bird, cat" in lines[0] and "DATASET=voc2007" in lines[0]


def test_eval_has_no_refinement_option(capsys: pytest.CaptureFixture) -> None:
    """The refinement setting is never chosen per run: the flag is gone."""
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--refinement", "own"])
    assert exit_info.value.code == 2
    assert "--refinement" in capsys.readouterr().err
    assert not hasattr(EvalArgs(), "refinement") and EvalArgs().ensemble is False


# -- ensembles ---------------------------------------------------------------------------------
def test_ensemble_acts_on_the_mean_q_values() -> None:
    a, b = fake_q_model([3.0, 0.0, 2.5]), fake_q_model([0.0, 3.0, 2.5])
    obs = {"history": np.zeros((2, 4, 13), np.float32)}
    assert ensemble_policy([a])(obs).tolist() == [0, 0]
    assert ensemble_policy([b])(obs).tolist() == [1, 1]
    # means 1.5, 1.5, 2.5: neither member's own choice
    assert ensemble_policy([a, b])(obs).tolist() == [2, 2]


def test_ensemble_members_must_share_observations() -> None:
    scored, plain = fake_q_model([0.0]), fake_q_model([0.0], ("features", "history"))
    assert observation_options(scored) == {"observe_score": True}
    assert observation_options(plain) == {"observe_score": False}
    assert ensemble_options([scored, scored], ["a.zip", "b.zip"]) == {"observe_score": True}
    with pytest.raises(
        OptionError,
        match=r"^b\.zip was trained with observations \{'observe_score': False\}, a\.zip with "
        r"\{'observe_score': True\}: an ensemble's members must share them \(retrain the "
        r"member with the same flags\)$",
    ):
        ensemble_options([scored, plain], ["a.zip", "b.zip"])


def test_trained_seeds_and_their_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    dog = tmp_path / "animals" / "dog"
    assert trained_seeds("animals", "dog") == []
    with pytest.raises(
        CheckpointError,
        match=r"^no trained agent at .*dog/agent\.zip: train one with `make train CLASS=dog`$",
    ):
        trained_agent("animals", "dog")
    seeds = dog / "seeds"
    for folder in (seeds / "seed_10", seeds / "seed_2", seeds / "seed_x", seeds / "seed_0"):
        folder.mkdir(parents=True)
        (folder / "agent.zip").write_bytes(b"")
    (seeds / "seed_3").mkdir()  # a seed still training: no agent.zip yet
    assert trained_seeds("animals", "dog") == [2, 10]  # seed 0 is the class folder itself
    (dog / "agent.zip").write_bytes(b"")
    assert trained_seeds("animals", "dog") == [0, 2, 10]
    assert trained_agent("animals", "dog") == dog / "agent.zip"
    assert trained_agent("animals", "dog", seed=10) == seeds / "seed_10" / "agent.zip"
    assert trained_agent("animals", "cat", dog / "agent.zip") == dog / "agent.zip"
    with pytest.raises(
        CheckpointError,
        match=r"^no trained agent at .*dog/seeds/seed_3/agent\.zip: train one with "
        r"`make train CLASS=dog SEED=3`$",
    ):
        trained_agent("animals", "dog", seed=3)


def test_trained_delta_reads_the_run_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"delta": 0.125, "args": {}}))
    assert trained_delta(tmp_path / "agent.zip") == 0.125
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(
        CheckpointError, match=r"config\.json is missing or holds no delta \(JSONDecodeError"
    ):
        trained_delta(tmp_path / "agent.zip")
    with pytest.raises(CheckpointError, match=r"holds no delta \(FileNotFoundError"):
        trained_delta(tmp_path / "elsewhere" / "agent.zip")


def test_an_agent_runs_only_with_the_classifier_it_was_trained_on(tmp_path: Path) -> None:
    ours, other = tmp_path / "ours.pt", tmp_path / "other.pt"
    ours.write_bytes(b"ours")
    other.write_bytes(b"other")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"delta": 0.1, "classifier_sha256": file_sha256(ours)}))
    check_classifier(tmp_path / "agent.zip", ours, "fix")  # the same bytes: accepted
    check_classifier(tmp_path / "agent.zip", tmp_path / "missing.pt", "fix")  # loader's job
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(tmp_path))} was trained on another classifier than "
        rf".*other\.pt \(sha256 {file_sha256(ours)[:12]}… in config\.json\): retrain it$",
    ):
        check_classifier(tmp_path / "agent.zip", other, "retrain it")
    config.write_text(json.dumps({"delta": 0.1}))  # an agent of an older version: no record
    check_classifier(tmp_path / "agent.zip", other, "fix")
    config.write_text("{broken")  # trained_delta names it
    check_classifier(tmp_path / "agent.zip", other, "fix")


@slow
def test_eval_refuses_an_agent_of_another_classifier(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config_path = own_runs / "dog" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["classifier_sha256"] == file_sha256(own_runs / "classifier.pt")  # recorded
    config["classifier_sha256"] = "0" * 64
    config_path.write_text(json.dumps(config))
    argv = ["--classes", "dog", "--max-images", "4", "--out", str(tmp_path / "results")]
    assert eval_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(
        r"dog was trained on another classifier than .*classifier\.pt \(sha256 000000000000… "
        r"in config\.json\): retrain it with `make train CLASS=dog FORCE=1` or pass its "
        r"--checkpoint$",
        err,
    ), err


def test_ensemble_rows_need_two_seeds_of_every_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluate.run import ensemble_members

    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    for folder in ("dog", "dog/seeds/seed_1", "cat", "voc2007/cat"):
        top = "" if folder.startswith("voc2007") else "animals"
        (tmp_path / top / folder).mkdir(parents=True)
        (tmp_path / top / folder / "agent.zip").write_bytes(b"")
    members = ensemble_members("animals", ["dog"])
    assert [p.relative_to(tmp_path).as_posix() for p in members["dog"]] == [
        "animals/dog/agent.zip",
        "animals/dog/seeds/seed_1/agent.zip",
    ]
    for classes in (["cat"], ["dog", "cat"]):
        with pytest.raises(
            CheckpointError,
            match=r"^--ensemble: cat has 1 trained seed\(s\) in .*animals/cat \(an ensemble needs "
            r"two or more\): train them with `make seeds CLASS=cat SEEDS=10`$",
        ):
            ensemble_members("animals", classes)
    (tmp_path / "animals" / "dog" / "seeds" / "seed_1" / "agent.zip").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"^--ensemble: dog has 1 trained seed\(s\) in .*animals/dog \(an ensemble needs "
        r"two or more; so do cat\): train them with `make seeds CLASS=dog SEEDS=10`$",
    ):
        ensemble_members("animals", ["dog", "cat"])
    with pytest.raises(CheckpointError, match=r"`make seeds CLASS=cat SEEDS=10 DATASET=voc2007`$"):
        ensemble_members("voc2007", ["cat"])


@slow
def test_ensemble_flag_without_members_is_one_line(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--classes", "dog", "--split", "trainval", "--ensemble", "--out", "unused"]
    assert eval_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --ensemble: dog has 1 trained seed(s) in ")
    assert lines[0].endswith("train them with `make seeds CLASS=dog SEEDS=10`")
    assert not (tiny_pipeline["base"] / "unused").exists()


@slow
def test_eval_adds_ensemble_rows_with_the_flag(own_runs: Path, tmp_path: Path) -> None:
    from evaluate.run import ENSEMBLE_METHODS

    agent = own_runs / "dog" / "agent.zip"
    member = own_runs / "dog" / "seeds" / "seed_1"
    member.mkdir(parents=True)
    shutil.copy(agent, member / "agent.zip")  # a copy: the mean Q is the agent's own
    shutil.copy(own_runs / "dog" / "config.json", member / "config.json")
    out = tmp_path / "results"
    common = dict(classes="dog", split="trainval", max_images=8, exhaustive_windows=4, figures=0)
    saved = run(EvalArgs(**common, out=str(out), ensemble=True))
    plain = run(EvalArgs(**common, out=str(out / "off")))  # members on disk, no flag: no rows
    world = CutWorld("animals", "trainval", "dog")
    res = evaluate_class(
        EvalArgs(**common),
        world,
        "dog",
        list(range(8)),
        out,
        ("mid", "peak", 0.5),
        agent,
        [agent, member / "agent.zip"],
    )
    assert set(res) == set(METHODS) | set(ENSEMBLE_METHODS)
    assert res["agent_ensemble"]["boxes"] == res["agent"]["boxes"]
    assert res["agent_ensemble_refined"]["boxes"] == res["agent_refined"]["boxes"]
    assert res["agent_ensemble"]["calls"] == res["agent"]["calls"]
    listed = [Path(p).resolve() for p in saved["ensemble"]["dog"]]
    assert listed == [agent.resolve(), (member / "agent.zip").resolve()]
    for m in ("agent", "agent_refined"):
        ens = saved[m.replace("agent", "agent_ensemble")]
        for key in ("ap", "ap07", "corloc", "calls_per_image"):
            assert ens[key] == saved[m][key]
    md = (out / "eval.md").read_text()
    assert "| agent_ensemble_refined |" in md and "each class's agents (dog 2)" in md
    assert not set(ENSEMBLE_METHODS) & set(plain) and "ensemble" not in plain
    assert json.loads((out / "off" / "eval.json").read_text()).keys() == plain.keys()


@slow
def test_eval_localizes_only_the_images_holding_the_class(
    own_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every method's detection on an image without the class is a false positive at p̄ whatever
    its box, so localizing only the images that hold one gives the same AP, VOC07 AP and CorLoc
    as localizing all of them (the first 12 trainval images, some with a dog, most without)."""
    import evaluate.run

    args = EvalArgs(classes="dog", split="trainval", exhaustive_windows=4, figures=0)
    world = CutWorld("animals", "trainval", "dog")
    indices = list(range(12))
    dogs = [i for i in indices if world.data.gt_boxes(i, "dog")]
    assert evaluate.run.located_images(world.data, "dog", indices) == dogs
    assert 0 < len(dogs) < len(indices) / 2
    setting, agent = ("mid", "peak", 0.5), own_runs / "dog" / "agent.zip"
    located = evaluate_class(args, world, "dog", indices, None, setting, agent)
    monkeypatch.setattr(evaluate.run, "located_images", lambda data, cls, idx: list(idx))
    everywhere = evaluate_class(args, world, "dog", indices, None, setting, agent)
    deterministic = [m for m in METHODS if m != "random_agent"]  # its draws follow the batch
    for m in METHODS:
        assert set(located[m]["boxes"]) == set(dogs)
        assert set(everywhere[m]["boxes"]) == set(indices)
        assert set(located[m]["scores"]) == set(indices)
        if m in deterministic:
            assert all(located[m]["boxes"][i] == everywhere[m]["boxes"][i] for i in dogs), m
    # greedy cutting's boxes elsewhere are not the whole image, yet AP does not see them
    whole = crop_to_box(FULL_CROP, 224, 224)
    others = [i for i in indices if i not in dogs]
    assert any(everywhere["greedy_cut"]["boxes"][i] != whole for i in others)
    scored = score_boxes(located, world.data, "dog", indices)
    reference = score_boxes(everywhere, world.data, "dog", indices)
    for m in deterministic:
        for key in ("ap", "ap07", "corloc"):
            assert scored[m][key] == reference[m][key], (m, key)


def test_over_seeds_gives_each_class_its_mean_over_seeds() -> None:
    """Two seeds of two classes (hand-made CorLoc and AP; ``cow`` not measured): each class's
    mean over the seeds, and the table a person reads beside the seeds' rows."""

    def cell(corloc: float, ap: float) -> dict[str, float]:
        return {"ap": ap, "ap07": ap, "corloc": corloc, "calls": 10.0, "seconds": 0.1}

    classes = ["dog", "cat", "cow"]
    per_seed = [
        seed_rows(
            {"dog": {"agent": cell(60.0, 30.0)}, "cat": {"agent": cell(40.0, 10.0)}},
            ["agent"],
            classes,
        ),
        seed_rows(
            {"dog": {"agent": cell(50.0, 20.0)}, "cat": {"agent": cell(30.0, 0.0)}},
            ["agent"],
            classes,
        ),
    ]
    over = over_seeds(per_seed, ["agent"], ["dog", "cat"])["agent"]["over_seeds"]
    assert over["per_seed_corloc"] == [50.0, 40.0]
    assert over["per_class_corloc"] == {"dog": 55.0, "cat": 35.0}
    assert over["per_class_ap"] == {"dog": 25.0, "cat": 5.0}
    assert over["corloc"]["mean"] == pytest.approx(45.0)
    result = {
        "dataset": "animals",
        "split": "test",
        "images": 8,
        "classes": classes,  # cow: no positive image, so not in the seeds' summaries
        "seeds": {"seeds": [0, 1]},
        "agent": {"over_seeds": over},
    }
    md = markdown_table(result)
    assert "CorLoc per class, mean over the 2 seeds:" in md
    assert "| method | dog | cat | cow | mean |" in md
    assert "| agent | 55.0 | 35.0 | – | 45.0 |" in md
    one_class = markdown_table(result | {"classes": ["dog"]})
    assert "CorLoc per class" not in one_class


@slow
def test_eval_over_seeds(own_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--seeds 2``: each seed's agent rows, their mean, std and CI; the rows without an agent
    computed once (both seeds were trained at the same δ). Seed 1 is a copy of seed 0 here, so
    every row is the same for both: std 0, the interval collapsed on the mean."""
    import evaluate.run

    common = dict(classes="dog", split="trainval", max_images=8, exhaustive_windows=4, figures=0)
    with pytest.raises(
        CheckpointError,
        match=r"^no trained agent at .*dog/seeds/seed_1/agent\.zip: train one with "
        r"`make train CLASS=dog SEED=1`$",
    ):
        run(EvalArgs(**common, seeds=2, out=str(tmp_path / "none")))
    with pytest.raises(OptionError, match=r"^--seeds 0: must be an integer ≥ 1$"):
        EvalArgs(**common, seeds=0, out=str(tmp_path / "none"))
    seed_1 = own_runs / "dog" / "seeds" / "seed_1"
    seed_1.mkdir(parents=True)
    for name in ("agent.zip", "config.json", "refinement.json"):
        shutil.copy(own_runs / "dog" / name, seed_1 / name)
    calls: list[float] = []

    def greedy(world, indices, delta, *a, **k):
        calls.append(delta)
        return greedy_cut(world, indices, delta, *a, **k)

    monkeypatch.setattr(evaluate.run, "greedy_cut", greedy)
    out = tmp_path / "results"
    result = run(EvalArgs(**common, seeds=2, out=str(out)))
    assert len(calls) == 1  # greedy_cut ran once for both seeds
    assert result["seeds"]["seeds"] == [0, 1]
    assert result["seeds"]["delta"] == [result["delta"]["values"]] * 2
    assert [Path(p).parent.name for p in result["seeds"]["agents"]["dog"]] == ["dog", "seed_1"]
    for m in METHODS:
        over = result[m]["over_seeds"]
        assert over["per_seed_map"] == [result[m]["map"]] * 2
        for key in ("map", "corloc"):
            mean = result[m]["map" if key == "map" else "mean_corloc"]
            assert over[key] == {
                "mean": pytest.approx(mean),
                "std": 0.0,
                "ci_low": pytest.approx(mean),
                "ci_high": pytest.approx(mean),
                "runs": 2,
            }
    md = (out / "eval.md").read_text()
    assert md.startswith("# Localization on animals / trainval (8 images), 2 seeds\n")
    assert "| agent | 2 |" in md and "Heat-map and δ lines: seed 0's" in md
    assert json.loads((out / "eval.json").read_text())["seeds"] == result["seeds"]


@slow
def test_refined_rows_pay_the_drop_regions_calls(
    own_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the ``drop`` region the refined rows and the heat-map row count its occlusion
    calls: per image, :func:`refined_box`'s on top of the agent's calls (the heat-map's one)."""
    import evaluate.run as run_module

    agent = own_runs / "dog" / "agent.zip"
    world = CutWorld("animals", "trainval", "dog")
    setting, size = ("mid", "drop", 0.3), (224, 224)
    args = EvalArgs(classes="dog", split="trainval", exhaustive_windows=4, figures=0)
    res = evaluate_class(args, world, "dog", list(range(8)), None, setting, agent)
    located = sorted(res["agent"]["boxes"])
    crops = {i: box_to_crop(res["agent"]["boxes"][i], *size) for i in located}
    refined = {i: refined_box(world, i, crops[i], setting, size) for i in located}
    whole = [refined_box(world, i, FULL_CROP, setting, size)[1] for i in located]
    assert res["agent_refined"]["boxes"] == {i: box for i, (box, _) in refined.items()}
    extra = np.mean([n for _, n in refined.values()])
    assert res["agent_refined"]["calls"] == pytest.approx(res["agent"]["calls"] + extra)
    assert res["heatmap"]["calls"] == pytest.approx(1 + np.mean(whole))
    # whether the tiny classifier's maps hold several regions varies with its training: with
    # a refinement that always pays 3 calls the sums are exercised whatever the maps
    monkeypatch.setattr(run_module, "refined_box", lambda *a, **k: (refined_box(*a, **k)[0], 3))
    paid = evaluate_class(args, world, "dog", list(range(8)), None, setting, agent)
    assert paid["agent_refined"]["calls"] == pytest.approx(res["agent"]["calls"] + 3)
    assert paid["agent_retry_refined"]["calls"] == pytest.approx(res["agent_retry"]["calls"] + 3)
    assert paid["heatmap"]["calls"] == 4.0
    assert paid["agent_refined"]["boxes"] == res["agent_refined"]["boxes"]
