"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import TINY_CLASSIFIER

from cutbg_env.data.generate import GeneratorConfig, generate

TINY_ANIMALS = GeneratorConfig(n_trainval=24, n_test=12)
"""Config of the tiny generated dataset the tests share."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: trains or evaluates on the tiny pipeline (seconds each); runs by default, "
        "deselect with -m 'not slow'",
    )


@pytest.fixture(scope="session")
def tiny_animals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny cluttered-animals dataset (24 trainval + 12 test images, VOC layout)."""
    return generate(TINY_ANIMALS, tmp_path_factory.mktemp("data") / "cluttered-animals")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_animals: Path) -> dict:
    """The whole training pipeline on the tiny dataset, as ``make demo`` runs it.

    ``CUTBG_DATA``/``CUTBG_RUNS`` point at temp folders for the session, so ``dataset="animals"``
    is the tiny set. Returns the paths and the trained model of class ``dog``: one member (a
    single DQN), so that the tests reading its network see one; tests/test_members.py trains
    the default's several members.
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
    ckpt = train_classifier(ClassifierArgs(**TINY_CLASSIFIER))
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
        members=1,
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


@pytest.fixture
def own_runs(tiny_pipeline: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the pipeline's ``runs/animals`` (classifier, calibration and the dog
    agent's zip, config and refinement table) as ``CUTBG_RUNS``, for the tests that write run
    files: the session's runs stay as every other test expects them. Returns the copy's
    ``runs/animals`` folder."""
    import shutil

    src = tiny_pipeline["base"] / "runs" / "animals"
    dst = tmp_path / "runs" / "animals"
    (dst / "dog").mkdir(parents=True)
    for name in ("classifier.pt", "calibration.json"):
        shutil.copy2(src / name, dst / name)
    for name in ("agent.zip", "config.json", "refinement.json"):
        shutil.copy2(src / "dog" / name, dst / "dog" / name)
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "runs"))
    return dst


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def _session_runs_unchanged(request: pytest.FixtureRequest) -> None:
    """No test may change the shared pipeline's runs folder (tests that write run files use
    :func:`own_runs` or an ``out=`` folder of their own), so no test depends on another's order."""
    if "tiny_pipeline" not in request.fixturenames:
        yield
        return
    runs = request.getfixturevalue("tiny_pipeline")["base"] / "runs"
    before = _tree(runs)
    yield
    after = _tree(runs)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the test changed the shared pipeline's runs: {changed}"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny CPU convolutions are far slower with 2 OpenMP threads on a busy 2-core machine
    (CI runs the suite on 2 cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _sb3_logs_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SB3 gives a model without ``tensorboard_log`` a logger folder of ``$SB3_LOGDIR``, else a
    new ``/tmp/SB3-<time>`` at every ``learn()``: keep the suite's in its own temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))
        yield
