"""Evaluation driver on the tiny trained pipeline: every method, every output file."""

from __future__ import annotations

import json

import pytest

from cutbg_env.core import CutWorld
from cutbg_env.errors import CheckpointError, OptionError
from evaluate.__main__ import main as eval_main
from evaluate.run import METHODS, EvalArgs, evaluate_class, run
from train.agent import REFINEMENT_FILE


def test_eval_writes_every_method_and_file(tiny_pipeline: dict) -> None:
    out = tiny_pipeline["base"] / "results_eval"
    # the tiny test split has no dog: evaluate on trainval, which has six
    result = run(
        EvalArgs(classes="dog", split="trainval", exhaustive_windows=50, figures=2, out=str(out))
    )
    saved = json.loads((out / "eval.json").read_text())
    assert saved["dataset"] == "animals" and saved["split"] == "trainval"
    assert saved["classes"] == ["dog"] and saved["images"] == 24  # every image, negatives too
    for m in METHODS:
        r = saved[m]
        assert set(r) == {
            "ap",
            "ap07",
            "map",
            "map07",
            "corloc",
            "mean_corloc",
            "calls_per_image",
            "seconds_per_image",
        }
        assert 0 <= r["map"] <= 100 and 0 <= r["mean_corloc"] <= 100
        assert (out / "pr" / f"dog_{m}.png").is_file()
    assert saved["exhaustive"]["calls_per_image"] == 50
    assert saved["full_image"]["calls_per_image"] == 1
    assert 1 <= saved["agent"]["calls_per_image"] <= 21
    assert saved["agent_refined"]["calls_per_image"] == saved["agent"]["calls_per_image"]
    assert saved["greedy_cut"]["calls_per_image"] > 12
    assert saved["agent"]["corloc"]["dog"] in {100 * k / 6 for k in range(7)}
    md = (out / "eval.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS)
    assert len(list((out / "figures").glob("dog_*.png"))) >= 1
    assert result["agent"]["map"] == saved["agent"]["map"]
    # one class: pooling its own validation table gives its own choice
    own = json.loads((tiny_pipeline["agent"].parent / REFINEMENT_FILE).read_text())
    key = f"{own['heatmap_layer']}/{own['heatmap_region']}/{own['heatmap_threshold']:g}"
    assert saved["refinement"] == {"rule": "pooled over dog", "settings": {"dog": key}}
    assert f"dog {key} (pooled over dog)" in md


def test_eval_without_agent_names_the_command(tiny_pipeline: dict) -> None:
    with pytest.raises(CheckpointError, match="make train CLASS=cat"):
        run(EvalArgs(classes="cat", out=str(tiny_pipeline["base"] / "r2")))


def test_eval_cli_error_is_one_line(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--classes", "aeroplane"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'aeroplane' is not a class") and "Traceback" not in err


def test_eval_refinement_rule_is_checked(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--refinement", "best"])
    assert exit_info.value.code == 2
    assert "--refinement: invalid choice: 'best' (choose from 'pooled', 'own')" in (
        capsys.readouterr().err
    )


def test_returns_compares_agent_and_random(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    from evaluate.returns import main as returns_main

    assert returns_main(["--class", "dog", "--split", "trainval"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dog (6 trainval images)")
    agent, random = out[1].split(), out[2].split()
    assert agent[0] == "agent" and random[:2] == ["random", "agent"]
    assert 0.0 <= float(agent[-1]) <= 1.0 and 0.0 <= float(random[-1]) <= 1.0


def test_returns_without_agent_names_the_command(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    from evaluate.returns import main as returns_main

    assert returns_main(["--class", "cat"]) == 2
    assert "make train CLASS=cat" in capsys.readouterr().err


def _fake_model(q: list[float], keys: tuple[str, ...] = ("features", "history", "score")):
    """An object with the parts of an SB3 DQN that the ensemble code reads: fixed Q-values."""
    from types import SimpleNamespace

    import torch
    from gymnasium import spaces

    space = spaces.Dict({k: spaces.Box(0, 1, (1,)) for k in keys})
    return SimpleNamespace(
        observation_space=space,
        policy=SimpleNamespace(obs_to_tensor=lambda obs: (obs, True)),
        q_net=lambda obs: torch.tensor([q] * len(obs["history"])),
    )


def test_ensemble_acts_on_the_mean_q_values() -> None:
    import numpy as np

    from evaluate.rollout import ensemble_policy

    a, b = _fake_model([3.0, 0.0, 2.5]), _fake_model([0.0, 3.0, 2.5])
    obs = {"history": np.zeros((2, 4, 13), np.float32)}
    assert ensemble_policy([a])(obs).tolist() == [0, 0]
    assert ensemble_policy([b])(obs).tolist() == [1, 1]
    # means 1.5, 1.5, 2.5: neither member's own choice
    assert ensemble_policy([a, b])(obs).tolist() == [2, 2]


def test_ensemble_members_must_share_observations() -> None:
    from evaluate.rollout import ensemble_options

    plain, mass = _fake_model([0.0]), _fake_model([0.0], ("features", "history", "cut_mass"))
    opts = ensemble_options([plain, plain], ["a.zip", "b.zip"])
    assert opts == {"observe_score": True, "observe_cut_mass": False}
    with pytest.raises(OptionError, match=r"^b\.zip was trained with observations .* a\.zip with"):
        ensemble_options([plain, mass], ["a.zip", "b.zip"])


def test_ensemble_agents_lists_the_agent_then_members_by_seed(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train.agent import ensemble_agents

    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    dog = tmp_path / "animals" / "dog"
    with pytest.raises(CheckpointError, match="make train CLASS=dog"):
        ensemble_agents("animals", "dog")
    for folder in (dog, *(dog / "ensemble" / s for s in ("seed_10", "seed_2", "seed_x"))):
        folder.mkdir(parents=True)
        (folder / "agent.zip").write_bytes(b"")
    (dog / "ensemble" / "seed_3").mkdir()  # a member still training: no agent.zip yet
    found = ensemble_agents("animals", "dog")
    assert [p.relative_to(dog).as_posix() for p in found] == [
        "agent.zip",
        "ensemble/seed_2/agent.zip",
        "ensemble/seed_10/agent.zip",
    ]


def test_eval_adds_ensemble_rows_when_members_exist(tiny_pipeline: dict) -> None:
    import shutil

    agent = tiny_pipeline["agent"]
    member = agent.parent / "ensemble" / "seed_1"
    member.mkdir(parents=True)
    shutil.copy(agent, member / "agent.zip")  # a copy: the mean Q is the agent's own
    try:
        out = tiny_pipeline["base"] / "results_ens"
        common = dict(classes="dog", split="trainval", exhaustive_windows=10, figures=0)
        saved = run(EvalArgs(**common, out=str(out)))
        plain = run(EvalArgs(**common, out=str(out / "off"), ensemble=False))
        world = CutWorld("animals", "trainval", "dog")
        res = evaluate_class(
            EvalArgs(**common),
            world,
            "dog",
            list(range(len(world.data))),
            out,
            ("mid", "peak", 0.5),
            [agent, member / "agent.zip"],
        )
    finally:
        shutil.rmtree(agent.parent / "ensemble")
    assert res["agent_ensemble"]["boxes"] == res["agent"]["boxes"]
    assert res["agent_ensemble_refined"]["boxes"] == res["agent_refined"]["boxes"]
    listed = [(tiny_pipeline["base"] / p).resolve() for p in saved["ensemble"]["dog"]]
    assert listed == [agent.resolve(), (member / "agent.zip").resolve()]
    for m in ("agent", "agent_refined"):
        ens = saved[m.replace("agent", "agent_ensemble")]
        for key in ("ap", "ap07", "corloc", "calls_per_image"):
            assert ens[key] == saved[m][key]
    md = (out / "eval.md").read_text()
    assert "| agent_ensemble_refined |" in md and "each class's agents (dog 2)" in md
    assert "agent_ensemble" not in plain and "ensemble" not in plain
    assert json.loads((out / "off" / "eval.json").read_text()).keys() == plain.keys()


def test_ensemble_rows_need_members_for_every_class(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from evaluate.run import ensemble_members

    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    for folder in ("dog", "dog/ensemble/seed_1", "cat"):
        (tmp_path / "animals" / folder).mkdir(parents=True)
        (tmp_path / "animals" / folder / "agent.zip").write_bytes(b"")
    assert ensemble_members(EvalArgs(), ["dog", "cat"]) == {}
    assert (
        "no agent_ensemble rows: cat has no ensemble member (`make train-ensemble CLASS=cat`)"
        in (capsys.readouterr().err)
    )
    assert len(ensemble_members(EvalArgs(), ["dog"])["dog"]) == 2
    assert ensemble_members(EvalArgs(ensemble=False), ["dog"]) == {}
    assert ensemble_members(EvalArgs(), ["cat"]) == {}  # no member anywhere: nothing to say
    assert capsys.readouterr().err == ""
