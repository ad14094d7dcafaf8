"""``python -m evaluate.diagnose``: exact AUCs on hand-made arrays, exact reports of fake agents
with fixed Q-values on :class:`tiny.BlockWorld` (scores worked out by hand), and the replay on
the tiny trained pipeline matching the env's own rollout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import PLAIN, UP3_Q, BlockWorld, fake_q_model

from cutbg_env.actions import CUT_ACTIONS, Action, apply_cut
from cutbg_env.episode import Episode, new_episode
from cutbg_env.errors import OptionError
from cutbg_env.geometry import FULL_CROP
from cutbg_env.rollout import observation_options, rollout, sb3_policy
from cutbg_env.runs import trained_delta
from cutbg_env.world import CutWorld
from evaluate.diagnose import cut_verdicts, diagnose, ranking_auc
from evaluate.diagnose import main as diagnose_main

slow = pytest.mark.slow


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


# -- fake agents on a hand-made world ---------------------------------------------------------


def blocks() -> BlockWorld:
    """Image 0: object rows 8..13, columns 10..17 (8 empty rows above it); image 1: the same
    columns, rows 0..5 (touching the top)."""
    return BlockWorld({0: (10, 8, 18, 14), 1: (10, 0, 18, 6)})


def empty_band(lo: int, hi: int) -> dict:
    return {"steps": [lo, hi], "states": 0, "valid_cut_rate": None, "chosen_cut_valid_rate": None}


def test_diagnose_an_agent_that_always_cuts_the_top() -> None:
    """δ = 0. Image 0: UP_3 is valid twice (rows 0..5 are empty), then its third UP_3 cuts row 8:
    a drop. States: 12/12, 12/12, 11/12 valid cuts; chosen valid, valid, not. Image 1: UP_3 cuts
    the object at once; 9/12 valid (every UP_k cuts it). The Q-values rank: image 0's third
    state has UP_3 (the highest Q) as its only invalid cut: AUC 0; image 1's first state: of
    the 9 × 3 (valid, invalid) pairs only DOWN_1 (0.55) above UP_1 (0.5) is right: AUC 1/27."""
    result = diagnose([fake_q_model(UP3_Q, PLAIN)], blocks(), [0, 1], 0.0)
    assert result == {
        "images": 2,
        "delta": 0.0,
        "ends": {"stop": 0, "drop": 2, "step_limit": 0},
        "stops_with_a_valid_cut_left": 0,
        "states": 4,
        "q_auc": pytest.approx((0 + 1 / 27) / 2),
        "q_auc_states": 2,
        "bands": [
            {
                "steps": [0, 4],
                "states": 4,
                "valid_cut_rate": pytest.approx((1 + 1 + 11 / 12 + 9 / 12) / 4),
                "chosen_cut_valid_rate": 0.5,
            },
            empty_band(5, 9),
            empty_band(10, 19),
        ],
    }


def test_diagnose_an_agent_that_stops_at_once() -> None:
    """Both episodes STOP on the whole map, each with valid cuts left; equal Q-values rank every
    pair as a tie (½), and image 0's state, all cuts valid, has nothing to rank."""
    model = fake_q_model([0.0] * 12 + [1.0], PLAIN)
    result = diagnose([model], blocks(), [0, 1], 0.0)
    assert result["ends"] == {"stop": 2, "drop": 0, "step_limit": 0}
    assert result["stops_with_a_valid_cut_left"] == 2 and result["states"] == 2
    assert (result["q_auc"], result["q_auc_states"]) == (0.5, 1)
    assert result["bands"][0] == {
        "steps": [0, 4],
        "states": 2,
        "valid_cut_rate": (1 + 9 / 12) / 2,
        "chosen_cut_valid_rate": None,  # no cut chosen
    }


def test_diagnose_an_agent_that_runs_into_the_step_limit() -> None:
    """δ = 1: every cut is valid; 20 LEFT_1 cuts leave the crop 8 columns wide, the limit ends
    the episode; the states fall 5, 5 and 10 into the step bands."""
    model = fake_q_model([0.0] * 6 + [1.0] + [0.0] * 6, PLAIN)
    result = diagnose([model], blocks(), [0], 1.0)
    assert result["ends"] == {"stop": 0, "drop": 0, "step_limit": 1}
    assert result["states"] == 20 and result["q_auc"] is None and result["q_auc_states"] == 0
    assert [(b["steps"], b["states"]) for b in result["bands"]] == [
        ([0, 4], 5),
        ([5, 9], 5),
        ([10, 19], 10),
    ]
    assert all(b["valid_cut_rate"] == b["chosen_cut_valid_rate"] == 1.0 for b in result["bands"])


