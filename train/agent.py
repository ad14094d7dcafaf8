"""Stage 3: the SB3 DQN agent of one class (paper §2.2, §3.1): ``python -m train agent``.

Policy (:mod:`cutbg_env.qnet`): two trainable adaptation convolutions over the frozen
classifier's senior feature map, concatenated with the one-hot action history and (by default)
the env's ``score`` observation, then a Q head with a validity logit per cut, trained by
:class:`~cutbg_env.dqn.CutDQN` with Double-DQN targets and the validity loss. Schedules follow
the paper in epochs (:mod:`train.schedules`).

Departures from the paper, each switchable and measured (docs/experiments.md): the ``score``
observation (``--no-observe-score`` = the paper's state), Double DQN (``--no-double-q``) and the
validity head (``--no-validity-head`` = an MLP Q head).

After training, the agent runs on the calibration's validation subset and writes the refined
CorLoc of every heat-map setting to ``refinement.json`` (:func:`choose_refinement`): a record of
how its own boxes refine, which evaluation uses only with a calibration file older than the
dataset-wide setting (:func:`cutbg_env.refine.evaluation_settings`).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro
from stable_baselines3.common.vec_env import VecMonitor
from tqdm import tqdm

from cutbg_env import checks, paths, runs
from cutbg_env.backbone import load_classifier
from cutbg_env.calibration import resolve_delta, validation_images, validation_truth
from cutbg_env.cli import StageArgs
from cutbg_env.data import dataset_splits, open_split
from cutbg_env.dqn import CutDQN, DQNArgs, per_dataset
from cutbg_env.errors import CheckpointError, OptionError, OutputError
from cutbg_env.io import (
    atomic_path,
    check_writable,
    file_sha256,
    log,
    relpath,
    remove_stale_temps,
    write_json,
)
from cutbg_env.qnet import assemble_members
from cutbg_env.refine import REFINEMENT_FILE, refinement_scores, write_refinement
from cutbg_env.rollout import observation_options, rollout, sb3_policy
from cutbg_env.vec_env import BatchedCutBackgroundVecEnv
from cutbg_env.world import CutWorld
from train.common import seed_everything
from train.schedules import (
    EpochCallback,
    EpochClock,
    EpsilonSchedule,
    LrSchedule,
    last_checkpoint,
    load_checkpoint,
)


@dataclass(frozen=True)
class AgentArgs(StageArgs, DQNArgs):
    """Train the DQN agent of one class on the batched CutBackground env."""

    class_name: Annotated[str, tyro.conf.arg(aliases=("--class",))] = "dog"
    """Class the agent localizes."""
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
    n_envs: int = 16
    """Episodes stepped together in one batched forward."""
    crop_cache_mb: float = 2048.0
    """Memory (MiB, per training process) for the scored crops of the training images, so a
    crop revisited in a later episode costs no classifier forward (0 = none; dog's 30 epochs
    at 1/8 width fill about 0.9 GiB)."""
    delta: float | None = None
    """Score-drop threshold δ (default: the calibrated value of the class)."""
    eta: float = 3.0
    """Reward magnitude η of the stop action."""
    max_images: int | None = None
    """Train on the first N images of the class only (quick experiments, tests)."""
    resume: bool = False
    """Continue from the last epoch checkpoint in the run folder."""
    save_replay_buffer: bool = False
    """Also save the replay buffer with each epoch checkpoint."""
    progress: bool = True
    """Show a progress bar of the planned episodes (epochs × the class's images)."""
    seed: int = 0
    """Seed of the env order, exploration and initialisation; seed N > 0 trains into
    runs/<dataset>/<class>/seeds/seed_N."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default; each member process uses one when several run
    side by side)."""
    workers: int = 0
    """Member trainings run side by side in this many processes (0 = one per CPU core, at most
    --members)."""

    force: bool = False
    """Retrain a run folder that holds a finished or interrupted run (its files are removed
    first)."""

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        checks.integer("--epochs", self.epochs, 0)
        checks.integer("--decay-epochs", self.decay_epochs, 0)
        checks.positive("--lr-start", self.lr_start)
        checks.positive("--lr-end", self.lr_end)
        checks.real("--eps-end", self.eps_end, 0.0, 1.0)
        checks.integer("--n-envs", self.n_envs, 1)
        checks.real("--crop-cache-mb", self.crop_cache_mb, 0.0)
        checks.delta("--delta", self.delta)
        checks.positive("--eta", self.eta)
        checks.integer("--max-images", self.max_images, 1)
        checks.integer("--seed", self.seed, 0)
        checks.integer("--threads", self.threads, 0)
        checks.integer("--workers", self.workers, 0)
        super().__post_init__()

    def resolved(self) -> AgentArgs:
        """Fill the dataset-dependent defaults (``None`` fields; the paper's values on VOC)."""
        data = self.dataset
        epochs = per_dataset(self.epochs, data, 50, 30)
        return dataclasses.replace(
            self.resolved_for(data),
            epochs=epochs,
            decay_epochs=per_dataset(self.decay_epochs, data, 10, min(8, epochs)),
            lr_start=per_dataset(self.lr_start, data, 1e-5, 1e-3),
            lr_end=per_dataset(self.lr_end, data, 1e-6, 1e-4),
        )

    def run_dir(self) -> Path:
        """``out``, else the seed's run folder (:func:`~cutbg_env.paths.seed_dir`)."""
        if self.out:
            return Path(self.out)
        return paths.seed_dir(self.dataset, self.class_name, self.seed)


def class_delta(args: AgentArgs) -> float:
    """δ of the class: ``--delta``, else the one calibrated with the stage's classifier; the
    shipped calibration's when the stage runs the shipped classifier and the runs' calibration
    lacks the class (or calibrated it with another classifier)."""
    return resolve_delta(args.dataset, args.class_name, args.delta, args.classifier_file())


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
        crop_cache_mb=args.crop_cache_mb,
    )
    world.require_positives()  # one line naming the split and the class, not torch's error
    world.precompute()  # batched lower + whole-map passes now, instead of one per first reset
    return BatchedCutBackgroundVecEnv(
        args.n_envs,
        world=world,
        delta=class_delta(args),
        eta=args.eta,
        obs_dtype=args.obs_dtype,
        observe_score=args.observe_score,
    )


