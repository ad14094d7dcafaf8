"""``make train``'s DQN: Stable-Baselines3's DQN with a Double-DQN target and, with
:class:`~cutbg_env.qnet.ValidityQNetwork`, a validity loss.

Everything else is SB3's DQN (replay, Huber loss, gradient clipping, target copies,
ε-greedy exploration); the subclass only replaces :meth:`DQN.train`, SB3's documented place for
an algorithm's gradient step. A trained agent is an ordinary SB3 zip: ``DQN.load`` and
``CutDQN.load`` both read it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DQN
from torch import nn

from cutbg_env.actions import CUT_ACTIONS
from cutbg_env.qnet import ValidityPolicy, ValidityQNetwork, policy_kwargs

VOC_DATASETS = ("voc2007", "voc2012")
"""Datasets that get the paper's (full-width VGG-16) defaults."""


def per_dataset(value: Any, dataset: str, on_voc: Any, here: Any) -> Any:
    """``value`` if it is set, else the default of ``dataset``: ``on_voc`` on PASCAL VOC (the
    paper's), ``here`` on any other dataset (the embedded default's)."""
    if value is not None:
        return value
    return on_voc if dataset in VOC_DATASETS else here


class CutDQN(DQN):
    """SB3's DQN with a choice of TD target and the validity loss.

    Args:
        double_q: Double-DQN targets (van Hasselt et al., 2016): the online network picks the
            next action and the target network values it,
            ``y = r + γ (1 − done) Q_target(s', argmax_a Q(s', a))``. With plain DQN's
            ``max_a Q_target(s', a)`` (``False``, the paper's) the over-estimated value of
            cutting on beats the exact, terminal ``+η`` of stopping, and the agent cuts until
            the score drops.
        *args, **kwargs: SB3's :class:`~stable_baselines3.DQN` arguments.

    With :class:`~cutbg_env.qnet.ValidityQNetwork` as the Q-network, a binary cross-entropy loss
    on the validity logit of each sampled cut, labelled by the sign of its reward, is added to
    the TD loss.
    """

    def __init__(self, *args: Any, double_q: bool = True, **kwargs: Any) -> None:
        self.double_q = double_q
        super().__init__(*args, **kwargs)

    def next_values(self, data: Any) -> torch.Tensor:
        """The bootstrap value of each next state: ``(N, 1)``, or ``(K, N, 1)`` per head of a
        :class:`~cutbg_env.qnet.ValidityQNetwork` with ``K`` heads (each head against its own
        target head)."""
        nxt = data.next_observations
        if isinstance(self.q_net, ValidityQNetwork):
            target_q = self.q_net_target.q_values(*self.q_net_target.heads(nxt))
            if not self.double_q:
                return target_q.max(dim=2, keepdim=True)[0]
            online_q = self.q_net.q_values(*self.q_net.heads(nxt))
            return target_q.gather(2, online_q.argmax(dim=2, keepdim=True))
        if not self.double_q:
            return self.q_net_target(nxt).max(dim=1, keepdim=True)[0]
        next_actions = self.q_net(nxt).argmax(dim=1, keepdim=True)
        return self.q_net_target(nxt).gather(1, next_actions)

    def loss(self, data: Any) -> torch.Tensor:
        """The loss of one replay minibatch: Huber TD loss (+ the validity loss)."""
        discounts = data.discounts if data.discounts is not None else self.gamma
        with torch.no_grad():
            target = data.rewards + (1 - data.dones) * discounts * self.next_values(data)
        actions = data.actions.long()
        if not isinstance(self.q_net, ValidityQNetwork):
            current = self.q_net(data.observations).gather(1, actions)
            return nn.functional.smooth_l1_loss(current, target)
        w, logits = self.q_net.heads(data.observations)
        k = len(w)
        current = self.q_net.q_values(w, logits).gather(2, actions.expand(k, -1, -1))
        loss = nn.functional.smooth_l1_loss(current, target.expand(k, -1, -1))
        cut = actions[:, 0] < len(CUT_ACTIONS)
        if cut.any():
            chosen = logits[:, cut].gather(2, actions[cut].expand(k, -1, -1)).squeeze(2)
            labels = (data.rewards[cut, 0] > 0).float().expand(k, -1)
            loss = loss + nn.functional.binary_cross_entropy_with_logits(chosen, labels)
        return loss

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            loss = self.loss(data)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)))


