"""Stage 3: the SB3 DQN agent of one class (paper §2.2, §3.1).

Policy: two trainable convolutional adaptation layers (1×1 then 3×3 by default) over the frozen
classifier's senior feature map, concatenated with the one-hot action history and (by default) the
env's ``score`` observation, then an MLP Q head with 13 outputs, trained with Double-DQN targets.
The backbone lives in the env (one shared copy) and never enters the policy or the replay buffer.

Two departures from the paper, both switchable (``--no-observe-score``, ``--no-double-q``): the
state also holds ``p̂`` and the drop ``p̄ − p̂`` (the reward is a threshold on that drop, which the
paper's state leaves the agent to infer from features), and the TD target is Double DQN's (plain
DQN's over-estimated value of cutting on kept beating the exact ``+η`` of stopping). See README.

The Q-network (``validity_head``, on by default, ``--no-validity-head`` = a plain MLP head) follows
the reward's structure: a validity logit per cut, trained with an extra cross-entropy loss
(:class:`ValidityQNetwork`). ``branches`` (off by default: it doubles training time) also stores
the real transitions of other actions tried from each state (:class:`BranchingDQN`). See README.

Schedules follow the paper in *epochs* (one epoch = one pass over the class's trainval images
that contain it): RMSprop, learning rate decaying from ``lr_start`` to ``lr_end`` over the first
``decay_epochs`` and constant after; ε from 1.0 down to 0.1 in steps of 0.1 over the same epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.common.vec_env import VecMonitor
from stable_baselines3.dqn.policies import MultiInputPolicy, QNetwork
from torch import nn

from cutbg_env import paths
from cutbg_env.actions import CUT_ACTIONS, Action
from cutbg_env.backbone import load_classifier
from cutbg_env.core import OPTIONAL_OBSERVATIONS, CutWorld, resolve_delta
from cutbg_env.errors import CheckpointError, OptionError
from cutbg_env.io import atomic_path, write_json
from cutbg_env.vec_env import BatchedCutBackgroundVecEnv
from train.common import check_class, log, open_split, relpath, seed_everything, splits

VOC_DATASETS = ("voc2007", "voc2012")


@dataclass(frozen=True)
class AgentArgs:
    """Train the DQN agent of one class on the batched CutBackground env."""

    class_name: str = field(default="dog", metadata={"flags": ("--class",)})
    """Class the agent localizes."""
    dataset: str = "animals"
    """Dataset: animals (embedded), voc2007, voc2012 or a VOC-layout folder."""
    root: str | None = None
    """Dataset folder overriding the default location of ``dataset``."""
    checkpoint: str | None = None
    """Classifier checkpoint (default: runs/<dataset>/classifier.pt)."""
    out: str | None = None
    """Run folder (default: runs/<dataset>/<class>)."""
    epochs: int | None = None
    """Passes over the class's trainval images (default: 50 on VOC as the paper, 30 here)."""
    decay_epochs: int | None = None
    """Epochs over which lr and ε decay (default: 10 on VOC as the paper, 8 here)."""
    lr_start: float | None = None
    """Initial RMSprop learning rate (default: 1e-5 on VOC, 1e-3 here)."""
    lr_end: float | None = None
    """Learning rate after the decay (default: 1e-6 on VOC, 1e-4 here)."""
    eps_end: float = 0.1
    """Final ε of the ε-greedy exploration (from 1.0, in steps of 0.1)."""
    gamma: float = 0.95
    """Discount factor."""
    n_envs: int = 16
    """Episodes stepped together in one batched forward."""
    buffer_size: int | None = None
    """Replay transitions (default: 30,000 on VOC, 100,000 here; see README for bytes)."""
    batch_size: int = 256
    """Replay minibatch."""
    train_freq: int = 1
    """Vec-env steps (each ``n_envs`` transitions) between training rounds."""
    gradient_steps: int = 1
    """Gradient steps per training round (1 per 16 transitions at the defaults)."""
    learning_starts: int = 1000
    """Transitions collected before learning."""
    target_update: int = 1000
    """Transitions between target-network copies."""
    adapt_channels: int = 32
    """Channels of the two adaptation convolutions (128 on VOC)."""
    adapt_kernel: int = 1
    """Kernel of the first adaptation convolution (the second is 3×3); 1 is 9× cheaper than 3."""
    hidden: int = 256
    """Width of the Q head's hidden layer."""
    delta: float | None = None
    """Score-drop threshold δ (default: the calibrated value of the class)."""
    eta: float = 3.0
    """Reward magnitude η of the stop action."""
    obs_dtype: str = "float16"
    """Observation storage dtype (float16 halves the replay buffer)."""
    observe_score: bool = True
    """Add the env's ``score`` observation (p̂ and the drop p̄ − p̂); False = the paper's state."""
    observe_cut_mass: bool = False
    """Add the env's ``cut_mass`` observation (heat-map share each cut removes; no extra calls)."""
    max_images: int | None = None
    """Train on the first N images of the class only (quick experiments, tests)."""
    double_q: bool = True
    """Double-DQN targets (False = SB3's plain DQN, as the paper)."""
    branches: int = 0
    """Other actions tried per state and stored as extra transitions (0 = the paper's DQN)."""
    validity_head: bool = True
    """Q-network with a validity logit per cut (:class:`ValidityQNetwork`; False = an MLP)."""
    average_last: int = 0
    """Save as agent.zip the mean weights of the last N epoch checkpoints (0 = the last weights)."""
    resume: bool = False
    """Continue from the last epoch checkpoint in the run folder."""
    save_replay_buffer: bool = False
    """Also save the replay buffer with each epoch checkpoint."""
    progress: bool = True
    """Show SB3's progress bar."""
    seed: int = 0
    """Seed of the env order, exploration and initialisation."""
    ensemble_member: bool = False
    """Train an extra ensemble member: run folder runs/<dataset>/<class>/ensemble/seed_<seed>."""
    device: str = "cpu"
    """Torch device of the classifier and the DQN."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""

    def resolved(self) -> AgentArgs:
        """Fill the dataset-dependent defaults (paper's values on VOC)."""
        voc = self.dataset in VOC_DATASETS
        epochs = self.epochs or (50 if voc else 30)
        return dataclasses.replace(
            self,
            epochs=epochs,
            decay_epochs=self.decay_epochs or (10 if voc else min(8, epochs)),
            lr_start=self.lr_start or (1e-5 if voc else 1e-3),
            lr_end=self.lr_end or (1e-6 if voc else 1e-4),
            buffer_size=self.buffer_size or (30_000 if voc else 100_000),
            adapt_channels=128 if voc and self.adapt_channels == 32 else self.adapt_channels,
        )

    def run_dir(self) -> Path:
        """``out``, else the member's folder, else ``runs/<dataset>/<class>``."""
        if self.out:
            return Path(self.out)
        if self.ensemble_member:
            return paths.ensemble_dir(self.dataset, self.class_name) / f"seed_{self.seed}"
        return paths.agent_dir(self.dataset, self.class_name)


class CutFeatures(BaseFeaturesExtractor):
    """Two adaptation convs (``kernel``×``kernel`` then 3×3, ReLU) over the senior map, flattened,
    + the action history (+ the ``score`` and ``cut_mass`` observations when the space has them).

    ``kernel`` defaults to 3 so that agents saved before ``AgentArgs.adapt_kernel`` existed (their
    zip stores only ``channels``) load unchanged; training always passes ``adapt_kernel``."""

    def __init__(self, observation_space: spaces.Dict, channels: int = 32, kernel: int = 3) -> None:
        c, h, w = observation_space["features"].shape
        hist = int(np.prod(observation_space["history"].shape))
        self.extras = [k for k in OPTIONAL_OBSERVATIONS if k in observation_space.spaces]
        extra = sum(int(np.prod(observation_space[k].shape)) for k in self.extras)
        super().__init__(observation_space, features_dim=channels * h * w + hist + extra)
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
    """A Q-network shaped by the reward's own structure.

    A cut's reward is ``+scale`` when it keeps the drop ≤ δ (and the episode goes on) and
    ``−scale`` when it does not (and the episode ends), so
    ``Q(s, cut) = P(valid) · (scale + γ V(s')) − (1 − P(valid)) · scale``. The head outputs a
    validity logit ``ℓ`` per cut and a continuation value ``W`` per action, and returns
    ``Q_cut = σ(ℓ) (scale + W_cut) − (1 − σ(ℓ)) scale`` and ``Q_stop = W_stop``: still 13
    Q-values, trained by the TD loss; :class:`BranchingDQN` adds a cross-entropy loss on ``ℓ``
    of each sampled cut, whose label is the sign of its reward.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        out = int(self.action_space.n) + len(CUT_ACTIONS)
        self.q_net = nn.Sequential(
            *create_mlp(self.features_dim, out, self.net_arch, self.activation_fn)
        )
        scales = torch.tensor([float(Action(a).scale) for a in CUT_ACTIONS])
        self.register_buffer("scales", scales)

    def heads(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W (N, 13), ℓ (N, 12))``."""
        out = self.q_net(self.extract_features(obs, self.features_extractor))
        n = int(self.action_space.n)
        return out[:, :n], out[:, n:]

    def q_values(self, w: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(N, 13)`` Q-values from the two heads."""
        p = torch.sigmoid(logits)
        q_cut = p * (self.scales + w[:, : len(CUT_ACTIONS)]) - (1.0 - p) * self.scales
        return torch.cat([q_cut, w[:, len(CUT_ACTIONS) :]], 1)

    def forward(self, obs: Any) -> torch.Tensor:
        return self.q_values(*self.heads(obs))


class ValidityPolicy(MultiInputPolicy):
    """SB3's ``MultiInputPolicy`` with :class:`ValidityQNetwork` as online and target net."""

    def make_q_net(self) -> QNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return ValidityQNetwork(**net_args).to(self.device)


class BranchingDQN(DQN):
    """SB3's DQN (plain ``max`` target) with the two optional extras of :class:`AgentArgs`.

    * Counterfactual transitions: when the env returns ``info["branches"]``
      (:class:`BatchedCutBackgroundVecEnv` with ``branches=K``), each step adds ``K`` more
      transitions per env to the replay buffer: the same state, another action, and the reward,
      end and next state that action really has. They are ordinary env transitions (the env is
      deterministic), so the Q-learning targets are unchanged; the agent sees the verdict of
      several cuts per state instead of one.
    * With :class:`ValidityQNetwork`, a binary cross-entropy loss on the validity logit of each
      sampled cut, labelled by the sign of its reward, is added to the TD loss.

    Without either, training is SB3's DQN: replay, Huber loss, gradient clipping, target copies.
    """

    double_q = False
    """Double-DQN targets (:class:`DoubleDQN`)."""

    def _store_transition(
        self,
        replay_buffer: Any,
        buffer_action: np.ndarray,
        new_obs: Any,
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        obs = self._last_obs  # the state every branch starts from (super() moves it on)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        branches = [info.get("branches") for info in infos]
        if not branches[0]:
            return
        for k in range(len(branches[0])):
            taken = [b[k] for b in branches]  # type: ignore[index]
            replay_buffer.add(
                obs,
                {key: np.stack([t["observation"][key] for t in taken]) for key in obs},
                np.asarray([[t["action"]] for t in taken]),
                np.asarray([t["reward"] for t in taken], dtype=np.float32),
                np.asarray([t["terminated"] or t["truncated"] for t in taken]),
                [{"TimeLimit.truncated": t["truncated"]} for t in taken],
            )

    def _loss(self, data: Any) -> torch.Tensor:
        discounts = data.discounts if data.discounts is not None else self.gamma
        with torch.no_grad():
            if self.double_q:
                next_actions = self.q_net(data.next_observations).argmax(dim=1, keepdim=True)
                next_q = self.q_net_target(data.next_observations).gather(1, next_actions)
            else:
                next_q = self.q_net_target(data.next_observations).max(dim=1, keepdim=True)[0]
            target = data.rewards + (1 - data.dones) * discounts * next_q
        actions = data.actions.long()
        if not isinstance(self.q_net, ValidityQNetwork):
            current = self.q_net(data.observations).gather(1, actions)
            return nn.functional.smooth_l1_loss(current, target)
        w, logits = self.q_net.heads(data.observations)
        current = self.q_net.q_values(w, logits).gather(1, actions)
        loss = nn.functional.smooth_l1_loss(current, target)
        cut = actions[:, 0] < len(CUT_ACTIONS)
        if cut.any():
            chosen = logits[cut].gather(1, actions[cut]).squeeze(1)
            labels = (data.rewards[cut, 0] > 0).float()
            loss = loss + nn.functional.binary_cross_entropy_with_logits(chosen, labels)
        return loss

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            loss = self._loss(data)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)))


