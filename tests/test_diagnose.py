"""``python -m evaluate.diagnose``: exact AUCs on hand-made arrays, and the replay on the tiny
trained pipeline matching the env's own rollout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cutbg_env.actions import CUT_ACTIONS, Action, apply_cut
from cutbg_env.core import CutWorld, Episode, new_episode, resolve_delta
from cutbg_env.geometry import FULL_CROP
from evaluate.diagnose import cut_verdicts, diagnose, ranking_auc
from evaluate.diagnose import main as diagnose_main
from evaluate.rollout import observation_options, rollout, sb3_policy


@pytest.mark.parametrize(
    ("q", "valid", "auc"),
    [
        ([3.0, 1.0, 2.0, 0.0], [True, False, True, False], 1.0),  # 4 of 4 pairs ranked right
        ([0.0, 1.0], [True, False], 0.0),
        ([1.0, 1.0, 0.0], [True, False, False], 0.75),  # one tie (½) + one win, over 2 pairs
        ([2.0, 0.0, 1.0, 3.0], [True, True, False, False], 0.25),  # 2>1 only, of 4 pairs
    ],
)
def test_ranking_auc_hand_computed(q: list, valid: list, auc: float) -> None:
    assert ranking_auc(np.asarray(q), np.asarray(valid)) == pytest.approx(auc)


def test_ranking_auc_needs_both_kinds_and_equal_shapes() -> None:
    assert ranking_auc(np.ones(3), np.ones(3, dtype=bool)) is None
    assert ranking_auc(np.ones(3), np.zeros(3, dtype=bool)) is None
    with pytest.raises(ValueError, match=r"q \(3,\) and valid \(2,\)"):
        ranking_auc(np.ones(3), np.ones(2, dtype=bool))


def test_cut_verdicts_match_single_scores(tiny_pipeline: dict) -> None:
    world = CutWorld("animals", "trainval", "dog")
    delta = resolve_delta("animals", "dog", None)
    ep = new_episode(world, world.positives[0], delta, 3.0, True)
    thin = new_episode(world, world.positives[1], delta, 3.0, True)
    thin.crop = (5, 0, 6, 28)  # one column wide: left and right cuts remove nothing
    verdicts = cut_verdicts(world, [ep, thin])
    assert verdicts.shape == (2, 12) and verdicts.dtype == bool
    for row, e in zip(verdicts, (ep, thin), strict=True):
        for a, v in zip(CUT_ACTIONS, row, strict=True):
            crop, removed = apply_cut(e.crop, a)
            _, (score,) = world.evaluate(world.mid_maps([e.index]), np.asarray([crop]))
            assert v == (removed > 0 and e.p_full - score <= delta)
    assert not verdicts[1, 6:].any()  # LEFT_k, RIGHT_k of the one-column crop


def test_diagnose_replays_the_env_rollout(tiny_pipeline: dict) -> None:
    model = tiny_pipeline["model"]
    world = CutWorld("animals", "trainval", "dog")
    delta = resolve_delta("animals", "dog", None)
    result = diagnose([model], world, world.positives, delta, chunk=4)
    ref = rollout(world, world.positives, sb3_policy(model), delta, **observation_options(model))
    assert result["images"] == len(world.positives) == 6
    assert sum(result["ends"].values()) == 6
    assert result["states"] == sum(loc.steps for loc, _ in ref)  # same episodes, step for step
    assert sum(b["states"] for b in result["bands"]) == result["states"]
    assert result["stops_with_a_valid_cut_left"] <= result["ends"]["stop"]
    for b in result["bands"]:
        for key in ("valid_cut_rate", "chosen_cut_valid_rate"):
            assert b[key] is None or 0.0 <= b[key] <= 1.0
    assert result["q_auc"] is None or 0.0 <= result["q_auc"] <= 1.0
    assert diagnose([model], world, world.positives, delta, chunk=4) == result  # deterministic
    other = diagnose([model], world, world.positives, delta, chunk=32)  # batching changes nothing
    assert other["ends"] == result["ends"] and other["states"] == result["states"]
    assert other["q_auc"] == pytest.approx(result["q_auc"])
    # an ensemble of two copies acts on the same mean Q-values: the same replay
    assert diagnose([model, model], world, world.positives, delta, chunk=4) == result


def test_diagnose_cli_writes_json(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    out = tiny_pipeline["base"] / "diag"
    assert diagnose_main(["--class", "dog", "--split", "trainval", "--out", str(out)]) == 0
    saved = json.loads((out / "diagnose_dog.json").read_text())
    assert saved["class"] == "dog" and saved["split"] == "trainval" and saved["images"] == 6
    text = capsys.readouterr().out
    assert text.startswith("dog: 6 trainval images") and "AUC" in text


def test_diagnose_without_agent_names_the_command(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    assert diagnose_main(["--class", "cat"]) == 2
    assert "make train CLASS=cat" in capsys.readouterr().err


def test_rollout_hook_sees_each_state_before_its_step(tiny_pipeline: dict) -> None:
    model = tiny_pipeline["model"]
    world = CutWorld("animals", "trainval", "dog")
    delta = resolve_delta("animals", "dog", None)
    seen: dict[int, list[tuple[int, tuple, Action]]] = {}

    def hook(episodes: list[Episode], actions: list[Action]) -> None:
        for ep, a in zip(episodes, actions, strict=True):
            seen.setdefault(ep.index, []).append((ep.steps, ep.crop, a))

    kw = {**observation_options(model), "chunk": 4}
    out = rollout(world, world.positives, sb3_policy(model), delta, on_step=hook, **kw)
    ref = rollout(world, world.positives, sb3_policy(model), delta, **kw)
    assert [loc for loc, _ in out] == [loc for loc, _ in ref]  # watching changes nothing
    for i, (loc, trail) in zip(world.positives, out, strict=True):
        states = seen[i]
        assert [s for s, _, _ in states] == list(range(loc.steps))  # every step, before it
        assert states[0][1] == FULL_CROP
        assert {c for _, c, _ in states} <= set(trail)


def test_diagnose_ensemble_flag(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    assert diagnose_main(["--class", "dog", "--ensemble", "--agent", "x.zip"]) == 2
    err = capsys.readouterr().err
    assert "--ensemble replays the class's agent and its members: drop --agent" in err
    out = tiny_pipeline["base"] / "diag_ens"
    argv = ["--class", "dog", "--split", "trainval", "--ensemble", "--out", str(out)]
    assert diagnose_main(argv) == 0  # no member yet: the agent alone
    saved = json.loads((out / "diagnose_dog.json").read_text())
    assert [Path(p).name for p in saved["agents"]] == ["agent.zip"]