def choose_refinement(
    model: Any, world: CutWorld, delta: float, path: Path, run_id: str | None = None
) -> dict | None:
    """Score every refinement setting on the agent's own boxes and write ``path``.

    The calibration stage chooses a setting on greedy-cut boxes, before any agent exists; an
    agent's boxes are looser than those, and the refinement is there to tighten them. So, after
    training, the agent runs on the calibration's validation subset (the only images whose boxes
    training may use) and every setting's hit count goes to ``refinement.json``
    (:func:`~cutbg_env.refine.write_refinement`). Evaluation uses the dataset's setting pooled at
    calibration instead, less noisy than one agent's ~20 images, and reads these tables only
    when the calibration file has no hit tables. Returns the written dict (``None`` when no
    validation image contains the class).
    """
    images = validation_images(world)
    if not images:
        log(f"refinement: no validation image of {world.class_name}; keeping calibration.json's")
        return None
    out = rollout(world, images, sb3_policy(model), delta, **observation_options(model))
    crops = {i: loc.crop for i, (loc, _) in zip(images, out, strict=True)}
    scores = refinement_scores(world, crops, validation_truth(world, images))
    result = write_refinement(path, scores, len(images), run_id)
    log(
        f"refinement: heat-map {result['heatmap_layer']}/{result['heatmap_region']}"
        f"@{result['heatmap_threshold']:.1f} (agent refined CorLoc "
        f"{result['validation']['agent_refined_corloc']:.0f} on {len(images)} validation images)"
        f" -> {relpath(path)}"
    )
    return result


