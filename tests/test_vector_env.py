"""The Gymnasium-native batched vector env (``gym.make_vec(..., "vector_entry_point")``) and the
SB3 ``VecEnv`` adapter over it: the same transitions as N single envs seeded ``seed + i``,
same-step autoreset as ``SyncVectorEnv(autoreset_mode=SAME_STEP)``, per-env attributes."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from tiny import (
    dataset_classes,
    make_tiny_checkpoint,
    raise_full_scores,
    tiny_env_kwargs,
)

import cutbg_env
from cutbg_env import MAX_EPISODE_STEPS, Action
from cutbg_env.vec_env import BatchedCutBackgroundVecEnv
from cutbg_env.vector import CutBackgroundVectorEnv
from cutbg_env.world import CutWorld

N = 3
SEED = 40
STEPS = 60
VARIANTS = {
    # δ = 0.1: the random classifier's drops (~1e-4) never reach it; episodes end by STOP or
    # the step limit. δ = 0 with the whole-map score raised (tiny.raise_full_scores): every cut
    # that removes something ends the episode on its drop.
    "stop-and-limit": {"delta": 0.1},
    "drop-ends": {"delta": 0.0, "observe_score": True, "obs_dtype": "float16"},
}


@pytest.fixture(scope="module")
def env_kwargs(tiny_animals: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    ckpt = make_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "classifier.pt", dataset_classes(tiny_animals)
    )
    return tiny_env_kwargs(tiny_animals, ckpt, "dog")


@pytest.fixture(scope="module")
def world(env_kwargs: dict) -> CutWorld:
    return CutWorld(
        env_kwargs["dataset"], "trainval", env_kwargs["class_name"], env_kwargs["checkpoint"]
    )


def seeded_actions(n_steps: int = STEPS, n_envs: int = N, seed: int = 0) -> np.ndarray:
    """Random actions with more STOPs than uniform, so that every kind of episode end occurs."""
    rng = np.random.default_rng(seed)
    acts = rng.integers(0, 12, size=(n_steps, n_envs))
    acts[rng.random((n_steps, n_envs)) < 0.06] = int(Action.STOP)
    return acts


def assert_obs_close(a: dict, b: dict, msg: str = "") -> None:
    """Observations of the batched forward and of a batch-1 forward: the same up to float
    rounding of the convolutions (features), exactly the same elsewhere."""
    assert a.keys() == b.keys(), msg
    for k in a:
        assert a[k].dtype == b[k].dtype, (msg, k)
        if k == "features":
            np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-3, err_msg=msg)
        else:
            np.testing.assert_allclose(a[k], b[k], atol=1e-3 if k == "score" else 0, err_msg=msg)


def at(obs: dict, i: int) -> dict:
    return {k: v[i] for k, v in obs.items()}


# -- registration and spaces -------------------------------------------------------------------
def test_make_vec_gives_the_batched_vector_env(env_kwargs: dict, world: CutWorld) -> None:
    for mode in ("vector_entry_point", None):  # the vector entry point is also the default
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. gymnasium's "missing AutoresetMode metadata"
            venv = gym.make_vec(
                "CutBackground-v0", num_envs=4, vectorization_mode=mode, world=world, **env_kwargs
            )
        assert isinstance(venv, CutBackgroundVectorEnv) and isinstance(venv, gym.vector.VectorEnv)
        assert venv.num_envs == 4 and len(venv.envs) == 4
        assert venv.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
        assert venv.max_episode_steps == MAX_EPISODE_STEPS
        assert venv.spec.id == "CutBackground-v0"
        assert venv.single_action_space == gym.spaces.Discrete(13)
        assert venv.action_space == batch_space(gym.spaces.Discrete(13), 4)
        assert venv.observation_space == batch_space(venv.single_observation_space, 4)
        assert all(env.world is world for env in venv.envs)  # one world, one forward a step
        obs, infos = venv.reset(seed=0)
        assert obs in venv.observation_space
        assert obs["features"].shape == (4, 64, 7, 7) and infos["calls"].tolist() == [1] * 4
        venv.close()
    spec = gym.spec("CutBackground-v0")
    assert spec.vector_entry_point == "cutbg_env.vector:CutBackgroundVectorEnv"


def test_every_registered_id_has_its_kwargs(env_kwargs: dict, world: CutWorld) -> None:
    assert cutbg_env.ENV_IDS == ("CutBackground-v0", "CutBackgroundScore-v0")
    assert cutbg_env.ENV_KWARGS["CutBackground-v0"] == {}
    assert cutbg_env.ENV_KWARGS["CutBackgroundScore-v0"] == {
        "observe_score": True,
        "obs_dtype": "float16",
    }
    for env_id, fixed in cutbg_env.ENV_KWARGS.items():
        spec = gym.spec(env_id)
        assert spec.kwargs == fixed and spec.max_episode_steps == MAX_EPISODE_STEPS
        env = gym.make(env_id, world=world, **env_kwargs)
        keys = {"features", "history"} | ({"score"} if fixed.get("observe_score") else set())
        assert set(env.observation_space.spaces) == keys
        dtype = np.dtype(fixed.get("obs_dtype", "float32"))
        assert all(s.dtype == dtype for s in env.observation_space.spaces.values())
        venv = gym.make_vec(env_id, num_envs=2, world=world, **env_kwargs)
        assert venv.single_observation_space == env.observation_space
        obs, _ = venv.reset(seed=0)
        assert set(obs) == keys and obs["features"].dtype == dtype


# -- the same transitions as N single envs -----------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_vector_env_equals_single_envs(
    env_kwargs: dict, world: CutWorld, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if variant == "drop-ends":
        raise_full_scores(monkeypatch)
    kwargs = {**env_kwargs, **VARIANTS[variant]}
    venv = gym.make_vec("CutBackground-v0", num_envs=N, **kwargs)  # builds its own world
    singles = [gym.make("CutBackground-v0", world=world, **kwargs) for _ in range(N)]
    obs, infos = venv.reset(seed=SEED)
    ref = [env.reset(seed=SEED + i) for i, env in enumerate(singles)]
    for i, (o, info) in enumerate(ref):
        assert_obs_close(at(obs, i), o, f"reset {i}")
        assert infos["image_id"][i] == info["image_id"]
    ends = {"stop": 0, "drop": 0, "limit": 0}
    for t, actions in enumerate(seeded_actions()):
        obs, rewards, terminated, truncated, infos = venv.step(actions)
        assert rewards.dtype == np.float64 and terminated.dtype == truncated.dtype == np.bool_
        for i, env in enumerate(singles):
            ctx = f"{variant} step {t} env {i}"
            o, r, term, trunc, info = env.step(int(actions[i]))
            assert (rewards[i], terminated[i], truncated[i]) == (r, term, trunc), ctx
            if term or trunc:
                assert infos["_final_obs"][i] and infos["final_info"]["_crop"][i], ctx
                assert_obs_close(infos["final_obs"][i], o, ctx)
                final = {k: infos["final_info"][k][i] for k in info}
                assert final["crop"] == info["crop"] and final["calls"] == info["calls"], ctx
                assert final["p_crop"] == pytest.approx(info["p_crop"], abs=1e-6), ctx
                ends["stop" if actions[i] == Action.STOP else "drop" if term else "limit"] += 1
                o, info = env.reset()  # the vector env resets in the same step
            else:
                assert "_final_obs" not in infos or not infos["_final_obs"][i], ctx
            assert_obs_close(at(obs, i), o, ctx)
            assert infos["image_id"][i] == info["image_id"], ctx
            assert infos["crop"][i] == info["crop"], ctx
            assert infos["calls"][i] == info["calls"], ctx
            assert infos["p_crop"][i] == pytest.approx(info["p_crop"], abs=1e-6), ctx
    if variant == "stop-and-limit":
        assert ends["stop"] > 0 and ends["limit"] > 0 and ends["drop"] == 0, ends
    else:
        assert ends["drop"] > 0, ends


def test_vector_env_equals_sync_vector_env_same_step(env_kwargs: dict, world: CutWorld) -> None:
    """Gymnasium's own SyncVectorEnv of single envs, in the same autoreset mode: the same
    observations, rewards, flags and infos (``final_obs``/``final_info`` and the ``_key`` masks
    included), by gymnasium's ``data_equivalence``."""
    # float32: gymnasium's tolerance (1e-5) is below one float16 step of the features, which a
    # batched and a batch-1 forward may round apart
    kwargs = {**env_kwargs, "observe_score": True}
    ours = gym.make_vec("CutBackground-v0", num_envs=N, world=world, **kwargs)
    sync = gym.make_vec(
        "CutBackground-v0",
        num_envs=N,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        world=world,
        **kwargs,
    )
    assert ours.observation_space == sync.observation_space
    assert ours.action_space == sync.action_space
    a, b = ours.reset(seed=SEED), sync.reset(seed=SEED)
    assert data_equivalence(a, b)
    ended = 0
    for t, actions in enumerate(seeded_actions()):
        a, b = ours.step(actions), sync.step(actions)
        assert data_equivalence(a, b), f"step {t}"
        ended += int(np.sum(a[2] | a[3]))
    assert ended > 3
    # a reset without a seed continues every sub-env's image order
    assert data_equivalence(ours.reset(), sync.reset())


