"""Training pipeline: tiny end-to-end run, save/reload, resume, calibration rule, bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from stable_baselines3 import DQN

from cutbg_env.errors import CheckpointError, DataError, OptionError
from train.__main__ import main as train_main
from train.agent import (
    REFINEMENT_FILE,
    AgentArgs,
    DoubleDQN,
    EpochClock,
    EpsilonSchedule,
    LrSchedule,
    fit_agent,
    make_vec_env,
)
from train.calibrate import (
    best_setting,
    delta_from_drops,
    parse_setting,
    pooled_setting,
    setting_key,
    validation_subset,
)


def test_classifier_checkpoint_and_results(tiny_pipeline: dict) -> None:
    from cutbg_env.backbone import load_classifier

    model, meta = load_classifier(tiny_pipeline["classifier"])
    assert model.classes[4] == "dog"
    assert meta["steps"] > 0 and set(meta["test_ap"]) == set(model.classes)
    res = json.loads((tiny_pipeline["base"] / "results" / "classifier.json").read_text())
    assert 0 <= res["map"] <= 100 and set(res["ap"]) == set(model.classes)


def test_classifier_skips_same_config(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    from train.classifier import ClassifierArgs, train_classifier

    before = tiny_pipeline["classifier"].stat().st_mtime_ns
    train_classifier(ClassifierArgs(minutes=0.05, batch_size=8))
    assert tiny_pipeline["classifier"].stat().st_mtime_ns == before
    assert "skipping" in capsys.readouterr().err


def test_agent_saved_and_reloaded_gives_same_greedy_actions(tiny_pipeline: dict) -> None:
    model: DQN = tiny_pipeline["model"]
    reloaded = DQN.load(tiny_pipeline["agent"])
    venv = make_vec_env(tiny_pipeline["args"], "trainval")
    venv.seed(7)
    obs = venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(15):
        a1, _ = model.predict(obs, deterministic=True)
        a2, _ = reloaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a1, a2)
        obs, *_ = venv.step(rng.integers(0, 13, size=venv.num_envs))
    config = json.loads((tiny_pipeline["agent"].parent / "config.json").read_text())
    assert config["timesteps"] >= 200  # "a few hundred steps"
    assert (tiny_pipeline["agent"].parent / "tb").is_dir()


def test_resume_continues_the_step_count(tiny_pipeline: dict) -> None:
    run_dir = tiny_pipeline["agent"].parent
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    args = dataclasses.replace(tiny_pipeline["args"], epochs=state["epoch"] + 2, resume=True)
    model, _ = fit_agent(args)
    after = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    assert after["epoch"] >= state["epoch"] + 1
    assert model.num_timesteps > state["timesteps"]
    assert after["timesteps"] > state["timesteps"]


def test_resume_without_checkpoint_says_so(tiny_pipeline: dict, tmp_path: Path) -> None:
    args = dataclasses.replace(tiny_pipeline["args"], out=str(tmp_path / "fresh"), resume=True)
    with pytest.raises(CheckpointError, match=r"no epoch checkpoint.*without --resume"):
        fit_agent(args)


def test_calibration_rule_on_hand_made_drops() -> None:
    drops = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    # numpy's linear quantile: position 0.8 * 4 = 3.2 -> 0.3 + 0.2 * 0.1 = 0.32
    assert delta_from_drops(drops, 0.8, 0.02, 0.5) == pytest.approx(0.32)
    assert delta_from_drops(drops, 0.5, 0.02, 0.5) == pytest.approx(0.2)
    assert delta_from_drops(drops, 1.0, 0.02, 0.25) == pytest.approx(0.25)  # clipped high
    assert delta_from_drops(np.array([-0.3, -0.2]), 0.8, 0.02, 0.5) == pytest.approx(0.02)
    assert delta_from_drops(np.array([]), 0.8, 0.05, 0.5) == 0.05


def test_best_setting_prefers_score_then_smaller_delta_then_lower_threshold() -> None:
    scores = {
        (0.1, "mid", "peak", 0.3): 0.5,
        (0.1, "mid", "peak", 0.2): 0.5,
        (0.05, "senior", "peak", 0.1): 0.4,
    }
    assert best_setting(scores) == (0.1, "mid", "peak", 0.2)
    scores[(0.05, "mid", "mass", 0.4)] = 0.5
    assert best_setting(scores) == (0.05, "mid", "mass", 0.4)
    scores[(0.05, "mid", "peak", 0.4)] = 0.5  # same score: the paper's peak region first
    assert best_setting(scores) == (0.05, "mid", "peak", 0.4)
    scores[(0.3, "senior", "mass", 0.1)] = 0.6
    assert best_setting(scores) == (0.3, "senior", "mass", 0.1)


def test_validation_subset_is_small_and_seeded() -> None:
    a = validation_subset(2000, 0.05, 0)
    assert len(a) == 100 and a == validation_subset(2000, 0.05, 0)
    assert a != validation_subset(2000, 0.05, 1)
    with pytest.raises(ValueError, match=r"0\.05"):
        validation_subset(2000, 0.2, 0)


def test_schedules_follow_the_paper_in_epochs() -> None:
    clock = EpochClock(images=10)
    eps = EpsilonSchedule(clock, decay=10, end=0.1)
    lr = LrSchedule(clock, decay=10, start=1e-5, end=1e-6)
    assert eps(1.0) == 1.0 and lr(1.0) == pytest.approx(1e-5)
    clock.episodes = 10 * 5  # epoch 5: ε has dropped 0.1 per 10/9 epochs -> 4 steps
    assert eps(0.5) == pytest.approx(0.6)
    clock.episodes = 10 * 10
    assert eps(0.0) == pytest.approx(0.1) and lr(0.0) == pytest.approx(1e-6)
    clock.episodes = 10 * 40
    assert eps(0.0) == pytest.approx(0.1) and lr(0.0) == pytest.approx(1e-6)


def test_unknown_class_is_one_clear_error(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    runs = tiny_pipeline["base"] / "runs"
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert train_main(["agent", "--class", "aeroplane", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'aeroplane' is not a class of dataset 'animals'" in err
    assert "bear, bird, cat" in err and "DATASET=voc2007" in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # no partial files


def test_voc_missing_says_where_it_goes(tiny_pipeline: dict, capsys: pytest.CaptureFixture) -> None:
    assert train_main(["agent", "--dataset", "voc2007", "--class", "dog", "--no-progress"]) == 2
    assert "VOCdevkit/VOC2007" in capsys.readouterr().err


def test_missing_classifier_names_the_command(tiny_pipeline: dict, tmp_path: Path) -> None:
    args = AgentArgs(checkpoint=str(tmp_path / "none.pt"), progress=False)
    with pytest.raises(CheckpointError, match="make train-classifier"):
        fit_agent(args)


def test_voc_defaults_are_the_papers() -> None:
    a = AgentArgs(dataset="voc2007").resolved()
    assert (a.epochs, a.decay_epochs, a.lr_start, a.lr_end, a.gamma) == (50, 10, 1e-5, 1e-6, 0.95)
    # replay memory at VOC defaults: 512x7x7 + 4x13 (+ 2 score) float16 values, obs and next obs
    assert a.observe_score
    per_obs = (512 * 49 + 52 + 2) * 2
    assert a.buffer_size * 2 * per_obs < 4 * 10**9
    e = AgentArgs().resolved()
    assert e.buffer_size * 2 * (64 * 49 + 52 + 2) * 2 < 4 * 10**9


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_double_dqn_target(tiny_pipeline: dict) -> None:
    """One gradient step's loss is the Huber loss to r + γ(1−done)·Q_target(s', argmax Q(s'))."""
    import torch
    from stable_baselines3.common.logger import configure

    venv = make_vec_env(tiny_pipeline["args"], "trainval")
    model = DoubleDQN.load(tiny_pipeline["agent"], env=venv)
    assert isinstance(model, DoubleDQN) and "score" in model.observation_space.spaces
    model.set_logger(configure(None, []))
    with torch.no_grad():  # make the target net disagree with the online one
        for p in model.q_net_target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    venv.seed(1)
    obs = venv.reset()
    actions = np.array([0, 12])
    nxt, rewards, dones, _ = venv.step(actions)
    as_t = lambda o: {k: torch.as_tensor(v, dtype=torch.float32) for k, v in o.items()}  # noqa: E731
    batch = SimpleNamespace(
        observations=as_t(obs),
        next_observations=as_t(nxt),
        actions=torch.as_tensor(actions).reshape(-1, 1),
        rewards=torch.as_tensor(rewards).reshape(-1, 1),
        dones=torch.as_tensor(dones, dtype=torch.float32).reshape(-1, 1),
        discounts=None,
    )
    model.replay_buffer = SimpleNamespace(sample=lambda *a, **k: batch)  # type: ignore[assignment]
    with torch.no_grad():
        online_next = model.q_net(batch.next_observations)
        target_next = model.q_net_target(batch.next_observations)
        current = model.q_net(batch.observations).gather(1, batch.actions)
        best = online_next.argmax(1, keepdim=True)
        y = batch.rewards + (1 - batch.dones) * model.gamma * target_next.gather(1, best)
        y_plain = batch.rewards + (1 - batch.dones) * model.gamma * target_next.max(1, True)[0]
        # + the validity head's cross-entropy on the one sampled cut (action 0)
        _, logits = model.q_net.heads(batch.observations)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[0, 0], (batch.rewards[0, 0] > 0).float()
        ).item()
        expected = torch.nn.functional.smooth_l1_loss(current, y).item() + bce
        plain = torch.nn.functional.smooth_l1_loss(current, y_plain).item() + bce
    assert bool(dones[1]) and not bool(dones[0])  # STOP ends, so one target has no bootstrap
    model.train(gradient_steps=1, batch_size=2)
    loss = model.logger.name_to_value["train/loss"]
    assert loss == pytest.approx(expected, rel=1e-5)
    if not torch.equal(best, target_next.argmax(1, keepdim=True)):
        assert loss != pytest.approx(plain, rel=1e-5)


