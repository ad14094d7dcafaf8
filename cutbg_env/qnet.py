"""The agent's Q-network for Stable-Baselines3: the feature extractor over the frozen classifier's
senior features, and a Q head shaped by the reward.

The backbone lives in the env (one shared copy) and never enters the policy or the replay
buffer: the policy reads the env's observation (``features``, ``history`` and, when the env
provides it, ``score``). :class:`ValidityPolicy` is the default policy of ``make train``'s DQN
(:mod:`cutbg_env.dqn`); :func:`policy_kwargs` gives its SB3 ``policy_kwargs``. Both are here, in
the installed package, so that ``DQN.load`` of a trained agent needs no training code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.dqn.policies import MultiInputPolicy, QNetwork
from torch import nn

from cutbg_env.actions import CUT_ACTIONS, Action

EXTRA_OBSERVATIONS = ("score",)
"""Optional observation keys the extractor concatenates when the space has them."""


class CutFeatures(BaseFeaturesExtractor):
    """Two adaptation convs (``kernel``×``kernel`` then 3×3, ReLU) over the senior map (the
    paper's two adaptation layers), flattened, + the action history (+ the ``score``
    observation when the space has it)."""

    def __init__(self, observation_space: spaces.Dict, channels: int = 32, kernel: int = 1) -> None:
        c, h, w = observation_space["features"].shape
        hist = int(np.prod(observation_space["history"].shape))
        self.extras = [k for k in EXTRA_OBSERVATIONS if k in observation_space.spaces]
        extra = sum(int(np.prod(observation_space[k].shape)) for k in self.extras)
        super().__init__(observation_space, features_dim=channels * h * w + hist + extra)
        self.channels, self.kernel = channels, kernel
        self.adapt = nn.Sequential(
            nn.Conv2d(c, channels, kernel, padding=kernel // 2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(1),
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.adapt(obs["features"].float()), obs["history"].float().flatten(1)]
        parts += [obs[k].float() for k in self.extras]
        return torch.cat(parts, 1)


class ValidityQNetwork(QNetwork):
    """A Q-network shaped by the reward's own structure, with one or more heads.

    A cut's reward is ``+scale`` when it keeps the drop ≤ δ (and the episode goes on) and
    ``−scale`` when it does not (and the episode ends), so
    ``Q(s, cut) = P(valid) · (scale + γ V(s')) − (1 − P(valid)) · scale``. A head outputs a
    validity logit ``ℓ`` per cut and a continuation value ``W`` per action, and gives
    ``Q_cut = σ(ℓ) (scale + W_cut) − (1 − σ(ℓ)) scale`` and ``Q_stop = W_stop``: still 13
    Q-values, trained by the TD loss; :class:`~cutbg_env.dqn.CutDQN` adds a cross-entropy loss
    on ``ℓ`` of each sampled cut, whose label is the sign of its reward.

    ``n_heads`` heads (each an MLP with its own hidden layer) share the feature extractor, each
    trained against its own target head (bootstrapped DQN, Osband et al. 2016); the network's
    Q-values, which act, are the mean over the heads. ``n_heads=1`` is a single Q-network.

    ``members`` K > 1 holds K whole Q-networks (each its own feature extractor and head) and
    acts on their mean Q-values: the agent that ``python -m train agent`` assembles from K
    independently trained members (:func:`assemble_members`; a member ``m`` is one extractor
    ``extractors[m]`` and head ``q_net[m]``).
    """

    def __init__(self, *args: Any, n_heads: int = 1, members: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if n_heads < 1:
            raise ValueError(f"n_heads={n_heads}: a Q-network needs at least one head")
        if members < 1:
            raise ValueError(f"members={members}: a Q-network needs at least one member")
        if n_heads > 1 and members > 1:
            raise ValueError(f"n_heads={n_heads}, members={members}: choose one of the two")
        self.n_heads = max(n_heads, members)
        self.members = members
        out = int(self.action_space.n) + len(CUT_ACTIONS)
        self.q_net = nn.ModuleList(self._head(out) for _ in range(self.n_heads))
        if members > 1:  # registered only then, so a one-member agent keeps SB3's names
            fe = self.features_extractor
            self.extractors = nn.ModuleList(
                [fe]
                + [
                    type(fe)(self.observation_space, channels=fe.channels, kernel=fe.kernel)
                    for _ in range(members - 1)
                ]
            )
        scales = torch.tensor([float(Action(a).scale) for a in CUT_ACTIONS])
        self.register_buffer("scales", scales)

    def _head(self, out: int) -> nn.Sequential:
        """One head: SB3's MLP (one hidden layer by default)."""
        return nn.Sequential(*create_mlp(self.features_dim, out, self.net_arch, self.activation_fn))

    def heads(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W (K, N, 13), ℓ (K, N, 12))`` of the ``K`` heads (or members)."""
        if self.members == 1:
            features = self.extract_features(obs, self.features_extractor)
            out = torch.stack([head(features) for head in self.q_net])
        else:
            out = torch.stack(
                [
                    head(self.extract_features(obs, fe))
                    for fe, head in zip(self.extractors, self.q_net, strict=True)
                ]
            )
        n = int(self.action_space.n)
        return out[..., :n], out[..., n:]

    def q_values(self, w: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Q-values (``(..., 13)``) from the two heads' outputs (``(..., 13)``, ``(..., 12)``)."""
        p = torch.sigmoid(logits)
        q_cut = p * (self.scales + w[..., : len(CUT_ACTIONS)]) - (1.0 - p) * self.scales
        return torch.cat([q_cut, w[..., len(CUT_ACTIONS) :]], -1)

    def forward(self, obs: Any) -> torch.Tensor:
        return self.q_values(*self.heads(obs)).mean(0)


def assemble_members(whole: ValidityQNetwork, members: list[ValidityQNetwork]) -> None:
    """Copy the weights of one-member networks into the members of ``whole`` (in order)."""
    if whole.members != len(members) or any(m.members != 1 or m.n_heads != 1 for m in members):
        raise ValueError(
            f"assemble_members: {len(members)} one-head networks for {whole.members} members"
        )
    with torch.no_grad():
        for k, member in enumerate(members):
            whole.extractors[k].load_state_dict(member.features_extractor.state_dict())
            whole.q_net[k].load_state_dict(member.q_net[0].state_dict())


class ValidityPolicy(MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` with :class:`ValidityQNetwork` (``n_heads`` heads) as online
    and target net."""

    def __init__(self, *args: Any, n_heads: int = 1, members: int = 1, **kwargs: Any) -> None:
        self.n_heads, self.members = n_heads, members
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> QNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return ValidityQNetwork(**net_args, n_heads=self.n_heads, members=self.members).to(
            self.device
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {
            **super()._get_constructor_parameters(),
            "n_heads": self.n_heads,
            "members": self.members,
        }


def policy_kwargs(channels: int, kernel: int, hidden: int) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of the Q-network: :class:`CutFeatures` with ``channels`` adaptation
    channels and a first kernel of ``kernel``, one hidden layer of ``hidden`` units, RMSprop."""
    return {
        "features_extractor_class": CutFeatures,
        "features_extractor_kwargs": {"channels": channels, "kernel": kernel},
        "net_arch": [hidden],
        "optimizer_class": torch.optim.RMSprop,
        "normalize_images": False,
    }
