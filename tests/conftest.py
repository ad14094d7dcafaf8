"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from cutbg_env.data.generate import GeneratorConfig, generate

TINY_ANIMALS = GeneratorConfig(n_trainval=24, n_test=12)
"""Config of the tiny generated dataset the tests share."""


@pytest.fixture(scope="session")
def tiny_animals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny cluttered-animals dataset (24 trainval + 12 test images, VOC layout)."""
    return generate(TINY_ANIMALS, tmp_path_factory.mktemp("data") / "cluttered-animals")