class DoubleDQN(BranchingDQN):
    """:class:`BranchingDQN` with the Double-DQN target (van Hasselt et al., 2016).

    The online network picks the next action and the target network values it:
    ``y = r + γ (1 − done) Q_target(s', argmax_a Q(s', a))``. With plain DQN's
    ``max_a Q_target(s', a)`` the over-estimated value of continuing to cut beats the exact,
    terminal ``+η`` of stopping, and the agent cuts until the score drops.
    """

    double_q = True


class EpochClock:
    """Epochs done, shared by the schedules and the callback (episodes / images per epoch)."""

    def __init__(self, images: int, episodes: int = 0) -> None:
        self.images, self.episodes = images, episodes

    @property
    def epoch(self) -> float:
        return self.episodes / self.images


class EpsilonSchedule:
    """ε = 1.0 → ``end`` in steps of 0.1 spread evenly over ``decay`` epochs (paper §3.1)."""

    def __init__(self, clock: EpochClock, decay: int, end: float) -> None:
        self.clock, self.decay, self.end = clock, decay, end

    def __call__(self, _progress_remaining: float) -> float:
        n_steps = round((1.0 - self.end) / 0.1)
        k = min(n_steps, math.floor(self.clock.epoch / self.decay * n_steps))
        return max(self.end, 1.0 - 0.1 * k)