def test_agent_chooses_its_refinement(tiny_pipeline: dict) -> None:
    from evaluate.run import refinement_setting

    path = tiny_pipeline["agent"].parent / REFINEMENT_FILE
    own = json.loads(path.read_text())
    assert own["heatmap_layer"] in ("mid", "senior")
    assert own["heatmap_region"] in ("peak", "mass")
    assert 0.0 < own["heatmap_threshold"] < 1.0
    assert own["validation"]["images"] >= 1
    assert 0.0 <= own["validation"]["agent_refined_corloc"] <= 100.0
    hits, n = own["validation"]["hits"], own["validation"]["images"]
    assert len(hits) == 36 and all(0 <= h <= n for h in hits.values())  # 2 layers × 2 regions × 9
    key = setting_key((own["heatmap_layer"], own["heatmap_region"], own["heatmap_threshold"]))
    assert hits[key] == max(hits.values())
    assert 100 * hits[key] / n == pytest.approx(own["validation"]["agent_refined_corloc"])
    calib = {
        "heatmap_layer": {"dog": "senior"},
        "heatmap_region": {"dog": "mass"},
        "heatmap_threshold": {"dog": 0.9},
    }
    assert refinement_setting("animals", "dog", calib) == (
        own["heatmap_layer"],
        own["heatmap_region"],
        own["heatmap_threshold"],
    )
    # without the agent's file, the calibration's choice, then the default
    assert refinement_setting("animals", "cat", calib) == ("mid", "peak", 0.5)
    calib["heatmap_layer"]["cat"], calib["heatmap_threshold"]["cat"] = "senior", 0.3
    calib["heatmap_region"]["cat"] = "mass"
    assert refinement_setting("animals", "cat", calib) == ("senior", "mass", 0.3)