def test_sb3_adapter_equals_the_vector_env_and_single_envs(
    env_kwargs: dict, world: CutWorld
) -> None:
    """The SB3 VecEnv (what ``make train`` steps) against the same transitions computed with
    the single env: observations, rewards and dones step by step, SB3's autoreset convention."""
    kwargs = {**env_kwargs, "observe_score": True, "obs_dtype": "float16"}
    adapter = BatchedCutBackgroundVecEnv(N, **kwargs)
    vector = CutBackgroundVectorEnv(N, world=world, **kwargs)
    singles = [gym.make("CutBackground-v0", world=world, **kwargs) for _ in range(N)]
    adapter.seed(SEED)
    obs = adapter.reset()
    v_obs, _ = vector.reset(seed=SEED)
    ref = [env.reset(seed=SEED + i)[0] for i, env in enumerate(singles)]
    assert data_equivalence(obs, v_obs, exact=True)
    for i in range(N):
        assert_obs_close(at(obs, i), ref[i])
    n_done = 0
    for t, actions in enumerate(seeded_actions(80)):
        obs, rewards, dones, infos = adapter.step(actions)
        v_obs, v_rewards, v_term, v_trunc, v_infos = vector.step(actions)
        assert data_equivalence(obs, v_obs, exact=True), t  # one implementation of the step
        assert rewards.dtype == np.float32 and (rewards == v_rewards).all(), t
        assert (dones == (v_term | v_trunc)).all(), t
        for i, env in enumerate(singles):
            ctx = f"step {t} env {i}"
            o, r, term, trunc, info = env.step(int(actions[i]))
            assert rewards[i] == r and dones[i] == (term or trunc), ctx
            assert infos[i]["crop"] == info["crop"] and infos[i]["calls"] == info["calls"], ctx
            if term or trunc:
                n_done += 1
                assert infos[i]["TimeLimit.truncated"] == (trunc and not term), ctx
                assert_obs_close(infos[i]["terminal_observation"], o, ctx)
                terminal = infos[i]["terminal_observation"]
                assert data_equivalence(terminal, v_infos["final_obs"][i], exact=True), ctx
                o, _ = env.reset()
            else:
                assert "terminal_observation" not in infos[i], ctx
            assert_obs_close(at(obs, i), o, ctx)
    assert n_done > 5
    assert adapter.reset_infos[0]["calls"] == 1


