"""Reader of PASCAL VOC style datasets (real VOC2007/2012 or the generated cluttered-animals).

Boxes follow :mod:`cutbg_env.geometry`: ``(xmin, ymin, xmax, ymax)`` ints, 1-based inclusive.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cutbg_env.errors import DataError, UnknownClassError
from cutbg_env.geometry import Box
from cutbg_env.paths import DEFAULT_DATASET, data_dir

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 20 PASCAL VOC classes in the standard order."""

ANIMALS_DIRNAME = "cluttered-animals"
"""Folder of the generated dataset under the base data directory."""

DATASET_DIRS: dict[str, str] = {
    "animals": ANIMALS_DIRNAME,
    "voc2007": "VOCdevkit/VOC2007",
    "voc2012": "VOCdevkit/VOC2012",
}
"""Named datasets and their folders under the base data directory."""

DATASET_SPLITS: dict[str, tuple[str, str]] = {
    "animals": ("trainval", "test"),
    "voc2007": ("trainval", "test"),
    "voc2012": ("train", "val"),
}
"""``(training split, evaluation split)`` of each named dataset."""


def _voc_hint(year: str = "2007") -> str:
    where = data_dir() / "VOCdevkit" / f"VOC{year}"
    return (
        f"PASCAL VOC must be at {where} (JPEGImages/, Annotations/, ImageSets/Main/ inside); "
        f"torchvision.datasets.VOCDetection('{data_dir()}', year='{year}', download=True) "
        "fetches it where internet allows (or cutbg_env.data.download_voc)"
    )


def _missing_root_message(root: Path) -> str:
    text = str(root)
    for year in ("2007", "2012"):
        if f"VOC{year}" in text:
            return f"dataset root {root} does not exist; {_voc_hint(year)}"
    if "VOC" in text:
        return f"dataset root {root} does not exist; {_voc_hint()}"
    return (
        f"dataset root {root} does not exist; run `make data` (python -m cutbg_env.data generate "
        f"--root {root}) — the default dataset is also generated on first use by "
        "resolve_dataset('animals')"
    )


@dataclass(frozen=True)
class VOCObject:
    """One annotated object: class ``name``, VOC ``box`` (1-based inclusive), ``difficult``."""

    name: str
    box: Box
    difficult: bool


@dataclass(frozen=True)
class Annotation:
    """Parsed VOC XML of one image (``width × height`` pixels)."""

    image_id: str
    width: int
    height: int
    objects: tuple[VOCObject, ...]


def _int(value: Any, path: Path, what: str) -> int:
    try:
        return round(float(value))
    except (TypeError, ValueError):
        raise DataError(
            f"annotation {path}: {what} is {value!r}, not a number; the file is corrupt, "
            "regenerate or re-download the dataset"
        ) from None