def train_agent(args: AgentArgs) -> Path:
    """Train (or resume) one class's agent; return the path of the final ``agent.zip``."""
    return fit_agent(args)[1]


def fit_agent(args: AgentArgs) -> tuple[CutDQN, Path]:
    """:func:`train_agent` that also returns the trained model.

    The run folder belongs to this run while it trains (:func:`~cutbg_env.runs.run_lock`): a
    second training of the folder is refused, naming this one. A folder that holds a run is
    continued with ``--resume`` or started over with ``--force`` (its run files are removed
    first), never mixed; temp files of killed processes in it are removed."""
    args = args.resolved()
    run_dir = args.run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--out {run_dir} is a file, not a folder: choose another --out")
    train_split, _ = dataset_splits(args.dataset)
    data = open_split(args.dataset, train_split, args.root)
    data.class_index(args.class_name)  # UnknownClassError listing the classes
    ckpt = args.classifier_file()
    hint = paths.make_command("train-classifier", args.dataset)
    classifier, _ = load_classifier(ckpt, args.device, hint=hint)
    check_writable(run_dir, "--out")
    run_id = runs.new_run_id()
    with runs.run_lock(run_dir, run_id):  # a second training of the folder stops here
        removed = remove_stale_temps(run_dir, recursive=True)
        if removed:
            log(f"removed {len(removed)} temp file(s) of killed runs in {relpath(run_dir)}")
        if args.members > 1:
            return _fit_members(args, data, classifier, ckpt, run_dir, run_id)
        resume = last_checkpoint(run_dir) if args.resume else None
        if args.resume and resume is None:
            raise CheckpointError(
                f"--resume: no epoch checkpoint in {run_dir / 'checkpoints'}; train without "
                "--resume"
            )
        if resume is not None:
            fix = "start it over with --force"
            run_id = runs.check_run(run_dir, fix) or run_id
        else:
            start_over(run_dir, args.force)
        return _fit(args, data, classifier, ckpt, run_dir, run_id, resume)


def start_over(run_dir: Path, force: bool) -> None:
    """Make way for a new run in ``run_dir``: nothing to do when it holds none; with ``force``
    remove the run it holds; else an :class:`OptionError` naming ``--force`` / ``--resume``."""
    state = runs.run_state(run_dir)
    if state == "empty":
        return
    if not force:
        what = (
            "a finished run: retrain it with --force (its files are replaced)"
            if state == "finished"
            else "an interrupted run: continue it with --resume, or start it over with --force"
        )
        raise OptionError(f"{run_dir} holds {what}; or train into another --out")
    log(f"--force: removing the {state} run in {relpath(run_dir)}")
    runs.clear_run(run_dir)


def save_agent(model: CutDQN, run_dir: Path, run_id: str) -> Path:
    """Write the run's final ``agent.zip`` atomically, stamped with ``run_id``; its path."""
    final = run_dir / paths.AGENT_FILE
    with atomic_path(final, suffix=".zip") as tmp:
        model.save(tmp)
        runs.stamp_zip(tmp, run_id)
    return final


def member_args(args: AgentArgs, run_dir: Path, k: int, threads: int) -> AgentArgs:
    """The arguments of member ``k`` of a ``--members K`` agent of seed ``s``: a one-member
    training of seed ``s·K + k`` into ``<run>/members/m<k>/`` (so the members of different seeds
    never share a seed)."""
    member_dir = run_dir / "members" / f"m{k}"
    state = runs.run_state(member_dir)
    return dataclasses.replace(
        args,
        members=1,
        seed=args.seed * args.members + k,
        out=str(member_dir),
        resume=args.resume and state == "interrupted" and last_checkpoint(member_dir) is not None,
        force=not args.resume,
        progress=False,
        threads=threads,
        workers=0,
    )