# -- resets, attributes, rendering -------------------------------------------------------------
def test_reset_seeds_options_and_mask(env_kwargs: dict, world: CutWorld) -> None:
    venv = CutBackgroundVectorEnv(N, world=world, **env_kwargs)
    with pytest.raises(RuntimeError, match=r"reset_mask needs a full reset\(\) first"):
        venv.reset(options={"reset_mask": np.ones(N, bool)})
    _, infos = venv.reset(seed=[7, 7, 8])  # one seed per sub-env
    single = gym.make("CutBackground-v0", world=world, **env_kwargs)
    assert infos["image_id"][0] == infos["image_id"][1] == single.reset(seed=7)[1]["image_id"]
    assert infos["image_id"][2] == single.reset(seed=8)[1]["image_id"]
    _, infos = venv.reset(options={"index": 2})  # options go to every sub-env
    assert set(infos["index"]) == {world.positives[2]}
    venv.step(np.array([Action.UP_1, Action.UP_2, Action.UP_3]))
    obs, infos = venv.reset(options={"reset_mask": np.array([False, True, False]), "index": 0})
    assert infos["_index"].tolist() == [False, True, False]
    assert infos["index"][1] == world.positives[0]
    assert obs["history"][:, 0].argmax(axis=1).tolist() == [0, 0, 2]  # envs 0, 2 kept their cut
    assert obs["history"][1].sum() == 0.0
    with pytest.raises(ValueError, match=r"reset_mask'\] must be a \(3,\) bool array"):
        venv.reset(options={"reset_mask": np.zeros(N, bool)})


