"""The Python steps of ``make gpu-check`` (``scripts/gpu_check.sh`` runs them between the
``make`` targets): ``python -m evaluate.gpu_check machine|classifier|agreement|table``.

* ``machine``: what the interpreter has (Python, torch and its CUDA, the card, the packages the
  project imports) -> ``machine.json``.
* ``classifier``: a random-weight classifier of the embedded dataset's classes (``--backbone
  full``: the real VGG-16 at 224 px, the GPU path's network; ``small``: the CPU default) at the
  path ``make train`` and ``make eval`` read (``$CUTBG_RUNS/animals/classifier.pt``). It measures
  speed, not quality.
* ``agreement``: the largest ``|p_bf16 - p_fp32|`` of that classifier's crop scores on a few
  images (bf16 autocast, the GPU path's precision, against float32) -> ``agreement.json``.
* ``table``: ONE markdown table of the run (the card's name; bench, train, eval and agreement
  figures against the issue's targets; each step's status and wall time) -> ``table.md``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from cutbg_env.cli import subcommand_main
from cutbg_env.errors import DataError
from cutbg_env.io import write_json, write_text

DIR = "results/gpu-check"
"""Where the check writes its files (``results/bench.json`` stays where ``make bench`` puts it)."""
TOLERANCE = 1e-2
"""Largest allowed ``|p_bf16 - p_fp32|`` (the issue's bound)."""
TARGETS = {
    "batched_steps": 20_000.0,
    "batched_vs_ceiling": 0.5,
    "dqn": 5_000.0,
    "agent_ms": 10.0,
    "speedup": 20.0,
}
"""The issue's speed targets on the GPU."""
PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "gymnasium",
    "stable-baselines3",
    "tyro",
    "opencv-python-headless",
    "opencv-python",
    "matplotlib",
    "tensorboard",
)
"""Distributions whose versions ``machine`` records (missing ones as ``None``)."""


@dataclass(frozen=True)
class MachineArgs:
    """Record what this interpreter has: Python, torch, CUDA, the card, package versions."""

    out: str = f"{DIR}/machine.json"
    """Where the JSON goes."""


@dataclass(frozen=True)
class ClassifierArgs:
    """Write a random-weight classifier of the embedded dataset's classes."""

    out: str
    """Checkpoint path (make train/eval read $CUTBG_RUNS/animals/classifier.pt)."""
    backbone: str = "full"
    """full (VGG-16, 224 px, FC head: the GPU path) or small (the CPU default)."""
    seed: int = 0
    """Seed of the random initialisation."""


@dataclass(frozen=True)
class AgreementArgs:
    """Largest |p_bf16 - p_fp32| of the classifier's crop scores on a few images."""

    checkpoint: str
    """Classifier checkpoint."""
    device: str = "cpu"
    """Torch device (cpu or cuda)."""
    class_name: Annotated[str, tyro.conf.arg(aliases=("--class",))] = "dog"
    """Class whose images and scores are compared."""
    images: int = 16
    """Positive images of the class (each with several random crops)."""
    crops: int = 8
    """Random crops per image (plus the whole map)."""
    out: str = f"{DIR}/agreement.json"
    """Where the JSON goes."""


@dataclass(frozen=True)
class TableArgs:
    """Write the run's one markdown table (and print it)."""

    dir: str = DIR
    """Folder of the check's files (steps.tsv, machine.json, agreement.json, train/, eval/)."""
    bench: str = "results/bench.json"
    """make bench's JSON."""
    out: str = f"{DIR}/table.md"
    """Where the table goes."""
    budget: int = 480
    """Seconds the steps were given in all (the script's GPU_CHECK_BUDGET)."""


def machine(args: MachineArgs) -> dict[str, Any]:
    """Collect and write what the machine has."""
    import importlib.metadata as md
    import platform
    import sys

    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
        "bf16_supported": bool(torch.cuda.is_bf16_supported()) if cuda else None,
        "cpu_threads": torch.get_num_threads(),
        "packages": versions,
    }
    write_json(args.out, info)
    print(json.dumps(info, indent=2))
    return info


def write_classifier(args: ClassifierArgs) -> Path:
    """A seeded random-weight classifier of the embedded dataset's classes at ``args.out``."""
    import torch

    from cutbg_env.backbone import BackboneConfig, Classifier, save_classifier
    from cutbg_env.data import VOCDataset, resolve_dataset

    configs = {"full": BackboneConfig.voc(weights=None), "small": BackboneConfig()}
    if args.backbone not in configs:
        raise DataError(f"--backbone {args.backbone!r}: use full or small")
    classes = VOCDataset(resolve_dataset("animals"), "trainval").classes
    torch.manual_seed(args.seed)
    model = Classifier(configs[args.backbone], classes).eval()
    save_classifier(model, args.out, meta={"random_weights": True, "seed": args.seed})
    print(f"{args.out}: random-weight {args.backbone} classifier, {len(classes)} classes")
    return Path(args.out)