def test_corrupt_refinement_file_names_it(tiny_pipeline: dict, tmp_path: Path) -> None:
    from evaluate.run import refinement_setting

    path = tiny_pipeline["agent"].parent / REFINEMENT_FILE
    saved = path.read_text()
    try:
        path.write_text("{not json")
        with pytest.raises(CheckpointError, match=r"refinement\.json is unreadable.*make train"):
            refinement_setting("animals", "dog", {})
    finally:
        path.write_text(saved)


def test_validity_q_values_on_hand_made_heads() -> None:
    """Q_cut = σ(ℓ)(scale + W) − (1 − σ(ℓ)) scale, Q_stop = W_stop."""
    import torch

    from train.agent import ValidityQNetwork

    w = torch.zeros(1, 13)
    w[0, 2], w[0, 12] = 10.0, 3.0  # UP_3 continues to a state worth 10; STOP worth 3
    logits = torch.full((1, 12), -1e4)  # every cut certainly invalid ...
    logits[0, 2] = float(np.log(3.0))  # ... but UP_3, valid with p = 0.75
    q = ValidityQNetwork.q_values(
        SimpleNamespace(scales=torch.tensor([1.0, 2.0, 3.0] * 4)),  # type: ignore[arg-type]
        w,
        logits,
    )
    # p = 0 for all cuts but UP_3: Q = −scale; UP_3: 0.75 · (3 + 10) − 0.25 · 3 = 9
    expected = [-1.0, -2.0, 9.0, -1.0, -2.0, -3.0, -1.0, -2.0, -3.0, -1.0, -2.0, -3.0, 3.0]
    np.testing.assert_allclose(q[0].numpy(), expected, rtol=1e-6)


