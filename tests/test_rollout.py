"""Rollouts with the paper's rule and with the retry rule (the env's ``undo_drop``), on
:class:`tiny.BlockWorld` (the score is the share of a hand-placed object block the crop keeps),
with fake agents of fixed Q-values, so every crop, call and step is worked out by hand.

Crops are ``(x0, y0, x1, y1)`` half-open grid cells; actions come in the order
``UP_1..3, DOWN_1..3, LEFT_1..3, RIGHT_1..3, STOP``.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny import PLAIN, UP3_Q, BlockWorld, fake_q_model

from cutbg_env.actions import Action
from cutbg_env.errors import OptionError
from cutbg_env.geometry import FULL_CROP
from cutbg_env.rollout import RETRY_STEPS, ensemble_policy, rollout


def blocks() -> BlockWorld:
    """Image 0: object rows 8..13, columns 10..17 (8 empty rows above it); image 1: the object
    is the whole map, so every cut cuts into it."""
    return BlockWorld({0: (10, 8, 18, 14), 1: (0, 0, 28, 28)})


def test_the_papers_rule_ends_at_the_first_cut_past_delta() -> None:
    """δ = 0, image 0: UP_3 twice removes rows 0..5, the third UP_3 removes rows 6..8, cutting
    the object: the episode ends there and keeps the last valid crop."""
    policy = ensemble_policy([fake_q_model(UP3_Q, PLAIN)])
    [(loc, trail)] = rollout(blocks(), [0], policy, 0.0)
    assert (loc.crop, loc.calls, loc.steps) == ((0, 6, 28, 28), 4, 3)
    assert trail == [FULL_CROP, (0, 3, 28, 28), (0, 6, 28, 28), (0, 9, 28, 28)]


def test_retry_undoes_a_cut_past_delta_and_takes_the_next_best() -> None:
    """δ = 0, image 0, 6 attempts: UP_3, UP_3 (valid: rows 0..5 go); UP_3 cuts row 8: undone,
    refused; UP_2 (next best) removes rows 6..7: valid, the refusals clear; UP_3 and then UP_2
    both cut row 8: undone. Six steps, seven calls, the crop stops on the object's top row."""
    policy = ensemble_policy([fake_q_model(UP3_Q, PLAIN)])
    [(loc, trail)] = rollout(blocks(), [0], policy, 0.0, max_steps=6, retry=True)
    assert (loc.crop, loc.calls, loc.steps) == ((0, 8, 28, 28), 7, 6)
    assert trail == [FULL_CROP, (0, 3, 28, 28), (0, 6, 28, 28), (0, 8, 28, 28)]


def test_retry_ends_when_every_cut_is_refused() -> None:
    """δ = 0, image 1 (the object fills the map): each of the 12 cuts is tried once and refused,
    STOP is never taken (its Q is the lowest): 12 steps, 13 calls, the whole map."""
    policy = ensemble_policy([fake_q_model(UP3_Q, PLAIN)])
    [(loc, trail)] = rollout(blocks(), [1], policy, 0.0, max_steps=50, retry=True)
    assert (loc.crop, loc.calls, loc.steps) == (FULL_CROP, 13, 12)
    assert trail == [FULL_CROP]


def test_retry_stays_within_the_evaluation_budget() -> None:
    """The evaluation's attempts: at most 20 calls per image, and every crop kept is valid."""
    world = blocks()
    policy = ensemble_policy([fake_q_model(UP3_Q, PLAIN)])
    out = rollout(world, [0, 1], policy, 0.0, max_steps=RETRY_STEPS, retry=True)
    assert [loc.calls for loc, _ in out] == [20, 13]
    _, scores = world.score_crops(world.mid_maps([0]), [out[0][0].crop])
    assert scores.tolist() == [1.0]  # the object kept whole: a drop of 0 ≤ δ


def test_retry_masks_cuts_that_remove_nothing() -> None:
    """δ = 1 (no cut is ever past it), the best cut UP_3, then LEFT_3: nine UP_3 leave one row
    (y0 = 27). The tenth step's UP_3 (and every DOWN) removes nothing: the paper's rule takes it
    anyway (no call, the crop stays), the retry rule masks it and takes LEFT_3."""
    world = BlockWorld({0: (0, 0, 28, 28)})
    q = [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, -1.0]
    policy = ensemble_policy([fake_q_model(q, PLAIN)])
    [(plain, _)] = rollout(world, [0], policy, 1.0, max_steps=10)
    [(retry, _)] = rollout(world, [0], policy, 1.0, max_steps=10, retry=True)
    assert (plain.crop, plain.calls, plain.steps) == ((0, 27, 28, 28), 10, 10)
    assert (retry.crop, retry.calls, retry.steps) == ((3, 27, 28, 28), 11, 10)


def test_retry_refuses_a_policy_that_takes_a_masked_action() -> None:
    def always_up_1(obs: dict, mask: np.ndarray) -> np.ndarray:
        return np.zeros(len(mask), dtype=int)

    with pytest.raises(OptionError, match=r"retry=True.*took a masked action.*MaskedPolicy"):
        rollout(blocks(), [1], always_up_1, 0.0, retry=True)


def test_ensemble_policy_takes_the_best_unmasked_action() -> None:
    policy = ensemble_policy([fake_q_model(UP3_Q, PLAIN)])
    obs = {"features": np.zeros((2, 1)), "history": np.zeros((2, 1))}
    mask = np.zeros((2, 13), dtype=bool)
    mask[1, [Action.UP_3, Action.UP_2]] = True
    assert policy(obs).tolist() == [Action.UP_3, Action.UP_3]
    assert policy(obs, mask).tolist() == [Action.UP_3, Action.DOWN_1]


def test_retry_shows_the_refused_cut_in_the_history() -> None:
    """δ = 0, image 0: the third step's UP_3 is refused; the fourth observation has the features
    of the crop before it and UP_3 as its last action, as the env with ``undo_drop`` gives."""
    seen: list[dict] = []
    inner = ensemble_policy([fake_q_model(UP3_Q, PLAIN)])

    def policy(obs: dict, mask: np.ndarray) -> np.ndarray:
        seen.append({k: v.copy() for k, v in obs.items()})
        return inner(obs, mask)

    rollout(blocks(), [0], policy, 0.0, max_steps=4, retry=True)
    assert len(seen) == 4
    np.testing.assert_array_equal(seen[3]["features"], seen[2]["features"])
    assert seen[3]["history"][0, 0].argmax() == Action.UP_3
    assert seen[3]["history"][0, 1:3].argmax(1).tolist() == [Action.UP_3, Action.UP_3]
