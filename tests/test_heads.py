"""The per-head minibatch masks and the per-episode acting head of
:class:`~cutbg_env.dqn.CutDQN` with several Q heads: exact answers on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from cutbg_env.qnet import ValidityPolicy, policy_kwargs

BOX = lambda *shape: spaces.Box(0, 1, shape, np.float32)  # noqa: E731
SPACE = spaces.Dict({"features": BOX(8, 7, 7), "history": BOX(4, 13), "score": BOX(2)})


def _obs(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand((n, *s.shape), generator=gen) for k, s in SPACE.spaces.items()}


def _policy(heads: int) -> ValidityPolicy:
    kwargs = policy_kwargs(4, 1, 16)
    return ValidityPolicy(SPACE, spaces.Discrete(13), lambda _: 1e-3, n_heads=heads, **kwargs)


def test_acting_head_per_observation() -> None:
    """With ``acting`` set, each observation gets its own head's Q-values."""
    torch.manual_seed(0)
    net = _policy(3).q_net
    obs = _obs(4)
    with torch.no_grad():
        per_member = net.q_values(*net.heads(obs))
        net.acting = torch.tensor([2, 0, 1, 2])
        q = net(obs)
        net.acting = None
    for i, k in enumerate([2, 0, 1, 2]):
        torch.testing.assert_close(q[i], per_member[k, i])


def test_head_share_masks_the_loss() -> None:
    """``head_share`` 1 is the plain mean; below 1 each head's loss is the mean over its own
    random part of the minibatch (seeded)."""
    from cutbg_env.dqn import CutDQN

    dqn = CutDQN.__new__(CutDQN)  # only the loss helper is exercised
    values = torch.arange(12, dtype=torch.float32).view(2, 6)
    dqn.head_share = 1.0
    assert float(dqn._masked_mean(values)) == pytest.approx(5.5)
    dqn.head_share = 0.5
    torch.manual_seed(3)
    mask = (torch.rand(values.shape) < 0.5).float()
    torch.manual_seed(3)
    got = float(dqn._masked_mean(values))
    assert got == pytest.approx(float((values * mask).sum() / mask.sum()))
    assert 0 < mask.sum() < 12  # a real mask on this seed
    assert float(dqn._masked_mean(values[:1])) == pytest.approx(2.5)  # one head: no mask


def test_act_head_explores_with_one_head_per_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``act_head``, a training step's action of each env is the argmax of that env's
    head (drawn at the episode's start and redrawn when it ends); evaluation
    (``deterministic``) acts on the mean."""
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    from cutbg_env.dqn import CutDQN

    torch.manual_seed(0)
    dqn = CutDQN.__new__(CutDQN)
    dqn.policy = _policy(5)
    dqn.q_net = dqn.policy.q_net
    dqn.exploration_rate, dqn.act_head, dqn._acting = 0.0, True, None
    dqn.device = torch.device("cpu")
    obs = {k: v.numpy() for k, v in _obs(6).items()}
    with torch.no_grad():
        q = dqn.q_net.q_values(*dqn.q_net.heads(_obs(6)))
    np.random.seed(4)
    actions, _ = dqn.predict(obs, deterministic=False)
    heads = dqn._acting.copy()
    np.random.seed(4)
    assert heads.tolist() == np.random.randint(5, size=6).tolist()
    assert len(set(heads.tolist())) > 1
    assert actions.tolist() == [int(q[k, i].argmax()) for i, k in enumerate(heads)]
    assert dqn.q_net.acting is None  # only while acting
    greedy, _ = dqn.predict(obs, deterministic=True)
    assert greedy.tolist() == q.mean(0).argmax(1).tolist()
    monkeypatch.setattr(OffPolicyAlgorithm, "_store_transition", lambda *a, **k: None)
    dones = np.array([True, False, False, True, False, False])
    np.random.seed(9)
    dqn._store_transition(None, None, None, None, dones, None)
    np.random.seed(9)
    redrawn = np.random.randint(5, size=2)
    assert dqn._acting[~dones].tolist() == heads[~dones].tolist()
    assert dqn._acting[dones].tolist() == redrawn.tolist()