def test_branches_and_validity_head_train_and_reload(tiny_pipeline: dict, tmp_path: Path) -> None:
    """The options: (1 + K) transitions stored per env step, the validity loss on top of the TD
    loss, and an agent that reloads with plain ``DQN.load`` and acts the same."""
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.logger import configure

    from train.agent import ValidityQNetwork

    args = dataclasses.replace(
        tiny_pipeline["args"], epochs=2, branches=2, validity_head=True, out=str(tmp_path / "v")
    )
    model, path = fit_agent(args)
    assert isinstance(model.q_net, ValidityQNetwork)
    buffer = model.replay_buffer
    stored = (buffer.buffer_size if buffer.full else buffer.pos) * buffer.n_envs
    # the taken action + 2 branches per transition; SB3 does not store the step on which the
    # callback ends training
    assert stored == 3 * (model.num_timesteps - args.n_envs)
    loaded = DQN.load(path)  # the saved agent needs no custom class at load time
    assert isinstance(loaded.q_net, ValidityQNetwork)
    obs = {k: torch.as_tensor(v[None]).float() for k, v in model.observation_space.sample().items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded.q_net(obs), model.q_net(obs))
    # loss = Huber(Q(s, a), Double-DQN target) + BCE(ℓ_a, r > 0) over the sampled cuts
    model.set_logger(configure(None, []))
    batch = buffer.sample(32)
    with torch.no_grad():
        w, logits = model.q_net.heads(batch.observations)
        current = model.q_net.q_values(w, logits).gather(1, batch.actions.long())
        best = model.q_net(batch.next_observations).argmax(1, keepdim=True)
        nxt = model.q_net_target(batch.next_observations).gather(1, best)
        y = batch.rewards + (1 - batch.dones) * model.gamma * nxt
        cut = batch.actions[:, 0] < 12
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[cut].gather(1, batch.actions[cut].long()).squeeze(1),
            (batch.rewards[cut, 0] > 0).float(),
        )
        expected = torch.nn.functional.smooth_l1_loss(current, y).item() + bce.item()
    assert bool(cut.any())
    model.replay_buffer = SimpleNamespace(sample=lambda *a, **k: batch)  # type: ignore[assignment]
    model.train(gradient_steps=1, batch_size=32)
    assert model.logger.name_to_value["train/loss"] == pytest.approx(expected, rel=1e-5)