class LrSchedule:
    """Learning rate decaying geometrically ``start`` → ``end`` over ``decay`` epochs, then flat."""

    def __init__(self, clock: EpochClock, decay: int, start: float, end: float) -> None:
        self.clock, self.decay, self.start, self.end = clock, decay, start, end

    def __call__(self, _progress_remaining: float) -> float:
        f = min(1.0, self.clock.epoch / self.decay)
        return self.start * (self.end / self.start) ** f


class EpochCallback(BaseCallback):
    """Counts episodes, logs score drops, saves a checkpoint each epoch, stops after the last."""

    def __init__(self, clock: EpochClock, epochs: int, run_dir: Path, save_buffer: bool) -> None:
        super().__init__()
        self.clock, self.epochs, self.run_dir, self.save_buffer = (
            clock,
            epochs,
            run_dir,
            save_buffer,
        )
        self.drops: list[float] = []
        self.t0 = time.monotonic()

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if done:
                before = math.floor(self.clock.epoch)
                self.clock.episodes += 1
                self.drops.append(float(info["drop"]))
                if math.floor(self.clock.epoch) > before:
                    self._end_epoch(math.floor(self.clock.epoch))
        return self.clock.epoch < self.epochs

    def _end_epoch(self, epoch: int) -> None:
        self.logger.record("cutbg/score_drop", float(np.mean(self.drops)) if self.drops else 0.0)
        self.logger.record("cutbg/epoch", epoch)
        self.drops = []
        ckpt_dir = self.run_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ckpt_dir / f"epoch_{epoch:03d}.zip", suffix=".zip") as tmp:
            self.model.save(tmp)
        if self.save_buffer:
            with atomic_path(ckpt_dir / "replay_buffer.pkl", suffix=".pkl") as tmp:
                self.model.save_replay_buffer(tmp)
        write_json(
            ckpt_dir / "state.json",
            {
                "epoch": epoch,
                "episodes": self.clock.episodes,
                "timesteps": self.model.num_timesteps,
            },
        )