def test_diagnose_an_ensemble_acts_on_the_mean_q_values() -> None:
    eager = fake_q_model([0.0, 0.0, 2.0] + [0.0] * 9 + [1.5], PLAIN)  # alone: UP_3
    doubtful = fake_q_model([0.0, 0.0, -2.0] + [0.0] * 9 + [1.5], PLAIN)  # mean: STOP
    alone = diagnose([eager], blocks(), [1], 0.0)
    assert alone["ends"] == {"stop": 0, "drop": 1, "step_limit": 0}
    both = diagnose([eager, doubtful], blocks(), [1], 0.0)
    assert both["ends"] == {"stop": 1, "drop": 0, "step_limit": 0}
    assert both["stops_with_a_valid_cut_left"] == 1


def test_diagnose_ensemble_members_must_share_observations() -> None:
    plain, scored = fake_q_model(UP3_Q, PLAIN), fake_q_model(UP3_Q)
    with pytest.raises(
        OptionError,
        match=r"^b\.zip was trained with observations \{'observe_score': True\}, a\.zip with "
        r"\{'observe_score': False\}: an ensemble's members must share them",
    ):
        diagnose([plain, scored], blocks(), [0], 0.0, names=["a.zip", "b.zip"])


def test_cut_verdicts_on_the_hand_made_world() -> None:
    """Verdicts compare with p̄ (here 1) at each episode's own δ."""
    world = blocks()
    eps = [new_episode(world, 0, 0.9, 3.0, True), new_episode(world, 1, 0.0, 3.0, True)]
    eps[0].crop = (10, 8, 11, 28)  # one column from the object's top down: 6 of its 48 cells
    verdicts = cut_verdicts(world, eps)
    # UP_k keeps 6 - k cells, a drop of (42 + k) / 48: only k = 1 stays within 0.9; DOWN_k
    # cuts empty rows (drop 42/48); LEFT and RIGHT cannot cut a one-column crop
    assert verdicts[0].tolist() == [True, False, False] + [True] * 3 + [False] * 6
    # image 1 at δ = 0, the whole map: every UP_k cuts the object's top rows
    assert verdicts[1].tolist() == [False] * 3 + [True] * 9
    assert world.batches == 1  # one forward for both episodes


# -- the tiny trained pipeline -----------------------------------------------------------------
@slow
def test_cut_verdicts_match_single_scores(tiny_pipeline: dict) -> None:
    world = CutWorld("animals", "trainval", "dog")
    delta = trained_delta(tiny_pipeline["agent"])
    ep = new_episode(world, world.positives[0], delta, 3.0, True)
    thin = new_episode(world, world.positives[1], delta, 3.0, True)
    thin.crop = (5, 0, 6, 28)  # one column wide: left and right cuts remove nothing
    verdicts = cut_verdicts(world, [ep, thin])
    assert verdicts.shape == (2, 12) and verdicts.dtype == bool
    for row, e in zip(verdicts, (ep, thin), strict=True):
        for a, v in zip(CUT_ACTIONS, row, strict=True):
            crop, removed = apply_cut(e.crop, a)
            _, (score,) = world.score_crops(world.mid_maps([e.index]), np.asarray([crop]))
            assert v == (removed > 0 and e.p_full - score <= delta)
    assert not verdicts[1, 6:].any()  # LEFT_k, RIGHT_k of the one-column crop