def test_pooled_setting_sums_validation_hits_over_classes() -> None:
    dog = {"mid/peak/0.5": 7, "mid/mass/0.4": 5}  # dog alone would pick peak
    cat = {"mid/peak/0.5": 2, "mid/mass/0.4": 6}
    assert pooled_setting([dog, cat]) == ("mid", "mass", 0.4)  # 11 hits against 9
    assert pooled_setting([dog]) == ("mid", "peak", 0.5)
    # ties go to the lower threshold; a setting missing from a table counts 0 there
    assert pooled_setting([{"mid/mass/0.4": 3, "mid/mass/0.3": 3}]) == ("mid", "mass", 0.3)
    assert pooled_setting([{"senior/peak/0.2": 4}, {"mid/mass/0.4": 3}]) == ("senior", "peak", 0.2)


def test_setting_keys_round_trip_and_name_bad_keys() -> None:
    assert setting_key(("mid", "mass", 0.4)) == "mid/mass/0.4"
    assert parse_setting("senior/peak/0.3") == ("senior", "peak", 0.3)
    with pytest.raises(ValueError, match=r"'mid/mass': expected 'layer/region/threshold'"):
        parse_setting("mid/mass")
    with pytest.raises(ValueError, match=r"'mid/mass/high': expected"):
        parse_setting("mid/mass/high")
    with pytest.raises(ValueError, match=r"'deep/mass/0.4': layer must be one of"):
        parse_setting("deep/mass/0.4")
    with pytest.raises(ValueError, match="no validation table"):
        pooled_setting([])


def test_evaluation_pools_the_agents_refinement_or_keeps_their_own(tiny_pipeline: dict) -> None:
    from evaluate.run import agent_settings

    dog = json.loads((tiny_pipeline["agent"].parent / REFINEMENT_FILE).read_text())
    dog_own = (dog["heatmap_layer"], dog["heatmap_region"], dog["heatmap_threshold"])
    cat_file = tiny_pipeline["agent"].parent.parent / "cat" / REFINEMENT_FILE
    cat = {
        "heatmap_layer": "senior",
        "heatmap_region": "mass",
        "heatmap_threshold": 0.9,
        "validation": {"images": 100, "hits": {"senior/mass/0.9": 100}},
    }
    cat_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        cat_file.write_text(json.dumps(cat))
        pooled, how = agent_settings("animals", ["dog", "cat"], {}, "pooled")
        # cat's 100 hits outweigh anything dog's 6 images can give
        assert pooled == {"dog": ("senior", "mass", 0.9), "cat": ("senior", "mass", 0.9)}
        assert how == "pooled over dog, cat"
        own, how = agent_settings("animals", ["dog", "cat"], {}, "own")
        assert own == {"dog": dog_own, "cat": ("senior", "mass", 0.9)}
        assert how == "each agent's own setting"
        del cat["validation"]["hits"]  # an agent trained before the tables: no pooling
        cat_file.write_text(json.dumps(cat))
        kept, how = agent_settings("animals", ["dog", "cat"], {}, "pooled")
        assert kept == own and "no validation table for cat" in how and "CLASS=cat" in how
        cat["validation"]["hits"] = {"mid/mass": 3}
        cat_file.write_text(json.dumps(cat))
        with pytest.raises(CheckpointError, match=r"cat.*refinement\.json is unreadable"):
            agent_settings("animals", ["dog", "cat"], {}, "pooled")
        with pytest.raises(ValueError, match=r"refinement='best': expected one of"):
            agent_settings("animals", ["dog"], {}, "best")
    finally:
        cat_file.unlink(missing_ok=True)


