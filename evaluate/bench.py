"""``make bench`` / ``python -m evaluate.bench``: throughput where it matters, in one run.

Measures on the given device (``--device cpu|cuda``), writing ``results/bench.json`` and printing
a table:

* ``ceiling_forwards_per_s``: raw ``upper`` + ``head`` forwards/s on real mid-level maps, at
  batch 1 and at the batched env's batch size (the ceilings the env steps are compared with),
  and at the larger batches of greedy cutting and ``exhaustive`` (128 = the world's CPU
  ``forward_batch``, and 512), which show where a forward is best sliced;
* ``env_steps_per_s``: random-policy steps/s of the single env (``gym.make``) and of the batched
  VecEnv with ``n_envs`` episodes;
* ``dqn_transitions_per_s``: SB3 DQN ``learn`` throughput on the batched env;
* ``localize_ms``: per-image latency of the greedy agent (batch 1; the trained agent of the class
  when ``runs/animals/<class>/agent.zip`` exists, else the DQN this bench trains) and of
  ``exhaustive`` (2,025 windows, batched), with ``calls_per_image``;
* ``replay_buffer_bytes`` of the default agent settings.

CPU: the reduced-width VGG-16 (112 px) of the embedded default, the classifier every stage finds
(``runs/animals/classifier.pt``, else the shipped one). CUDA: the real VGG-16 (224 px, random
weights unless a checkpoint is given, bf16 autocast). The embedded dataset provides the
images in both cases.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecMonitor

import cutbg_env  # noqa: F401 - registers the env
from cutbg_env import paths
from cutbg_env.backbone import BackboneConfig, Classifier, load_classifier, save_classifier
from cutbg_env.cli import command_main
from cutbg_env.data import VOCDataset, resolve_dataset
from cutbg_env.dqn import DQNArgs
from cutbg_env.io import write_json
from cutbg_env.localize import exhaustive, exhaustive_windows
from cutbg_env.rollout import observation_options, rollout, sb3_policy
from cutbg_env.vec_env import BatchedCutBackgroundVecEnv
from cutbg_env.world import CutWorld, classifier_file

LARGE_BATCHES = (128, 512)
"""Batch sizes of the forwards of greedy cutting and ``exhaustive``, measured beside the env's."""


@dataclass(frozen=True)
class BenchArgs:
    """Benchmark the env, the batched env, DQN training and localization."""

    device: str = "cpu"
    """cpu (reduced-width VGG-16) or cuda (VGG-16)."""
    checkpoint: str | None = None
    """Classifier checkpoint (default on CPU: runs/animals/classifier.pt, else the shipped one, as
    every stage; on CUDA: VGG-16 with random weights)."""
    class_name: str = "dog"
    """Class of the env episodes."""
    n_envs: int | None = None
    """Episodes of the batched env (default: 32 on CPU, 256 on CUDA)."""
    seconds: float = 10.0
    """Time spent on each throughput measurement (in 5 alternating rounds)."""
    out: str = "results/bench.json"
    """Where the JSON goes."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, seconds: float, device: torch.device, per_call: int = 1) -> float:
    """Calls of ``fn`` per second (× ``per_call``), after a warm-up, over ``seconds``."""
    for _ in range(3):
        fn()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    _sync(device)
    return n * per_call / (time.perf_counter() - t0)


def _interleaved(
    fns: dict[str, tuple], seconds: float, device: torch.device, rounds: int = 5
) -> dict[str, float]:
    """Median rate of each ``name -> (fn, per_call)`` over ``rounds`` alternating measurements of
    ``seconds / rounds`` each."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, (fn, per_call) in fns.items():
            samples[name].append(_rate(fn, seconds / rounds, device, per_call))
    return {k: float(np.median(v)) for k, v in samples.items()}


def _classifier(args: BenchArgs, classes: tuple[str, ...], tmp: Path) -> str:
    if args.checkpoint:
        return args.checkpoint
    trained = classifier_file("animals")  # runs/animals/classifier.pt, else the shipped one
    if args.device == "cpu" and trained.is_file():
        return str(trained)
    config = BackboneConfig() if args.device == "cpu" else BackboneConfig.voc(weights=None)
    torch.manual_seed(0)
    path = tmp / "classifier.pt"
    save_classifier(Classifier(config, classes), path)
    return str(path)


