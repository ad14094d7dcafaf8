"""cutbg_env as a library: where data and runs live, what the package ships, the dataset's
writer lock, fork/spawn workers of the default env, and a wheel installed into a fresh venv.

The slow tests build the **default** env (the full embedded dataset and the shipped
classifier), never the real per-user cache: every process they start gets ``CUTBG_HOME``,
``CUTBG_DATA`` or ``CUTBG_RUNS`` pointing at temporary folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
import zipfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from tiny import TINY_CONFIG, dataset_classes, make_tiny_checkpoint

import cutbg_env
from cutbg_env import paths, shipped
from cutbg_env.calibration import DEFAULT_DELTA, resolve_delta
from cutbg_env.data import ANIMAL_CLASSES, GeneratorConfig, ensure_generated, generate
from cutbg_env.data.generate import _generate_locked, _writer_lock
from cutbg_env.errors import CheckpointError
from cutbg_env.refine import calibrated_setting, dataset_setting, setting_key
from cutbg_env.world import CutWorld

ROOT = Path(__file__).resolve().parents[1]
GLYPH_SHA256 = {
    "images": "3d1bb93498a7f7cb5a4c0d5dc57d57d78adc2ac1722398921542a7515172c46f",
    "labels": "a054c239a40ee7f2a5745e7e4bc11a51e9cb40c98134b602c1068e6a207487c6",
}
"""Digests of the shipped glyph arrays (``images`` uint8 bytes, ``labels`` as uint8 bytes): the
arrays of the animal-mnist 0.4 wheel, which the generated dataset (and so ``make demo``) is a
pure function of."""
SLOW = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the cutbg variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUTBG_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full embedded dataset (``GeneratorConfig()``), generated in this process: the base
    data folder holding ``cluttered-animals/``."""
    base = tmp_path_factory.mktemp("default-data")
    generate(GeneratorConfig(), base / "cluttered-animals")
    return base


# -- where data and runs live ------------------------------------------------------------------
def test_a_checkout_keeps_data_and_runs_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CUTBG_DATA", "CUTBG_RUNS", "CUTBG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(ROOT)
    assert paths.in_checkout()
    assert (paths.data_dir(), paths.runs_dir()) == (Path("data"), Path("runs"))
    assert paths.stage_hint("make calibrate") == "`make calibrate`"


