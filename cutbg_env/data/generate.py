"""Writer of the embedded *cluttered-animals* dataset in PASCAL VOC layout (the images
themselves are rendered by :mod:`cutbg_env.data.scenes`).

Layout written under ``root``::

    JPEGImages/<id>.jpg  Annotations/<id>.xml  ImageSets/Main/{trainval,test}.txt
    ImageSets/Main/<cls>_{trainval,test}.txt  classes.txt  generator.json

Output is a pure function of :class:`GeneratorConfig`: the same config gives byte-identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import cv2
import numpy as np

from cutbg_env.data.scenes import (
    FORMAT_VERSION,
    SPLITS,
    GeneratorConfig,
    Scene,
    annotation_xml,
    image_rng,
    render_image,
    split_pools,
)
from cutbg_env.data.sources import ShapeSet, load_source
from cutbg_env.errors import DataError

__all__ = [
    "FORMAT_VERSION",
    "GeneratorConfig",
    "Scene",
    "ensure_generated",
    "generate",
    "image_rng",
    "render_image",
    "split_pools",
]


def _image_ids(config: GeneratorConfig) -> dict[str, list[str]]:
    total = config.n_trainval + config.n_test
    width = max(6, len(str(total)))
    ids = [f"{k:0{width}d}" for k in range(1, total + 1)]
    return {"trainval": ids[: config.n_trainval], "test": ids[config.n_trainval :]}


def _write_text(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8"))


def _matches(root: Path, config: GeneratorConfig) -> bool:
    meta = root / "generator.json"
    try:
        return meta.read_bytes() == config.to_json().encode("utf-8")
    except OSError:
        return False


def _build(config: GeneratorConfig, shapes: ShapeSet, out: Path, progress: bool) -> None:
    from tqdm import tqdm

    classes = shapes.class_names
    pools = split_pools(len(shapes), config)
    ids = _image_ids(config)
    (out / "JPEGImages").mkdir(parents=True)
    (out / "Annotations").mkdir()
    (out / "ImageSets" / "Main").mkdir(parents=True)
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(config.jpeg_quality)]
    total = config.n_trainval + config.n_test
    with tqdm(total=total, desc="cluttered images", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            pool = pools[split]
            images, labels = shapes.images[pool], shapes.labels[pool]
            present = np.zeros((len(ids[split]), len(classes)), dtype=bool)
            for i, image_id in enumerate(ids[split]):
                scene = render_image(
                    image_rng(config.seed, split, i), images, labels, config, shapes.mirrorable
                )
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), params)
                if not ok:
                    raise DataError(f"OpenCV could not encode {image_id}.jpg as JPEG")
                (out / "JPEGImages" / f"{image_id}.jpg").write_bytes(buf.tobytes())
                objs = [
                    (classes[lab], box) for lab, box in zip(scene.labels, scene.boxes, strict=True)
                ]
                _write_text(
                    out / "Annotations" / f"{image_id}.xml",
                    annotation_xml(image_id, config.image_size, objs),
                )
                present[i, list(scene.labels)] = True
                bar.update(1)
            main = out / "ImageSets" / "Main"
            _write_text(main / f"{split}.txt", "".join(f"{x}\n" for x in ids[split]))
            for c, name in enumerate(classes):
                rows = "".join(
                    f"{x} {1 if present[i, c] else -1:2d}\n" for i, x in enumerate(ids[split])
                )
                _write_text(main / f"{name}_{split}.txt", rows)
    _write_text(out / "classes.txt", "".join(f"{c}\n" for c in classes))
    _write_text(out / "generator.json", config.to_json())  # written last: marks completion


def generate(
    config: GeneratorConfig,
    root: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the dataset of ``config`` to ``root`` atomically and return ``root``.

    The dataset is built in ``root.parent / ".<name>.tmp-<pid>"`` and renamed into place. When
    ``root`` already holds the same ``generator.json`` nothing is done. Writers take a lock
    (``root.parent / ".<name>.lock"``) first: a second process asking for the same dataset
    meanwhile waits for the first, then finds it whole and writes nothing.

    Args:
        config: generator parameters.
        root: the dataset folder (holds ``JPEGImages``, ``Annotations``, ``ImageSets``).
        overwrite: replace ``root`` when it holds a dataset generated with another config
            (a folder without ``generator.json`` is never deleted).
        progress: show a tqdm progress bar on stderr.

    Raises:
        DataError: ``root`` exists with other content, or the source cannot be loaded.
    """
    return _generate(config, Path(root), overwrite, progress)


def _generate(
    config: GeneratorConfig,
    root: Path,
    overwrite: bool,
    progress: bool,
    announce: bool = False,
    when: Callable[[], bool] | None = None,
) -> Path:
    """:func:`generate`; with ``announce`` the writer says on stderr what it writes. ``when``
    (checked again under the lock) says whether ``root`` still needs writing."""
    needed = when or (lambda: not _matches(root, config))
    if not needed():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(root):
        if not needed():  # another process wrote it while this one waited
            return root
        if announce:
            print(
                f"generating the cluttered-animals dataset in {root} "
                f"({config.n_trainval}+{config.n_test} images, once)...",
                file=sys.stderr,
                flush=True,
            )
        _generate_locked(config, root, overwrite, progress)
    return root


@contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """Hold the dataset's writer lock, saying so on stderr when another process holds it."""
    from filelock import FileLock, Timeout

    path = root.parent / f".{root.name}.lock"
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"waiting for another process that is writing {root} ...", file=sys.stderr, flush=True
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
        # Leave no file behind. A process that took the lock on the unlinked file meanwhile
        # finds the dataset whole; if this one failed, two writers may follow, which the
        # atomic rename in _generate_locked still keeps apart.
        with suppress(OSError):
            path.unlink()


def _generate_locked(config: GeneratorConfig, root: Path, overwrite: bool, progress: bool) -> None:
    if root.exists():
        if not (root / "generator.json").is_file():
            raise DataError(
                f"{root} exists but is not a generated dataset (no generator.json); "
                "remove it or choose another --root"
            )
        if not overwrite:
            raise DataError(
                f"{root} holds a dataset generated with another config; remove it, pass "
                "--force (overwrite=True), or choose another --root"
            )
    shapes = load_source(config.source)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _build(config, shapes, tmp, progress)
        if root.exists() and overwrite and not _matches(root, config):
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _matches(root, config):  # another process won the race with the same config
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_generated(root: str | Path, config: GeneratorConfig | None = None) -> Path:
    """Return ``root``, generating the dataset there first if it is not there yet.

    A dataset already at ``root`` with the current :data:`FORMAT_VERSION` is used as it is, even
    if another config made it (e.g. a custom ``make data``); one from an older format is rebuilt.
    Two processes asking at once: one writes (with a progress bar), the other waits for it.
    """
    config = config or GeneratorConfig()
    root = Path(root)
    meta = root / "generator.json"

    def needed() -> bool:
        try:
            return json.loads(meta.read_text()).get("format_version") != FORMAT_VERSION
        except (OSError, ValueError, AttributeError):
            return True

    overwrite = meta.is_file()
    return _generate(config, root, overwrite, progress=True, announce=True, when=needed)