@dataclass(frozen=True)
class DQNArgs:
    """The agent's Q-network and DQN hyperparameters, shared by ``python -m train agent`` and the
    benchmark. ``None`` fields have a dataset-dependent default (:meth:`resolved_for`)."""

    gamma: float | None = None
    """Discount factor (default: 0.95 on VOC as the paper, 0.8 here)."""
    buffer_size: int | None = None
    """Replay transitions (default: 30,000 on VOC, 100,000 here; see README for bytes)."""
    batch_size: int = 256
    """Replay minibatch (of each member)."""
    train_freq: int = 1
    """Vec-env steps (each ``n_envs`` transitions) between training rounds."""
    gradient_steps: int = 1
    """Gradient steps per training round (1 per 16 transitions at the defaults)."""
    learning_starts: int = 1000
    """Transitions collected before learning."""
    target_update: int = 1000
    """Transitions between target-network copies."""
    adapt_channels: int | None = None
    """Channels of the two adaptation convolutions (default: 128 on VOC, 32 here)."""
    adapt_kernel: int = 1
    """Kernel of the first adaptation convolution (the second is 3×3); 1 is 9× cheaper than 3."""
    hidden: int = 256
    """Width of the Q head's hidden layer."""
    obs_dtype: str = "float16"
    """Observation storage dtype (float16 halves the replay buffer)."""
    observe_score: bool = True
    """Add the env's ``score`` observation (p̂ and the drop p̄ − p̂); False = the paper's state."""
    double_q: bool = True
    """Double-DQN targets (False = SB3's plain DQN, as the paper)."""
    validity_head: bool = True
    """Q-network with a validity logit per cut (cutbg_env.qnet.ValidityQNetwork; False = MLP)."""
    heads: int = 1
    """Q heads on the shared feature extractor (bootstrapped DQN); the agent acts on their mean."""
    members: int = 2
    """Independent DQN trainings (own seed, envs and replay) joined into one agent that acts on
    their mean Q-values (1 = a single DQN)."""

    def resolved_for(self, dataset: str) -> Any:
        """A copy with the ``None`` fields filled for ``dataset`` (the paper's values on VOC)."""
        return dataclasses.replace(
            self,
            gamma=per_dataset(self.gamma, dataset, 0.95, 0.8),
            buffer_size=per_dataset(self.buffer_size, dataset, 30_000, 100_000),
            adapt_channels=per_dataset(self.adapt_channels, dataset, 128, 32),
        )

    def build(self, env: Any, **sb3_kwargs: Any) -> CutDQN:
        """The untrained :class:`CutDQN` of these (resolved) arguments on ``env``;
        ``sb3_kwargs`` (``learning_rate``, ``seed``, ``device``, ...) go to SB3's DQN."""
        if self.gamma is None or self.buffer_size is None or self.adapt_channels is None:
            raise ValueError("DQNArgs.build: call resolved_for(dataset) first")
        kwargs = policy_kwargs(self.adapt_channels, self.adapt_kernel, self.hidden)
        if self.validity_head:
            kwargs["n_heads"] = self.heads
            if self.members > 1:
                kwargs["members"] = self.members
        elif self.heads != 1:
            raise ValueError(f"heads={self.heads}: several heads need the validity head")
        return CutDQN(
            ValidityPolicy if self.validity_head else "MultiInputPolicy",
            env,
            double_q=self.double_q,
            buffer_size=self.buffer_size,
            learning_starts=self.learning_starts,
            batch_size=self.batch_size,
            gamma=self.gamma,
            train_freq=self.train_freq,
            gradient_steps=self.gradient_steps,
            target_update_interval=self.target_update,
            policy_kwargs=kwargs,
            **sb3_kwargs,
        )

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        from cutbg_env import checks

        if self.gamma is not None:
            checks.real("--gamma", self.gamma, 0.0, 1.0)
        for name in ("buffer_size", "batch_size", "train_freq", "gradient_steps", "target_update"):
            checks.integer(checks.flag(name), getattr(self, name), 1)
        checks.integer("--learning-starts", self.learning_starts, 0)
        for name in ("adapt_channels", "adapt_kernel", "hidden", "heads", "members"):
            checks.integer(checks.flag(name), getattr(self, name), 1)
        checks.choice("--obs-dtype", self.obs_dtype, ("float16", "float32"))
        checks.rule(
            self.validity_head or self.members == 1,
            f"--members {self.members} --no-validity-head: an agent of several members needs "
            "the validity head; add --members 1 for one MLP-headed DQN",
        )
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
