"""Training schedules in *epochs* (one epoch = one pass over the class's training images that
contain it, paper §3.1), and the callback that counts them, logs and checkpoints each epoch.

RMSprop's learning rate decays from ``lr_start`` to ``lr_end`` over the first ``decay_epochs``
and stays constant after; ε goes from 1.0 down to ``eps_end`` in steps of 0.1 over the same
epochs. SB3 calls a schedule with its own progress fraction; these ignore it and read the
shared :class:`EpochClock` instead.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from cutbg_env.errors import CheckpointError, reason
from cutbg_env.io import atomic_path, write_json
from cutbg_env.runs import stamp_zip


class EpochClock:
    """Epochs done, shared by the schedules and the callback (episodes / images per epoch)."""

    def __init__(self, images: int, episodes: int = 0) -> None:
        self.images, self.episodes = images, episodes

    @property
    def epoch(self) -> float:
        return self.episodes / self.images


def checkpoint_name(epoch: int) -> str:
    """The file name of epoch ``epoch``'s checkpoint in a run's ``checkpoints/`` folder."""
    return f"epoch_{epoch:03d}.zip"


class EpsilonSchedule:
    """ε = 1.0 → ``end`` in steps of 0.1 spread evenly over ``decay`` epochs (paper §3.1);
    ``decay = 0``: ``end`` from the start."""

    def __init__(self, clock: EpochClock, decay: int, end: float) -> None:
        self.clock, self.decay, self.end = clock, decay, end

    def __call__(self, _progress_remaining: float) -> float:
        if self.decay <= 0:
            return self.end
        n_steps = round((1.0 - self.end) / 0.1)
        k = min(n_steps, math.floor(self.clock.epoch / self.decay * n_steps))
        return max(self.end, 1.0 - 0.1 * k)


class LrSchedule:
    """Learning rate decaying geometrically ``start`` → ``end`` over ``decay`` epochs, then flat;
    ``decay = 0``: ``end`` from the start."""

    def __init__(self, clock: EpochClock, decay: int, start: float, end: float) -> None:
        self.clock, self.decay, self.start, self.end = clock, decay, start, end

    def __call__(self, _progress_remaining: float) -> float:
        f = min(1.0, self.clock.epoch / self.decay) if self.decay > 0 else 1.0
        return self.start * (self.end / self.start) ** f


class EpochCallback(BaseCallback):
    """Counts episodes, logs score drops, checkpoints each epoch (keeping the newest), stops after
    the last; with ``progress``, a bar of the planned episodes (``epochs`` × images) that ends at
    100 %. Each checkpoint carries ``run_id`` (:mod:`cutbg_env.runs`)."""

    def __init__(
        self,
        clock: EpochClock,
        epochs: int,
        run_dir: Path,
        save_buffer: bool,
        run_id: str = "",
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.clock, self.epochs, self.run_dir, self.save_buffer = (
            clock,
            epochs,
            run_dir,
            save_buffer,
        )
        self.run_id = run_id
        self.drops: list[float] = []
        self.t0 = time.monotonic()
        self.planned = epochs * clock.images
        """Episodes of the whole run (the progress bar's total)."""
        self.bar = None
        if progress:
            from tqdm import tqdm

            start = min(clock.episodes, self.planned)
            self.bar = tqdm(total=self.planned, initial=start, desc="episodes", unit="ep")

    def close(self) -> None:
        """Close the progress bar (after training)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _on_step(self) -> bool:
        for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
            if done:
                before = math.floor(self.clock.epoch)
                self.clock.episodes += 1
                if self.bar is not None and self.bar.n < self.planned:
                    self.bar.update(1)
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
        with atomic_path(ckpt_dir / checkpoint_name(epoch), suffix=".zip") as tmp:
            self.model.save(tmp)
            if self.run_id:
                stamp_zip(tmp, self.run_id)
        if self.save_buffer:
            with atomic_path(ckpt_dir / "replay_buffer.pkl", suffix=".pkl") as tmp:
                self.model.save_replay_buffer(tmp)
        write_json(
            ckpt_dir / "state.json",
            {
                "run_id": self.run_id or None,
                "epoch": epoch,
                "episodes": self.clock.episodes,
                "timesteps": self.model.num_timesteps,
            },
        )
        # Only the newest epoch is needed to resume; older ones are removed once it is on disk
        # (a checkpoint of a many-headed agent is tens of MB).
        for old in ckpt_dir.glob("epoch_*.zip"):
            if old.name != checkpoint_name(epoch):
                old.unlink(missing_ok=True)


def last_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint of a run folder and its state, or ``None``.

    Raises :class:`CheckpointError` naming ``checkpoints/state.json`` when it is unreadable or
    lacks its fields (a file of a killed write is never half-written: writes are atomic)."""
    ckpt_dir = run_dir / "checkpoints"
    zips = sorted(
        (p for p in ckpt_dir.glob("epoch_*.zip") if re.fullmatch(r"epoch_\d+", p.stem)),
        key=lambda p: int(p.stem[len("epoch_") :]),
    )
    state_file = ckpt_dir / "state.json"
    if not zips or not state_file.is_file():
        return None
    fix = "delete the run's files and train it again with --force instead of --resume"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        epoch, episodes = int(state["epoch"]), int(state["episodes"])
        int(state["timesteps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{state_file} is unreadable ({reason(exc)}): {fix}") from exc
    if epoch < 0 or episodes < 0:
        raise CheckpointError(f"{state_file} holds epoch {epoch}, episodes {episodes}: {fix}")
    best = ckpt_dir / checkpoint_name(epoch)
    return (best if best.is_file() else zips[-1]), state


def load_checkpoint(path: Path, **kwargs: Any) -> Any:
    """:meth:`CutDQN.load` of an epoch checkpoint; a file that is not one raises
    :class:`CheckpointError` naming it (never torch's advice on ``weights_only``)."""
    from cutbg_env.dqn import CutDQN

    try:
        return CutDQN.load(path, **kwargs)
    except Exception as exc:  # SB3 raises whatever the zip, pickle or torch reader raised
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({reason(exc)}): train the run again with "
            "--force instead of --resume"
        ) from exc