def average_checkpoints(model: DQN, run_dir: Path, epochs: range) -> None:
    """Load into ``model`` the mean of the policy weights (online and target Q-networks) saved
    at the end of each epoch in ``epochs`` (``checkpoints/epoch_NNN.zip``).

    DQN's greedy policy changes a lot from one epoch to the next (the agent's test CorLoc swung
    between 3 and 14 over the last 20 epochs of one run); a mean over the last epochs' weights
    (stochastic weight averaging) smooths that out. Raises :class:`CheckpointError` naming a
    missing checkpoint."""
    from stable_baselines3.common.save_util import load_from_zip_file

    total: dict[str, torch.Tensor] = {}
    for epoch in epochs:
        path = run_dir / "checkpoints" / f"epoch_{epoch:03d}.zip"
        if not path.is_file():
            raise CheckpointError(
                f"--average-last: {path} is missing; train again, or without --average-last"
            )
        _, params, _ = load_from_zip_file(path, device="cpu")
        for k, v in params["policy"].items():
            total[k] = total.get(k, 0) + v.double()
    state = model.policy.state_dict()
    model.policy.load_state_dict({k: (total[k] / len(epochs)).to(state[k].dtype) for k in state})


def last_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint of a run folder and its state, or ``None``."""
    ckpt_dir = run_dir / "checkpoints"
    zips = sorted(ckpt_dir.glob("epoch_*.zip"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    if not zips or not (ckpt_dir / "state.json").is_file():
        return None
    state = json.loads((ckpt_dir / "state.json").read_text())
    best = ckpt_dir / f"epoch_{state['epoch']:03d}.zip"
    return (best if best.is_file() else zips[-1]), state


def make_vec_env(args: AgentArgs, split: str, model: Any = None) -> BatchedCutBackgroundVecEnv:
    """The batched env of a class (one shared classifier)."""
    world = CutWorld(
        args.dataset,
        split,
        args.class_name,
        args.checkpoint,
        args.root,
        args.device,
        max_images=args.max_images,
        model=model,
    )
    world.precompute()  # batched lower + whole-map passes now, instead of one per first reset
    return BatchedCutBackgroundVecEnv(
        args.n_envs,
        world=world,
        delta=resolve_delta(args.dataset, args.class_name, args.delta),
        eta=args.eta,
        obs_dtype=args.obs_dtype,
        observe_score=args.observe_score,
        observe_cut_mass=args.observe_cut_mass,
        branches=args.branches,
    )


def algorithm(args: AgentArgs) -> tuple[type[DQN], Any]:
    """The DQN class and SB3 policy ``make train`` uses for ``args``."""
    algo = DoubleDQN if args.double_q else BranchingDQN
    return algo, (ValidityPolicy if args.validity_head else "MultiInputPolicy")


def policy_kwargs(args: AgentArgs) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of the Q-network: :class:`CutFeatures` + an MLP head, RMSprop."""
    return {
        "features_extractor_class": CutFeatures,
        "features_extractor_kwargs": {"channels": args.adapt_channels, "kernel": args.adapt_kernel},
        "net_arch": [args.hidden],
        "optimizer_class": torch.optim.RMSprop,
        "normalize_images": False,
    }


