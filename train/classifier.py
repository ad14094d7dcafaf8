"""Stage 1: the multi-label classifier (paper §2.1, §3.1, Table 1).

VOC: VGG-16 from ``VGG16_Weights.IMAGENET1K_V1`` with one sigmoid output per class, fine-tuned on
VOC2007 trainval (+ VOC2012 train when present). Embedded default: the 1/8-width VGG-16 trained
from scratch on cluttered-animals trainval. Image-level labels only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cutbg_env import checks
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
from train.common import seed_everything


@dataclass(frozen=True)
class ClassifierArgs(StageArgs):
    """Train the multi-label classifier that the env and the agent use (it is written to
    ``--checkpoint``, default runs/<dataset>/classifier.pt)."""

    minutes: float = 2.9
    """Wall-clock budget of the whole stage in minutes: loading, training (the learning rate
    follows a cosine over it) and, in the last ``EVAL_RESERVE_S`` seconds, the test-set AP."""
    max_epochs: int = 200
    """Stop after this many epochs even if time is left."""
    batch_size: int = 32
    """Images per optimisation step."""
    lr: float | None = None
    """Peak AdamW learning rate (default: 2e-3 here, 1e-4 for the pretrained VOC network)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
    label_smoothing: float = 0.1
    """Targets become 1-ε/2 and ε/2: keeps logits off the sigmoid's flat ends."""
    crop_augment: float = 0.0
    """Probability of zeroing a random outer margin of the mid-level map while training."""
    cutmix: float = 0.0
    """Probability of CutMix on the mid-level map: a random box of another image is pasted in and
    the targets mix by area, so a partial object earns a partial score."""
    init: str | None = None
    """Start from this classifier checkpoint (fine-tuning) instead of a fresh network."""
    weights: str = "IMAGENET1K_V1"
    """VOC only: torchvision weights enum name or a local vgg16 .pth file."""
    seed: int = 0
    """Seed of the initialisation, batch order and augmentation."""
    threads: int = 0
    """Torch CPU threads (0 = torch's default)."""
    force: bool = False
    """Retrain even if a checkpoint for the same config exists."""

    def __post_init__(self) -> None:
        """Check every value (one line naming the flag, the value and the allowed range)."""
        checks.positive("--minutes", self.minutes)
        checks.integer("--max-epochs", self.max_epochs, 1)
        checks.integer("--batch-size", self.batch_size, 1)
        checks.positive("--lr", self.lr)
        checks.real("--weight-decay", self.weight_decay, 0.0)
        checks.real("--label-smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        checks.real("--crop-augment", self.crop_augment, 0.0, 1.0)
        checks.real("--cutmix", self.cutmix, 0.0, 1.0)
        checks.integer("--seed", self.seed, 0)
        checks.integer("--threads", self.threads, 0)
        super().__post_init__()

    def backbone(self) -> BackboneConfig:
        """The network this dataset uses."""
        if self.dataset in ("voc2007", "voc2012"):
            return BackboneConfig.voc(self.weights)
        return BackboneConfig()


EVAL_RESERVE_S = 20.0
"""Seconds of the stage's budget kept for the test-set AP and saving."""


def _load_split(data: VOCDataset, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images uint8 (N,3,S,S), labels float (N,K), mask float (N,K))`` of a whole split."""
    images = torch.empty((len(data), 3, size, size), dtype=torch.uint8)
    for i in tqdm(range(len(data)), desc=f"loading {data.split}", leave=False):
        images[i] = (preprocess(data.load_image(i), size)[0] * 255).round().to(torch.uint8)
    return images, torch.from_numpy(data.labels), torch.from_numpy(data.label_mask)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and small translations of a float image batch."""
    n, _, s, _ = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    shift = torch.randint(-s // 16, s // 16 + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(shift[0], shift[1]), dims=(2, 3))


def _crop_mask(n: int, grid: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """``(n, 1, grid, grid)`` masks: with probability ``p`` zero a random margin of ≤ 1/4 a side."""
    from cutbg_env.geometry import crop_masks

    m = torch.randint(0, grid // 4 + 1, (n, 4), generator=gen)
    crops = torch.stack([m[:, 0], m[:, 1], grid - m[:, 2], grid - m[:, 3]], 1)
    keep = torch.rand(n, generator=gen) >= p
    crops[keep] = torch.tensor([0, 0, grid, grid])
    return crop_masks(crops, grid).float()


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


def train_classifier(args: ClassifierArgs) -> Path:
    """Train (or skip when the same config is done), write the checkpoint and
    ``results/classifier.json``; return the checkpoint path."""
    t_enter = time.monotonic()
    ckpt = args.classifier_file()
    fingerprint = json.dumps(
        {
            k: v
            for k, v in dataclasses.asdict(args).items()
            if k not in ("force", "device", "threads")
        },
        sort_keys=True,
    )
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
    extra: list[VOCDataset] = []
    if args.dataset == "voc2007":  # the paper: VOC2007 trainval + VOC2012 train
        try:
            extra.append(open_split("voc2012", "train"))
        except DataError:
            log("VOC2012 not found: fine-tuning on VOC2007 trainval only")
    test = open_split(args.dataset, test_split, args.root)
    config = args.backbone()
    # channels_last: ~1.8x faster convolutions and batch norm on CPU (and on CUDA with AMP)
    if args.init:
        model, _ = load_classifier(args.init)
        model.train().requires_grad_(True)
    else:
        model = Classifier(config, train.classes)
    model = model.to(args.device, memory_format=torch.channels_last)
    size = config.input_size
    parts = [_load_split(d, size) for d in [train, *extra]]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    mask = torch.cat([p[2] for p in parts])
    lr = args.lr if args.lr is not None else (1e-4 if config.width_divisor == 1 else 2e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    writer = SummaryWriter(str(ckpt.parent / "classifier_tb"))
    budget = max(args.minutes * 60.0 - (time.monotonic() - t_enter) - EVAL_RESERVE_S, 1.0)
    start, step = time.monotonic(), 0
    eps = args.label_smoothing
    bar = tqdm(total=round(budget), desc="classifier", unit="s")
    done = False
    for epoch in range(args.max_epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for b in range(0, len(order) - args.batch_size + 1, args.batch_size):
            elapsed = time.monotonic() - start
            if elapsed >= budget:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
            idx = order[b : b + args.batch_size]
            x = _augment(images[idx].float().div_(255), gen).to(args.device)
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(args.device) * (1 - eps) + eps / 2
            w = mask[idx].to(args.device)
            mid = model.lower(x)
            if args.crop_augment > 0:
                mid = mid * _crop_mask(len(idx), mid.shape[-1], args.crop_augment, gen).to(mid)
            if args.cutmix > 0 and torch.rand(1, generator=gen).item() < args.cutmix:
                mid, y, w = _cutmix(mid, y, w, gen)
            logits = model.head(model.upper(mid))
            loss = (
                F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w
            ).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 10 == 0:
                writer.add_scalar("classifier/loss", loss.item(), step)
                writer.add_scalar("classifier/lr", opt.param_groups[0]["lr"], step)
            bar.n = min(round(time.monotonic() - start), round(budget))
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
            bar.update(0)
        if done:
            break
    bar.close()
    test_images, test_labels, test_mask = _load_split(test, size)
    scores = predict(model, test_images, args.device)
    ap = {
        c: classification_ap(scores[:, k], test_labels[:, k].numpy(), test_mask[:, k].numpy())
        for k, c in enumerate(test.classes)
    }
    m_ap = float(np.mean(list(ap.values())))
    writer.add_scalar("classifier/test_map", m_ap, step)
    writer.close()
    meta = {
        "fingerprint": fingerprint,
        "args": dataclasses.asdict(args),
        "steps": step,
        "epochs": epoch + 1,
        "seconds": round(time.monotonic() - start, 1),
        "test_ap": ap,
        "test_map": m_ap,
    }
    save_classifier(model.cpu().to(memory_format=torch.contiguous_format), ckpt, meta)
    write_json(
        Path("results") / "classifier.json",
        {
            "dataset": args.dataset,
            "split": test_split,
            "checkpoint": str(ckpt),
            "ap": ap,
            "map": m_ap,
            "steps": step,
            "seconds": meta["seconds"],
        },
    )
    log(f"classifier: {step} steps, test mAP {m_ap:.1f} -> {relpath(ckpt)}")
    return ckpt
