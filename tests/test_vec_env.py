"""Tests of BatchedCutBackgroundVecEnv: same transitions as N single envs, SB3 VecEnv API."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from tiny import (
    assert_env_transitions,
    dataset_classes,
    make_tiny_checkpoint,
    pick_class,
    tiny_env_kwargs,
)

import cutbg_env  # noqa: F401  (registers the ids)
from cutbg_env import MAX_EPISODE_STEPS, Action
from cutbg_env.vec_env import BatchedCutBackgroundVecEnv
from cutbg_env.world import CutWorld

N_ENVS = 3
SEED = 123
N_STEPS = 60


@pytest.fixture(scope="module")
def env_kwargs(tiny_animals: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    ckpt = make_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "classifier.pt", dataset_classes(tiny_animals)
    )
    return tiny_env_kwargs(tiny_animals, ckpt, pick_class(tiny_animals))


@pytest.fixture(scope="module")
def venv(env_kwargs: dict) -> BatchedCutBackgroundVecEnv:
    return BatchedCutBackgroundVecEnv(n_envs=N_ENVS, **env_kwargs)


def seeded_actions(n_steps: int = N_STEPS, seed: int = 0) -> np.ndarray:
    """Actions with more STOPs than uniform so that both kinds of episode end occur."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 12, size=(n_steps, N_ENVS))
    acts[rng.random((n_steps, N_ENVS)) < 0.06] = int(Action.STOP)
    return acts


def test_matches_single_envs(venv: BatchedCutBackgroundVecEnv, env_kwargs: dict) -> None:
    # The singles share one world of their own (built apart from the batched env's).
    world = CutWorld(
        env_kwargs["dataset"], "trainval", env_kwargs["class_name"], env_kwargs["checkpoint"]
    )
    singles = [gym.make("CutBackground-v0", world=world, **env_kwargs) for _ in range(N_ENVS)]
    venv.seed(SEED)
    obs = venv.reset()
    single_obs = [env.reset(seed=SEED + i)[0] for i, env in enumerate(singles)]
    assert obs["features"].shape == (N_ENVS, 64, 7, 7)
    assert obs["history"].shape == (N_ENVS, 4, 13)
    for i in range(N_ENVS):
        np.testing.assert_allclose(obs["features"][i], single_obs[i]["features"], atol=1e-5)
        np.testing.assert_array_equal(obs["history"][i], single_obs[i]["history"])

    n_term = n_trunc = 0
    for t, actions in enumerate(seeded_actions()):
        obs, rewards, dones, infos = venv.step(actions)
        assert rewards.shape == (N_ENVS,) and rewards.dtype == np.float32
        assert dones.shape == (N_ENVS,) and dones.dtype == bool
        assert len(infos) == N_ENVS
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(int(actions[i]))
            ctx = f"step {t}, env {i}"
            drop_at_delta = abs(info["drop"] - env_kwargs["delta"]) < 1e-6
            if not drop_at_delta:
                assert rewards[i] == r, ctx
            assert dones[i] == (term or trunc), ctx
            assert infos[i]["image_id"] == info["image_id"], ctx
            assert infos[i]["crop"] == info["crop"], ctx
            assert infos[i]["last_valid_crop"] == info["last_valid_crop"], ctx
            assert infos[i]["calls"] == info["calls"], ctx
            assert infos[i]["p_crop"] == pytest.approx(info["p_crop"], abs=1e-6), ctx
            if term or trunc:
                n_term += term
                n_trunc += trunc and not term
                assert "terminal_observation" in infos[i], ctx
                assert infos[i]["TimeLimit.truncated"] == (trunc and not term), ctx
                terminal = infos[i]["terminal_observation"]
                np.testing.assert_allclose(terminal["features"], o["features"], atol=1e-5)
                np.testing.assert_array_equal(terminal["history"], o["history"])
                o, _ = env.reset()  # SB3-style auto-reset, no seed
            else:
                assert "terminal_observation" not in infos[i], ctx
                assert "TimeLimit.truncated" not in infos[i], ctx
            np.testing.assert_allclose(obs["features"][i], o["features"], atol=1e-5, err_msg=ctx)
            np.testing.assert_array_equal(obs["history"][i], o["history"], err_msg=ctx)
    assert n_term > 0, "some episode should end by STOP in 60 steps"
    assert n_trunc > 0, "some episode should reach the 20-step limit in 60 steps"


