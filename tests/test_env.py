"""Tests of ``CutBackground-v0``: API conformance, determinism, rewards and errors.

A random-init classifier scores the tiny generated dataset: its scores sit near 0.5 and move
little, so δ picks the outcome (δ = 1 never ends on a drop; with the whole-map score raised by
``tiny.raise_full_scores``, δ = 0 ends on every cut).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from tiny import (
    assert_env_transitions,
    dataset_classes,
    make_registered,
    make_tiny_checkpoint,
    pick_class,
    raise_full_scores,
    tiny_env_kwargs,
)
from torch import equal as torch_equal

import cutbg_env
from cutbg_env import MAX_EPISODE_STEPS, Action
from cutbg_env.actions import CUT_ACTIONS, MIN_CELLS, N_ACTIONS, apply_cut
from cutbg_env.env import CutBackgroundEnv, draw_crops, parse_action
from cutbg_env.episode import HISTORY, Episode
from cutbg_env.errors import CheckpointError, DataError, OptionError, UnknownClassError
from cutbg_env.geometry import FULL_CROP, crop_to_box
from cutbg_env.world import CPU_FORWARD_BATCH, CutWorld

ALL_IDS = (cutbg_env.ENV_IDS[0], "cutbg_env:CutBackground-v0")  # the paper's state
INFO_KEYS = {
    "crop",
    "box",
    "last_valid_crop",
    "last_valid_box",
    "p_full",
    "p_crop",
    "drop",
    "calls",
    "refused",
    "action_mask",
    "image_id",
    "index",
}
# Every side cut by one cell in turn: 20 effective cuts from the full map.
SMALL_CUTS = [Action.UP_1, Action.DOWN_1, Action.LEFT_1, Action.RIGHT_1] * 5
GREEN, BLUE, RED = (0, 200, 0), (0, 90, 255), (230, 0, 0)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpt(tiny_animals: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "classifier.pt"
    return make_tiny_checkpoint(path, dataset_classes(tiny_animals))


@pytest.fixture(scope="module")
def class_name(tiny_animals: Path) -> str:
    return pick_class(tiny_animals)


@pytest.fixture(scope="module")
def env_kwargs(tiny_animals: Path, tiny_ckpt: Path, class_name: str) -> dict:
    return tiny_env_kwargs(tiny_animals, tiny_ckpt, class_name)


@pytest.fixture(scope="module")
def world(env_kwargs: dict) -> CutWorld:
    """One world (dataset + classifier + caches) shared by the tests that do not test building."""
    return CutWorld(
        env_kwargs["dataset"], "trainval", env_kwargs["class_name"], env_kwargs["checkpoint"]
    )


@pytest.fixture(params=ALL_IDS)
def env_id(request: pytest.FixtureRequest) -> str:
    return request.param


def shared_env(world: CutWorld, env_kwargs: dict, **over) -> CutBackgroundEnv:
    """A raw env over the shared world (no TimeLimit)."""
    kwargs = {**env_kwargs, **over}
    return CutBackgroundEnv(world=world, **kwargs)


def run_episode(env: gym.Env, seed: int, actions) -> list:
    """Reset with ``seed`` and step ``actions`` until the episode ends; return every output."""
    obs, info = env.reset(seed=seed)
    out: list = [(obs, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return out


def assert_same_outputs(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ta, tb in zip(a, b, strict=True):
        assert len(ta) == len(tb)
        for xa, xb in zip(ta, tb, strict=True):
            if isinstance(xa, dict) and "features" in xa:
                assert xa.keys() == xb.keys()
                for k in xa:
                    assert xa[k].dtype == xb[k].dtype
                    np.testing.assert_array_equal(xa[k], xb[k])
            elif isinstance(xa, dict):  # an info: its action mask is an array
                assert xa.keys() == xb.keys()
                np.testing.assert_array_equal(xa.pop("action_mask"), xb.pop("action_mask"))
                assert xa == xb
            else:
                assert xa == xb
                assert type(xa) is type(xb)


# -- API conformance -----------------------------------------------------------------------------
def test_ids_registered() -> None:
    assert "CutBackground-v0" in cutbg_env.ENV_IDS
    spec = gym.spec("CutBackground-v0")
    assert spec.max_episode_steps == MAX_EPISODE_STEPS == 20
    assert spec.entry_point == "cutbg_env.env:CutBackgroundEnv"


def test_check_env(env_id: str, env_kwargs: dict, world: CutWorld) -> None:
    # Sharing the world keeps the checker's extra ``spec.make()`` calls cheap; building from the
    # JSON-able kwargs alone is covered by test_spec_to_json and the determinism tests.
    env = gym.make(env_id, world=world, **env_kwargs)
    assert isinstance(env.unwrapped, CutBackgroundEnv)
    assert env.spec is not None and env.spec.max_episode_steps == MAX_EPISODE_STEPS
    gym_check_env(env.unwrapped)
    sb3_check_env(env, warn=False)
    env.close()


def test_spaces(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs)
    assert env.action_space == gym.spaces.Discrete(13)
    feats = env.observation_space["features"]
    hist = env.observation_space["history"]
    assert feats.shape == (64, 7, 7) and feats.dtype == np.float32
    assert float(feats.low.min()) == 0.0 and float(feats.high.max()) == 65504.0
    assert hist.shape == (HISTORY, N_ACTIONS) == (4, 13) and hist.dtype == np.float32
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    np.testing.assert_array_equal(obs["history"], np.zeros((4, 13), np.float32))
    half = shared_env(world, env_kwargs, obs_dtype="float16")
    obs16, _ = half.reset(seed=0)
    assert obs16["features"].dtype == obs16["history"].dtype == np.float16
    assert obs16 in half.observation_space
    np.testing.assert_allclose(obs16["features"], obs["features"], rtol=1e-3, atol=1e-3)


def test_spec_to_json(env_id: str, env_kwargs: dict) -> None:
    env = gym.make(env_id, **env_kwargs)
    text = env.spec.to_json()
    doc = json.loads(text)
    assert doc["kwargs"] == env_kwargs
    assert doc["max_episode_steps"] == MAX_EPISODE_STEPS
    assert EnvSpec.from_json(text) == env.spec


# -- determinism ---------------------------------------------------------------------------------
def test_same_seed_same_episode_fixed_actions(env_id: str, env_kwargs: dict, world) -> None:
    # One env builds its own world, the other shares the module's: same results either way.
    a = gym.make(env_id, **env_kwargs)
    b = gym.make(env_id, world=world, **env_kwargs)
    actions = [2, 5, 8, 11, 0, 3, 6, 9, 7, 10, 1, 4, 12]
    out_a = run_episode(a, 11, actions)
    out_b = run_episode(b, 11, actions)
    assert_same_outputs(out_a, out_b)
    assert out_a[-1][2] is True  # ended by STOP
    # Later episodes (reset without a seed) follow the same image order too.
    for _ in range(3):
        assert_same_outputs(
            run_episode(a, None, actions[:4]),  # type: ignore[arg-type]
            run_episode(b, None, actions[:4]),  # type: ignore[arg-type]
        )


def test_same_seed_same_episode_random_actions(env_id: str, env_kwargs: dict, world) -> None:
    outs = []
    for _ in range(2):
        env = gym.make(env_id, world=world, **env_kwargs)
        env.action_space.seed(5)
        actions = [env.action_space.sample() for _ in range(MAX_EPISODE_STEPS)]
        outs.append((actions, run_episode(env, 7, actions)))
    assert outs[0][0] == outs[1][0]
    assert_same_outputs(outs[0][1], outs[1][1])


def test_image_order_is_a_permutation_per_epoch(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs)
    n = len(world.positives)
    assert n >= 3
    env.reset(seed=5)
    # The seeded reset started the epoch: n - 1 more resets finish it.
    first = [env._episode.index] + [env.reset()[1]["index"] for _ in range(n - 1)]
    assert sorted(first) == sorted(world.positives)
    second = [env.reset()[1]["index"] for _ in range(n)]
    assert sorted(second) == sorted(world.positives)
    env.reset(seed=5)
    again = [env._episode.index] + [env.reset()[1]["index"] for _ in range(n - 1)]
    assert again == first


def test_observations_are_fresh_arrays(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs)
    obs, _ = env.reset(seed=0, options={"index": 0})
    saved = obs["features"].copy()
    obs["features"][:] = -1.0  # a user scribbling on an observation must not touch the env
    obs2, _ = env.reset(options={"index": 0})
    np.testing.assert_array_equal(obs2["features"], saved)
    step_obs, *_ = env.step(Action.UP_1)
    step_obs["features"][:] = -1.0
    step_obs["history"][:] = -1.0
    assert env.step(Action.STOP)[0]["features"].min() >= 0.0


# -- pickling and vector envs ---------------------------------------------------------------
def test_pickle_round_trip(env_kwargs: dict, world: CutWorld) -> None:
    env = shared_env(world, env_kwargs)
    env.reset(seed=1)
    env.step(Action.UP_2)
    clone = pickle.loads(pickle.dumps(env))
    assert isinstance(clone, CutBackgroundEnv)
    for a in (Action.LEFT_3, Action.DOWN_1, Action.RIGHT_2, Action.STOP):
        assert_same_outputs([env.step(a)], [clone.step(a)])
    # The generator state travelled too: the next unseeded reset picks the same image.
    assert_same_outputs([env.reset()], [clone.reset()])


def test_pickle_unwrapped_built_env(env_kwargs: dict) -> None:
    env = gym.make(ALL_IDS[0], **env_kwargs).unwrapped
    env.reset(seed=2)
    clone = pickle.loads(pickle.dumps(env))
    _, reward, terminated, truncated, info = clone.step(Action.RIGHT_1)
    assert info["calls"] == 2 and info["crop"] == (0, 0, 27, 28)
    assert reward == 1.0 and not terminated and not truncated


def test_async_vector_env(env_kwargs: dict, world: CutWorld) -> None:
    # Both spellings of the id, one per worker; the platform's default start method.
    fns = [lambda env_id=env_id: make_registered(env_id, **env_kwargs) for env_id in ALL_IDS]
    assert len(fns) == 2
    venv = gym.vector.AsyncVectorEnv(fns)
    try:
        venv.reset_async(seed=0)
        obs, infos = venv.reset_wait(timeout=120)
        assert obs["features"].shape == (2, 64, 7, 7)
        assert obs["history"].shape == (2, 4, 13)
        ref = shared_env(world, env_kwargs)
        ref_obs, ref_info = ref.reset(seed=0)  # worker 0 was seeded 0
        np.testing.assert_allclose(obs["features"][0], ref_obs["features"], atol=1e-5)
        assert infos["image_id"][0] == ref_info["image_id"]
        for a in (Action.UP_1, Action.LEFT_2, Action.RIGHT_3, Action.DOWN_1):
            venv.step_async(np.array([a, a]))
            obs, rewards, terminated, truncated, infos = venv.step_wait(timeout=120)
            r_obs, r_reward, r_term, _, r_info = ref.step(a)
            assert rewards.shape == (2,)
            assert rewards[0] == r_reward
            assert bool(terminated[0]) == r_term
            assert not truncated.any()
            np.testing.assert_allclose(obs["features"][0], r_obs["features"], atol=1e-5)
            np.testing.assert_array_equal(obs["history"][0], r_obs["history"])
            assert tuple(infos["crop"][0]) == r_info["crop"]
            assert (infos["calls"] >= 2).all()
    finally:
        venv.close(terminate=True)


# -- Stable-Baselines3 ------------------------------------------------------------------------
def _parameters(policy) -> list:
    return [p.detach().clone() for p in policy.parameters()]


def test_sb3_ppo_learns(env_kwargs: dict, world: CutWorld) -> None:
    """PPO trains on the env: its rollouts hold the env's transitions, its weights move."""
    env = gym.make(ALL_IDS[0], world=world, **env_kwargs)
    model = PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0)
    before = _parameters(model.policy)
    model.learn(200)
    assert model.num_timesteps == 256  # whole rollouts of 64 steps
    buf = model.rollout_buffer
    # within an episode, step t's action is step t + 1's newest history row
    starts = buf.episode_starts.reshape(-1)
    checked = assert_env_transitions(
        buf.actions[:-1], buf.rewards[:-1], buf.observations["history"][1:], mask=starts[1:] == 0
    )
    assert checked > 32
    assert any(
        not torch_equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True)
    )
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert 0 <= int(action) < N_ACTIONS