def trained_agent(dataset: str, class_name: str, path: str | Path | None = None) -> Path:
    """The zip of a trained agent: ``path``, else ``runs/<dataset>/<class>/agent.zip``.

    Raises :class:`CheckpointError` naming the file and the command that trains it when the
    file does not exist."""
    zip_path = Path(path) if path else paths.agent_dir(dataset, class_name) / "agent.zip"
    if not zip_path.is_file():
        suffix = "" if dataset == "animals" else f" DATASET={dataset}"
        raise CheckpointError(
            f"no trained agent at {zip_path}: train one with `make train CLASS={class_name}{suffix}`"
        )
    return zip_path


def ensemble_agents(dataset: str, class_name: str) -> list[Path]:
    """The zips of a class's ensemble: its agent (``runs/<dataset>/<class>/agent.zip``, first)
    and every trained member (``ensemble/seed_<N>/agent.zip``, by seed). One path when no member
    was trained; :func:`trained_agent`'s error when the class has no agent."""
    members = [
        d / "agent.zip"
        for d in paths.ensemble_dir(dataset, class_name).glob("seed_*")
        if (d / "agent.zip").is_file() and d.name[len("seed_") :].isdigit()
    ]
    members.sort(key=lambda p: int(p.parent.name[len("seed_") :]))
    return [trained_agent(dataset, class_name), *members]


