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


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_animals: Path) -> dict:
    """The whole training pipeline on the tiny dataset, as ``make demo`` runs it.

    ``CUTBG_DATA``/``CUTBG_RUNS`` point at temp folders for the session, so ``dataset="animals"``
    is the tiny set. Returns the paths and the trained model of class ``dog``.
    """
    import shutil

    from train.agent import AgentArgs, fit_agent
    from train.calibrate import CalibrateArgs, calibrate
    from train.classifier import ClassifierArgs, train_classifier

    base = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(tiny_animals, base / "data" / "cluttered-animals")
    mp = pytest.MonkeyPatch()
    mp.setenv("CUTBG_DATA", str(base / "data"))
    mp.setenv("CUTBG_RUNS", str(base / "runs"))
    mp.chdir(base)  # results/ lands here
    ckpt = train_classifier(ClassifierArgs(minutes=0.05, batch_size=8))
    calib = calibrate(CalibrateArgs(classes="dog"))
    args = AgentArgs(
        class_name="dog",
        epochs=12,
        n_envs=2,
        learning_starts=64,
        buffer_size=2000,
        batch_size=16,
        train_freq=2,
        target_update=100,
        progress=False,
    )
    model, agent = fit_agent(args)
    yield {
        "base": base,
        "classifier": ckpt,
        "calibration": calib,
        "agent": agent,
        "model": model,
        "args": args,
    }
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny CPU convolutions are far slower with 2 OpenMP threads on a busy 2-core machine
    (CI runs the suite on 2 cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