def test_sb3_dqn_learns(env_kwargs: dict, world: CutWorld) -> None:
    """DQN trains on the env: its replay buffer holds the env's transitions (the terminal
    observation of an episode's last step, not the next episode's first), its weights move."""
    env = gym.make(ALL_IDS[-1], world=world, **env_kwargs)
    model = DQN("MultiInputPolicy", env, learning_starts=50, buffer_size=500, seed=0)
    before = _parameters(model.q_net)
    model.learn(200)
    buf = model.replay_buffer
    assert buf.pos == 200 and not buf.full
    assert (
        assert_env_transitions(
            buf.actions[:200], buf.rewards[:200], buf.next_observations["history"][:200]
        )
        == 200
    )
    stops = buf.actions[:200].reshape(-1) == Action.STOP
    assert stops.any() and buf.dones[:200].reshape(-1)[stops].all()  # STOP always ends
    # a gradient step after every 4-step rollout that ends past step 50: 52, 56, ..., 200
    assert model._n_updates == 38
    assert any(not torch_equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))


# -- actions and geometry of cuts ---------------------------------------------------------------
def test_action_enum() -> None:
    assert N_ACTIONS == 13 and len(CUT_ACTIONS) == 12 and MIN_CELLS == 1
    assert [a.scale for a in Action] == [1, 2, 3] * 4 + [0]
    assert [a.side for a in Action] == ["up"] * 3 + ["down"] * 3 + ["left"] * 3 + ["right"] * 3 + [
        "stop"
    ]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (Action.UP_1, (0, 1, 28, 28)),
        (Action.UP_2, (0, 2, 28, 28)),
        (Action.UP_3, (0, 3, 28, 28)),
        (Action.DOWN_1, (0, 0, 28, 27)),
        (Action.DOWN_2, (0, 0, 28, 26)),
        (Action.DOWN_3, (0, 0, 28, 25)),
        (Action.LEFT_1, (1, 0, 28, 28)),
        (Action.LEFT_2, (2, 0, 28, 28)),
        (Action.LEFT_3, (3, 0, 28, 28)),
        (Action.RIGHT_1, (0, 0, 27, 28)),
        (Action.RIGHT_2, (0, 0, 26, 28)),
        (Action.RIGHT_3, (0, 0, 25, 28)),
    ],
)
def test_apply_cut_from_full(action: Action, expected: tuple) -> None:
    assert apply_cut(FULL_CROP, action) == (expected, action.scale)
    assert apply_cut(FULL_CROP, int(action)) == (expected, action.scale)