def test_set_attr_changes_the_next_episodes(
    env_kwargs: dict, world: CutWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``set_attr("eta", 5)`` used to change nothing: now it is each sub-env's η from its next
    episode on, for the sub-envs that ``indices`` name."""
    raise_full_scores(monkeypatch)  # every cut drops ≈ 0.05: within δ = 0.1, past δ = 0
    stop = np.full(N, Action.STOP)
    venv = BatchedCutBackgroundVecEnv(N, world=world, **env_kwargs)
    venv.seed(0)
    venv.reset()
    venv.set_attr("eta", 5.0, indices=[1])
    assert venv.get_attr("eta") == [3.0, 5.0, 3.0] and venv.get_attr("eta", indices=1) == [5.0]
    with pytest.raises(AttributeError, match=r"sub-envs' eta differ \(\[3\.0, 5\.0\]\)"):
        _ = venv.eta
    assert venv.delta == 0.1
    _, rewards, dones, _ = venv.step(stop)  # the running episodes keep the η they began with
    assert dones.all() and np.abs(rewards).tolist() == [3.0, 3.0, 3.0]
    _, rewards, _, _ = venv.step(stop)
    assert np.abs(rewards).tolist() == [3.0, 5.0, 3.0]
    # δ = 0 on sub-env 2: its next episode ends on its first cut
    venv.set_attr("delta", 0.0, indices=2)
    venv.step(stop)
    _, rewards, dones, infos = venv.step(np.full(N, Action.UP_1))
    assert dones.tolist() == [False, False, True] and rewards.tolist() == [1.0, 1.0, -1.0]
    assert infos[2]["last_valid_crop"] == (0, 0, 28, 28)
    assert venv.env_method("get_wrapper_attr", "delta", indices=[0, 2]) == [0.1, 0.0]
    frames = venv.env_method("draw", indices=[1])
    assert len(frames) == 1 and frames[0].ndim == 3 and frames[0].dtype == np.uint8
    for frozen in ("obs_dtype", "observe_score", "world", "observation_space"):
        with pytest.raises(AttributeError, match=rf"set_attr\('{frozen}'\): the 3 envs share"):
            venv.set_attr(frozen, None)
    # the Gymnasium side: one value per sub-env, or one for all
    vector = venv.vector
    vector.set_attr("eta", [1.0, 2.0, 4.0])
    assert vector.get_attr("eta") == (1.0, 2.0, 4.0) == vector.call("eta")
    vector.set_attr("eta", 3.0)
    assert vector.get_attr("eta") == (3.0,) * N
    with pytest.raises(ValueError, match=r"set_attr\('eta'\): 2 values for 3 envs"):
        vector.set_attr("eta", [1.0, 2.0])
    assert all(img.ndim == 3 for img in vector.call("draw"))


def test_render(env_kwargs: dict, world: CutWorld) -> None:
    venv = CutBackgroundVectorEnv(2, world=world, render_mode="rgb_array", **env_kwargs)
    venv.reset(seed=0)
    frames = venv.render()
    assert isinstance(frames, tuple) and len(frames) == 2
    assert all(f.ndim == 3 and f.dtype == np.uint8 for f in frames)
    plain = CutBackgroundVectorEnv(2, world=world, **env_kwargs)
    plain.reset(seed=0)
    assert plain.render() is None


def test_bad_input(env_kwargs: dict, world: CutWorld) -> None:
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"num_envs={bad!r}: need at least one env"):
            CutBackgroundVectorEnv(bad, world=world, **env_kwargs)
    venv = CutBackgroundVectorEnv(2, world=world, **env_kwargs)
    with pytest.raises(
        RuntimeError, match=r"^CutBackgroundVectorEnv\.step\(\) called before reset\(\)"
    ):
        venv.step(np.array([0, 0]))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected 2 actions \(one per env\), got \(3,\)"):
        venv.step(np.array([0, 0, 0]))
    with pytest.raises(
        ValueError, match=r"invalid action \S*13\S*: expected an integer in 0\.\.12"
    ):
        venv.step(np.array([0, 13]))
    venv.close()
    assert venv.closed


# -- learning through it -----------------------------------------------------------------------
def test_gymnasium_vector_wrappers(env_kwargs: dict, world: CutWorld) -> None:
    """Gymnasium's vector wrappers read the declared autoreset mode: episode statistics come
    out as the sums of the rewards."""
    venv = gym.wrappers.vector.RecordEpisodeStatistics(
        gym.make_vec("CutBackground-v0", num_envs=N, world=world, **env_kwargs)
    )
    venv.reset(seed=0)
    returns, lengths = np.zeros(N), np.zeros(N, int)
    seen = 0
    for actions in seeded_actions(50):
        _, rewards, terminated, truncated, infos = venv.step(actions)
        returns += rewards
        lengths += 1
        for i in np.flatnonzero(terminated | truncated):
            assert infos["_episode"][i]
            assert infos["episode"]["r"][i] == pytest.approx(returns[i])
            assert infos["episode"]["l"][i] == lengths[i]
            returns[i], lengths[i], seen = 0.0, 0, seen + 1
    assert seen > 0