def test_refinement_command_rechooses_the_same_setting(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    path = tiny_pipeline["agent"].parent / REFINEMENT_FILE
    before = json.loads(path.read_text())
    path.unlink()
    try:
        assert train_main(["refinement", "--class", "dog"]) == 0
        # same agent, same δ (from its config.json), same validation images: the same file
        assert json.loads(path.read_text()) == before
    finally:
        path.write_text(json.dumps(before))
    assert train_main(["refinement", "--class", "cat"]) == 2
    err = capsys.readouterr().err
    assert "no trained agent at" in err and "make train CLASS=cat" in err


def test_average_last_saves_the_mean_of_the_last_epochs(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    import torch
    from stable_baselines3.common.save_util import load_from_zip_file

    args = dataclasses.replace(tiny_pipeline["args"], epochs=3, average_last=2, out=str(tmp_path))
    _, path = fit_agent(args)
    saved = load_from_zip_file(path)[1]["policy"]
    epochs = [
        load_from_zip_file(tmp_path / "checkpoints" / f"epoch_{e:03d}.zip")[1]["policy"]
        for e in (2, 3)
    ]
    for k, v in saved.items():
        torch.testing.assert_close(v, (epochs[0][k] + epochs[1][k]) / 2)
    assert not torch.equal(saved["q_net.q_net.0.weight"], epochs[1]["q_net.q_net.0.weight"])
    with pytest.raises(ValueError, match=r"average_last=4: expected 0..3"):
        fit_agent(dataclasses.replace(args, average_last=4))


def test_cut_mass_agent_trains_and_its_rollouts_observe_it(
    tiny_pipeline: dict, tmp_path: Path
) -> None:
    """``observe_cut_mass``: the Q-network reads the 12 shares, the saved agent says so, and
    evaluation's rollouts give it the same observation the training env did."""
    import torch

    from cutbg_env.core import CutWorld
    from evaluate.rollout import observation_options, rollout

    args = dataclasses.replace(
        tiny_pipeline["args"], epochs=1, observe_cut_mass=True, out=str(tmp_path / "m")
    )
    _, path = fit_agent(args)
    loaded = DQN.load(path)
    assert observation_options(loaded) == {"observe_score": True, "observe_cut_mass": True}
    assert observation_options(tiny_pipeline["model"])["observe_cut_mass"] is False
    extractor = loaded.q_net.features_extractor
    assert extractor.extras == ["score", "cut_mass"]
    venv = make_vec_env(args, "trainval")
    venv.seed(3)
    obs = venv.reset()
    assert obs["cut_mass"].shape == (args.n_envs, 12)
    tensors = {k: torch.as_tensor(v).float() for k, v in obs.items()}
    with torch.no_grad():
        width = extractor(tensors).shape[1]
        del tensors["cut_mass"]
        with pytest.raises(KeyError):
            extractor(tensors)
    assert width == extractor.features_dim
    seen: list[set[str]] = []

    def policy(batch: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(set(batch))
        return loaded.predict(batch, deterministic=True)[0]

    world: CutWorld = venv.world
    out = rollout(world, world.positives[:3], policy, venv.delta, **observation_options(loaded))
    assert len(out) == 3 and seen and all("cut_mass" in keys for keys in seen)


def test_ensemble_member_has_its_own_folder_and_seed(tiny_pipeline: dict) -> None:
    args = dataclasses.replace(tiny_pipeline["args"], ensemble_member=True, seed=4)
    assert args.run_dir() == tiny_pipeline["agent"].parent / "ensemble" / "seed_4"
    same = dataclasses.replace(args, seed=tiny_pipeline["args"].seed)
    with pytest.raises(OptionError, match=r"--ensemble-member --seed 0: the class's agent \(.*"):
        fit_agent(same)


def test_member_seed_clash_is_one_line_on_the_cli(
    tiny_pipeline: dict, capsys: pytest.CaptureFixture
) -> None:
    assert train_main(["agent", "--class", "dog", "--ensemble-member", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ensemble-member --seed 0: the class's agent (")
    assert "give the member another seed" in err and "Traceback" not in err