def _check_member_seed(args: AgentArgs) -> None:
    """A member must not repeat the seed of the class's agent: it would be the same run."""
    if not args.ensemble_member or args.out:
        return
    config = paths.agent_dir(args.dataset, args.class_name) / "config.json"
    try:
        seed = json.loads(config.read_text())["args"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no agent yet (or an unreadable config): nothing to repeat
    if seed == args.seed:
        raise OptionError(
            f"--ensemble-member --seed {args.seed}: the class's agent ({config}) was trained "
            f"with seed {seed}; give the member another seed"
        )


REFINEMENT_FILE = "refinement.json"
"""Per-agent heat-map layer, region and threshold, chosen on the agent's own validation boxes."""


def choose_refinement(model: DQN, world: CutWorld, delta: float, path: Path) -> dict | None:
    """Choose the refinement's heat-map layer, region rule and threshold on the agent's own boxes.

    The calibration stage chooses them on greedy-cut boxes, before any agent exists; an agent's
    boxes are looser than those, and the refinement is there to tighten them. So, after training,
    the agent runs on the calibration's default validation subset (the only images whose boxes
    training may use) and the setting with the best refined CorLoc is written to ``path``, which
    evaluation prefers over the calibration file, with every setting's hit count
    (``validation.hits``), which evaluation pools over classes (``--refinement pooled``). Returns
    the written dict (``None`` when no validation image contains the class).
    """
    from evaluate.rollout import observation_options, rollout, sb3_policy
    from train.calibrate import (
        CalibrateArgs,
        best_setting,
        refinement_scores,
        setting_key,
        validation_images,
    )

    images = validation_images(world, CalibrateArgs.fraction, CalibrateArgs.seed)
    if not images:
        log(f"refinement: no validation image of {world.class_name}; keeping calibration.json's")
        return None
    out = rollout(world, images, sb3_policy(model), delta, **observation_options(model))
    crops = {i: loc.crop for i, (loc, _) in zip(images, out, strict=True)}
    scores = refinement_scores(world, crops)
    _, layer, region, thr = best_setting({(delta, *k): v for k, v in scores.items()})
    best = 100 * scores[(layer, region, thr)]
    result = {
        "heatmap_layer": layer,
        "heatmap_region": region,
        "heatmap_threshold": thr,
        "validation": {
            "images": len(images),
            "agent_refined_corloc": best,
            "hits": {setting_key(k): round(v * len(images)) for k, v in scores.items()},
        },
        "rule": "best refined CorLoc of the agent's boxes on the calibration's validation subset",
    }
    write_json(path, result)
    log(
        f"refinement: heat-map {layer}/{region}@{thr:.1f} (agent refined CorLoc {best:.0f} on "
        f"{len(images)} validation images) -> {relpath(path)}"
    )
    return result


@dataclass(frozen=True)
class RefinementArgs:
    """Re-choose a trained agent's refinement setting (refinement.json) without retraining it."""

    class_name: str = field(default="dog", metadata={"flags": ("--class",)})
    """Class of the agent."""
    dataset: str = "animals"
    """Dataset: animals (embedded), voc2007, voc2012 or a VOC-layout folder."""
    root: str | None = None
    """Dataset folder overriding the default location of ``dataset``."""
    checkpoint: str | None = None
    """Classifier checkpoint (default: runs/<dataset>/classifier.pt)."""
    out: str | None = None
    """Run folder of the agent (default: runs/<dataset>/<class>)."""
    device: str = "cpu"
    """Torch device."""


def rechoose_refinement(args: RefinementArgs) -> dict | None:
    """Run :func:`choose_refinement` again for a trained agent (e.g. one trained before
    ``refinement.json`` held the validation table), at the δ it was trained with."""
    run_dir = Path(args.out) if args.out else paths.agent_dir(args.dataset, args.class_name)
    zip_path = trained_agent(args.dataset, args.class_name, run_dir / "agent.zip")
    train_split, _ = splits(args.dataset)
    data = open_split(args.dataset, args.root, train_split)
    check_class(data, args.class_name, args.dataset)
    try:
        delta = float(json.loads((run_dir / "config.json").read_text())["delta"])
    except (OSError, ValueError, KeyError, TypeError):
        delta = resolve_delta(args.dataset, args.class_name, None)
    world = CutWorld(
        args.dataset,
        train_split,
        args.class_name,
        args.checkpoint,
        args.root,
        args.device,
        data=data,
    )
    model = DQN.load(zip_path, device=args.device)
    return choose_refinement(model, world, delta, run_dir / REFINEMENT_FILE)


def train_agent(args: AgentArgs) -> Path:
    """Train (or resume) one class's agent; return the path of the final ``agent.zip``."""
    return fit_agent(args)[1]


def fit_agent(args: AgentArgs) -> tuple[DQN, Path]:
    """:func:`train_agent` that also returns the trained model."""
    args = args.resolved()
    assert args.epochs and args.decay_epochs and args.lr_start and args.lr_end
    if not 0 <= args.average_last <= args.epochs:
        raise ValueError(
            f"average_last={args.average_last}: expected 0..{args.epochs} (the epochs trained)"
        )
    _check_member_seed(args)
    train_split, _ = splits(args.dataset)
    data = open_split(args.dataset, args.root, train_split)
    check_class(data, args.class_name, args.dataset)
    ckpt = Path(args.checkpoint) if args.checkpoint else paths.classifier_path(args.dataset)
    hint = "make train-classifier" + (
        "" if args.dataset == "animals" else f" DATASET={args.dataset}"
    )
    classifier, _ = load_classifier(ckpt, args.device, hint=hint)
    run_dir = args.run_dir()
    resume = last_checkpoint(run_dir) if args.resume else None
    if args.resume and resume is None:
        raise CheckpointError(
            f"--resume: no epoch checkpoint in {run_dir / 'checkpoints'}; train without --resume"
        )
    seed_everything(args.seed, args.threads)
    venv = make_vec_env(args, train_split, classifier)
    venv.seed(args.seed)
    env = VecMonitor(venv)
    clock = EpochClock(len(venv.world.positives), resume[1]["episodes"] if resume else 0)
    delta = venv.delta
    tb = str(run_dir / "tb")
    algo, policy = algorithm(args)
    if resume:
        model = algo.load(resume[0], env=env, device=args.device, tensorboard_log=tb)
        if args.save_replay_buffer and (run_dir / "checkpoints" / "replay_buffer.pkl").is_file():
            model.load_replay_buffer(run_dir / "checkpoints" / "replay_buffer.pkl")
        log(
            f"resuming {relpath(resume[0])} at epoch {resume[1]['epoch']}, {model.num_timesteps} steps"
        )
    else:
        model = algo(
            policy,
            env,
            learning_rate=args.lr_start,
            buffer_size=args.buffer_size,
            learning_starts=args.learning_starts,
            batch_size=args.batch_size,
            gamma=args.gamma,
            train_freq=args.train_freq,
            gradient_steps=args.gradient_steps,
            target_update_interval=args.target_update,
            exploration_initial_eps=1.0,
            exploration_final_eps=args.eps_end,
            policy_kwargs=policy_kwargs(args),
            tensorboard_log=tb,
            seed=args.seed,
            device=args.device,
            verbose=0,
        )
    model.exploration_schedule = EpsilonSchedule(clock, args.decay_epochs, args.eps_end)
    model.lr_schedule = LrSchedule(clock, args.decay_epochs, args.lr_start, args.lr_end)
    callback = EpochCallback(clock, args.epochs, run_dir, args.save_replay_buffer)
    remaining = args.epochs * len(venv.world.positives) * 20  # an upper bound: the callback stops
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "args": dataclasses.asdict(args),
        "delta": delta,
        "classifier": str(ckpt),
        "images": len(venv.world.positives),
    }
    write_json(run_dir / "config.json", config)
    t0 = time.monotonic()
    model.learn(
        total_timesteps=remaining,
        callback=callback,
        tb_log_name="dqn",
        reset_num_timesteps=resume is None,
        progress_bar=args.progress,
    )
    final = run_dir / "agent.zip"
    if args.average_last:
        first = args.epochs - args.average_last + 1
        average_checkpoints(model, run_dir, range(first, args.epochs + 1))
        log(f"agent.zip = mean weights of epochs {first}-{args.epochs}")
    with atomic_path(final, suffix=".zip") as tmp:
        model.save(tmp)
    seconds = time.monotonic() - t0
    choose_refinement(model, venv.world, delta, run_dir / REFINEMENT_FILE)
    config.update(timesteps=model.num_timesteps, epochs=clock.epoch, seconds=round(seconds, 1))
    write_json(run_dir / "config.json", config)
    log(
        f"agent {args.class_name}: {model.num_timesteps} steps, {clock.epoch:.1f} epochs in "
        f"{seconds:.0f} s -> {relpath(final)}"
    )
    return model, final