@pytest.mark.parametrize("thickness", [1, 2, 3])
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("side", ["up", "down", "left", "right"])
def test_apply_cut_clamps(side: str, scale: int, thickness: int) -> None:
    action = Action(("up", "down", "left", "right").index(side) * 3 + scale - 1)
    # A crop `thickness` cells thick in the cut's direction, 10 in the other.
    crop = (5, 7, 15, 7 + thickness) if side in ("up", "down") else (7, 5, 7 + thickness, 15)
    removed = min(scale, thickness - 1)
    x0, y0, x1, y1 = crop
    expected = {
        "up": (x0, y0 + removed, x1, y1),
        "down": (x0, y0, x1, y1 - removed),
        "left": (x0 + removed, y0, x1, y1),
        "right": (x0, y0, x1 - removed, y1),
    }[side]
    assert apply_cut(crop, action) == (expected, removed)


def test_apply_cut_rejects_stop() -> None:
    with pytest.raises(ValueError, match=r"^apply_cut: STOP is not a cut$"):
        apply_cut(FULL_CROP, Action.STOP)


def test_parse_action() -> None:
    assert parse_action(3) is Action.DOWN_1
    assert parse_action(np.int64(12)) is Action.STOP
    assert parse_action(np.array(7)) is Action.LEFT_2
    assert parse_action(np.array([11], dtype=np.int32)) is Action.RIGHT_3
    for bad in (13, -1, 2.5, "3", None, True, np.array([1, 2]), np.array(2.0), 12.0):
        with pytest.raises(
            ValueError,
            match=rf"^invalid action {re.escape(repr(bad))}: expected an integer in 0\.\.12 "
            r"\(see cutbg_env\.Action\)$",
        ):
            parse_action(bad)


# -- Episode rules on hand-made cases ---------------------------------------------------------
def make_episode(p_full: float = 0.9, delta: float = 0.1, eta: float = 3.0, **kw) -> Episode:
    feats = np.zeros((8, 7, 7), np.float32)
    return Episode(4, "000005", (100, 200), feats, p_full, delta, eta, **kw)


def feats_of(value: float) -> np.ndarray:
    return np.full((8, 7, 7), value, np.float32)


def test_episode_start() -> None:
    ep = make_episode()
    assert ep.crop == ep.valid_crop == FULL_CROP
    assert ep.trail == [FULL_CROP]
    assert ep.calls == 1 and ep.steps == 0 and not ep.done
    info = ep.info()
    assert info.keys() == INFO_KEYS
    assert info["box"] == info["last_valid_box"] == (1, 1, 200, 100)  # (H, W) = (100, 200)
    assert info["p_full"] == info["p_crop"] == 0.9 and info["drop"] == 0.0
    assert (info["image_id"], info["index"]) == ("000005", 4)
    obs = ep.obs(np.dtype(np.float32))
    assert obs["history"].shape == (4, 13) and not obs["history"].any()


def test_cut_within_delta_is_rewarded() -> None:
    ep = make_episode()
    crop = ep.plan(Action.UP_2)
    assert crop == (0, 2, 28, 28)
    reward, terminated = ep.finish(Action.UP_2, crop, feats_of(1.0), 0.85)
    assert reward == 2.0 and terminated is False and not ep.done
    assert ep.crop == ep.valid_crop == (0, 2, 28, 28)
    assert ep.trail == [FULL_CROP, (0, 2, 28, 28)]
    assert ep.calls == 2 and ep.p_crop == 0.85
    info = ep.info()
    assert info["drop"] == pytest.approx(0.05)
    assert info["box"] == crop_to_box((0, 2, 28, 28), 200, 100) == (1, 8, 200, 100)
    assert info["last_valid_box"] == info["box"]
    np.testing.assert_array_equal(ep.obs(np.dtype(np.float32))["features"], feats_of(1.0))


def test_cut_drop_equal_to_delta_is_valid() -> None:
    ep = make_episode(p_full=0.5, delta=0.25)  # exact binary fractions: drop == delta
    reward, terminated = ep.finish(Action.LEFT_3, ep.plan(Action.LEFT_3), feats_of(0), 0.25)
    assert (reward, terminated) == (3.0, False)
    assert ep.valid_crop == (3, 0, 28, 28)


def test_cut_beyond_delta_terminates() -> None:
    ep = make_episode()
    ep.finish(Action.UP_1, ep.plan(Action.UP_1), feats_of(1), 0.88)
    crop = ep.plan(Action.RIGHT_3)
    assert crop == (0, 1, 25, 28)
    reward, terminated = ep.finish(Action.RIGHT_3, crop, feats_of(2), 0.7)
    assert reward == -3.0 and terminated is True and ep.done
    assert ep.crop == (0, 1, 25, 28)  # the cut happened ...
    assert ep.valid_crop == (0, 1, 28, 28)  # ... but the result is the crop before it
    info = ep.info()
    assert info["last_valid_crop"] == (0, 1, 28, 28)
    assert info["last_valid_box"] == crop_to_box((0, 1, 28, 28), 200, 100)
    assert info["drop"] == pytest.approx(0.2) and info["calls"] == 3


def test_cut_beyond_delta_without_termination() -> None:
    ep = make_episode(terminate_on_drop=False)
    reward, terminated = ep.finish(Action.DOWN_2, ep.plan(Action.DOWN_2), feats_of(0), 0.7)
    assert (reward, terminated) == (-2.0, False)
    assert ep.crop == (0, 0, 28, 26) and ep.valid_crop == FULL_CROP
    # Stopping now, with the drop above delta, is punished.
    reward, terminated = ep.finish(Action.STOP, ep.plan(Action.STOP))
    assert (reward, terminated) == (-3.0, True)
    assert ep.calls == 2 and ep.crop == (0, 0, 28, 26)


def test_cut_beyond_delta_is_undone_with_undo_drop() -> None:
    """A cut past δ: −s, the crop, features and score of before it, the action in the history,
    the call counted; the episode goes on, and the next valid cut clears ``refused``."""
    ep = make_episode(undo_drop=True)
    ep.finish(Action.UP_1, ep.plan(Action.UP_1), feats_of(1), 0.88)
    reward, terminated = ep.finish(Action.RIGHT_3, ep.plan(Action.RIGHT_3), feats_of(2), 0.7)
    assert (reward, terminated) == (-3.0, False) and not ep.done
    assert ep.crop == ep.valid_crop == (0, 1, 28, 28) and ep.trail == [FULL_CROP, (0, 1, 28, 28)]
    assert ep.p_crop == 0.88 and ep.calls == 3 and ep.steps == 2
    info = ep.info()
    assert info["refused"] is True and info["drop"] == pytest.approx(0.02)
    obs = ep.obs(np.dtype(np.float32))
    np.testing.assert_array_equal(obs["features"], feats_of(1))
    assert (
        obs["history"][0].argmax() == Action.RIGHT_3 and obs["history"][1].argmax() == Action.UP_1
    )
    reward, terminated = ep.finish(Action.RIGHT_1, ep.plan(Action.RIGHT_1), feats_of(3), 0.85)
    assert (reward, terminated) == (1.0, False) and ep.info()["refused"] is False
    assert ep.crop == ep.valid_crop == (0, 1, 27, 28)


@pytest.mark.parametrize(("score", "expected"), [(0.9, 3.0), (0.85, 3.0), (0.5, -3.0)])
def test_stop(score: float, expected: float) -> None:
    ep = make_episode(terminate_on_drop=False)
    if score != 0.9:
        ep.finish(Action.UP_1, ep.plan(Action.UP_1), feats_of(0), score)
    calls, crop = ep.calls, ep.crop
    assert ep.plan(Action.STOP) is None
    reward, terminated = ep.finish(Action.STOP, None)
    assert (reward, terminated) == (expected, True) and ep.done
    assert ep.calls == calls and ep.crop == crop


def test_stop_uses_eta() -> None:
    ep = make_episode(eta=1.5)
    assert ep.finish(Action.STOP, None) == (1.5, True)


def test_noop_cut() -> None:
    ep = make_episode()
    for _ in range(9):  # 9 cuts of 3 leave a column one cell wide
        ep.finish(Action.RIGHT_3, ep.plan(Action.RIGHT_3), feats_of(0), 0.9)
    assert ep.crop == (0, 0, 1, 28)
    calls, trail, feats = ep.calls, list(ep.trail), ep.features
    assert calls == 10
    for action in (Action.RIGHT_1, Action.RIGHT_2, Action.LEFT_3):
        assert ep.plan(action) is None
        reward, terminated = ep.finish(action, None)
        assert (reward, terminated) == (-float(action.scale), False)
        assert ep.crop == ep.valid_crop == (0, 0, 1, 28)
        assert ep.calls == calls and ep.trail == trail and ep.features is feats
    assert ep.plan(Action.UP_1) == (0, 1, 1, 28)  # the other direction still cuts
    assert ep.history[0, Action.LEFT_3] == 1.0 and ep.steps == 12


def test_action_mask_on_hand_made_crops() -> None:
    """1 where an action can change the crop: STOP always; a cut unless it removes nothing or
    was undone at this crop (undo_drop); a valid cut clears the refusals."""
    ep = make_episode(undo_drop=True)
    np.testing.assert_array_equal(ep.action_mask(), np.ones(13, np.int8))
    assert ep.action_mask().dtype == np.int8
    for _ in range(9):  # a column one cell wide: no left or right cut removes anything
        ep.finish(Action.RIGHT_3, ep.plan(Action.RIGHT_3), feats_of(0), 0.9)
    assert ep.crop == (0, 0, 1, 28)
    #                 up       down     left     right    stop
    expected = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1], np.int8)
    np.testing.assert_array_equal(ep.info()["action_mask"], expected)
    ep.finish(Action.UP_2, ep.plan(Action.UP_2), feats_of(1), 0.5)  # drop 0.4 > δ: undone
    assert ep.refused and ep.refused_here == {Action.UP_2}
    expected[Action.UP_2] = 0
    np.testing.assert_array_equal(ep.action_mask(), expected)
    ep.finish(Action.LEFT_1, None)  # a no-op keeps the crop and its refusals
    np.testing.assert_array_equal(ep.action_mask(), expected)
    ep.finish(Action.DOWN_1, ep.plan(Action.DOWN_1), feats_of(2), 0.85)  # valid: a new crop
    assert ep.crop == (0, 0, 1, 27) and ep.refused_here == set()
    expected[Action.UP_2] = 1
    np.testing.assert_array_equal(ep.action_mask(), expected)
    # Under the paper's rule nothing is refused: a cut past δ ends the episode instead.
    paper = make_episode()
    paper.finish(Action.UP_2, paper.plan(Action.UP_2), feats_of(1), 0.5)
    assert paper.done and paper.refused_here == set()
    np.testing.assert_array_equal(paper.action_mask(), np.ones(13, np.int8))


def test_action_mask_in_the_env_and_vector_env(env_kwargs: dict, world: CutWorld) -> None:
    env = shared_env(world, env_kwargs, undo_drop=True, delta=0.0)
    _, info = env.reset(seed=0)
    mask = info["action_mask"]
    assert mask.shape == (13,) and mask.all()
    assert env.action_space.sample(mask=mask) in range(13)  # Gymnasium's masked sampling
    for action in (Action.UP_1, Action.LEFT_1):
        _, _, _, _, info = env.step(action)
        np.testing.assert_array_equal(info["action_mask"], env.live_episode().action_mask())
        assert info["action_mask"][action] == (0 if info["refused"] else 1)
    vec = gym.make_vec(ALL_IDS[0], num_envs=3, world=world, **env_kwargs)
    _, infos = vec.reset(seed=0)
    assert infos["action_mask"].shape == (3, 13) and infos["action_mask"].dtype == np.int8
    _, _, _, _, infos = vec.step(np.full(3, int(Action.UP_1)))
    np.testing.assert_array_equal(infos["action_mask"], np.ones((3, 13), np.int8))
    vec.close()


def test_history_rows_shift() -> None:
    ep = make_episode(delta=1.0)
    seq = [Action.UP_1, Action.LEFT_2, Action.DOWN_3, Action.RIGHT_1, Action.UP_3]
    for k, a in enumerate(seq, start=1):
        ep.finish(a, ep.plan(a), feats_of(0), 0.5)
        hist = ep.obs(np.dtype(np.float32))["history"]
        assert hist.dtype == np.float32
        assert hist.sum() == min(k, HISTORY)
        recent = seq[:k][::-1][:HISTORY]  # most recent first
        for row, act in enumerate(recent):
            expected = np.zeros(N_ACTIONS, np.float32)
            expected[act] = 1.0
            np.testing.assert_array_equal(hist[row], expected)
        assert not hist[len(recent) :].any()
    assert ep.obs(np.dtype(np.float16))["history"].dtype == np.float16


# -- the real env: rewards, info, options, render, truncation ------------------------------------
def test_info_after_reset_and_steps(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs)
    _, info = env.reset(seed=0)
    assert info.keys() == INFO_KEYS
    idx = info["index"]
    assert idx in world.positives
    ann = world.data.annotation(idx)
    assert info["image_id"] == world.data.ids[idx] == ann.image_id
    assert info["crop"] == info["last_valid_crop"] == FULL_CROP
    assert info["box"] == (1, 1, ann.width, ann.height)
    assert isinstance(info["p_full"], float) and 0.0 < info["p_full"] < 1.0
    assert info["p_crop"] == info["p_full"] and info["drop"] == 0.0
    assert info["calls"] == 1
    _, full_scores = world.score_crops(world.mid_maps([idx]), np.asarray([FULL_CROP]))
    assert info["p_full"] == pytest.approx(float(full_scores[0]), abs=1e-9)
    calls = 1
    for a in [Action.UP_3] * 9 + [Action.UP_1, Action.LEFT_1]:
        before = env._episode.crop
        _, removed = apply_cut(before, a)
        _, _, terminated, truncated, info = env.step(a)
        calls += removed > 0
        assert info.keys() == INFO_KEYS
        assert info["calls"] == calls
        assert all(isinstance(v, int) for v in info["crop"]) and len(info["crop"]) == 4
        assert info["box"] == crop_to_box(info["crop"], ann.width, ann.height)
        assert info["last_valid_box"] == crop_to_box(info["last_valid_crop"], ann.width, ann.height)
        assert info["drop"] == info["p_full"] - info["p_crop"]
        assert isinstance(info["p_crop"], float)
        assert (info["image_id"], info["index"]) == (ann.image_id, idx)
        assert not truncated
    assert info["crop"] == (1, 27, 28, 28)  # the 10th UP_3 was clamped to one row, UP_1 no-op
    assert calls == 11
    _, _, terminated, _, info = env.step(Action.STOP)
    assert terminated and info["calls"] == calls


def _random_episode_actions(episode: int) -> list[Action]:
    """Mostly cuts (STOP now and then after the 5th step), a fixed sequence per episode."""
    rng = np.random.default_rng(episode)
    return [
        Action(12 if t > 4 and rng.random() < 0.1 else int(rng.integers(0, 12))) for t in range(25)
    ]


def _cut_drops(world: CutWorld, env_kwargs: dict) -> list[list[float]]:
    """Per episode below, the drops of its effective cuts, with delta = 1 (no termination)."""
    env = shared_env(world, env_kwargs, delta=1.0)
    drops: list[list[float]] = []
    for episode in range(len(world.positives)):
        env.reset(seed=episode)
        drops.append([])
        for a in _random_episode_actions(episode):
            calls = env._episode.calls
            _, _, terminated, _, info = env.step(a)
            if info["calls"] > calls:
                drops[-1].append(info["drop"])
            if terminated:
                break
    return drops