def test_elsewhere_data_and_runs_live_in_cutbg_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("CUTBG_DATA", "CUTBG_RUNS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text('[project]\nname = "not-cutbg"\n')
    monkeypatch.chdir(tmp_path / "proj")  # another project is no checkout
    assert not paths.in_checkout() and paths.in_checkout(ROOT)
    monkeypatch.setenv("CUTBG_HOME", str(tmp_path / "home"))
    assert paths.data_dir() == tmp_path / "home" / "data"
    assert paths.runs_dir() == tmp_path / "home" / "runs"
    assert (
        paths.classifier_path("voc2007") == tmp_path / "home" / "runs" / "voc2007" / "classifier.pt"
    )
    assert paths.stage_hint("make calibrate") == (
        "`make calibrate` in a clone of the cutbg repository (training is not part of the "
        "installed package)"
    )
    # CUTBG_DATA / CUTBG_RUNS win everywhere
    monkeypatch.setenv("CUTBG_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "r"))
    assert (paths.data_dir(), paths.runs_dir()) == (tmp_path / "d", tmp_path / "r")
    # the default home is the per-user cache folder (nothing is created by asking)
    monkeypatch.delenv("CUTBG_HOME")
    from platformdirs import user_cache_dir

    assert paths.home_dir() == Path(user_cache_dir("cutbg", appauthor=False))
    assert not list(tmp_path.glob("home*"))


# -- what the package ships --------------------------------------------------------------------
def test_shipped_glyphs_are_the_animal_mnist_arrays() -> None:
    images, labels = shipped.glyphs()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert hashlib.sha256(images.tobytes()).hexdigest() == GLYPH_SHA256["images"]
    assert hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest() == GLYPH_SHA256["labels"]
    notice = shipped.asset("ANIMAL-MNIST-LICENSE.txt").read_text()
    assert "MIT License" in notice and "Copyright (c) 2025 SinaSR-6" in notice
    assert "animal-mnist 0.4" in notice


def test_shipped_glyphs_equal_their_source_package() -> None:
    """Against the animal-mnist wheel itself, where it is installed (``make install`` does)."""
    pytest.importorskip("animal_mnist")
    from cutbg_env.data.sources import _package_dir, _read_gz, safe_load_array

    base = _package_dir("animal_mnist", "") / "data" / "Animal_MNIST"
    raw = safe_load_array(_read_gz(base / "animal_data_version_3.gz", ""))
    lab = safe_load_array(_read_gz(base / "animal_label_version_3.gz", ""))
    images, labels = shipped.glyphs()
    np.testing.assert_array_equal(images, raw.astype(np.uint8))
    np.testing.assert_array_equal(labels, lab.astype(np.int64).reshape(-1))


def test_shipped_classifier_and_calibration() -> None:
    assets = shipped.classifier_path().parent
    size = sum(p.stat().st_size for p in assets.iterdir() if p.is_file())
    assert size < 5_000_000, f"package data is {size} bytes"
    calib = shipped.calibration()
    assert sorted(calib["delta"]) == sorted(ANIMAL_CLASSES)
    for key in ("heatmap_layer", "heatmap_region", "heatmap_threshold", "validation"):
        assert sorted(calib[key]) == sorted(ANIMAL_CLASSES), key
    assert sorted(calib["refinement_hits"]) == sorted(ANIMAL_CLASSES)
    for c, hits in calib["refinement_hits"].items():  # the chosen setting's hits: its CorLoc
        val, chosen = calib["validation"][c], calibrated_setting(calib, c)
        assert hits[setting_key(chosen)] == round(val["refined_corloc"] * val["images"] / 100)
    assert dataset_setting(calib) == ("mid", "drop", 0.3)  # what evaluation uses on this set
    digest = hashlib.sha256(shipped.classifier_path().read_bytes()).hexdigest()
    assert calib["provenance"]["classifier_sha256"] == digest
    command = "python -m train calibrate --dataset animals --delta-rule per-class"
    assert command in calib["provenance"]["commands"]
    # the dog entry make demo reads (what calibrate --classes dog --delta-rule per-class computes)
    assert (calib["delta"]["dog"], calib["heatmap_layer"]["dog"]) == (0.2, "mid")
    assert (calib["heatmap_region"]["dog"], calib["heatmap_threshold"]["dog"]) == ("drop", 0.4)
    calib["delta"]["dog"] = -5.0  # a copy: the next caller sees the shipped values
    assert shipped.calibration()["delta"]["dog"] == 0.2
    assert shipped.is_shipped_classifier(shipped.classifier_path())
    assert not shipped.is_shipped_classifier(ROOT / "pyproject.toml")


@pytest.fixture
def tiny_as_animals(tiny_animals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny dataset as ``dataset="animals"``, with an empty runs folder; returns it."""
    monkeypatch.setenv("CUTBG_DATA", str(tiny_animals.parent))
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_the_env_falls_back_on_the_shipped_classifier(tiny_as_animals: Path) -> None:
    world = CutWorld("animals", "trainval", "dog")
    assert world.shipped and world.model.classes == ANIMAL_CLASSES
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # δ comes from the shipped calibration: no warning
        env = gym.make("CutBackground-v0")
        cat = gym.make("CutBackground-v0", class_name="cat")
    assert env.unwrapped.world.shipped and env.unwrapped.delta == 0.2
    assert cat.unwrapped.delta == shipped.calibration()["delta"]["cat"] == 0.2
    env.reset(seed=0)
    assert env.step(int(cutbg_env.Action.STOP))[2]
    # a calibration file of the runs folder wins over the shipped one
    calib = tiny_as_animals / "animals" / "calibration.json"
    calib.parent.mkdir(parents=True)
    calib.write_text(json.dumps({"delta": {"dog": 0.37}}))
    assert gym.make("CutBackground-v0", world=world).unwrapped.delta == 0.37
    assert resolve_delta("animals", "horse", None, shipped.classifier_path()) == 0.02
    # ... unless it was calibrated with another classifier (a retrained, since deleted one)
    calib.write_text(json.dumps({"delta": {"dog": 0.37}, "classifier": {"dog": "0" * 64}}))
    with pytest.warns(UserWarning, match=r"dog calibrated with another classifier than"):
        assert gym.make("CutBackground-v0", world=world).unwrapped.delta == 0.2


def test_a_classifier_in_runs_wins_over_the_shipped_one(tiny_as_animals: Path) -> None:
    ckpt = make_tiny_checkpoint(tiny_as_animals / "animals" / "classifier.pt", ANIMAL_CLASSES)
    world = CutWorld("animals", "trainval", "dog")
    assert not world.shipped
    with pytest.warns(UserWarning, match=r"no calibrated delta for animals/dog"):
        env = gym.make("CutBackground-v0", world=world)
    assert env.unwrapped.delta == DEFAULT_DELTA  # the shipped calibration is not this model's
    assert CutWorld("animals", "trainval", "dog", checkpoint=str(ckpt)).shipped is False


def test_errors_outside_a_checkout_name_where_commands_run(
    tiny_animals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUTBG_HOME", str(tmp_path / "home"))
    for name in ("CUTBG_DATA", "CUTBG_RUNS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        CheckpointError,
        match=r"classifier checkpoint .*home/runs/cluttered-animals-[0-9a-f]{8}/classifier\.pt does not "
        r"exist: create it with `make train-classifier DATASET=.*cluttered-animals` in a clone "
        r"of the cutbg repository \(training is not part of the installed package\), or pass "
        r"`checkpoint=<a classifier of '.*cluttered-animals'>`$",
    ):
        CutWorld(str(tiny_animals), "trainval", "dog")
    ckpt = make_tiny_checkpoint(tmp_path / "c.pt", dataset_classes(tiny_animals))
    with pytest.warns(
        UserWarning,
        match=r"using 0\.1\. Run `python -m train calibrate --dataset .*` in a clone of the "
        r"cutbg repository .*, or pass delta=\.",
    ):
        gym.make("CutBackground-v0", dataset=str(tiny_animals), checkpoint=str(ckpt))


# -- the dataset's writer lock -----------------------------------------------------------------
def test_a_second_process_waits_for_the_writer_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data" / "cluttered-animals"
    root.parent.mkdir()
    code = (
        "import sys; from cutbg_env.data import ensure_generated, GeneratorConfig; "
        f"ensure_generated(sys.argv[1], GeneratorConfig(**{asdict(TINY_CONFIG)!r}))"
    )
    with _writer_lock(root):  # this test is the writer
        other = subprocess.Popen(
            [sys.executable, "-c", code, str(root)],
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
        )
        try:
            line = other.stderr.readline()  # blocks until the other process says something
            assert line == f"waiting for another process that is writing {root} ...\n", (
                line + other.stderr.read()
            )
            assert other.poll() is None and not root.exists()
            _generate_locked(TINY_CONFIG, root, overwrite=False, progress=False)
            before = tree_digest(root), {p: p.stat().st_mtime_ns for p in root.rglob("*")}
        except BaseException:
            other.kill()
            other.communicate()
            raise
    _, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    assert "generating" not in err  # it found the dataset whole
    assert (tree_digest(root), {p: p.stat().st_mtime_ns for p in root.rglob("*")}) == before
    assert sorted(p.name for p in root.parent.iterdir()) == ["cluttered-animals"]  # no litter
    assert ensure_generated(root, TINY_CONFIG) == root


# -- worker processes of the default env -------------------------------------------------------
ASYNC_SCRIPT = """
import sys, time
import gymnasium as gym, numpy as np, torch
import cutbg_env

def make():
    return gym.make("CutBackground-v0")

def main(context, n_envs, steps):
    # the parent uses the env first: its classifier forwards start torch's thread pool
    ref = gym.make("CutBackground-v0")
    ref_obs, ref_info = ref.reset(seed=0)
    ref.step(int(cutbg_env.Action.UP_1))
    parent_threads = torch.get_num_threads()
    venv = gym.vector.AsyncVectorEnv([make] * n_envs, context=context)
    try:
        obs, infos = venv.reset(seed=0)
        assert infos["image_id"][0] == ref_info["image_id"], infos["image_id"]
        np.testing.assert_allclose(obs["features"][0], ref_obs["features"], atol=1e-5)
        threads = venv.get_attr("num_threads")
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        ended = 0
        for _ in range(steps):
            _, _, term, trunc, _ = venv.step(rng.integers(0, 13, n_envs))
            ended += int((term | trunc).sum())
        rate = steps * n_envs / (time.perf_counter() - start)
    finally:
        venv.close(terminate=True)
    print(f"{context}: threads {list(threads)} (parent {parent_threads}), {ended} episode ends, "
          f"{rate:.0f} env steps/s")
    assert list(threads) == [1] * n_envs, threads
    assert ended > 0

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
"""


@SLOW
@pytest.mark.parametrize(("context", "timeout"), [("fork", 300), ("spawn", 480)])
def test_async_vector_env_workers_of_the_default_env(
    default_data: Path, tmp_path: Path, context: str, timeout: int
) -> None:
    """4 ``AsyncVectorEnv`` workers of the default env, 100 steps, after the parent stepped the
    env itself: used to hang forever under ``fork`` (torch's OpenMP pool after a fork) and to
    crawl under ``spawn`` (4 × 2 threads on 2 cores). Run in a subprocess with a timeout, so a
    regression fails instead of hanging the suite."""
    script = tmp_path / "async_default_env.py"
    script.write_text(ASYNC_SCRIPT)
    env = clean_env(CUTBG_DATA=str(default_data), CUTBG_RUNS=str(tmp_path / "runs"))
    try:
        done = subprocess.run(
            [sys.executable, str(script), context, "4", "100"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"AsyncVectorEnv({context!r}) of the default env hung ({timeout} s): {exc}")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"{context}: threads [1, 1, 1, 1]" in done.stdout, done.stdout
    print(done.stdout)


# -- the wheel, installed into a fresh venv ----------------------------------------------------
USER_SCRIPT = """
import json, sys

import gymnasium as gym, numpy as np, cutbg_env
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from cutbg_env import paths

env = gym.make("CutBackground-v0")
obs, info = env.reset(seed=0)
env.action_space.seed(0)
rewards, ends = [], 0
for _ in range(50):
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs in env.observation_space
    rewards.append(reward)
    if terminated or truncated:
        ends += 1
        obs, info = env.reset()
check_env(env.unwrapped)
sb3_check_env(env)
# the installed package needs none of these: the checkout's stages, the glyph package (the old
# source of the silhouettes, which reading its data files imported) and its TensorFlow
unwanted = sorted({"train", "evaluate", "animal_mnist", "tensorflow"} & set(sys.modules))
print(json.dumps({
    "unwanted": unwanted,
    "module": cutbg_env.__file__,
    "data": str(paths.data_dir().resolve()),
    "shipped": env.unwrapped.world.shipped,
    "delta": env.unwrapped.delta,
    "rewards": rewards,
    "ends": ends,
}))
"""


@SLOW
def test_wheel_in_a_fresh_venv_two_processes_at_once(default_data: Path, tmp_path: Path) -> None:
    """``pip wheel`` the package, install it (no deps, no index) into a fresh venv that reuses
    this one's installed dependencies, and run ``gym.make("CutBackground-v0")``, a seeded 50-step
    rollout and both env checkers in an empty folder, in two processes started at once on an
    empty ``CUTBG_HOME``: both work, the dataset is written once and whole."""
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ beside the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, _mkdir(src) / name)
    shutil.copytree(
        ROOT / "cutbg_env", src / "cutbg_env", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("cutbg_env-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for asset in (
        "animals-classifier.pt",
        "animals-calibration.json",
        "animal-mnist.npz",
        "ANIMAL-MNIST-LICENSE.txt",
    ):
        assert f"cutbg_env/assets/{asset}" in names, asset
    requires = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base = [r for r in requires if "extra ==" not in r]
    assert {"platformdirs>=3", "filelock>=3.10"} <= set(base)
    assert not any(r.startswith(("animal-mnist", "animal_mnist", "tensorflow")) for r in requires)
    for req in base:  # one `pip install` line would bring them: here they are installed already
        name = req.split(">")[0].split("=")[0].split("<")[0].strip()
        assert metadata.version(name), name

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).strip()
    )
    # reuse this environment's torch, gymnasium, ... (a path entry: its .pth files, such as the
    # checkout's editable install, are not run)
    (site / "reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])

    script = tmp_path / "scripts" / "user.py"
    _mkdir(script.parent)
    script.write_text(USER_SCRIPT)
    work, home = _mkdir(tmp_path / "empty"), _mkdir(tmp_path / "home")
    env = clean_env(CUTBG_HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    procs = [
        subprocess.Popen(
            [str(python), str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=work,
        )
        for _ in range(2)
    ]
    outs = []
    deadline = time.monotonic() + 900
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the installed package's gym.make did not finish in 15 minutes")
        assert p.returncode == 0, err[-4000:]
        outs.append((json.loads(out.strip().splitlines()[-1]), err))
    (a, err_a), (b, err_b) = outs
    assert a == b  # same seed, same rollout
    assert a["unwanted"] == []
    assert a["module"].startswith(str(site)), a["module"]
    assert a["data"] == str((home / "data").resolve()) and a["shipped"] and a["delta"] == 0.2
    assert len(a["rewards"]) == 50 and a["ends"] > 0
    writers = [e for e in (err_a, err_b) if "generating the cluttered-animals dataset" in e]
    assert len(writers) == 1, (err_a[-2000:], err_b[-2000:])
    assert "cluttered images" in writers[0]  # the progress bar
    assert not list(work.iterdir()), "nothing is written where the user runs"
    assert sorted(p.name for p in home.iterdir()) == ["data"]
    assert sorted(p.name for p in (home / "data").iterdir()) == ["cluttered-animals"]
    # whole, and byte for byte the dataset this checkout generates
    got = tree_digest(home / "data" / "cluttered-animals")
    assert len([k for k in got if k.startswith("JPEGImages/")]) == 2500
    assert got == tree_digest(default_data / "cluttered-animals")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=clean_env())
    assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout
