"""``python -m evaluate.ceiling``: the walks' labels, the policy rule on hand-made logits, and
the command on the tiny pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cutbg_env import MAX_EPISODE_STEPS
from cutbg_env.actions import CUT_ACTIONS, Action, apply_cut
from cutbg_env.core import CutWorld, resolve_delta
from cutbg_env.geometry import FULL_CROP
from evaluate.ceiling import CeilingArgs, ceiling, mean_auc, valid_walks, validity_policy
from evaluate.ceiling import main as ceiling_main
from evaluate.diagnose import cut_verdicts


def test_walks_move_by_valid_cuts_and_label_all_twelve(tiny_pipeline: dict) -> None:
    world = CutWorld("animals", "trainval", "dog")
    delta = resolve_delta("animals", "dog", None)
    images = world.positives[:3]
    walks = valid_walks(world, images, delta, 2, 0, True, chunk=4)
    again = valid_walks(world, images, delta, 2, 0, True, chunk=2)
    np.testing.assert_array_equal(walks.verdicts, again.verdicts)  # seeded; chunking is free
    np.testing.assert_array_equal(walks.observations["cut_mass"], again.observations["cut_mass"])
    other = valid_walks(world, images, delta, 2, 1, True, chunk=4)
    assert not np.array_equal(other.observations["cut_mass"], walks.observations["cut_mass"])
    assert set(walks.observations) == {"features", "history", "score", "cut_mass"}
    assert walks.verdicts.shape == (len(walks), 12) and walks.verdicts.dtype == bool
    # 6 walks, each starting at step 0 on the whole map (score drop 0) ...
    starts = np.flatnonzero(walks.steps == 0)
    assert len(starts) == 6
    np.testing.assert_allclose(walks.observations["score"][starts, 1], 0.0, atol=1e-7)
    # ... each step is one of the state's valid cuts: its drop stays <= δ
    assert (walks.observations["score"][:, 1] <= delta + 1e-6).all()
    ends = [*starts[1:], len(walks)]
    for lo, hi in zip(starts, ends, strict=True):
        assert list(walks.steps[lo:hi]) == list(range(hi - lo))
        last = walks.verdicts[hi - 1]
        assert not last.any() or hi - lo - 1 == MAX_EPISODE_STEPS
        assert walks.verdicts[lo : hi - 1].any(1).all()  # it moved on only with a valid cut
    with pytest.raises(ValueError, match="walks=0: need at least one walk"):
        valid_walks(world, images, delta, 0, 0)


def test_walk_labels_are_the_cut_verdicts(tiny_pipeline: dict) -> None:
    """The first state of a walk is the whole map: its labels are the 12 cuts' verdicts."""
    from cutbg_env.core import new_episode

    world = CutWorld("animals", "trainval", "dog")
    delta = resolve_delta("animals", "dog", None)
    i = world.positives[0]
    walks = valid_walks(world, [i], delta, 1, 1)
    expected = cut_verdicts(world, [new_episode(world, i, delta, 3.0, True)])[0]
    np.testing.assert_array_equal(walks.verdicts[0], expected)
    _, (p_full,) = world.full([i])
    for k, a in enumerate(CUT_ACTIONS):
        crop, _ = apply_cut(FULL_CROP, a)
        _, (score,) = world.evaluate(world.mid_maps([i]), np.asarray([crop]))
        assert walks.verdicts[0, k] == (p_full - score <= delta)


class _Fixed(torch.nn.Module):
    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)

    def forward(self, obs: dict) -> torch.Tensor:
        return self.logits


def test_policy_rule_on_hand_made_logits() -> None:
    """P = σ(logit). Row 0: UP_3 at P 0.9 has value 0.9·13 − 0.1·3 = 11.4, above UP_1 at P 0.99
    (0.99·11 − 0.01 = 10.88) with W = 10; with W = 100 the safer UP_1 wins (99.98 vs 92.7).
    Row 1: no cut reaches P 0.5, so STOP."""
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    rows = np.full((2, 12), logit(0.1))
    rows[0, CUT_ACTIONS.index(Action.UP_1)] = logit(0.99)
    rows[0, CUT_ACTIONS.index(Action.UP_3)] = logit(0.9)
    rows[1, :] = logit(0.4)
    obs = {"history": np.zeros((2, 4, 13))}
    net = _Fixed(rows)
    assert list(validity_policy(net, 10.0)(obs)) == [Action.UP_3, Action.STOP]  # type: ignore[arg-type]
    assert list(validity_policy(net, 100.0)(obs)) == [Action.UP_1, Action.STOP]  # type: ignore[arg-type]


def test_mean_auc_skips_states_with_one_kind() -> None:
    logits = np.asarray([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    verdicts = np.asarray([[True, False, False], [True, True, False], [True, True, True]])
    auc, states = mean_auc(logits, verdicts)
    assert states == 2 and auc == pytest.approx((1.0 + 0.0) / 2)  # row 1 ranks both valid low
    assert mean_auc(logits[2:], verdicts[2:]) == (None, 0)


def test_ceiling_cli_writes_json(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    out = tiny_pipeline["base"] / "ceiling"
    argv = ["--class", "dog", "--split", "trainval", "--walks", "1", "--epochs", "2"]
    argv += ["--max-images", "4"]  # the tiny test split has no dog
    assert ceiling_main([*argv, "--out", str(out)]) == 0
    saved = json.loads((out / "ceiling_dog.json").read_text())
    assert saved["observations"] == ["features", "history", "score"]
    assert saved["train_states"] >= 4 and saved["test_states"] >= 1
    assert len(saved["train_loss"]) == 2
    assert saved["auc"] is None or 0.0 <= saved["auc"] <= 1.0
    pol = saved["policy"]
    assert pol["images"] <= 4 and 0.0 <= pol["corloc"] <= 100.0
    assert 1.0 <= pol["calls_per_image"] <= 1 + MAX_EPISODE_STEPS
    assert "as a policy: CorLoc" in capsys.readouterr().out
    with pytest.raises(ValueError, match="epochs=0: need at least one pass"):
        ceiling(CeilingArgs(epochs=0))
