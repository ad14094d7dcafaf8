"""Stage 1: the multi-label classifier (paper §2.1, §3.1, Table 1).

VOC: VGG-16 from ``VGG16_Weights.IMAGENET1K_V1`` with one sigmoid output per class, fine-tuned on
VOC2007 trainval (+ VOC2012 train when present). Embedded default: the 1/8-width VGG-16 trained
from scratch on cluttered-animals trainval. Image-level labels only.

The recipe's stages (from scratch or ``--init``, CutMix fine-tune, pseudo-box crops), their
budget split and the record of what they did share one module (~560 lines); how pseudo-boxes are
found and cropped is :mod:`train.pseudo`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cutbg_env import checks, paths, runs
from cutbg_env.backbone import (
    BackboneConfig,
    Classifier,
    load_classifier,
    preprocess,
    save_classifier,
)
from cutbg_env.cli import StageArgs
from cutbg_env.data import VOCDataset, dataset_splits, open_split
from cutbg_env.errors import CheckpointError, DataError
from cutbg_env.io import log, relpath, write_json
from cutbg_env.metrics import classification_ap
from cutbg_env.refine import parse_setting
from train.common import seed_everything
from train.pseudo import PseudoBoxes, augmented_crops, pseudo_boxes

RECIPE_MINUTES = (30.0, 4.0, 4.0)
"""The recipe's minutes from scratch, of CutMix fine-tuning, then of pseudo-box crops
(:mod:`train.pseudo`); ``--minutes`` is split in these proportions. The shipped checkpoint ran
the first two (``cutbg_env/assets/animals-classifier.json``)."""


@dataclass(frozen=True)
class ClassifierArgs(StageArgs):
    """Train the multi-label classifier that the env and the agent use (it is written to
    ``--checkpoint``, default runs/<dataset>/classifier.pt, what it did to the ``.json`` beside it).
    The default recipe: 30 minutes from scratch, a 4-minute CutMix fine-tune at a quarter of the
    learning rate, then 4 minutes on crops of pseudo-boxes at the same rate (:mod:`train.pseudo`;
    the shipped checkpoint ran the first two stages)."""

    checkpoint: str | None = None
    """Where the classifier is written (default: runs/<dataset>/classifier.pt)."""
    minutes: float = sum(RECIPE_MINUTES)
    """Wall-clock budget of the whole recipe in minutes (loading, both stages, their test-set
    AP), split between the stages by ``--finetune-share`` and ``--pseudo-share``; each stage's
    learning rate follows a cosine over its part."""
    steps: int = 0
    """Optimisation steps of the whole recipe, split between the stages as ``--minutes`` is
    (0 = the time budget alone decides). A stage then stops after its steps and its cosine follows
    them, so a rerun takes the same steps on any machine (and gives the same weights with the same
    torch build and ``--threads``); ``--minutes`` still caps each stage."""
    finetune_share: float = RECIPE_MINUTES[1] / sum(RECIPE_MINUTES)
    """Share of ``--minutes`` (and of ``--steps``) given to the CutMix fine-tune stage (0 = no
    such stage)."""
    pseudo_share: float = RECIPE_MINUTES[2] / sum(RECIPE_MINUTES)
    """Share of ``--minutes`` (and of ``--steps``) given to the last stage, crops of pseudo-boxes
    (0 = no such stage); it includes finding the pseudo-boxes. The first stage gets the rest
    (none is allowed with ``--init``: the later stages then continue that checkpoint)."""
    pseudo_cut: float = 0.5
    """Probability that a pseudo-box crop cuts into its pseudo-box (else it keeps all of it)."""
    pseudo_setting: str = "mid/drop/0.3"
    """Heat-map setting (layer/region/threshold) of the pseudo-boxes: the ``heatmap`` baseline's."""
    finetune_cutmix: float = 0.8
    """CutMix probability of the fine-tune stage."""
    finetune_lr: float | None = None
    """Peak learning rate of the fine-tune stage (default: a quarter of the first stage's)."""
    max_epochs: int = 200
    """Stop a stage after this many epochs even if time is left."""
    batch_size: int = 32
    """Images per optimisation step."""
    lr: float | None = None
    """Peak AdamW learning rate of the first stage (default: 2e-3 here, 1e-4 for the pretrained
    VOC network)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
    label_smoothing: float = 0.1
    """Targets become 1-ε/2 and ε/2: keeps logits off the sigmoid's flat ends."""
    empty_negatives: int = 0
    """All-zero mid-level maps added to every batch with every class's target negative: a crop
    that keeps no cell holds no object, so the zero padding of the env's crops carries no class
    evidence (on the shipped classifier an empty map scores 0.26 horse and 0.47 bear)."""
    cutmix: float = 0.0
    """Probability of CutMix on the mid-level map in the first stage: a random box of another
    image is pasted in and the targets mix by area, so a partial object earns a partial score."""
    init: str | None = None
    """Start the first stage from this classifier checkpoint (fine-tuning) instead of a fresh
    network."""
    weights: str = "IMAGENET1K_V1"
    """VOC only: torchvision weights enum name or a local vgg16 .pth file."""
    seed: int = 0
    """Seed of the initialisation, batch order and augmentation (each stage starts from it)."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
    force: bool = False
    """Retrain even if a checkpoint for the same config exists."""

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        checks.positive("--minutes", self.minutes)
        checks.integer("--steps", self.steps, 0)
        checks.real("--finetune-share", self.finetune_share, 0.0, 1.0, note="0 = no such stage")
        checks.real("--pseudo-share", self.pseudo_share, 0.0, 1.0, note="0 = no such stage")
        checks.real("--pseudo-cut", self.pseudo_cut, 0.0, 1.0)
        try:
            parse_setting(self.pseudo_setting)
            bad = ""
        except ValueError as exc:
            bad = str(exc)
        checks.rule(not bad, f"--pseudo-setting: {bad}")
        checks.real("--finetune-cutmix", self.finetune_cutmix, 0.0, 1.0)
        checks.positive("--finetune-lr", self.finetune_lr)
        checks.integer("--max-epochs", self.max_epochs, 1)
        checks.integer("--batch-size", self.batch_size, 1)
        checks.positive("--lr", self.lr)
        checks.real("--weight-decay", self.weight_decay, 0.0)
        checks.real("--label-smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        checks.integer("--empty-negatives", self.empty_negatives, 0)
        checks.real("--cutmix", self.cutmix, 0.0, 1.0)
        checks.integer("--seed", self.seed, 0)
        checks.integer("--threads", self.threads, 0)
        first = 1.0 - self.finetune_share - self.pseudo_share
        checks.rule(
            first > 1e-9 or (self.init is not None and first > -1e-9),
            f"--finetune-share {self.finetune_share:g} + --pseudo-share {self.pseudo_share:g} "
            "leave the first stage no time: their sum must be below 1 (or at most 1 with --init)",
        )
        shares = self.shares()
        checks.rule(
            not self.steps
            or all(
                n > 0 for n, f in zip(split_steps(self.steps, shares), shares, strict=True) if f
            ),
            f"--steps {self.steps}: leaves a stage no step at --finetune-share "
            f"{self.finetune_share:g} and --pseudo-share {self.pseudo_share:g}; give more steps "
            "or set a share to 0 (no such stage)",
        )
        super().__post_init__()

    def backbone(self) -> BackboneConfig:
        """The network this dataset uses."""
        if self.dataset in ("voc2007", "voc2012"):
            return BackboneConfig.voc(self.weights)
        return BackboneConfig()

    def classifier_file(self) -> Path:
        """Where this stage writes: ``checkpoint``, else ``runs/<dataset>/classifier.pt`` (never
        the shipped classifier, which the other stages fall back to)."""
        return Path(self.checkpoint) if self.checkpoint else paths.classifier_path(self.dataset)

    def shares(self) -> tuple[float, float, float]:
        """Shares of the budget of the first, CutMix fine-tune and pseudo-box stages."""
        first = 1.0 - self.finetune_share - self.pseudo_share
        return (first if first > 1e-9 else 0.0, self.finetune_share, self.pseudo_share)

    def stages(self) -> list[Stage]:
        """The recipe's stages with their minutes and steps (:func:`split_minutes`,
        :func:`split_steps`); a stage with no share is left out."""
        shares = self.shares()
        minutes = split_minutes(self.minutes, shares)
        steps = split_steps(self.steps, shares)  # zeros without --steps
        lr = (
            self.lr
            if self.lr is not None
            else (1e-4 if self.backbone().width_divisor == 1 else 2e-3)
        )
        ft_lr = self.finetune_lr if self.finetune_lr is not None else lr / 4
        name = "scratch" if self.init is None else "init"
        out = [
            Stage(name, minutes[0], steps[0], lr, self.cutmix, False),
            Stage("cutmix_finetune", minutes[1], steps[1], ft_lr, self.finetune_cutmix, False),
            Stage("pseudo_crops", minutes[2], steps[2], ft_lr, 0.0, True),
        ]
        return [stage for stage, share in zip(out, shares, strict=True) if share > 0]


@dataclass(frozen=True)
class Stage:
    """One training stage of the recipe."""

    name: str
    """``scratch`` (fresh network), ``init`` (from ``--init``), ``cutmix_finetune`` or
    ``pseudo_crops``."""
    minutes: float
    """Its part of the time budget."""
    step_budget: int
    """Its part of ``--steps`` (0 = its time alone ends it)."""
    lr: float
    """Peak AdamW learning rate."""
    cutmix: float
    """CutMix probability."""
    pseudo: bool
    """Train on crops of pseudo-boxes (:mod:`train.pseudo`) instead of whole maps."""


def split_minutes(minutes: float, shares: Sequence[float]) -> list[float]:
    """Minutes of each stage of a ``minutes`` budget: the later stages take their ``shares``,
    the first one the rest (shares checked by :class:`ClassifierArgs`)."""
    later = [minutes * f for f in shares[1:]]
    return [minutes - sum(later), *later]


def split_steps(steps: int, shares: Sequence[float]) -> list[int]:
    """Steps of each stage of a ``steps`` budget, split as :func:`split_minutes` splits minutes
    (the later stages' rounded, the first one the rest)."""
    later = [round(steps * f) for f in shares[1:]]
    return [steps - sum(later), *later]


EVAL_RESERVE_S = 20.0
"""Seconds of the budget kept per stage for its test-set AP (and, after the last, saving)."""


def _load_split(data: VOCDataset, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images uint8 (N,3,S,S), labels float (N,K), mask float (N,K))`` of a whole split."""
    images = torch.empty((len(data), 3, size, size), dtype=torch.uint8)
    for i in tqdm(range(len(data)), desc=f"loading {data.split}", leave=False):
        images[i] = (preprocess(data.load_image(i), size)[0] * 255).round().to(torch.uint8)
    return images, torch.from_numpy(data.labels), torch.from_numpy(data.label_mask)


def _augment(
    x: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Random horizontal flips and a small translation of a float image batch ``(N, 3, S, S)``:
    ``(images, flipped (N,) bool, (dy, dx) shift in pixels)``."""
    n, _, s, _ = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dy, dx = torch.randint(-s // 16, s // 16 + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3)), flip, (dy, dx)


def _add_empty(
    mid: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int, negative: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Append ``k`` all-zero maps to a batch of mid-level maps ``(N, C, G, G)``, each with every
    class's target ``negative`` and weight 1 (targets ``y`` and weights ``w`` are ``(N, K)``)."""
    if k == 0:
        return mid, y, w
    return (
        torch.cat([mid, mid.new_zeros((k, *mid.shape[1:]))]),
        torch.cat([y, y.new_full((k, y.shape[1]), negative)]),
        torch.cat([w, w.new_ones((k, w.shape[1]))]),
    )


def _cutmix(
    mid: torch.Tensor, y: torch.Tensor, w: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al., 2019) on mid-level maps ``(N, C, G, G)``: a box of a shuffled partner
    replaces the same box; targets ``(N, K)`` mix by the area of the box; masks multiply."""
    n, g = mid.shape[0], mid.shape[-1]
    lam = float(torch.rand(1, generator=gen))
    side = max(1, round(g * (1 - lam) ** 0.5))
    x0, y0 = (int(v) for v in torch.randint(0, g - side + 1, (2,), generator=gen))
    perm = torch.randperm(n, generator=gen).to(mid.device)
    mixed = mid.clone()
    mixed[:, :, y0 : y0 + side, x0 : x0 + side] = mid[perm, :, y0 : y0 + side, x0 : x0 + side]
    frac = side * side / (g * g)
    return mixed, (1 - frac) * y + frac * y[perm], w * w[perm]


@torch.inference_mode()
def predict(model: Classifier, images: torch.Tensor, device: str, batch: int = 128) -> np.ndarray:
    """Sigmoid scores ``(N, K)`` of uint8 images ``(N, 3, S, S)``."""
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(device).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        out.append(torch.sigmoid(model(x)).float().cpu())
    return torch.cat(out).numpy()


def _fingerprint(args: ClassifierArgs) -> str:
    return json.dumps(
        {
            k: v
            for k, v in dataclasses.asdict(args).items()
            if k not in ("force", "device", "threads")
        },
        sort_keys=True,
    )


def command_line(args: ClassifierArgs) -> str:
    """The ``python -m train classifier`` command that gives ``args`` (flags that differ from the
    defaults only)."""
    default = ClassifierArgs()
    flags = []
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            flags.append(f"{flag} {value}")
    return " ".join(["python -m train classifier", *flags])


def record_path(ckpt: Path) -> Path:
    """The JSON beside a checkpoint that records how it was trained (``classifier.json`` beside
    ``classifier.pt``)."""
    return ckpt.with_suffix(".json")


def _test_ap(
    model: Classifier,
    test: VOCDataset,
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: str,
) -> tuple[dict[str, float], float]:
    images, labels, mask = split
    scores = predict(model, images, device)
    ap = {
        c: classification_ap(scores[:, k], labels[:, k].numpy(), mask[:, k].numpy())
        for k, c in enumerate(test.classes)
    }
    return ap, float(np.mean(list(ap.values())))


def _fit(
    model: Classifier,
    stage: Stage,
    args: ClassifierArgs,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    train_until: float,
    writer: SummaryWriter,
    step0: int,
    boxes: PseudoBoxes | None = None,
) -> dict:
    """Train ``model`` in place for one stage until its steps (``stage.step_budget``, when set), the
    monotonic time ``train_until`` or ``max_epochs``, whichever comes first; the learning rate
    follows a cosine from ``stage.lr`` over the stage's steps, else over its time. A pseudo-box
    stage (``stage.pseudo``) crops each mid-level map around one of its ``boxes``
    (:func:`train.pseudo.pseudo_crop_batch`)."""
    images, labels, mask = data
    seed_everything(args.seed, args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=args.weight_decay)
    start = time.monotonic()
    budget = max(train_until - start, 1.0)
    step, epoch, eps = 0, 0, args.label_smoothing
    total = stage.step_budget or round(budget)
    bar = tqdm(
        total=total, desc=f"classifier {stage.name}", unit="step" if stage.step_budget else "s"
    )
    done = timed_out = False
    for epoch in range(args.max_epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for b in range(0, len(order) - args.batch_size + 1, args.batch_size):
            elapsed = time.monotonic() - start
            timed_out = elapsed >= budget
            if timed_out or (stage.step_budget and step >= stage.step_budget):
                done = True
                break
            part = step / stage.step_budget if stage.step_budget else elapsed / budget
            for group in opt.param_groups:
                group["lr"] = stage.lr * 0.5 * (1 + math.cos(math.pi * part))
            idx = order[b : b + args.batch_size]
            x, flip, shift = _augment(images[idx].float().div_(255), gen)
            x = x.to(args.device).contiguous(memory_format=torch.channels_last)
            y = labels[idx] * (1 - eps) + eps / 2
            w = mask[idx]
            if stage.pseudo:
                keep, y, w = augmented_crops(
                    boxes or {},
                    idx,
                    labels,
                    flip,
                    shift,
                    x.shape[-1],
                    y,
                    w,
                    gen,
                    args.pseudo_cut,
                    eps,
                )
            y, w = y.to(args.device), w.to(args.device)
            mid = model.lower(x)
            if stage.pseudo:
                mid = mid * keep.to(device=mid.device, dtype=mid.dtype)
            if stage.cutmix > 0 and torch.rand(1, generator=gen).item() < stage.cutmix:
                mid, y, w = _cutmix(mid, y, w, gen)
            mid, y, w = _add_empty(mid, y, w, args.empty_negatives, eps / 2)
            logits = model.head(model.upper(mid))
            loss = (
                F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w
            ).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if (step0 + step) % 10 == 0:
                writer.add_scalar("classifier/loss", loss.item(), step0 + step)
                writer.add_scalar("classifier/lr", opt.param_groups[0]["lr"], step0 + step)
            bar.n = step if stage.step_budget else min(round(time.monotonic() - start), total)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
            bar.update(0)
        if done:
            break
    bar.close()
    if stage.step_budget and timed_out:
        log(
            f"classifier stage {stage.name}: its time ran out at step {step} of {stage.step_budget} "
            "(raise --minutes for a run that repeats on any machine)"
        )
    return {"steps": step, "epochs": epoch + 1, "seconds": round(time.monotonic() - start, 1)}


def _find_pseudo_boxes(
    model: Classifier, args: ClassifierArgs, sources: list[tuple[str, str | None, VOCDataset]]
) -> tuple[PseudoBoxes, dict]:
    """The pseudo-boxes of every training image and what finding them took. ``sources``: the
    training splits as ``(dataset name, root, split)``, in the order of the training tensors
    (indices run on across them)."""
    start = time.monotonic()
    setting = parse_setting(args.pseudo_setting)
    boxes: PseudoBoxes = {}
    offset = 0
    for name, root, split in sources:
        found = pseudo_boxes(model, split, name, setting, args.device, root)
        boxes.update({offset + i: b for i, b in found.items()})
        offset += len(split)
    seconds = round(time.monotonic() - start, 1)
    log(f"classifier: pseudo-boxes of {len(boxes)} images ({args.pseudo_setting}) in {seconds} s")
    return boxes, {"pseudo_box_images": len(boxes), "pseudo_box_seconds": seconds}


def training_seconds(left: float, stages: list[Stage], minutes: float) -> list[float]:
    """Training seconds of each stage: ``left`` (the budget that loading and the test-set APs
    leave) split as the stages split ``minutes``; at least one second each."""
    return [max(left * s.minutes / minutes, 1.0) for s in stages]


def train_classifier(args: ClassifierArgs) -> Path:
    """Run the recipe (or skip when the same config is done), write the checkpoint and the
    record beside it (:func:`record_path`); return the checkpoint path.

    After loading, what is left of ``--minutes`` less ``EVAL_RESERVE_S`` per stage (its
    test-set AP) is split between the stages' training in their proportions
    (:func:`training_seconds`).

    The checkpoint belongs to this training while it runs (:func:`~cutbg_env.runs.run_lock`
    on it): a second training into the same ``--checkpoint`` raises
    :class:`~cutbg_env.errors.RunBusyError` naming the first one's process."""
    t_enter = time.monotonic()
    ckpt = args.classifier_file()
    with runs.run_lock(ckpt, runs.new_run_id(), "train into another --checkpoint"):
        return _train_classifier(args, ckpt, t_enter)


def _train_classifier(args: ClassifierArgs, ckpt: Path, t_enter: float) -> Path:
    """:func:`train_classifier` inside the checkpoint's lock (``t_enter``: its start)."""
    stages = args.stages()
    fingerprint = _fingerprint(args)
    if ckpt.exists() and not args.force:
        try:
            _, meta = load_classifier(ckpt)
        except CheckpointError:
            meta = {}
        if meta.get("fingerprint") == fingerprint:
            log(
                f"classifier {relpath(ckpt)} exists for this config: skipping (use --force to retrain)"
            )
            return ckpt
    seed_everything(args.seed, args.threads)
    train_split, test_split = dataset_splits(args.dataset)
    train = open_split(args.dataset, train_split, args.root)
    sources: list[tuple[str, str | None, VOCDataset]] = [(args.dataset, args.root, train)]
    if args.dataset == "voc2007":  # the paper: VOC2007 trainval + VOC2012 train
        try:
            sources.append(("voc2012", None, open_split("voc2012", "train")))
        except DataError:
            log("VOC2012 not found: fine-tuning on VOC2007 trainval only")
    test = open_split(args.dataset, test_split, args.root)
    config = args.backbone()
    if args.init:
        model, _ = load_classifier(args.init)
        model.train().requires_grad_(True)
    else:
        model = Classifier(config, train.classes)
    # channels_last: ~1.8x faster convolutions and batch norm on CPU (and on CUDA with AMP)
    model = model.to(args.device, memory_format=torch.channels_last)
    size = config.input_size
    parts = [_load_split(d, size) for _, _, d in sources]
    data = (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
    )
    test_data = _load_split(test, size)
    writer = SummaryWriter(str(ckpt.parent / "classifier_tb"))
    done_stages: list[dict] = []
    step = 0
    # what loading left of the budget, less each stage's test-set AP, in the stages' proportions
    left = t_enter + args.minutes * 60.0 - time.monotonic() - EVAL_RESERVE_S * len(stages)
    for stage, seconds in zip(stages, training_seconds(left, stages, args.minutes), strict=True):
        until = time.monotonic() + seconds  # finding the pseudo-boxes is part of the stage
        boxes, box_stats = _find_pseudo_boxes(model, args, sources) if stage.pseudo else (None, {})
        stats = _fit(model, stage, args, data, until, writer, step, boxes) | box_stats
        step += stats["steps"]
        ap, m_ap = _test_ap(model, test, test_data, args.device)
        writer.add_scalar(f"classifier/test_map_{stage.name}", m_ap, step)
        done_stages.append(
            dataclasses.asdict(stage)
            | {"training_budget_s": round(seconds, 1)}
            | stats
            | {"test_ap": ap, "test_map": m_ap}
        )
        log(f"classifier stage {stage.name}: {stats['steps']} steps, test mAP {m_ap:.1f}")
    writer.close()
    last = done_stages[-1]
    meta = {
        "fingerprint": fingerprint,
        "args": dataclasses.asdict(args),
        "steps": step,
        "epochs": sum(s["epochs"] for s in done_stages),
        "seconds": round(sum(s["seconds"] for s in done_stages), 1),
        "stages": done_stages,
        "test_ap": last["test_ap"],
        "test_map": last["test_map"],
    }
    save_classifier(model.cpu().to(memory_format=torch.contiguous_format), ckpt, meta)
    write_json(
        record_path(ckpt),
        {
            "what": "how this classifier was trained (python -m train classifier)",
            "command": command_line(args),
            "dataset": args.dataset,
            "test_split": test_split,
            "checkpoint": str(ckpt),
            "minutes": args.minutes,
            "stages": done_stages,
            "steps": step,
            "seconds": round(time.monotonic() - t_enter, 1),
            "test_ap": last["test_ap"],
            "test_map": last["test_map"],
            "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, device {args.device}",
        },
    )
    log(f"classifier: {step} steps, test mAP {last['test_map']:.1f} -> {relpath(ckpt)}")
    return ckpt