def parse_annotation(path: str | Path, classes: Sequence[str] | None = None) -> Annotation:
    """Parse one VOC annotation XML with torchvision's ``VOCDetection.parse_voc_xml``.

    Args:
        path: the ``Annotations/<id>.xml`` file.
        classes: when given, every object's class must be one of them.

    Raises:
        DataError: missing or corrupt file, missing fields, or an object of an unknown class.
    """
    from torchvision.datasets import VOCDetection

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"annotation {path} is missing; the dataset is incomplete, regenerate or re-download it"
        )
    try:
        tree = ET.parse(path)
        doc = VOCDetection.parse_voc_xml(tree.getroot())
        ann = doc["annotation"]
        size = ann["size"]
        width = _int(size["width"], path, "width")
        height = _int(size["height"], path, "height")
        raw_objects = ann.get("object", [])
    except ET.ParseError as exc:
        raise DataError(
            f"annotation {path} is not valid XML ({exc}); regenerate or re-download the dataset"
        ) from None
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"annotation {path} lacks field {exc} of a VOC annotation; regenerate or re-download"
        ) from None
    if isinstance(raw_objects, dict):
        raw_objects = [raw_objects]
    objects = []
    for obj in raw_objects:
        try:
            name = str(obj["name"]).strip()
            bb = obj["bndbox"]
            box = tuple(_int(bb[k], path, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"annotation {path}: an object lacks {exc}; regenerate or re-download the dataset"
            ) from None
        if classes is not None and name not in classes:
            raise DataError(
                f"annotation {path} has an object of class {name!r}, which is not one of the "
                f"dataset's classes ({', '.join(classes)}); fix classes.txt or the classes given"
            )
        difficult = _int(obj.get("difficult", 0) or 0, path, "difficult") != 0
        objects.append(VOCObject(name=name, box=box, difficult=difficult))  # type: ignore[arg-type]
    return Annotation(image_id=path.stem, width=width, height=height, objects=tuple(objects))


class VOCDataset:
    """A split of a VOC-layout dataset.

    ``root`` holds ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/<split>.txt``. Classes
    come from ``classes``, else ``root/classes.txt``, else :data:`VOC_CLASSES`. Annotations are
    parsed on first use and cached.
    """

    def __init__(self, root: str | Path, split: str, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise DataError(_missing_root_message(self.root))
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            main = self.root / "ImageSets" / "Main"
            have = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem)
            raise DataError(
                f"split file {split_file} does not exist; splits here: "
                f"{', '.join(have) or 'none'} (the dataset is incomplete: regenerate or "
                "re-download it, or pick one of those splits)"
            )
        self.ids: list[str] = [
            line.split()[0] for line in split_file.read_text().splitlines() if line.strip()
        ]
        if not self.ids:
            raise DataError(
                f"split file {split_file} lists no image: the dataset is incomplete; "
                "regenerate (`make data`) or re-download it, or pick another split"
            )
        if classes is not None:
            self.classes: tuple[str, ...] = tuple(classes)
        elif (self.root / "classes.txt").is_file():
            names = (self.root / "classes.txt").read_text().split()
            self.classes = tuple(n.strip() for n in names if n.strip())
        else:
            self.classes = VOC_CLASSES
        if not self.classes:
            raise DataError(f"no classes for {self.root}: classes.txt is empty")
        self._index = {c: k for k, c in enumerate(self.classes)}
        self._annotations: dict[int, Annotation] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"VOCDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def class_index(self, name: str) -> int:
        """Index of class ``name`` in :attr:`classes`.

        Raises:
            UnknownClassError: the name is not a class here; the message lists the valid ones.
        """
        try:
            return self._index[name]
        except KeyError:
            pass
        msg = f"unknown class {name!r} for {self.root}; valid classes: {', '.join(self.classes)}"
        if name in VOC_CLASSES and not set(VOC_CLASSES) <= set(self.classes):
            msg += (
                f". {name!r} is a PASCAL VOC class: to use VOC set DATASET=voc2007 (or voc2012), "
                f"e.g. `make train DATASET=voc2007 CLASS={name}`; " + _voc_hint()
            )
        raise UnknownClassError(msg)

    def _check_index(self, i: int) -> int:
        if not -len(self.ids) <= i < len(self.ids):
            raise IndexError(f"image index {i} out of range for {len(self.ids)} images")
        return i % len(self.ids)

    def annotation(self, i: int) -> Annotation:
        """Parsed annotation of image ``i`` (cached)."""
        i = self._check_index(i)
        ann = self._annotations.get(i)
        if ann is None:
            path = self.root / "Annotations" / f"{self.ids[i]}.xml"
            ann = parse_annotation(path, self.classes)
            self._annotations[i] = ann
        return ann

    def image_path(self, i: int) -> Path:
        """Path of the JPEG of image ``i``."""
        return self.root / "JPEGImages" / f"{self.ids[self._check_index(i)]}.jpg"

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as ``(H, W, 3)`` uint8 RGB.

        Raises:
            DataError: the file is missing, unreadable or its size disagrees with the annotation.
        """
        path = self.image_path(i)
        if not path.is_file():
            raise DataError(
                f"image {path} is missing; the dataset is incomplete, regenerate (`make data`) "
                "or re-download it"
            )
        raw = path.read_bytes()
        if raw[:2] == b"\xff\xd8" and raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda"):
            # libjpeg decodes a truncated JPEG with a warning and grey rows: refuse it
            raise DataError(
                f"image {path} is truncated ({len(raw)} bytes, no end-of-image marker after "
                "its last scan); regenerate (`make data`) or re-download the dataset"
            )
        bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
        if bgr is None or bgr.ndim != 3:
            raise DataError(
                f"image {path} is corrupt or not an image OpenCV can read; regenerate "
                "(`make data`) or re-download the dataset"
            )
        ann = self.annotation(i)
        if bgr.shape[:2] != (ann.height, ann.width):
            raise DataError(
                f"image {path} is {bgr.shape[1]}x{bgr.shape[0]} but its annotation says "
                f"{ann.width}x{ann.height}; regenerate or re-download the dataset"
            )
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    @cached_property
    def _label_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n, k = len(self.ids), len(self.classes)
        easy = np.zeros((n, k), dtype=bool)
        hard = np.zeros((n, k), dtype=bool)
        for i in range(n):
            for obj in self.annotation(i).objects:
                (hard if obj.difficult else easy)[i, self._index[obj.name]] = True
        labels = (easy | hard).astype(np.float32)
        mask = np.where(hard & ~easy, 0.0, 1.0).astype(np.float32)
        return labels, mask

    @property
    def labels(self) -> np.ndarray:
        """``(N, K)`` float32 multi-hot: 1 where image ``i`` has an object of class ``k``
        (difficult objects count here, but see :attr:`label_mask`)."""
        return self._label_arrays[0]

    @property
    def label_mask(self) -> np.ndarray:
        """``(N, K)`` float32: 0 where image ``i``'s only objects of class ``k`` are difficult
        (the label should not count), 1 elsewhere."""
        return self._label_arrays[1]

    def positives(self, class_name: str) -> list[int]:
        """Indices of the images with at least one non-difficult object of ``class_name``."""
        k = self.class_index(class_name)
        labels, mask = self._label_arrays
        return [int(i) for i in np.flatnonzero((labels[:, k] > 0) & (mask[:, k] > 0))]

    def gt_boxes(self, i: int, class_name: str) -> list[tuple[Box, bool]]:
        """``(VOC box, difficult)`` of every object of ``class_name`` in image ``i``."""
        self.class_index(class_name)
        return [(o.box, o.difficult) for o in self.annotation(i).objects if o.name == class_name]


def resolve_dataset(name: str = DEFAULT_DATASET, root: str | Path | None = None) -> Path:
    """The root folder of a dataset, generating the embedded one on first use.

    Args:
        name: ``"animals"`` (the generated cluttered-animals, default), ``"voc2007"``,
            ``"voc2012"``, or the path of an existing dataset folder.
        root: base data directory holding the named datasets (default ``$CUTBG_DATA`` or
            ``data``): ``<root>/cluttered-animals``, ``<root>/VOCdevkit/VOC2007``, ...

    Raises:
        DataError: unknown name (the message lists the names) or VOC not where it must be.
    """
    base = Path(root) if root is not None else data_dir()
    key = name.lower()
    if key == "animals":
        from cutbg_env.data.generate import ensure_generated

        return ensure_generated(base / DATASET_DIRS["animals"])
    if key in DATASET_DIRS:
        path = base / DATASET_DIRS[key]
        if not path.is_dir():
            year = key[3:]
            raise DataError(f"dataset {name!r} not found at {path}; {_voc_hint(year)}")
        return path
    path = Path(name)
    if path.is_dir():
        return path
    raise DataError(
        f"unknown dataset {name!r}: use one of {', '.join(DATASET_DIRS)} or the path of an "
        "existing VOC-layout folder (with JPEGImages/, Annotations/, ImageSets/Main/)"
    )


def dataset_splits(dataset: str) -> tuple[str, str]:
    """``(training split, evaluation split)`` of a dataset name; VOC-layout folders use
    ``("trainval", "test")``."""
    return DATASET_SPLITS.get(dataset, ("trainval", "test"))


def open_split(dataset: str, split: str, root: str | Path | None = None) -> VOCDataset:
    """One split of a dataset (the embedded one is generated on first use)."""
    return VOCDataset(resolve_dataset(dataset, root), split)


def download_voc(year: str = "2007", root: str | Path | None = None) -> Path:
    """Download PASCAL VOC ``year`` with torchvision into ``<root>/VOCdevkit/VOC<year>``.

    Only call this when a user asks for it: it fetches about 1–2 GB over the network.
    """
    from torchvision.datasets import VOCDetection

    base = Path(root) if root is not None else data_dir()
    base.mkdir(parents=True, exist_ok=True)
    sets = ["trainval", "test"] if year == "2007" else ["trainval"]
    for image_set in sets:
        VOCDetection(str(base), year=year, image_set=image_set, download=True)
    return base / "VOCdevkit" / f"VOC{year}"