def test_truncation_flag(venv: BatchedCutBackgroundVecEnv, env_kwargs: dict) -> None:
    world = venv.world
    assert (
        BatchedCutBackgroundVecEnv(1, world=world, **env_kwargs).max_episode_steps
        == MAX_EPISODE_STEPS
    )
    kwargs = {**env_kwargs, "delta": 1.0}
    venv = BatchedCutBackgroundVecEnv(n_envs=2, max_episode_steps=3, world=world, **kwargs)
    venv.seed(0)
    venv.reset()
    for t in range(1, 4):
        _, rewards, dones, infos = venv.step(np.array([Action.UP_1, Action.LEFT_1]))
        assert rewards.tolist() == [1.0, 1.0]
        assert dones.tolist() == [t == 3] * 2
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert infos[0]["crop"] == (0, 3, 28, 28) and infos[1]["crop"] == (3, 0, 28, 28)
    # Ended by STOP on the limit's last step: terminated, so not "truncated".
    venv.step(np.array([Action.UP_1, Action.UP_1]))
    venv.step(np.array([Action.UP_1, Action.UP_1]))
    _, _, dones, infos = venv.step(np.array([Action.STOP, Action.UP_1]))
    assert dones.tolist() == [True, True]
    assert infos[0]["TimeLimit.truncated"] is False
    assert infos[1]["TimeLimit.truncated"] is True


def test_dqn_learns(venv: BatchedCutBackgroundVecEnv) -> None:
    """SB3's DQN on the batched env stores each env's own transitions (3 a step) and trains."""
    venv.seed(0)
    model = DQN("MultiInputPolicy", VecMonitor(venv), learning_starts=50, buffer_size=500, seed=0)
    before = [p.detach().clone() for p in model.q_net.parameters()]
    model.learn(200)
    assert model.num_timesteps == 204  # 17 rollouts of 4 steps of 3 envs
    buf = model.replay_buffer
    assert (buf.pos, buf.n_envs) == (68, N_ENVS)
    checked = assert_env_transitions(
        buf.actions[:68], buf.rewards[:68], buf.next_observations["history"][:68]
    )
    assert checked == 204
    episodes = model.ep_info_buffer  # VecMonitor's finished episodes
    assert len(episodes) == int(buf.dones[:68].sum()) > 0
    assert model._n_updates > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))


def test_vecenv_api(venv: BatchedCutBackgroundVecEnv) -> None:
    assert isinstance(venv, VecEnv)
    assert venv.num_envs == N_ENVS
    assert venv.get_attr("delta") == [0.1] * N_ENVS
    assert venv.get_attr("delta", indices=1) == [0.1]
    assert venv.get_attr("render_mode", indices=[0, 2]) == [None, None]
    assert venv.env_is_wrapped(Monitor) == [False] * N_ENVS
    assert venv.env_is_wrapped(gym.wrappers.TimeLimit, indices=[1]) == [False]
    out = venv.env_method("get_wrapper_attr", "delta")
    assert out == [0.1] * N_ENVS
    venv.set_attr("eta", 3.0)
    venv.reset()
    images = venv.get_images()
    assert len(images) == N_ENVS
    for img in images:
        assert img is not None and img.ndim == 3 and img.dtype == np.uint8


def test_bad_input(venv: BatchedCutBackgroundVecEnv, env_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="n_envs=0: need at least one env"):
        BatchedCutBackgroundVecEnv(n_envs=0, world=venv.world, **env_kwargs)
    fresh = BatchedCutBackgroundVecEnv(n_envs=2, world=venv.world, **env_kwargs)
    with pytest.raises(RuntimeError, match=r"step\(\) called before reset\(\)"):
        fresh.step(np.array([0, 0]))
    fresh.reset()
    with pytest.raises(
        ValueError, match=r"invalid action \S*13\S*: expected an integer in 0\.\.12"
    ):
        fresh.step(np.array([0, 13]))
    fresh.close()


def test_score_observation_matches_single_envs(env_kwargs: dict) -> None:
    key, option = "score", {"observe_score": True}
    venv = BatchedCutBackgroundVecEnv(n_envs=2, **option, **env_kwargs)
    singles = [
        gym.make("CutBackground-v0", world=venv.world, **option, **env_kwargs) for _ in range(2)
    ]
    assert venv.observation_space[key].shape == (2,)
    venv.seed(SEED)
    obs = venv.reset()
    single = [env.reset(seed=SEED + i)[0] for i, env in enumerate(singles)]
    for t, actions in enumerate(seeded_actions(20)[:, :2]):
        for i in range(2):
            np.testing.assert_allclose(obs[key][i], single[i][key], atol=1e-6, err_msg=t)
        obs, _, dones, _ = venv.step(actions)
        for i, env in enumerate(singles):
            single[i], _, term, trunc, _ = env.step(int(actions[i]))
            if dones[i]:
                assert term or trunc
                single[i], _ = env.reset()
