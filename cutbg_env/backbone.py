"""The frozen classifier split into ``lower``, ``upper`` and ``head`` (paper §2.1–2.2).

Contract (``S`` = input size, ``G`` = 28 grid cells, ``C_mid``/``C_top`` channel counts):

* ``lower``: image batch ``(N, 3, S, S)`` float32 in ``[0, 1]`` (RGB, resized, *not* normalised:
  normalisation is the first layer of ``lower``) → mid-level map ``(N, C_mid, G, G)``. For
  ``S = 224`` this is VGG-16's pool3 output (256 channels at full width); for ``S = 112`` pool2.
* ``upper``: mid-level map → "senior" features ``(N, C_top, 7, 7)``, non-negative (ReLU or
  max-pool output): conv4–conv5 (and pool5 at 224 px).
* ``head``: senior features → ``(N, K)`` logits, one per class; ``sigmoid`` gives ``p(c|x)``.

Two variants of the same VGG-16 topology (torchvision's ``VGG`` / ``make_layers``):

* ``BackboneConfig.voc()``: real VGG-16, 224 px, ``VGG16_Weights.IMAGENET1K_V1`` (torchvision
  downloads it where the internet allows; a local ``.pth`` path works too), VGG's FC head with the
  last layer replaced by ``K`` outputs.
* ``BackboneConfig()``: the CPU default, 1/8 channels with batch norm, 112 px input and a
  global-average-pool head (see ``../shared/notes``: the FC head does not train on a CPU budget).

A checkpoint (:func:`save_classifier` / :func:`load_classifier`) holds all three parts, the class
list and the config; it is written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models import VGG, VGG16_Weights, vgg16
from torchvision.models.vgg import cfgs, make_layers

from cutbg_env.errors import CheckpointError, reason
from cutbg_env.geometry import GRID
from cutbg_env.io import atomic_path

CHECKPOINT_FORMAT = "cutbg-classifier"
CHECKPOINT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SENIOR_SIZE = 7


@dataclass(frozen=True)
class BackboneConfig:
    """Which VGG-16 to build and where to split it."""

    width_divisor: int = 8
    """Channels of every conv layer divided by this (1 = the real VGG-16)."""
    batch_norm: bool = True
    """Batch norm after every conv (torchvision's ``vgg16_bn`` layout)."""
    input_size: int = 112
    """Square input side in pixels; the mid-level map is ``input_size / 28`` times smaller."""
    head: str = "gap"
    """``"gap"``: global average pool + linear; ``"vgg_fc"``: VGG's 4096-4096 FC classifier."""
    dropout: float = 0.3
    """Dropout before the last linear layer (``gap``) or inside the FC classifier."""
    weights: str | None = None
    """``None`` (random init), ``"IMAGENET1K_V1"`` (torchvision enum) or a local ``.pth`` path."""

    @staticmethod
    def voc(weights: str | None = "IMAGENET1K_V1") -> BackboneConfig:
        """The paper's network: full-width VGG-16 at 224 px, FC head, ImageNet weights."""
        return BackboneConfig(
            width_divisor=1,
            batch_norm=False,
            input_size=224,
            head="vgg_fc",
            dropout=0.5,
            weights=weights,
        )

    def validate(self) -> None:
        """Raise ``ValueError`` for a config that cannot give a 28×28 map and 7×7 features."""
        if self.input_size % GRID or (self.input_size // GRID) not in (2, 4, 8):
            raise ValueError(
                f"input_size={self.input_size}: must be 56, 112 or 224 so that a pooling stage "
                f"of VGG-16 gives a {GRID}x{GRID} mid-level map"
            )
        if self.head not in ("gap", "vgg_fc"):
            raise ValueError(f"head={self.head!r}: expected 'gap' or 'vgg_fc'")
        if self.head == "vgg_fc" and self.input_size != 224:
            raise ValueError("head='vgg_fc' needs input_size=224 (VGG's 7x7 pool5 map)")


class Normalize(nn.Module):
    """ImageNet mean/std normalisation as a layer (buffers, so it moves with the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _build_vgg(config: BackboneConfig, num_classes: int) -> VGG | nn.Sequential:
    """torchvision's VGG-16 (``vgg_fc`` head) or just its conv layers (``gap`` head)."""
    if config.width_divisor == 1 and not config.batch_norm and config.head == "vgg_fc":
        weights = config.weights
        if weights is None or Path(str(weights)).suffix in (".pth", ".pt"):
            vgg = vgg16(weights=None)
            if weights is not None:
                path = Path(weights)
                if not path.is_file():
                    raise CheckpointError(
                        f"VGG-16 weights file {path} does not exist: pass the path of a "
                        "torchvision vgg16 state dict (vgg16-397923af.pth) or 'IMAGENET1K_V1'"
                    )
                vgg.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            vgg = vgg16(weights=VGG16_Weights[weights])
        last = vgg.classifier[-1]
        assert isinstance(last, nn.Linear)
        vgg.classifier[-1] = nn.Linear(last.in_features, num_classes)
        return vgg
    layout = [v if v == "M" else max(int(v) // config.width_divisor, 1) for v in cfgs["D"]]
    features = make_layers(layout, batch_norm=config.batch_norm)
    if config.head == "vgg_fc":
        return VGG(features, num_classes=num_classes)
    # "gap": only the conv layers (VGG's 4096-wide FC head would be built just to be dropped),
    # initialised as torchvision's VGG does.
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features


class Classifier(nn.Module):
    """VGG-16 as ``head(upper(lower(x)))``; see the module docstring for the contract."""

    def __init__(self, config: BackboneConfig, classes: Sequence[str]) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.classes: tuple[str, ...] = tuple(classes)
        vgg = _build_vgg(config, len(self.classes))
        layers = list((vgg.features if isinstance(vgg, VGG) else vgg).children())
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        n_pools = {2: 1, 4: 2, 8: 3}[config.input_size // GRID]
        split = pools[n_pools - 1] + 1
        # upper ends at the last layer whose output is still 7x7; later pools go to the head.
        size, end = config.input_size, len(layers)
        for i, m in enumerate(layers):
            if isinstance(m, nn.MaxPool2d):
                if size // 2 < SENIOR_SIZE:
                    end = i
                    break
                size //= 2
        self.lower = nn.Sequential(Normalize(), *layers[:split])
        self.upper = nn.Sequential(*layers[split:end])
        tail = layers[end:]
        if isinstance(vgg, VGG):
            self.head = nn.Sequential(*tail, vgg.avgpool, nn.Flatten(1), vgg.classifier)
        else:
            channels = [m for m in layers if isinstance(m, nn.Conv2d)][-1].out_channels
            linear = nn.Linear(channels, len(self.classes))
            nn.init.normal_(linear.weight, 0, 0.01)
            nn.init.zeros_(linear.bias)
            self.head = nn.Sequential(
                *tail, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(config.dropout), linear
            )

    @property
    def mid_channels(self) -> int:
        """Channels of the mid-level map."""
        return [m for m in self.lower if isinstance(m, nn.Conv2d)][-1].out_channels

    @property
    def senior_channels(self) -> int:
        """Channels of the senior feature map (the observation's ``features``)."""
        return [m for m in self.upper if isinstance(m, nn.Conv2d)][-1].out_channels

    def class_index(self, name: str) -> int:
        """Index of a class name in this classifier's outputs."""
        from cutbg_env.errors import UnknownClassError

        if name not in self.classes:
            raise UnknownClassError(
                f"class {name!r} is not one of this classifier's classes: {', '.join(self.classes)}"
            )
        return self.classes.index(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float in [0, 1] → ``(N, K)`` logits."""
        return self.head(self.upper(self.lower(x)))


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """Resize images to the network input.

    Args:
        images: one ``(H, W, 3)`` uint8 RGB image or a sequence of them (sizes may differ).
        size: square side ``S``.

    Returns:
        ``(N, 3, S, S)`` float32 tensor in ``[0, 1]`` (aspect ratio not kept, as
        :mod:`cutbg_env.geometry` assumes).
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(img, (size, size), interpolation=interp)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def save_classifier(
    model: Classifier, path: str | Path, meta: dict[str, Any] | None = None
) -> None:
    """Write a classifier checkpoint atomically (temp file in the same folder, then rename).

    ``meta`` must hold only JSON-like values (it is read back with ``weights_only=True``).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backbone": dataclasses.asdict(model.config),
        "classes": list(model.classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu", hint: str = "make train-classifier"
) -> tuple[Classifier, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_classifier`.

    Returns ``(model in eval mode on device, meta)``, its weights in ``channels_last`` layout
    (measured on the 2-core CPU: 1.3× the env's forwards at batch 1 to 192, 2.5× the mid-level
    maps; scores change by < 1e-6). A missing file raises
    :class:`~cutbg_env.errors.CheckpointError` naming the command ``hint`` that creates it;
    a file that is not such a checkpoint names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"classifier checkpoint {path} does not exist: create it with `{hint}`"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a cutbg classifier checkpoint")
        config = BackboneConfig(**{**payload["backbone"], "weights": None})
        model = Classifier(config, payload["classes"])
        model.load_state_dict(payload["state_dict"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable cutbg classifier checkpoint ({reason(exc)}); "
            f"delete it and recreate it with `{hint}`"
        ) from exc
    model.eval().requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last), dict(payload.get("meta", {}))