@slow
def test_diagnose_replays_the_env_rollout(tiny_pipeline: dict) -> None:
    model = tiny_pipeline["model"]
    world = CutWorld("animals", "trainval", "dog")
    delta = trained_delta(tiny_pipeline["agent"])
    result = diagnose([model], world, world.positives, delta, chunk=4)
    ref = rollout(world, world.positives, sb3_policy(model), delta, **observation_options(model))
    assert result["images"] == len(world.positives) == 6
    assert sum(result["ends"].values()) == 6
    assert result["states"] == sum(loc.steps for loc, _ in ref)  # same episodes, step for step
    assert sum(b["states"] for b in result["bands"]) == result["states"]
    assert result["stops_with_a_valid_cut_left"] <= result["ends"]["stop"]
    assert result["delta"] == delta
    assert diagnose([model], world, world.positives, delta, chunk=4) == result  # deterministic
    other = diagnose([model], world, world.positives, delta, chunk=32)  # batching changes nothing
    assert other["ends"] == result["ends"] and other["states"] == result["states"]
    assert other["q_auc"] == pytest.approx(result["q_auc"])
    # an ensemble of two copies acts on the same mean Q-values: the same replay
    assert diagnose([model, model], world, world.positives, delta, chunk=4) == result


@slow
def test_diagnose_cli_uses_the_agents_training_delta(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The δ of the verdicts is the agent's config.json's, not the calibration's."""
    config_path = own_runs / "dog" / "config.json"
    config = json.loads(config_path.read_text())
    calibrated = json.loads((own_runs / "calibration.json").read_text())["delta"]["dog"]
    config["delta"] = 0.37
    assert calibrated != 0.37
    config_path.write_text(json.dumps(config))
    out = tmp_path / "diag"
    assert diagnose_main(["--class", "dog", "--split", "trainval", "--out", str(out)]) == 0
    saved = json.loads((out / "diagnose_dog.json").read_text())
    assert saved["class"] == "dog" and saved["split"] == "trainval" and saved["images"] == 6
    assert saved["delta"] == 0.37
    assert [Path(p).name for p in saved["agents"]] == ["agent.zip"]
    text = capsys.readouterr().out
    assert text.startswith("dog: 6 trainval images, δ 0.37; episodes ended by STOP ")
    assert f"-> {out / 'diagnose_dog.json'}" in text
    del config["delta"]
    config_path.write_text(json.dumps(config))
    assert diagnose_main(["--class", "dog", "--split", "trainval", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {config_path} is missing or holds ")
    assert lines[0].endswith(f"retrain the agent of {config_path.parent}")


@slow
def test_diagnose_without_agent_names_the_command(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    assert diagnose_main(["--class", "cat"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no trained agent at ")
    assert lines[0].endswith("cat/agent.zip: train one with `make train CLASS=cat`")


@slow
def test_rollout_hook_sees_each_state_before_its_step(tiny_pipeline: dict) -> None:
    model = tiny_pipeline["model"]
    world = CutWorld("animals", "trainval", "dog")
    delta = trained_delta(tiny_pipeline["agent"])
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


@slow
def test_diagnose_ensemble_flag(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--ensemble`` replays every trained seed's agent together (one seed: the agent alone);
    a class without any agent is the usual one-line error."""
    import shutil

    assert diagnose_main(["--class", "dog", "--ensemble", "--agent", "x.zip"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --ensemble replays the class's agent and its members: drop --agent\n"
    assert diagnose_main(["--class", "cat", "--ensemble"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no trained agent at ")
    assert lines[0].endswith("cat/agent.zip: train one with `make train CLASS=cat`")
    out = tmp_path / "diag_ens"
    argv = ["--class", "dog", "--split", "trainval", "--ensemble", "--out", str(out)]
    assert diagnose_main(argv) == 0  # seed 0 only: the agent alone
    alone = json.loads((out / "diagnose_dog.json").read_text())
    assert [Path(p).name for p in alone["agents"]] == ["agent.zip"]
    seed_1 = own_runs / "dog" / "seeds" / "seed_1"
    seed_1.mkdir(parents=True)
    for name in ("agent.zip", "config.json"):
        shutil.copy(own_runs / "dog" / name, seed_1 / name)
    assert diagnose_main(argv) == 0
    both = json.loads((out / "diagnose_dog.json").read_text())
    assert [Path(p).relative_to(own_runs).as_posix() for p in both["agents"]] == [
        "dog/agent.zip",
        "dog/seeds/seed_1/agent.zip",
    ]
    # two copies of one agent act on the same mean Q-values: the same replay
    assert {k: v for k, v in both.items() if k != "agents"} == {
        k: v for k, v in alone.items() if k != "agents"
    }