def agreement(args: AgreementArgs) -> dict[str, Any]:
    """Score the same crops with and without bf16 autocast; write the largest difference."""
    import numpy as np

    from cutbg_env.backbone import load_classifier
    from cutbg_env.geometry import FULL_CROP, GRID
    from cutbg_env.world import CutWorld

    model, _ = load_classifier(args.checkpoint, args.device)
    kwargs = {"dataset": "animals", "split": "trainval", "class_name": args.class_name}
    worlds = {
        amp: CutWorld(**kwargs, device=args.device, model=model, amp=amp) for amp in (False, True)
    }
    images = worlds[False].positives[: args.images]
    if not images:
        raise DataError(f"no trainval image of {args.class_name!r}: cannot compare scores")
    rng = np.random.default_rng(0)
    per = args.crops + 1
    x0, y0 = rng.integers(0, GRID - 4, (2, len(images) * per))
    x1 = x0 + rng.integers(4, GRID + 1 - x0)
    y1 = y0 + rng.integers(4, GRID + 1 - y0)
    crops = np.stack([x0, y0, x1, y1], 1)
    crops[::per] = FULL_CROP
    indices = [i for i in images for _ in range(per)]
    scores = {}
    for amp, world in worlds.items():
        mids = world.mid_maps(indices)
        # both score paths: a few crops (slices) and the whole batch (masks)
        few = world.score_crops(mids[:8], crops[:8])[1]
        scores[amp] = np.concatenate([few, world.score_crops(mids, crops)[1]])
    diff = np.abs(scores[True] - scores[False])
    result = {
        "device": args.device,
        "backbone": "full" if model.config.width_divisor == 1 else "small",
        "images": len(images),
        "crops": len(diff),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "fp32_score_range": [float(scores[False].min()), float(scores[False].max())],
        "tolerance": TOLERANCE,
        "ok": bool(diff.max() <= TOLERANCE),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(path: str | Path) -> list[dict[str, str]]:
    """The rows of ``steps.tsv`` (``step, status, rc, seconds, limit``; ``[]`` when absent)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except OSError:
        return []


def _verdict(ok: bool | None, gpu: bool) -> str:
    if ok is None:
        return ""
    if not gpu:
        return "(CPU run: target is the GPU's)"
    return "meets" if ok else "**misses**"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def table(
    steps: list[dict[str, str]],
    machine: dict | None,
    bench: dict | None,
    agreement: dict | None,
    train: dict | None,
    evaluation: dict | None,
    budget: int = 480,
) -> str:
    """The run's one markdown table: ``| measure | target | measured | verdict |``. A missing
    input (its step failed) reads as ``—`` with the step's status."""
    status = {s["step"]: s for s in steps}
    if "bench" not in status:
        bench = None  # a results/bench.json of an earlier run is not this run's
    gpu = bool(machine and machine.get("cuda_available"))

    def missing(step: str) -> str:
        s = status.get(step)
        return f"— ({step}: {s['status']}, rc {s['rc']})" if s else f"— ({step}: not run)"

    rows: list[tuple[str, str, str, str]] = []
    if machine:
        card = machine.get("device_name") or "no GPU (CPU)"
        rows.append(
            (
                "card",
                "",
                f"{card} · torch {machine['torch']}"
                + (f" (CUDA {machine['torch_cuda']})" if machine.get("torch_cuda") else "")
                + f" · Python {machine['python']}",
                "",
            )
        )
    else:
        rows.append(("card", "", missing("machine"), ""))
    if bench:
        n = bench["env_steps_per_s"]["n_envs"]
        c = bench["ceiling_forwards_per_s"]
        batched = bench["env_steps_per_s"]["batched"]
        ratio = bench["env_vs_ceiling"]["batched"]
        rows += [
            (
                "bench: network",
                "",
                f"{bench['backbone']['input_size']} px, width 1/{bench['backbone']['width_divisor']}, {bench['dtype']}",
                "",
            ),
            ("bench: `upper`+`head` forwards/s, batch 1", "", _num(c["batch_1"]), ""),
            (f"bench: `upper`+`head` forwards/s, batch {n}", "", _num(c[f"batch_{n}"]), ""),
            (
                "bench: env steps/s, single",
                "",
                f"{_num(bench['env_steps_per_s']['single'])} ({bench['env_vs_ceiling']['single']:.2f} of ceiling)",
                "",
            ),
            (
                f"bench: env steps/s, batched ×{n}",
                "≥ 20,000 and ≥ 0.5 × ceiling",
                f"{_num(batched)} ({ratio:.2f} of ceiling)",
                _verdict(
                    batched >= TARGETS["batched_steps"] and ratio >= TARGETS["batched_vs_ceiling"],
                    gpu,
                ),
            ),
            (
                "bench: SB3 DQN transitions/s",
                "≥ 5,000",
                _num(bench["dqn_transitions_per_s"]),
                _verdict(bench["dqn_transitions_per_s"] >= TARGETS["dqn"], gpu),
            ),
            (
                "bench: agent ms/image (batch 1)",
                "≤ 10",
                f"{bench['localize_ms']['agent']:.2f} ({bench['calls_per_image']['agent']:.1f} calls)",
                _verdict(bench["localize_ms"]["agent"] <= TARGETS["agent_ms"], gpu),
            ),
            (
                "bench: exhaustive ms/image, speed-up of the agent",
                "≥ 20×",
                f"{bench['localize_ms']['exhaustive']:.1f} ({bench['calls_per_image']['exhaustive']} calls), {bench['localize_ms']['speedup']:.1f}×",
                _verdict(bench["localize_ms"]["speedup"] >= TARGETS["speedup"], gpu),
            ),
        ]
    else:
        rows.append(("bench", "", missing("bench"), ""))
    if train and "seconds" in train:
        rate = train["timesteps"] / max(train["seconds"], 1e-9)
        rows.append(
            (
                f"make train: transitions/s end to end ({train['timesteps']:,} in {train['seconds']:.0f} s, {train['args']['n_envs']} envs, {train['images']} images)",
                "≥ 5,000",
                _num(rate),
                _verdict(rate >= TARGETS["dqn"], gpu),
            )
        )
    else:
        rows.append(("make train", "", missing("train"), ""))
    if evaluation and "agent" in evaluation:
        agent, exh = evaluation["agent"], evaluation["exhaustive"]
        speedup = exh["seconds_per_image"] / max(agent["seconds_per_image"], 1e-12)
        n = evaluation["images"]
        rows += [
            (
                f"make eval: agent ms/image ({n} test images, batched)",
                "≤ 10",
                f"{1000 * agent['seconds_per_image']:.2f} ({agent['calls_per_image']:.1f} calls)",
                _verdict(1000 * agent["seconds_per_image"] <= TARGETS["agent_ms"], gpu),
            ),
            (
                "make eval: exhaustive ms/image, speed-up of the agent",
                "≥ 20×",
                f"{1000 * exh['seconds_per_image']:.1f} ({exh['calls_per_image']:.0f} calls), {speedup:.1f}×",
                _verdict(speedup >= TARGETS["speedup"], gpu),
            ),
        ]
    else:
        rows.append(("make eval", "", missing("eval"), ""))
    if agreement:
        rows.append(
            (
                f"bf16 autocast vs fp32: max \\|Δp\\| ({agreement['crops']} crops of {agreement['images']} images)",
                "≤ 0.01",
                f"{agreement['max_abs_diff']:.2e} (mean {agreement['mean_abs_diff']:.1e})",
                "meets" if agreement["ok"] else "**misses**",
            )
        )
    else:
        rows.append(("bf16 vs fp32 scores", "", missing("agreement"), ""))
    total = sum(float(s["seconds"]) for s in steps)
    rows.append(
        (
            "steps: status, wall s / limit s",
            f"all ok, ≤ {budget} s in all",
            " · ".join(
                f"{s['step']} {s['status']} {float(s['seconds']):.0f}/{s['limit']}" for s in steps
            )
            + f" · total {total:.0f} s",
            _verdict(
                bool(steps) and all(s["status"] == "ok" for s in steps) and total <= budget, True
            ),
        )
    )
    lines = ["| measure | target | measured | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


def write_table(args: TableArgs) -> str:
    """Read the check's files and write (and print) its table."""
    d = Path(args.dir)
    md = table(
        read_steps(d / "steps.tsv"),
        _read(d / "machine.json"),
        _read(Path(args.bench)),
        _read(d / "agreement.json"),
        _read(d / "train" / "config.json"),
        _read(d / "eval" / "eval.json"),
        args.budget,
    )
    write_text(args.out, md)
    print(md)
    return md


def main(argv: list[str] | None = None) -> int:
    stages = {
        "machine": (MachineArgs, machine),
        "classifier": (ClassifierArgs, write_classifier),
        "agreement": (AgreementArgs, agreement),
        "table": (TableArgs, write_table),
    }
    return subcommand_main("python -m evaluate.gpu_check", __doc__, stages, argv)


if __name__ == "__main__":
    raise SystemExit(main())
