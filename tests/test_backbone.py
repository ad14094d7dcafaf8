"""Tests of cutbg_env.backbone: the lower/upper/head split, checkpoints and preprocessing."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cutbg_env.backbone import (
    BackboneConfig,
    Classifier,
    load_classifier,
    preprocess,
    save_classifier,
)
from cutbg_env.errors import CheckpointError, UnknownClassError

CLASSES = ("bear", "bird", "cat", "dog", "zebra")


@pytest.fixture(scope="module")
def model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(BackboneConfig(), CLASSES).eval()


def test_default_config_shapes(model: Classifier) -> None:
    assert model.config.input_size == 112
    assert model.classes == CLASSES
    assert model.mid_channels == 16
    assert model.senior_channels == 64
    x = torch.rand(2, 3, 112, 112)
    with torch.inference_mode():
        mid = model.lower(x)
        top = model.upper(mid)
        logits = model.head(top)
        full = model(x)
    assert mid.shape == (2, 16, 28, 28)
    assert top.shape == (2, 64, 7, 7)
    assert logits.shape == (2, len(CLASSES))
    assert (top >= 0).all(), "senior features are ReLU / max-pool outputs"
    torch.testing.assert_close(full, logits)
    assert mid.dtype == top.dtype == logits.dtype == torch.float32


def test_lower_normalises_inside(model: Classifier) -> None:
    # Normalisation is the first layer of lower: its buffers hold the ImageNet statistics.
    norm = model.lower[0]
    x = torch.zeros(1, 3, 4, 4)
    out = norm(x)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)


def test_class_index(model: Classifier) -> None:
    assert model.class_index("dog") == 3
    with pytest.raises(UnknownClassError, match=r"'unicorn'.*bear, bird, cat, dog, zebra"):
        model.class_index("unicorn")


def test_voc_config_full_vgg16() -> None:
    config = BackboneConfig.voc(weights=None)
    assert (config.width_divisor, config.batch_norm, config.input_size, config.head) == (
        1,
        False,
        224,
        "vgg_fc",
    )
    torch.manual_seed(0)
    vgg = Classifier(config, CLASSES).eval()
    assert vgg.mid_channels == 256
    assert vgg.senior_channels == 512
    with torch.inference_mode():
        mid = vgg.lower(torch.rand(1, 3, 224, 224))
        assert mid.shape == (1, 256, 28, 28)
        top = vgg.upper(mid)
        assert top.shape == (1, 512, 7, 7)
        assert vgg.head(top).shape == (1, len(CLASSES))


def test_save_load_round_trip(model: Classifier, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "classifier.pt"
    path.parent.mkdir()
    save_classifier(model, path, meta={"epochs": 3, "note": "tiny"})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"], "no temp file left"
    loaded, meta = load_classifier(path)
    assert meta == {"epochs": 3, "note": "tiny"}
    assert loaded.classes == CLASSES
    assert loaded.config == model.config
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    same_layout = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 112, 112)
    with torch.inference_mode():
        assert torch.equal(loaded(x), same_layout(x))  # the same weights, bit for bit
        assert torch.allclose(loaded(x), model(x), atol=1e-5)  # the layout changes ~1e-6
        assert torch.equal(loaded.lower(x), same_layout.lower(x))
        assert torch.allclose(loaded.lower(x), model.lower(x), atol=1e-5)
    for (k1, v1), (k2, v2) in zip(
        loaded.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert k1 == k2
        assert torch.equal(v1, v2)


def test_load_missing_names_command(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "classifier.pt"
    with pytest.raises(CheckpointError, match=r"`make train-classifier`") as info:
        load_classifier(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(CheckpointError, match=r"`make train-classifier DATASET=voc2007`"):
        load_classifier(missing, hint="make train-classifier DATASET=voc2007")


def test_load_corrupt_names_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01this is not a torch checkpoint\xff" * 10)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_classifier(path)


def test_load_foreign_checkpoint_names_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"format": "something-else", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_classifier(path)
    path2 = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path2)
    with pytest.raises(CheckpointError, match=re.escape(str(path2))):
        load_classifier(path2)


def test_load_wrong_state_dict_names_file(model: Classifier, tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    save_classifier(model, path)
    payload = torch.load(path, weights_only=True)
    payload["classes"] = ["a", "b"]  # head no longer matches the stored weights
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_classifier(path)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"input_size": 100}, r"input_size=100: must be 56, 112 or 224"),
        ({"input_size": 448}, r"input_size=448"),
        ({"input_size": 84}, r"input_size=84"),
        ({"head": "mlp"}, r"head='mlp'"),
        ({"head": "vgg_fc", "input_size": 112}, r"vgg_fc.*224"),
    ],
)
def test_bad_config(kwargs: dict, pattern: str) -> None:
    config = BackboneConfig(**kwargs)
    with pytest.raises(ValueError, match=pattern):
        config.validate()
    with pytest.raises(ValueError, match=pattern):
        Classifier(config, CLASSES)


def test_good_configs_validate() -> None:
    for size in (56, 112, 224):
        BackboneConfig(input_size=size).validate()
    BackboneConfig.voc(weights=None).validate()


def test_preprocess_single_and_batch() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(50, 80, 3), dtype=np.uint8)
    one = preprocess(img, 112)
    assert one.shape == (1, 3, 112, 112)
    assert one.dtype == torch.float32
    assert float(one.min()) >= 0.0 and float(one.max()) <= 1.0
    big = rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    batch = preprocess([img, big, img], 56)
    assert batch.shape == (3, 3, 56, 56)
    torch.testing.assert_close(batch[0], batch[2])
    arr = preprocess(np.stack([img, img]), 28)  # a 4-D array is a batch
    assert arr.shape == (2, 3, 28, 28)


def test_preprocess_values_and_channel_order() -> None:
    red = np.zeros((30, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    out = preprocess(red, 56)[0]
    assert torch.equal(out[0], torch.ones(56, 56))
    assert torch.equal(out[1:], torch.zeros(2, 56, 56))
    grey = np.full((224, 224, 3), 51, dtype=np.uint8)  # exact resize of a constant image
    torch.testing.assert_close(preprocess(grey, 112), torch.full((1, 3, 112, 112), 51 / 255))