@pytest.mark.parametrize("which", ["first", "all"])
def test_rewards_follow_scores(
    world: CutWorld, env_kwargs: dict, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewards, termination and p̂ agree with ``world.score_crops`` of the crop, for real scores.

    The random classifier's drops are tiny (~1e-4) and of either sign: with p̄ raised by 0.01
    they are all positive, and δ (≥ 0) is taken from them: the median of the episodes'
    first-cut drops (some episodes then start with a rewarded cut, others end on their first
    cut) or the median of all drops."""
    raise_full_scores(monkeypatch, 0.01)
    drops = _cut_drops(world, env_kwargs)
    firsts = [d[0] for d in drops if d]
    delta = float(np.median(firsts if which == "first" else [x for d in drops for x in d]))
    env = shared_env(world, env_kwargs, delta=delta, eta=2.5)
    signs: set[float] = set()
    for episode in range(len(world.positives)):
        obs, info = env.reset(seed=episode)
        idx = info["index"]
        for a in _random_episode_actions(episode):
            prev = env._episode
            crop, valid, calls = prev.crop, prev.valid_crop, prev.calls
            obs, reward, terminated, truncated, info = env.step(a)
            assert not truncated
            ok = info["drop"] <= delta
            if a is Action.STOP:
                assert reward == (2.5 if ok else -2.5) and terminated
                assert info["crop"] == crop and info["calls"] == calls
                break
            new, removed = apply_cut(crop, a)
            if removed == 0:
                assert reward == -a.scale and not terminated
                assert info["crop"] == crop and info["calls"] == calls
                continue
            signs.add(float(np.sign(reward)))
            assert info["crop"] == new and info["calls"] == calls + 1
            assert reward == (a.scale if ok else -a.scale)
            assert terminated == (not ok)
            assert info["last_valid_crop"] == (new if ok else valid)
            feats, scores = world.score_crops(world.mid_maps([idx]), np.asarray([new]))
            assert info["p_crop"] == pytest.approx(float(scores[0]), abs=1e-9)
            np.testing.assert_allclose(obs["features"], feats[0], atol=1e-6)
            if terminated:
                break
    if which == "first" and len(set(firsts)) > 1:
        assert signs == {1.0, -1.0}, "both outcomes should occur with this delta"
    assert signs


def cached_world(world: CutWorld, crop_cache_mb: float) -> CutWorld:
    """A world like ``world`` (its classifier and data) with a crop cache of that size."""
    return CutWorld(
        world.dataset_name,
        "trainval",
        world.class_name,
        model=world.model,
        data=world.data,
        crop_cache_mb=crop_cache_mb,
    )


def test_crop_cache_returns_the_forward_result(world: CutWorld, env_kwargs: dict) -> None:
    """Cached crops come back as a forward scores them; each distinct crop is scored once, a
    repeat (in the batch or later) comes from the cache, the least recently used goes first."""
    i, j = world.positives[:2]
    a, b, c = (1, 0, 28, 28), (0, 2, 28, 28), (0, 0, 27, 25)
    cached = cached_world(world, 1.0)
    indices, crops = [i, i, j, i], [a, b, a, a]
    first = cached.score_image_crops(indices, crops)
    assert (cached.crop_misses, cached.crop_hits) == (3, 1)
    again = cached.score_image_crops(indices, crops)
    assert (cached.crop_misses, cached.crop_hits) == (3, 5)
    feats, scores = world.score_crops(world.mid_maps(indices), np.asarray(crops))
    for (f1, p1), (f2, p2), f, p in zip(first, again, feats, scores, strict=True):
        assert f2 is f1 and p2 == p1  # the cache's own entry
        np.testing.assert_allclose(f1, f, atol=1e-6)
        assert p1 == pytest.approx(float(p), abs=1e-9)
    # Room for two entries: scoring a third evicts the least recently used one.
    size = first[0][0].nbytes
    small = cached_world(world, 2.5 * size / 2**20)
    for crop in (a, b, c):
        small.score_image_crops([i], [crop])
    assert (small.crop_misses, small.crop_hits) == (3, 0)
    small.score_image_crops([i], [c])  # kept
    small.score_image_crops([i], [a])  # evicted: scored again
    assert (small.crop_misses, small.crop_hits) == (4, 1)
    # No cache: only a repeat within one batch is saved.
    assert world.crop_cache_bytes == 0
    before = world.crop_misses
    world.score_image_crops([i, i], [a, a])
    world.score_image_crops([i], [a])
    assert world.crop_misses - before == 2


def test_env_crop_cache_gives_the_same_episodes(env_kwargs: dict) -> None:
    plain = gym.make(ALL_IDS[0], **env_kwargs)
    cached = gym.make(ALL_IDS[0], crop_cache_mb=16.0, **env_kwargs)
    assert json.loads(cached.spec.to_json())["kwargs"]["crop_cache_mb"] == 16.0
    world = cached.unwrapped.world
    assert world.crop_cache_bytes == 16 * 2**20 and plain.unwrapped.world.crop_cache_bytes == 0
    actions = [Action.UP_1, Action.LEFT_2, Action.DOWN_3, Action.STOP]
    first = run_episode(cached, 0, actions)
    misses = world.crop_misses
    assert_same_outputs(run_episode(plain, 0, actions), first)
    # The same image again: its crops come from the cache, the episode is the same.
    assert_same_outputs(run_episode(plain, 0, actions), run_episode(cached, 0, actions))
    assert world.crop_misses == misses and world.crop_hits == first[-1][-1]["calls"] - 1 > 0
    with pytest.raises(OptionError, match=r"crop_cache_mb=-2\.0: must be a finite number ≥ 0"):
        gym.make(ALL_IDS[0], crop_cache_mb=-2.0, **env_kwargs)


def test_a_large_batch_is_scored_forward_batch_crops_at_a_time(world: CutWorld) -> None:
    """Seven crops with ``forward_batch=3``: three forwards (3 + 3 + 1), the scores and features
    of one forward of all seven; the CPU default is CPU_FORWARD_BATCH."""
    assert world.forward_batch == CPU_FORWARD_BATCH
    sliced = CutWorld(
        world.dataset_name,
        "trainval",
        world.class_name,
        model=world.model,
        data=world.data,
        forward_batch=3,
    )
    crops = np.asarray([(k, 0, 28, 28 - k) for k in range(7)])
    mids = world.mid_maps(world.positives[:1] * 7)
    sizes: list[int] = []
    hook = world.model.upper.register_forward_hook(lambda _m, args, _o: sizes.append(len(args[0])))
    try:
        feats, scores = sliced.score_crops(mids, crops)
    finally:
        hook.remove()
    assert sizes == [3, 3, 1]
    whole_feats, whole_scores = world.score_crops(mids, crops)
    np.testing.assert_allclose(feats, whole_feats, atol=1e-5)
    np.testing.assert_allclose(scores, whole_scores, atol=1e-6)
    assert len(set(np.round(scores, 6))) > 1  # the crops differ in score: the order is checked
    with pytest.raises(OptionError, match=r"forward_batch=0: must be an integer ≥ 1"):
        CutWorld(
            world.dataset_name, "trainval", world.class_name, model=world.model, forward_batch=0
        )


def test_crop_cache_size_must_be_a_number(world: CutWorld) -> None:
    with pytest.raises(OptionError, match=r"crop_cache_mb=-1\.0: must be a finite number ≥ 0"):
        cached_world(world, -1.0)


def test_delta_extremes_on_real_env(
    world: CutWorld, env_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    raise_full_scores(monkeypatch)  # every effective cut drops p̄ − p̂ ≈ 0.05 > 0
    env = shared_env(world, env_kwargs, delta=0.0)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(Action.LEFT_2)
    assert (reward, terminated) == (-2.0, True) and info["drop"] > 0
    assert info["crop"] == (2, 0, 28, 28) and info["last_valid_crop"] == FULL_CROP
    env.reset(seed=0)
    assert env.step(Action.STOP)[1:3] == (3.0, True)  # a drop of 0 is within δ = 0
    env = shared_env(world, env_kwargs, delta=0.0, terminate_on_drop=False)
    env.reset(seed=0)
    assert env.step(Action.LEFT_2)[1:3] == (-2.0, False)
    assert env.step(Action.STOP)[1:3] == (-3.0, True)  # stopping past δ
    env = shared_env(world, env_kwargs, delta=1.0)  # no drop exceeds 1
    env.reset(seed=0)
    assert env.step(Action.LEFT_2)[1:3] == (2.0, False)
    assert env.step(Action.STOP)[1:3] == (3.0, True)


def test_reset_options(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs)
    for i in (0, len(world.positives) - 1):
        _, info = env.reset(seed=0, options={"index": i})
        assert info["index"] == world.positives[i]
    target = world.data.ids[world.positives[1]]
    _, info = env.reset(options={"image_id": target})
    assert info["image_id"] == target and info["index"] == world.positives[1]
    n = len(world.positives)
    with pytest.raises(
        IndexError,
        match=rf"^options\['index'\]=99: this split has {n} images of '{world.class_name}' "
        rf"\(0\.\.{n - 1}\)$",
    ):
        env.reset(options={"index": 99})
    negative = next(i for i in range(len(world.data)) if i not in world.positives)
    with pytest.raises(
        ValueError,
        match=rf"^options\['image_id'\]='{world.data.ids[negative]}' is not an image of "
        rf"'{world.class_name}' in split 'trainval'$",
    ):
        env.reset(options={"image_id": world.data.ids[negative]})
    with pytest.raises(ValueError, match=r"^options\['image_id'\]='no-such-image' is not an image"):
        env.reset(options={"image_id": "no-such-image"})


def test_render_rgb_array(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs, render_mode="rgb_array", delta=1.0)
    with pytest.raises(
        RuntimeError, match=r"^CutBackgroundEnv\.render\(\) called before reset\(\)$"
    ):
        env.render()
    _, info = env.reset(seed=0, options={"index": 0})
    ann = world.data.annotation(info["index"])
    raw = world.data.load_image(info["index"])
    for a in (Action.UP_3, Action.DOWN_3, Action.LEFT_3, Action.RIGHT_3, Action.UP_2):
        env.step(a)
    frame = env.render()
    assert isinstance(frame, np.ndarray)
    assert frame.shape == (ann.height, ann.width, 3) and frame.dtype == np.uint8
    pixels = frame.reshape(-1, 3)
    for colour in (GREEN, BLUE, RED):
        assert (pixels == colour).all(axis=1).any(), f"no pixel of colour {colour}"
    np.testing.assert_array_equal(world.data.load_image(info["index"]), raw)  # not drawn on
    np.testing.assert_array_equal(env.render(), frame)
    # The current crop's box is drawn in blue at its top-left corner.
    box = crop_to_box(env._episode.crop, ann.width, ann.height)
    assert tuple(frame[box[1] - 1, box[0] - 1]) == BLUE


def test_render_without_mode_warns(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs)
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


def test_draw_crops_final_box() -> None:
    img = np.zeros((56, 56, 3), np.uint8)
    out = draw_crops(
        img, [FULL_CROP], (2, 2, 10, 10), [(40, 5, 50, 20)], final_box=(30, 30, 50, 50)
    )
    assert not img.any()
    assert tuple(out[29, 29]) == (255, 220, 0)  # final box: yellow
    assert tuple(out[4, 39]) == RED  # ground truth
    assert tuple(out[4, 4]) == BLUE  # crop (2, 2, 10, 10) -> box (5, 5, 20, 20)
    assert tuple(out[0, 0]) == GREEN  # trail: the full map
    assert tuple(out[10, 10]) == (0, 0, 0)  # inside: untouched


def test_truncation_at_20_steps(env_id: str, world: CutWorld, env_kwargs: dict) -> None:
    env = gym.make(env_id, world=world, **{**env_kwargs, "delta": 1.0})
    env.reset(seed=0)
    for t, a in enumerate(SMALL_CUTS, start=1):
        _, reward, terminated, truncated, info = env.step(a)
        assert reward == 1.0 and not terminated
        assert truncated == (t == MAX_EPISODE_STEPS)
    assert info["crop"] == (5, 5, 23, 23) and info["calls"] == 21
    _, info = env.reset()
    assert info["crop"] == FULL_CROP and info["calls"] == 1


def test_raw_env_never_truncates(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs, delta=1.0)
    env.reset(seed=0)
    for a in SMALL_CUTS * 2:  # 40 steps, the last 10 or so are no-ops
        _, _, terminated, truncated, _ = env.step(a)
        assert not terminated and not truncated


# -- bad input ------------------------------------------------------------------------------
def test_unknown_class_lists_classes(env_id: str, env_kwargs: dict, tiny_animals: Path) -> None:
    with pytest.raises(UnknownClassError, match=r"unknown class 'unicorn'") as info:
        gym.make(env_id, **{**env_kwargs, "class_name": "unicorn"})
    for name in dataset_classes(tiny_animals):
        assert name in str(info.value)
    with pytest.raises(UnknownClassError, match="PASCAL VOC class"):
        gym.make(env_id, **{**env_kwargs, "class_name": "car"})


def test_missing_dataset_root(env_id: str, env_kwargs: dict, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dataset"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        gym.make(env_id, **{**env_kwargs, "dataset": str(missing)})
    with pytest.raises(DataError, match=r"voc2007.*not found"):
        gym.make(env_id, **{**env_kwargs, "dataset": "voc2007", "root": str(tmp_path)})


def test_missing_checkpoint_names_command(env_id: str, env_kwargs: dict, tmp_path: Path) -> None:
    missing = tmp_path / "classifier.pt"
    with pytest.raises(CheckpointError, match=r"make train-classifier") as info:
        gym.make(env_id, **{**env_kwargs, "checkpoint": str(missing)})
    assert str(missing) in str(info.value)


def test_bad_action(world: CutWorld, env_kwargs: dict) -> None:
    env = gym.make(ALL_IDS[0], world=world, **env_kwargs)
    env.reset(seed=0)
    for bad in (13, -1, 2.5, "0"):
        with pytest.raises(ValueError, match=r"invalid action .*0\.\.12"):
            env.step(bad)
    # The rejected actions changed nothing.
    _, _, _, _, info = env.step(Action.UP_1)
    assert info["calls"] == 2 and info["crop"] == (0, 1, 28, 28)
    assert env.unwrapped._episode.steps == 1


def test_step_after_end(world: CutWorld, env_kwargs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    env = gym.make(ALL_IDS[0], world=world, **env_kwargs)
    env.reset(seed=0)
    assert env.step(Action.STOP)[2] is True
    with pytest.raises(
        RuntimeError, match=r"step\(\) called after the episode ended: call reset\(\) first"
    ):
        env.step(Action.UP_1)
    raise_full_scores(monkeypatch)  # every effective cut is past δ = 0
    raw = shared_env(world, env_kwargs, delta=0.0)
    raw.reset(seed=0)
    assert raw.step(Action.UP_1)[2] is True  # ended by the score drop
    with pytest.raises(RuntimeError, match=r"step\(\) called after the episode ended"):
        raw.step(Action.UP_1)
    raw.reset()
    raw.step(Action.STOP)  # fine again after reset


def test_step_before_reset(world: CutWorld, env_kwargs: dict) -> None:
    with pytest.raises(
        RuntimeError,
        match=r"^CutBackgroundEnv\.step\(\) called before reset\(\): call reset\(\) first$",
    ):
        shared_env(world, env_kwargs).step(Action.UP_1)
    with pytest.raises(
        ResetNeeded, match=r"Cannot call env\.step\(\) before calling env\.reset\(\)"
    ):
        gym.make(ALL_IDS[0], world=world, **env_kwargs).step(Action.UP_1)


def test_bad_render_mode(env_id: str, world: CutWorld, env_kwargs: dict) -> None:
    with (
        pytest.warns(UserWarning, match="not in the possible render_modes"),
        pytest.raises(ValueError, match=r"render_mode='ansi'.*rgb_array"),
    ):
        gym.make(env_id, **{**env_kwargs, "render_mode": "ansi"})
    with pytest.raises(
        ValueError, match=r"^render_mode='human': supported modes are \['rgb_array'\]$"
    ):
        shared_env(world, env_kwargs, render_mode="human")


def test_bad_obs_dtype(world: CutWorld, env_kwargs: dict) -> None:
    for bad in ("float64", "int8"):
        with pytest.raises(
            ValueError, match=rf"^obs_dtype='{bad}': expected 'float32' or 'float16'$"
        ):
            shared_env(world, env_kwargs, obs_dtype=bad)


def test_default_delta_warns(world: CutWorld, env_kwargs: dict) -> None:
    with pytest.warns(UserWarning, match="no calibrated delta"):
        env = shared_env(world, env_kwargs, delta=None)
    assert env.delta == 0.1


def test_observe_score_adds_the_score_and_drop(world: CutWorld, env_kwargs: dict) -> None:
    env = shared_env(world, env_kwargs, observe_score=True)
    space = env.observation_space["score"]
    assert space.shape == (2,) and space.dtype == np.float32
    np.testing.assert_array_equal(space.low, [0.0, -1.0])
    np.testing.assert_array_equal(space.high, [1.0, 1.0])
    obs, info = env.reset(seed=3)
    assert obs in env.observation_space
    np.testing.assert_allclose(obs["score"], [info["p_full"], 0.0], rtol=1e-6)
    for a in SMALL_CUTS[:6]:
        obs, _, terminated, _, info = env.step(a)
        assert obs in env.observation_space
        np.testing.assert_allclose(
            obs["score"], [info["p_crop"], info["drop"]], rtol=1e-5, atol=1e-7
        )
        if terminated:
            break
    # the paper's state has no score; the features and history are the same either way
    plain = shared_env(world, env_kwargs)
    assert "score" not in plain.observation_space.spaces
    obs_plain, _ = plain.reset(seed=3)
    obs_score, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs_plain["features"], obs_score["features"])


def test_undo_drop_passes_the_checkers(env_id: str, env_kwargs: dict, world: CutWorld) -> None:
    env = gym.make(env_id, world=world, undo_drop=True, **env_kwargs)
    gym_check_env(env.unwrapped)
    sb3_check_env(env, warn=False)
    spec = json.loads(gym.make(env_id, undo_drop=True, **env_kwargs).spec.to_json())
    assert spec["kwargs"]["undo_drop"] is True


def test_undo_drop_without_termination_is_refused(env_kwargs: dict, world: CutWorld) -> None:
    with pytest.raises(
        ValueError, match=r"^undo_drop=True with terminate_on_drop=False: .*pass only one of them$"
    ):
        shared_env(world, env_kwargs, undo_drop=True, terminate_on_drop=False)


def test_observe_score_passes_the_checkers(env_id: str, env_kwargs: dict, world: CutWorld) -> None:
    env = gym.make(env_id, world=world, observe_score=True, **env_kwargs)
    gym_check_env(env.unwrapped)
    sb3_check_env(env, warn=False)
    assert json.loads(gym.make(env_id, observe_score=True, **env_kwargs).spec.to_json())["kwargs"][
        "observe_score"
    ]


def test_score_masks_of_rectangles_are_the_crops_scores(world: CutWorld) -> None:
    """A mask that keeps a rectangle scores as that crop does (the same zero padding); a hole
    in it (the drop region's) changes the score."""
    i = world.positives[0]
    crops = [FULL_CROP, (3, 2, 20, 25), (0, 0, 9, 28)]
    masks = np.zeros((4, 28, 28), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(crops):
        masks[k, y0:y1, x0:x1] = 1.0
    masks[3] = masks[1]
    masks[3, 10:18, 8:14] = 0.0  # a hole in the second crop
    scores = world.score_masks(i, masks)
    _, expected = world.score_crops(world.mid_maps([i] * 3), np.asarray(crops))
    assert scores.shape == (4,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores[:3], expected, atol=1e-6)
    assert scores[3] != scores[1]
