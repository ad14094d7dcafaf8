"""The default agent: independent DQN members, trained side by side, joined into one agent that
acts on their mean Q-values."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import DQN

from cutbg_env.errors import OptionError
from cutbg_env.qnet import ValidityPolicy, assemble_members, policy_kwargs
from train.agent import AgentArgs, fit_agent, member_args

slow = pytest.mark.slow

BOX = lambda *shape: spaces.Box(0, 1, shape, np.float32)  # noqa: E731
SPACE = spaces.Dict({"features": BOX(8, 7, 7), "history": BOX(4, 13)})


def _policy(members: int, seed: int) -> ValidityPolicy:
    torch.manual_seed(seed)
    kwargs = policy_kwargs(4, 1, 16)
    return ValidityPolicy(SPACE, spaces.Discrete(13), lambda _: 1e-3, members=members, **kwargs)


def _obs(n: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {k: torch.rand((n, *s.shape), generator=gen) for k, s in SPACE.spaces.items()}


def test_assembled_members_act_on_the_mean_of_the_members() -> None:
    parts = [_policy(1, seed).q_net for seed in (1, 2, 3)]
    whole = _policy(3, 0)
    assert whole._get_constructor_parameters()["members"] == 3  # saved with the agent
    net = whole.q_net
    assert (net.members, net.n_heads, len(net.extractors), len(net.q_net)) == (3, 3, 3, 3)
    obs = _obs()
    with torch.no_grad():
        before = net(obs)
        assemble_members(net, parts)
        mean = torch.stack([p(obs) for p in parts]).mean(0)
        torch.testing.assert_close(net(obs), mean)
        assert not torch.allclose(before, mean)
        w, logits = net.heads(obs)
        assert w.shape == (3, 5, 13) and logits.shape == (3, 5, 12)
        torch.testing.assert_close(net.q_values(w[1], logits[1]), parts[1](obs))
    # one member keeps SB3's parameter names (agents of earlier versions load)
    assert not any(k.startswith("extractors") for k in parts[0].state_dict())
    with pytest.raises(ValueError, match=r"^assemble_members: 2 one-head networks for 3 members$"):
        assemble_members(net, parts[:2])
    with pytest.raises(ValueError, match=r"^members=0: a Q-network needs at least one member$"):
        _policy(0, 0)


def test_member_seeds_and_folders(tmp_path: Path) -> None:
    """Member k of seed s trains seed s·K + k into <run>/members/m<k>, one thread each when
    several run side by side; members of different seeds never share a seed."""
    args = AgentArgs(members=3, seed=2, threads=2)
    jobs = [member_args(args, tmp_path, k, threads=1) for k in range(3)]
    assert [j.seed for j in jobs] == [6, 7, 8]
    assert [j.out for j in jobs] == [str(tmp_path / "members" / f"m{k}") for k in range(3)]
    assert all(j.members == 1 and j.threads == 1 and j.force and not j.resume for j in jobs)
    assert AgentArgs().members == 2 and AgentArgs().batch_size == 256  # the default recipe


def test_members_need_the_validity_head() -> None:
    message = (
        "--members 2 --no-validity-head: an agent of several members needs the validity head; "
        "add --members 1 for one MLP-headed DQN"
    )
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        AgentArgs(members=2, validity_head=False)
    AgentArgs(members=1, validity_head=False)  # one MLP-headed DQN is fine


@slow
def test_members_train_side_by_side_and_join(
    tiny_pipeline: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two members in two processes: each equals the same training run alone, the joined
    agent's Q-values are their mean, and --resume keeps finished members."""
    args = dataclasses.replace(
        tiny_pipeline["args"], members=2, workers=2, epochs=2, out=str(tmp_path / "run")
    )
    model, agent = fit_agent(args)
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["finished"] and config["delta"] == tiny_pipeline["calibration"]["delta"]["dog"]
    assert [Path(m).name for m in config["members"]] == ["m0", "m1"]
    members = [DQN.load(run / "members" / f"m{k}" / "agent.zip") for k in range(2)]
    seeds = [
        json.loads((run / "members" / f"m{k}" / "config.json").read_text())["args"]["seed"]
        for k in range(2)
    ]
    assert seeds == [0, 1]
    joined = DQN.load(agent)
    assert joined.q_net.members == 2
    obs = {k: torch.as_tensor(v) for k, v in joined.observation_space.sample().items()}
    obs = {k: v[None] for k, v in obs.items()}
    with torch.no_grad():
        mean = (members[0].q_net(obs) + members[1].q_net(obs)) / 2
        torch.testing.assert_close(joined.q_net(obs), mean)
        torch.testing.assert_close(model.q_net(obs), mean)
    assert config["timesteps"] == sum(m.num_timesteps for m in members)
    assert len(config["member_seconds"]) == 2 and all(t > 0 for t in config["member_seconds"])
    # member 1 is the same training as seed 1 alone (one thread): the same parameters
    alone, _ = fit_agent(
        dataclasses.replace(args, members=1, seed=1, threads=1, out=str(tmp_path / "alone"))
    )
    for a, b in zip(alone.q_net.parameters(), members[1].q_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    capsys.readouterr()
    fit_agent(dataclasses.replace(args, resume=True))
    assert "2 members (seeds 0, 1), 0 to train" in capsys.readouterr().err
    assert (run / "agent.zip").is_file()
