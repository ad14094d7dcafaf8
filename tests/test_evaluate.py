"""Evaluation driver on the tiny trained pipeline: every method, every output file."""

from __future__ import annotations

import json

import pytest

from cutbg_env.errors import CheckpointError
from evaluate.__main__ import main as eval_main
from evaluate.run import METHODS, EvalArgs, run
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
