"""Member Q-networks (K independent networks batched in one) and the per-head minibatch masks
and per-episode acting head of :class:`~cutbg_env.dqn.CutDQN`: exact answers on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from cutbg_env.qnet import CutFeatures, MemberMLP, ValidityPolicy, policy_kwargs

BOX = lambda *shape: spaces.Box(0, 1, shape, np.float32)  # noqa: E731
SPACE = spaces.Dict({"features": BOX(8, 7, 7), "history": BOX(4, 13), "score": BOX(2)})


def _obs(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand((n, *s.shape), generator=gen) for k, s in SPACE.spaces.items()}


def _policy(members: int, channels: int = 4, hidden: int = 16) -> ValidityPolicy:
    kwargs = policy_kwargs(channels, 1, hidden, members)
    return ValidityPolicy(SPACE, spaces.Discrete(13), lambda _: 1e-3, **kwargs)


def test_members_are_independent_networks() -> None:
    """Member k's Q-values equal a one-member network holding member k's slice of the weights."""
    torch.manual_seed(0)
    net = _policy(3).q_net
    assert net.n_heads == net.members == 3
    assert isinstance(net.q_net, MemberMLP)
    obs = _obs(5)
    with torch.no_grad():
        w, logits = net.heads(obs)
        assert w.shape == (3, 5, 13) and logits.shape == (3, 5, 12)
        per_member = net.q_values(w, logits)
        torch.testing.assert_close(net(obs), per_member.mean(0))  # acts on the mean
        for k in range(3):
            one = _policy(1).q_net
            conv1, conv2 = net.features_extractor.adapt[0], net.features_extractor.adapt[2]
            one_conv1, one_conv2 = one.features_extractor.adapt[0], one.features_extractor.adapt[2]
            rows = slice(4 * k, 4 * k + 4)
            one_conv1.weight.copy_(conv1.weight[rows])
            one_conv1.bias.copy_(conv1.bias[rows])
            one_conv2.weight.copy_(conv2.weight[rows])  # grouped: (out, in/groups, 3, 3)
            one_conv2.bias.copy_(conv2.bias[rows])
            mlp = one.q_net[0]
            mlp[0].weight.copy_(net.q_net.w1[k].T)
            mlp[0].bias.copy_(net.q_net.b1[k, 0])
            mlp[2].weight.copy_(net.q_net.w2[k].T)
            mlp[2].bias.copy_(net.q_net.b2[k, 0])
            torch.testing.assert_close(one(obs), per_member[k], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(per_member[0], per_member[1])  # initialised apart


def test_a_member_gets_no_gradient_from_another() -> None:
    torch.manual_seed(0)
    net = _policy(2).q_net
    w, logits = net.heads(_obs(4))
    net.q_values(w[0], logits[0]).sum().backward()  # member 0's Q only
    conv2 = net.features_extractor.adapt[2]
    assert conv2.weight.grad[:4].abs().sum() > 0
    assert torch.count_nonzero(conv2.weight.grad[4:]) == 0
    assert torch.count_nonzero(net.q_net.w1.grad[1]) == 0
    assert torch.count_nonzero(net.q_net.w2.grad[1]) == 0
    assert net.q_net.w1.grad[0].abs().sum() > 0


def test_member_layout_and_the_one_member_network() -> None:
    """One member is the plain network (the same modules); K members lay out K feature blocks,
    each with its own copy of history and score."""
    one = CutFeatures(SPACE, channels=4)
    assert one.features_dim == 4 * 49 + 52 + 2
    three = CutFeatures(SPACE, channels=4, members=3)
    assert three.features_dim == 3 * (4 * 49 + 52 + 2)
    obs = _obs(2)
    out = three(obs).view(2, 3, -1)
    tail = torch.cat([obs["history"].flatten(1), obs["score"]], 1)
    for k in range(3):
        torch.testing.assert_close(out[:, k, 4 * 49 :], tail)
    assert _policy(3)._get_constructor_parameters()["features_extractor_kwargs"]["members"] == 3
    assert "members" not in policy_kwargs(4, 1, 16)["features_extractor_kwargs"]


def test_member_mlp_exact() -> None:
    mlp = MemberMLP(2, 3, 2, 1)
    with torch.no_grad():
        mlp.w1.copy_(torch.tensor([[[1.0, 0], [0, 1], [1, 1]], [[-1.0, 0], [0, 0], [0, 0]]]))
        mlp.b1.zero_()
        mlp.w2.copy_(torch.tensor([[[1.0], [2.0]], [[1.0], [1.0]]]))
        mlp.b2.copy_(torch.tensor([[[0.5]], [[0.0]]]))
        x = torch.tensor([[1.0, 2.0, 3.0]]).expand(2, 1, 3)
        # member 0: relu([4, 5]) · [1, 2] + 0.5 = 14.5; member 1: relu([-1, 0]) · [1, 1] = 0
        torch.testing.assert_close(mlp(x), torch.tensor([[[14.5]], [[0.0]]]))


def test_bad_member_counts() -> None:
    with pytest.raises(ValueError, match=r"^members=0: a Q-network needs at least one member$"):
        CutFeatures(SPACE, members=0)
    kwargs = policy_kwargs(4, 1, 16, 2)
    with pytest.raises(ValueError, match=r"^n_heads=2, members=2: choose one of the two$"):
        ValidityPolicy(SPACE, spaces.Discrete(13), lambda _: 1e-3, n_heads=2, **kwargs)


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