def bench(args: BenchArgs) -> dict:
    """Run every measurement and write the JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_envs = args.n_envs or (32 if device.type == "cpu" else 256)
    data = VOCDataset(resolve_dataset("animals"), "trainval")
    with tempfile.TemporaryDirectory() as tmpdir:
        ckpt = _classifier(args, data.classes, Path(tmpdir))
        model, _ = load_classifier(ckpt, device)
    world = CutWorld("animals", "trainval", args.class_name, device=args.device, model=model)
    world.precompute()
    cfg = model.config
    mids = world.mid_maps(world.positives[:n_envs] * (1 + n_envs // len(world.positives)))[:n_envs]
    x = mids.to(next(model.parameters()).dtype)
    large = {b: x.repeat(-(-b // n_envs), 1, 1, 1)[:b] for b in LARGE_BATCHES}

    def raw(batch: torch.Tensor) -> None:
        with torch.inference_mode(), world.autocast():
            model.head(model.upper(batch))

    kwargs = {"class_name": args.class_name, "delta": 0.1, "device": args.device}
    single = gym.make("CutBackground-v0", world=world, **kwargs)
    rng = np.random.default_rng(0)
    single.reset(seed=0)

    def single_step() -> None:
        _, _, term, trunc, _ = single.step(int(rng.integers(0, 13)))
        if term or trunc:
            single.reset()

    venv = BatchedCutBackgroundVecEnv(n_envs, world=world, **kwargs)
    venv.seed(0)
    venv.reset()

    def batched_step() -> None:
        venv.step(rng.integers(0, 13, size=n_envs))

    # Each env rate and its ceiling are measured in alternating short rounds and the medians
    # kept, so that drift of a shared machine's speed hits both alike.
    rates = _interleaved(
        {
            "ceiling_1": (lambda: raw(x[:1]), 1),
            "single": (single_step, 1),
            "ceiling_n": (lambda: raw(x), n_envs),
            "batched": (batched_step, n_envs),
            **{f"ceiling_{b}": (lambda b=b: raw(large[b]), b) for b in LARGE_BATCHES},
        },
        args.seconds,
        device,
    )
    ceiling = {"batch_1": rates["ceiling_1"], f"batch_{n_envs}": rates["ceiling_n"]}
    ceiling.update({f"batch_{b}": rates[f"ceiling_{b}"] for b in LARGE_BATCHES})
    env_steps = {"single": rates["single"], "batched": rates["batched"], "n_envs": n_envs}
    voc = device.type == "cuda"
    agent_args = DQNArgs().resolved_for("voc2007" if voc else "animals")
    # one member's DQN as `make train` trains it: same algorithm, observation and Q-network (the
    # default agent is --members such trainings, side by side)
    train_venv = BatchedCutBackgroundVecEnv(
        n_envs, world=world, observe_score=agent_args.observe_score, **kwargs
    )
    dqn = dataclasses.replace(agent_args, buffer_size=20_000, members=1).build(
        VecMonitor(train_venv), device=args.device
    )
    # a logger that writes nothing: SB3's default for a model without tensorboard_log makes an
    # empty /tmp/SB3-<time> folder at every learn()
    dqn.set_logger(Logger(folder=None, output_formats=[]))
    dqn.learn(2000)  # warm-up, fills learning_starts
    steps = max(4000, int(env_steps["batched"] * args.seconds * 0.5) // n_envs * n_envs)
    t0 = time.perf_counter()
    dqn.learn(steps, reset_num_timesteps=False)
    _sync(device)
    dqn_rate = steps / (time.perf_counter() - t0)
    # localization latency, one image at a time
    images = world.positives[:20]
    trained = paths.agent_dir("animals", args.class_name) / paths.AGENT_FILE
    use_trained = device.type == "cpu" and trained.is_file() and not args.checkpoint
    agent = DQN.load(trained, device=args.device) if use_trained else dqn
    policy, options = sb3_policy(agent), observation_options(agent)
    rollout(world, images[:2], policy, 0.1, chunk=1, **options)
    _sync(device)
    t0 = time.perf_counter()
    res = rollout(world, images, policy, 0.1, chunk=1, **options)
    _sync(device)
    agent_ms = 1000 * (time.perf_counter() - t0) / len(images)
    windows = exhaustive_windows()
    exhaustive(world, images[:1], windows)
    _sync(device)
    t0 = time.perf_counter()
    exhaustive(world, images[:5], windows)
    _sync(device)
    exhaustive_ms = 1000 * (time.perf_counter() - t0) / 5
    spaces = dict(train_venv.observation_space.spaces)  # type: ignore[attr-defined]
    values = {k: int(np.prod(s.shape)) for k, s in spaces.items()}
    if voc:  # VOC's 512-channel features
        values["features"] = 512 * 49
    per_obs = sum(values.values()) * np.dtype(agent_args.obs_dtype).itemsize
    buffer_bytes = int(agent_args.buffer_size) * (
        2 * per_obs + 8 + 4 + 4 + 4
    )  # obs, next, a, r, d, t
    result = {
        "device": torch.cuda.get_device_name(device) if voc else "cpu",
        "torch_threads": torch.get_num_threads(),
        "backbone": dataclasses.asdict(cfg),
        "dtype": "bfloat16 autocast" if voc else "float32",
        "batch_sizes": {"ceiling": [1, n_envs, *LARGE_BATCHES], "n_envs": n_envs},
        "ceiling_forwards_per_s": ceiling,
        "env_steps_per_s": env_steps,
        "env_vs_ceiling": {
            "single": env_steps["single"] / ceiling["batch_1"],
            "batched": env_steps["batched"] / ceiling[f"batch_{n_envs}"],
        },
        "dqn_transitions_per_s": dqn_rate,
        "localize_ms": {
            "agent": agent_ms,
            "exhaustive": exhaustive_ms,
            "speedup": exhaustive_ms / agent_ms,
        },
        "agent_for_latency": str(trained) if use_trained else "the DQN trained by this bench",
        "calls_per_image": {
            "agent": float(np.mean([loc.calls for loc, _ in res])),
            "exhaustive": len(windows),
        },
        "replay_buffer_bytes": {
            "default_buffer_size": agent_args.buffer_size,
            "obs_dtype": agent_args.obs_dtype,
            "bytes_per_observation": per_obs,
            "total": buffer_bytes,
        },
    }
    write_json(args.out, result)
    print(table(result))
    return result


def table(r: dict) -> str:
    """A short printed table of a bench result."""
    n = r["env_steps_per_s"]["n_envs"]
    c = r["ceiling_forwards_per_s"]
    rows = [
        ("device", r["device"]),
        ("ceiling forwards/s, batch 1", f"{c['batch_1']:.0f}"),
        *(
            (f"ceiling forwards/s, batch {b}", f"{c[f'batch_{b}']:.0f}")
            for b in r["batch_sizes"]["ceiling"][1:]
        ),
        (
            "env steps/s, single",
            f"{r['env_steps_per_s']['single']:.0f} "
            f"({r['env_vs_ceiling']['single']:.2f} of ceiling)",
        ),
        (
            f"env steps/s, batched x{n}",
            f"{r['env_steps_per_s']['batched']:.0f} "
            f"({r['env_vs_ceiling']['batched']:.2f} of ceiling)",
        ),
        ("DQN transitions/s", f"{r['dqn_transitions_per_s']:.0f}"),
        (
            "agent ms/image",
            f"{r['localize_ms']['agent']:.2f} ({r['calls_per_image']['agent']:.1f} calls)",
        ),
        (
            "exhaustive ms/image",
            f"{r['localize_ms']['exhaustive']:.1f} ({r['calls_per_image']['exhaustive']} calls)",
        ),
        ("replay buffer (default)", f"{r['replay_buffer_bytes']['total'] / 2**30:.2f} GiB"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m evaluate.bench", __doc__, BenchArgs, bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