def join(args: AgentArgs, env: Any, parts: list[CutDQN], timesteps: int) -> CutDQN:
    """One agent on ``env`` whose Q-network holds every member of ``parts`` (in order) and acts
    on their mean Q-values (:func:`~cutbg_env.qnet.assemble_members`); ``timesteps``: the env
    steps its training took."""
    members = sum(p.q_net.members for p in parts)
    model = dataclasses.replace(args, members=members).build(
        env, seed=args.seed, device=args.device, verbose=0
    )
    assemble_members(model.q_net, [p.q_net for p in parts])
    assemble_members(model.q_net_target, [p.q_net_target for p in parts])
    model.num_timesteps = timesteps
    return model


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """Make this worker process exit (status 3) within ``every`` seconds of its parent's death.

    A worker's initializer (:func:`_fit_members`): a driver killed with SIGTERM or SIGKILL runs
    no clean-up, and its member workers would otherwise train on, orphaned, for minutes and write
    into a run folder nobody owns. A daemon thread polls ``os.getppid()`` (a dead parent's
    children are re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train_member(args: AgentArgs) -> str:
    """One member's training (a worker process's job): the path of its ``agent.zip``."""
    return str(fit_agent(args)[1])


def _fit_members(
    args: AgentArgs, data: Any, classifier: Any, ckpt: Path, run_dir: Path, run_id: str
) -> tuple[CutDQN, Path]:
    """Train ``--members`` independent DQNs (in ``--workers`` processes side by side), then join
    them into one agent (:class:`~cutbg_env.qnet.ValidityQNetwork` with ``members``) that acts on
    their mean Q-values. With ``--resume`` finished members are kept and interrupted ones
    continued; otherwise every member starts over."""
    if args.resume:
        if not (run_dir / "members").is_dir():
            raise CheckpointError(
                f"--resume: no member run in {run_dir / 'members'}; train without --resume"
            )
        run_id = runs.check_run(run_dir, "start it over with --force") or run_id
    else:
        start_over(run_dir, args.force)
    # the env of the joined agent, before any member: a class without images fails in one line
    venv = make_vec_env(dataclasses.replace(args, n_envs=1), data.split, classifier)
    workers = min(args.members, args.workers or os.cpu_count() or 1)
    threads = 1 if workers > 1 else args.threads
    jobs = [member_args(args, run_dir, k, threads) for k in range(args.members)]
    todo = [j for j in jobs if not (args.resume and runs.run_state(Path(j.out)) == "finished")]
    config = {
        "run_id": run_id,
        "finished": False,
        "args": dataclasses.asdict(args),
        "delta": venv.delta,
        "classifier": str(ckpt),
        "classifier_sha256": file_sha256(ckpt),
        "members": [relpath(Path(j.out)) for j in jobs],
    }
    write_json(run_dir / paths.CONFIG_FILE, config)
    log(
        f"agent {args.class_name}: {args.members} members (seeds "
        f"{', '.join(str(j.seed) for j in jobs)}), {len(todo)} to train, {workers} at a time"
    )
    t0 = time.monotonic()
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc="members",
        unit="member",
        disable=not args.progress,
    )
    if workers > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")  # torch is not fork-safe once threaded
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            for future in as_completed([pool.submit(_train_member, j) for j in todo]):
                future.result()
                bar.update()
    else:
        for j in todo:
            _train_member(j)
            bar.update()
    bar.close()
    seconds = time.monotonic() - t0
    parts = [CutDQN.load(Path(j.out) / paths.AGENT_FILE, device=args.device) for j in jobs]
    model = join(args, venv, parts, sum(p.num_timesteps for p in parts))
    final = save_agent(model, run_dir, run_id)
    choose_refinement(model, venv.world, venv.delta, run_dir / REFINEMENT_FILE, run_id)
    member_seconds = []
    for j in jobs:
        member_config = json.loads((Path(j.out) / paths.CONFIG_FILE).read_text(encoding="utf-8"))
        member_seconds.append(member_config.get("seconds"))
    config.update(
        finished=True,
        member_seconds=member_seconds,
        images=len(venv.world.positives),
        timesteps=model.num_timesteps,
        epochs=args.epochs,
        seconds=round(seconds, 1),
    )
    write_json(run_dir / paths.CONFIG_FILE, config)
    log(
        f"agent {args.class_name}: {args.members} members, {model.num_timesteps} steps in "
        f"{seconds:.0f} s -> {relpath(final)}"
    )
    return model, final


def _fit(
    args: AgentArgs,
    data: Any,
    classifier: Any,
    ckpt: Path,
    run_dir: Path,
    run_id: str,
    resume: tuple[Path, dict] | None,
) -> tuple[CutDQN, Path]:
    """The training of :func:`fit_agent`, inside the run folder's lock."""
    train_split = data.split
    seed_everything(args.seed, args.threads)
    venv = make_vec_env(args, train_split, classifier)
    venv.seed(args.seed)
    env = VecMonitor(venv)
    clock = EpochClock(len(venv.world.positives), resume[1]["episodes"] if resume else 0)
    delta = venv.delta
    tb = str(run_dir / "tb")
    if resume:
        model = load_checkpoint(resume[0], env=env, device=args.device, tensorboard_log=tb)
        if args.save_replay_buffer and (run_dir / "checkpoints" / "replay_buffer.pkl").is_file():
            model.load_replay_buffer(run_dir / "checkpoints" / "replay_buffer.pkl")
        log(
            f"resuming {relpath(resume[0])} at epoch {resume[1]['epoch']}, {model.num_timesteps} steps"
        )
    else:
        model = args.build(
            env,
            learning_rate=args.lr_start,
            exploration_initial_eps=1.0,
            exploration_final_eps=args.eps_end,
            tensorboard_log=tb,
            seed=args.seed,
            device=args.device,
            verbose=0,
        )
    model.exploration_schedule = EpsilonSchedule(clock, args.decay_epochs, args.eps_end)
    model.lr_schedule = LrSchedule(clock, args.decay_epochs, args.lr_start, args.lr_end)
    callback = EpochCallback(
        clock, args.epochs, run_dir, args.save_replay_buffer, run_id=run_id, progress=args.progress
    )
    remaining = args.epochs * len(venv.world.positives) * 20  # an upper bound: the callback stops
    config = {
        "run_id": run_id,
        "finished": False,
        "args": dataclasses.asdict(args),
        "delta": delta,
        "classifier": str(ckpt),
        "classifier_sha256": file_sha256(ckpt),
        "images": len(venv.world.positives),
    }
    write_json(run_dir / paths.CONFIG_FILE, config)
    t0 = time.monotonic()
    try:
        model.learn(
            total_timesteps=remaining,
            callback=callback,
            tb_log_name="dqn",
            reset_num_timesteps=resume is None,
            progress_bar=False,  # the callback's bar counts the planned episodes
        )
    finally:
        callback.close()
    seconds = time.monotonic() - t0
    world = venv.world
    scored, cached = world.crop_misses, world.crop_hits  # training's, before the validation run
    final = save_agent(model, run_dir, run_id)
    choose_refinement(model, world, delta, run_dir / REFINEMENT_FILE, run_id)
    config.update(
        finished=True,
        timesteps=model.num_timesteps,
        epochs=clock.epoch,
        seconds=round(seconds, 1),
        crops_scored=scored,
        crops_from_cache=cached,
    )
    write_json(run_dir / paths.CONFIG_FILE, config)
    log(
        f"agent {args.class_name}: {model.num_timesteps} steps, {clock.epoch:.1f} epochs in "
        f"{seconds:.0f} s ({scored} crops scored, {cached} from the crop cache) -> "
        f"{relpath(final)}"
    )
    return model, final
