"""Nothing lost, nothing silently wrong: bad values, bad files, run folders of one run, shared
files merged under a lock, outputs that respect the umask, temp files of killed processes.

The training and calibration cases that need real processes (two at once, SIGKILL) are in
``tests/test_robustness_processes.py``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from tiny import dataset_classes, make_tiny_checkpoint, tiny_env_kwargs

from cutbg_env import checks, paths, runs
from cutbg_env.calibration import load_calibration
from cutbg_env.data import VOCDataset, open_split
from cutbg_env.errors import (
    CheckpointError,
    DataError,
    OptionError,
    OutputError,
    reason,
)
from cutbg_env.io import atomic_path, check_writable, remove_stale_temps, write_json
from cutbg_env.world import CutWorld
from evaluate.__main__ import main as eval_main
from evaluate.run import EvalArgs
from train.__main__ import main as train_main
from train.agent import AgentArgs
from train.calibrate import CalibrateArgs
from train.classifier import ClassifierArgs
from train.schedules import last_checkpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The single ``error: ...`` line a CLI printed on stderr (nothing else, no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0][len("error: ") :]


def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- values: one place per config, one line: the flag, the value, the allowed range -----------
@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (AgentArgs, {"gamma": 2.0}, "--gamma 2.0: must be a finite number in [0, 1]"),
        (AgentArgs, {"gamma": float("nan")}, "--gamma nan: must be a finite number in [0, 1]"),
        (AgentArgs, {"delta": float("nan")}, "--delta nan: must be a finite number in [0, 1]"),
        (AgentArgs, {"delta": -1.0}, "--delta -1.0: must be a finite number in [0, 1]"),
        (AgentArgs, {"eta": float("nan")}, "--eta nan: must be a finite number > 0"),
        (AgentArgs, {"eta": 0.0}, "--eta 0.0: must be a finite number > 0"),
        (AgentArgs, {"epochs": -1}, "--epochs -1: must be an integer ≥ 0"),
        (AgentArgs, {"decay_epochs": -2}, "--decay-epochs -2: must be an integer ≥ 0"),
        (AgentArgs, {"lr_start": 0.0}, "--lr-start 0.0: must be a finite number > 0"),
        (AgentArgs, {"lr_end": float("inf")}, "--lr-end inf: must be a finite number > 0"),
        (AgentArgs, {"buffer_size": 0}, "--buffer-size 0: must be an integer ≥ 1"),
        (AgentArgs, {"n_envs": 0}, "--n-envs 0: must be an integer ≥ 1"),
        (AgentArgs, {"max_images": 0}, "--max-images 0: must be an integer ≥ 1"),
        (AgentArgs, {"max_images": -1}, "--max-images -1: must be an integer ≥ 1"),
        (AgentArgs, {"eps_end": 1.5}, "--eps-end 1.5: must be a finite number in [0, 1]"),
        (AgentArgs, {"obs_dtype": "int8"}, "--obs-dtype 'int8': must be one of float16, float32"),
        (EvalArgs, {"exhaustive_windows": 0}, "--exhaustive-windows 0: must be an integer ≥ 1"),
        (EvalArgs, {"max_images": 0}, "--max-images 0: must be an integer ≥ 1"),
        (EvalArgs, {"classes": "dog,"}, "--classes 'dog,': must be comma-separated names (a,b,c)"),
        (CalibrateArgs, {"fraction": 0.5}, "--fraction 0.5: must be a finite number in (0, 0.05]"),
        (
            CalibrateArgs,
            {"delta_rule": "median"},
            "--delta-rule 'median': must be one of pooled, per-class",
        ),
        (
            CalibrateArgs,
            {"drop_split": 2.0},
            "--drop-split 2.0: must be a finite number in [-1, 1]",
        ),
        (
            CalibrateArgs,
            {"context_delta": 0.0},
            "--context-delta 0.0: must be a finite number in (0, 1]",
        ),
        (
            CalibrateArgs,
            {"min_delta": 0.3},
            "--min-delta 0.3: no δ of the grid (0.02, 0.05, 0.1, 0.2, 0.3, 0.5) lies in "
            "[0.3, --context-delta 0.2); lower --min-delta",
        ),
        (ClassifierArgs, {"minutes": 0.0}, "--minutes 0.0: must be a finite number > 0"),
        (ClassifierArgs, {"lr": -1.0}, "--lr -1.0: must be a finite number > 0"),
        (
            ClassifierArgs,
            {"finetune_share": 1.5},
            "--finetune-share 1.5: must be a finite number in [0, 1] (0 = no such stage)",
        ),
        (
            ClassifierArgs,
            {"finetune_share": float("nan")},
            "--finetune-share nan: must be a finite number in [0, 1] (0 = no such stage)",
        ),
        (
            ClassifierArgs,
            {"pseudo_share": -0.1},
            "--pseudo-share -0.1: must be a finite number in [0, 1] (0 = no such stage)",
        ),
        (
            ClassifierArgs,
            {"pseudo_cut": 2.0},
            "--pseudo-cut 2.0: must be a finite number in [0, 1]",
        ),
        (
            ClassifierArgs,
            {"finetune_cutmix": 1.5},
            "--finetune-cutmix 1.5: must be a finite number in [0, 1]",
        ),
        (ClassifierArgs, {"finetune_lr": 0.0}, "--finetune-lr 0.0: must be a finite number > 0"),
    ],
)
def test_bad_values_are_refused_by_the_config(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        cls(**kwargs)


def test_none_is_the_default_and_zero_a_value() -> None:
    args = AgentArgs(epochs=0, decay_epochs=0, delta=0.0, max_images=None).resolved()
    assert (args.epochs, args.decay_epochs, args.delta, args.max_images) == (0, 0, 0.0, None)
    assert AgentArgs().resolved().epochs == 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_cuda_without_a_gpu_is_one_line(capsys: pytest.CaptureFixture) -> None:
    message = "--device 'cuda': no CUDA GPU is visible here; use --device cpu"
    for argv in (["agent", "--device", "cuda"], ["calibrate", "--device", "cuda"]):
        assert train_main(argv) == 2
        assert one_error_line(capsys) == message
    assert eval_main(["--device", "cuda"]) == 2
    assert one_error_line(capsys) == message
    with pytest.raises(OptionError, match=r"^device='cuda': no CUDA GPU"):
        checks.device("device=", "cuda")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["agent", "--n-envs", "0"], "--n-envs 0: must be an integer ≥ 1"),
        (["agent", "--max-images", "0"], "--max-images 0: must be an integer ≥ 1"),
        (["agent", "--gamma", "2"], "--gamma 2.0: must be a finite number in [0, 1]"),
        (["agent", "--delta", "nan"], "--delta nan: must be a finite number in [0, 1]"),
        (["agent", "--eta", "nan"], "--eta nan: must be a finite number > 0"),
        (["agent", "--epochs", "-1"], "--epochs -1: must be an integer ≥ 0"),
        (["agent", "--lr-start", "0"], "--lr-start 0.0: must be a finite number > 0"),
        (["calibrate", "--fraction", "0"], "--fraction 0.0: must be a finite number in (0, 0.05]"),
        (
            ["classifier", "--finetune-share", "1"],
            "--finetune-share 1 + --pseudo-share 0.105263 leave the first stage no time: their "
            "sum must be below 1 (or at most 1 with --init)",
        ),
    ],
)
def test_train_cli_bad_values_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert train_main(argv) == 2
    assert one_error_line(capsys) == message


def test_eval_cli_bad_values_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--exhaustive-windows", "0"]) == 2
    assert one_error_line(capsys) == "--exhaustive-windows 0: must be an integer ≥ 1"
    assert eval_main(["--max-images", "0"]) == 2
    assert one_error_line(capsys) == "--max-images 0: must be an integer ≥ 1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": float("nan")}, "delta=nan: must be a finite number in [0, 1]"),
        ({"delta": -1}, "delta=-1: must be a finite number in [0, 1]"),
        ({"delta": -0.01}, "delta=-0.01: must be a finite number in [0, 1]"),
        ({"delta": 2.0}, "delta=2.0: must be a finite number in [0, 1]"),
        ({"eta": float("nan")}, "eta=nan: must be a finite number > 0"),
        ({"max_images": 0}, "max_images=0: must be an integer ≥ 1"),
        ({"max_images": -1}, "max_images=-1: must be an integer ≥ 1"),
    ],
)
def test_env_constructor_checks_its_values(kwargs: dict, message: str) -> None:
    """Checked before any data or classifier is read (these paths do not exist)."""
    from cutbg_env.env import CutBackgroundEnv
    from cutbg_env.world import CutWorld

    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        CutBackgroundEnv(dataset="/nonexistent/set", **kwargs)
    if "max_images" in kwargs:
        with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
            CutWorld("/nonexistent/set", max_images=kwargs["max_images"])


def test_gym_make_refuses_a_negative_delta() -> None:
    """δ bounds a score drop: δ = -1 would end every episode at its first cut."""
    with pytest.raises(OptionError, match=r"^delta=-1: must be a finite number in \[0, 1\]$"):
        gym.make("CutBackground-v0", delta=-1)


@pytest.fixture(scope="module")
def vector_kwargs(tiny_animals: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    ckpt = tmp_path_factory.mktemp("ckpt") / "classifier.pt"
    return tiny_env_kwargs(
        tiny_animals, make_tiny_checkpoint(ckpt, dataset_classes(tiny_animals)), "dog"
    )


@pytest.fixture(scope="module")
def vector_world(vector_kwargs: dict) -> CutWorld:
    k = vector_kwargs
    return CutWorld(k["dataset"], "trainval", k["class_name"], k["checkpoint"])


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("delta", float("nan"), "delta=nan: must be a finite number in [0, 1]"),
        ("delta", -1.0, "delta=-1.0: must be a finite number in [0, 1]"),
        ("delta", 1.5, "delta=1.5: must be a finite number in [0, 1]"),
        ("delta", None, "delta=None: must be a finite number in [0, 1]"),
        ("delta", "0.1", "delta='0.1': must be a finite number in [0, 1]"),
        ("eta", float("inf"), "eta=inf: must be a finite number > 0"),
        ("eta", 0.0, "eta=0.0: must be a finite number > 0"),
    ],
)
def test_vector_envs_set_attr_checks_like_the_constructor(
    vector_kwargs: dict, vector_world: CutWorld, name: str, value: object, message: str
) -> None:
    """``set_attr``/``set_attr_at`` (Gymnasium), ``set_attr`` (SB3) and a plain assignment
    (``env.delta = …``) refuse what the constructor refuses, with its message, and set no value
    of a list with a bad one."""
    from cutbg_env.env import CutBackgroundEnv
    from cutbg_env.vec_env import BatchedCutBackgroundVecEnv
    from cutbg_env.vector import CutBackgroundVectorEnv

    match = f"^{re.escape(message)}$"
    vector = CutBackgroundVectorEnv(2, world=vector_world, **vector_kwargs)
    sb3 = BatchedCutBackgroundVecEnv(2, world=vector_world, **vector_kwargs)
    before = vector.get_attr(name)
    with pytest.raises(OptionError, match=match):
        vector.set_attr(name, value)
    with pytest.raises(OptionError, match=match):
        vector.set_attr(name, [0.5, value])
    with pytest.raises(OptionError, match=match):
        vector.set_attr_at(name, [value], [1])
    assert vector.get_attr(name) == before  # the good value of the list was not set either
    with pytest.raises(OptionError, match=match):
        sb3.set_attr(name, value, indices=[1])
    assert sb3.get_attr(name) == list(before)
    single = CutBackgroundEnv(world=vector_world, **vector_kwargs)
    with pytest.raises(OptionError, match=match):
        setattr(single, name, value)
    assert getattr(single, name) == before[0]
    single.delta, single.eta = 1, 2  # a good value is set, as a float like the constructor's
    assert (single.delta, single.eta) == (1.0, 2.0) and isinstance(single.delta, float)
    if value is not None:  # None is the constructor's "calibrated δ"
        with pytest.raises(OptionError, match=match):
            CutBackgroundVectorEnv(2, world=vector_world, **{**vector_kwargs, name: value})
    vector.set_attr(name, 1)  # a good value is set, as a float like the constructor's
    sb3.set_attr(name, 0.5, indices=[0])
    assert vector.get_attr(name) == (1.0, 1.0) and sb3.get_attr(name) == [0.5, before[1]]
    assert isinstance(vector.get_attr(name)[0], float)


# -- files: umask, read-only outputs, temp files of killed processes, unwritable folders ----
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    before = os.umask(mask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "b.zip", suffix=".zip") as tmp:
            tmp.write_bytes(b"zip")
    finally:
        os.umask(before)
    for name in ("a.json", "b.zip"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.zip"]  # no temp left


def test_a_read_only_output_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("{}\n")
    path.chmod(0o444)
    with pytest.raises(OutputError, match=r"calibration\.json is read-only: make it writable"):
        write_json(path, {"delta": {}})
    assert path.read_text() == "{}\n" and path.stat().st_mode & 0o777 == 0o444
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getppid()
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    stale = [
        ckpt / f".epoch_002.zip.tmp-{dead}-abc.zip",
        tmp_path / f".config.json.tmp-{dead}-x.tmp",
        tmp_path / f".cluttered-animals.tmp-{dead}",  # a folder (the generator's)
    ]
    for p in stale[:2]:
        p.write_bytes(b"")
    stale[2].mkdir()
    kept = [
        ckpt / f".epoch_003.zip.tmp-{alive}-def.zip",  # a live writer's
        ckpt / f".epoch_004.zip.tmp-{os.getpid()}-g.zip",  # this process's own
        ckpt / "epoch_001.zip",
        tmp_path / ".hidden",
    ]
    for p in kept:
        p.write_bytes(b"")
    assert remove_stale_temps(tmp_path) == sorted(stale[1:])
    assert remove_stale_temps(tmp_path, recursive=True) == [stale[0]]
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_unwritable_output_folder_is_named_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OutputError, match=r"^cannot write in .*results/out \(.*\): make it"):
        check_writable(blocker / "out", "--out")
    fine = tmp_path / "new" / "deeper"
    assert check_writable(fine, "--out") == fine and not (tmp_path / "new").exists()


@slow
def test_eval_checks_the_output_folder_before_evaluating(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    import evaluate.run

    calls: list[object] = []
    monkeypatch.setattr(evaluate.run, "evaluate_class", lambda *a, **k: calls.append(a))
    (tmp_path / "blocker").write_text("")
    argv = ["--classes", "dog", "--split", "trainval", "--max-images", "4"]
    assert eval_main([*argv, "--out", str(tmp_path / "blocker" / "results")]) == 2
    assert one_error_line(capsys).startswith(f"cannot write in {tmp_path / 'blocker'}/results")
    assert calls == []


# -- bad files: images, splits, calibration, checkpoints, agents -----------------------------
@pytest.fixture
def tiny_copy(tiny_animals: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_animals, tmp_path / "cluttered-animals"))


def test_truncated_jpeg_is_named(tiny_copy: Path) -> None:
    data = VOCDataset(tiny_copy, "trainval")
    path = data.image_path(0)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match=rf"^image {re.escape(str(path))} is truncated \(3000 "):
        data.load_image(0)
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"is corrupt or not an image OpenCV can read"):
        data.load_image(0)
    assert data.load_image(1).shape[2] == 3  # the others still load


def test_empty_split_is_one_line(tiny_copy: Path) -> None:
    split = tiny_copy / "ImageSets" / "Main" / "trainval.txt"
    split.write_text("\n")
    with pytest.raises(DataError, match=r"^split file .*trainval\.txt lists no image: "):
        VOCDataset(tiny_copy, "trainval")


@slow
def test_class_without_positives_in_training_is_one_line(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A class that the split holds no image of: one line, not torch's empty stack."""
    data = Path(os.environ["CUTBG_DATA"]) / "cluttered-animals"
    root = Path(shutil.copytree(data, tmp_path / "set"))
    full = VOCDataset(root, "trainval")
    keep = [full.ids[i] for i in range(len(full)) if not full.gt_boxes(i, "dog")]
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in keep))
    assert VOCDataset(root, "trainval").positives("dog") == []
    argv = ["agent", "--class", "dog", "--dataset", str(root), "--no-progress", "--epochs", "1"]
    argv += ["--checkpoint", str(own_runs / "classifier.pt"), "--delta", "0.1"]
    argv += ["--max-images", "2", "--out", str(tmp_path / "run")]
    assert train_main(argv) == 2
    assert re.fullmatch(
        r"split 'trainval' of .*set has no image of class 'dog': pick another class or split",
        one_error_line(capsys),
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[]", r"holds a list, not an object"),
        (b'{"delta": []}', r"'delta' is a list, not an object of classes"),
        (b'{"delta": {"dog": "x"}}', r"delta of 'dog' is 'x', not a number in \[0, 1\]"),
        (b'{"delta": {"dog": NaN}}', r"delta of 'dog' is nan, not a number in \[0, 1\]"),
        (b'{"heatmap_threshold": 3}', r"'heatmap_threshold' is a int, not an object"),
        (b'{"refinement_hits": {"dog": []}}', r"refinement_hits of 'dog' is not an object of"),
        (b'{"refinement_hits": {"dog": {"mid/mass": 3}}}', r"refinement_hits of 'dog' is not"),
        (b'{"refinement_hits": {"dog": {"mid/mass/0.4": -1}}}', r"hit counts ≥ 0: recreate"),
        (b"\xff\xfe{}", r"is unreadable \(.*utf-8"),
    ],
)
def test_bad_calibration_file_is_named(
    content: bytes, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    path = paths.calibration_path("animals")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^calibration file {re.escape(str(path))}.*{message}"):
        load_calibration("animals")


@slow
def test_bad_calibration_file_in_a_cli_is_one_line(
    own_runs: Path, capsys: pytest.CaptureFixture
) -> None:
    (own_runs / "calibration.json").write_text("[]")
    assert train_main(["calibrate", "--classes", "cat"]) == 2
    assert "holds a list, not an object: recreate it with" in one_error_line(capsys)


def test_torch_advice_on_weights_only_is_never_repeated(tmp_path: Path) -> None:
    from cutbg_env.backbone import load_classifier

    bad = tmp_path / "classifier.pt"
    torch.save({"x": object.__new__(zipfile.ZipInfo)}, bad)  # a pickle, not plain tensors
    with pytest.raises(CheckpointError) as info:
        load_classifier(bad)
    assert "weights_only" not in str(info.value) and str(bad) in str(info.value)
    exc = RuntimeError("Weights only load failed. Re-running with weights_only=False will work")
    assert reason(exc) == "RuntimeError: not a file of plain tensors"


def test_garbage_agent_and_checkpoint_zips_are_named(tmp_path: Path) -> None:
    from cutbg_env.runs import load_agent

    zip_path = tmp_path / "agent.zip"
    zip_path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(zip_path))} is not a readable"):
        load_agent(zip_path)
    with pytest.raises(CheckpointError, match=r"is not a readable checkpoint \(.*\): train the"):
        load_checkpoint(zip_path)
    with pytest.raises(CheckpointError, match=r"is not a readable agent zip"):
        runs.zip_run_id(zip_path, "retrain it")


@pytest.mark.parametrize(
    "state",
    ["{not json", "[]", '{"epoch": "x", "episodes": 1, "timesteps": 1}', '{"epoch": 1}', b"\xff"],
)
def test_corrupt_checkpoint_state_is_named(tmp_path: Path, state: str | bytes) -> None:
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "epoch_001.zip").write_bytes(b"")
    raw = state if isinstance(state, bytes) else state.encode()
    (ckpt / "state.json").write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"state\.json is unreadable \(.*\): delete the run"):
        last_checkpoint(tmp_path)


@slow
@pytest.mark.parametrize("members", [1, 2])
def test_corrupt_state_on_resume_is_one_line(
    own_runs: Path, capsys: pytest.CaptureFixture, members: int
) -> None:
    """One DQN's own checkpoint, or a member's (the default agent's members/m<k>/)."""
    run = own_runs / "dog" if members == 1 else own_runs / "dog" / "members" / "m0"
    ckpt = run / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "epoch_001.zip").write_bytes(b"")
    (ckpt / "state.json").write_text("{broken")
    argv = ["agent", "--class", "dog", "--resume", "--no-progress", "--members", str(members)]
    assert train_main(argv) == 2
    assert f"{ckpt / 'state.json'} is unreadable" in one_error_line(capsys)


@slow
def test_corrupt_agent_zip_in_evaluation_is_one_line(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (own_runs / "dog" / "agent.zip").write_bytes(b"PK\x03\x04 truncated")
    argv = ["--classes", "dog", "--split", "trainval", "--max-images", "4"]
    assert eval_main([*argv, "--out", str(tmp_path / "res")]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"{own_runs / 'dog' / 'agent.zip'} is not a readable agent zip")


@slow
def test_no_positive_test_image_says_so(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = VOCDataset(Path(os.environ["CUTBG_DATA"]) / "cluttered-animals", "trainval")
    first = next(i for i in range(len(data)) if data.gt_boxes(i, "dog"))
    argv = ["--classes", "dog", "--split", "trainval", "--max-images", str(max(first, 1))]
    if first == 0:
        pytest.skip("the first image holds a dog")
    assert eval_main([*argv, "--out", str(tmp_path / "res")]) == 2
    assert re.fullmatch(
        rf"none of the {first} evaluated trainval images of .* holds a dog: its AP and CorLoc "
        r"are undefined; .*",
        one_error_line(capsys),
    )
    assert not (tmp_path / "res").exists()
    # several classes, none with a positive image (one without is only a warning)
    shutil.copytree(own_runs / "dog", own_runs / "bird")
    argv = ["--classes", "bird,dog", "--split", "trainval", "--max-images", str(first)]
    assert eval_main([*argv, "--out", str(tmp_path / "res")]) == 2
    assert re.fullmatch(
        rf"none of the {first} evaluated trainval images of .* holds any of bird, dog: their "
        r"AP and CorLoc are undefined; .*",
        one_error_line(capsys),
    )


# -- run folders: one run each -----------------------------------------------------------------
def _fake_run(folder: Path, ids: dict[str, str | None], finished: bool = True) -> None:
    """A run folder whose files carry the run ids ``ids`` (file name -> id)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"delta": 0.1, "finished": finished}
    if ids.get("config.json"):
        config["run_id"] = ids["config.json"]
    write_json(folder / "config.json", config)
    if "refinement.json" in ids:
        write_json(folder / "refinement.json", {"run_id": ids["refinement.json"]})
    if "agent.zip" in ids:
        with zipfile.ZipFile(folder / "agent.zip", "w") as z:
            z.writestr("data", "{}")
        if ids["agent.zip"]:
            runs.stamp_zip(folder / "agent.zip", ids["agent.zip"])


def test_run_ids_must_agree(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, {"config.json": "a", "refinement.json": "a", "agent.zip": "a"})
    assert runs.check_run(run, "retrain it") == "a" and runs.run_state(run) == "finished"
    _fake_run(run, {"config.json": "b", "refinement.json": "a", "agent.zip": "a"})
    with pytest.raises(
        CheckpointError,
        match=r"^.*run mixes the files of several runs \(config\.json: b, refinement\.json: a, "
        r"agent\.zip: a\): retrain it$",
    ):
        runs.check_run(run, "retrain it")
    legacy = tmp_path / "legacy"  # files of an older version: no id anywhere, accepted
    _fake_run(legacy, {"config.json": None, "agent.zip": None})
    assert runs.check_run(legacy, "retrain it") is None


@slow
def test_eval_refuses_a_folder_of_mixed_runs(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = json.loads((own_runs / "dog" / "config.json").read_text())
    assert config["run_id"] and config["finished"] is True
    write_json(own_runs / "dog" / "config.json", config | {"run_id": "someone-else"})
    argv = ["--classes", "dog", "--split", "trainval", "--max-images", "4"]
    assert eval_main([*argv, "--out", str(tmp_path / "res")]) == 2
    line = one_error_line(capsys)
    assert "mixes the files of several runs (config.json: someone-else" in line
    assert line.endswith("retrain it with `make train CLASS=dog FORCE=1`")


@slow
def test_interrupted_run_names_resume(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (own_runs / "dog" / "agent.zip").unlink()
    (own_runs / "dog" / "checkpoints").mkdir()
    message = (
        f"{own_runs / 'dog'} holds an interrupted training run (no final agent.zip): finish it "
        "with `make train CLASS=dog RESUME=1` (--resume), or start it over with "
        "`make train CLASS=dog FORCE=1` (--force)"
    )
    for argv in (["--classes", "dog"], []):  # `make eval` passes no class
        assert eval_main([*argv, "--split", "trainval", "--out", str(tmp_path / "r")]) == 2
        assert one_error_line(capsys) == message
    with pytest.raises(CheckpointError, match=r"interrupted training run"):
        runs.trained_agent("animals", "dog")


def test_a_run_being_trained_is_named(tmp_path: Path) -> None:
    run = tmp_path / "dog"
    with runs.run_lock(run, "r1"):
        owner = json.loads(runs.owner_file(run).read_text())
        assert owner["pid"] == os.getpid() and owner["run_id"] == "r1"
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(run))} is being trained now"):
            runs.trained_agent("animals", "dog", run / "agent.zip")
        code = (
            "import sys; from pathlib import Path; from cutbg_env import runs\n"
            "with runs.run_lock(Path(sys.argv[1]), 'r2'): pass\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(run)], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 1 and "RunBusyError" in proc.stderr
        assert (
            f"{run} is being trained by pid {os.getpid()} on {owner['host']} (run r1, started "
            in proc.stderr
        )
        assert "train into another folder with --out" in proc.stderr
    assert not runs.owner_file(run).exists()
    with runs.run_lock(run, "r3"):  # released: the next run takes it
        assert runs.training_owner(run)["run_id"] == "r3"


def test_a_second_classifier_training_of_the_dataset_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``train classifier`` holds the lock of the checkpoint it writes, as ``train agent`` holds
    its run folder's: a second one into the same checkpoint stops before any work."""
    import train.classifier

    def no_training(*args: object) -> None:
        raise AssertionError("the classifier trained without the checkpoint's lock")

    monkeypatch.setattr(train.classifier, "_train_classifier", no_training)
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "runs"))
    ckpt = paths.classifier_path("animals")
    assert ckpt == tmp_path / "runs" / "animals" / "classifier.pt"
    for argv in (["classifier"], ["classifier", "--checkpoint", str(tmp_path / "c.pt")]):
        held = Path(argv[-1]) if len(argv) > 1 else ckpt
        with runs.run_lock(held, "r1"):
            owner = json.loads(runs.owner_file(held).read_text())
            assert train_main([*argv, "--minutes", "0.01"]) == 2
            assert one_error_line(capsys) == (
                f"{held} is being trained by pid {os.getpid()} on {owner['host']} (run r1, "
                f"started {owner['started']}): wait for it to finish, or train into another "
                "--checkpoint"
            )
        assert not held.exists() and not runs.owner_file(held).exists()
    # a free checkpoint: the training runs (here the stub), inside the lock, which it releases
    with pytest.raises(AssertionError, match="without the checkpoint's lock"):
        train.classifier.train_classifier(train.classifier.ClassifierArgs(minutes=0.01))
    with runs.run_lock(ckpt, "r2"):
        assert runs.training_owner(ckpt)["run_id"] == "r2"


def test_stale_owner_file_of_a_killed_training_is_ignored(tmp_path: Path) -> None:
    run = tmp_path / "dog"
    run.mkdir()
    write_json(runs.owner_file(run), {"pid": dead_pid(), "host": os.uname().nodename})
    assert runs.training_owner(run) is None
    with runs.run_lock(run, "r1"):  # the lock itself was released by the OS
        assert runs.training_owner(run)["run_id"] == "r1"


def test_makefile_quotes_the_dataset_path() -> None:
    out = subprocess.run(
        ["make", "-n", "train", "eval", "DATASET=/a b/c"], cwd=REPO, capture_output=True, text=True
    )
    lines = [
        ln for ln in out.stdout.splitlines() if " -m train agent" in ln or " -m evaluate" in ln
    ]
    assert len(lines) == 2 and all("--dataset '/a b/c'" in ln for ln in lines), out.stdout
    assert (
        paths.make_command("train", "/a b/c", CLASS="dog")
        == "make train CLASS=dog DATASET='/a b/c'"
    )


def test_makefile_seeds_accept_a_runs_folder_with_spaces(tmp_path: Path) -> None:
    """``make seeds`` names each seed's agent.zip under ``$CUTBG_RUNS`` as a target: a folder
    with a space used to split it in two targets (make's "overriding recipe" warnings, every seed
    retrained). An existing zip is kept, the missing seeds are trained."""
    runs_dir = tmp_path / "my runs"
    (runs_dir / "animals" / "dog").mkdir(parents=True)
    zip_path = runs_dir / "animals" / "dog" / "agent.zip"
    zip_path.write_bytes(b"")
    os.utime(zip_path, (0, 0))  # older than anything: still not retrained (order-only prereq)
    for how in ("argument", "environment"):
        argv = ["make", "-n", "seeds", "SEEDS=3", "CLASS=dog"]
        env = dict(os.environ)
        if how == "argument":
            argv.append(f"CUTBG_RUNS={runs_dir}")
        else:
            env["CUTBG_RUNS"] = str(runs_dir)
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
        lines = [ln for ln in out.stdout.splitlines() if " -m train agent" in ln]
        assert [ln.split("--seed ")[1].split()[0] for ln in lines] == ["1", "2"], out.stdout


# -- progress bars with true totals ----------------------------------------------------------
def test_training_bar_counts_the_planned_episodes_to_100_percent(tmp_path: Path) -> None:
    from train.schedules import EpochCallback, EpochClock

    for start in (0, 4):  # a fresh run, and one resumed after 4 episodes
        clock = EpochClock(images=3, episodes=start)
        cb = EpochCallback(clock, 2, tmp_path, False, progress=True)
        cb._end_epoch = lambda epoch: None  # no model to checkpoint here
        cb.locals = {"dones": [True, True], "infos": [{"drop": 0.1}] * 2}
        assert (cb.bar.total, cb.bar.n) == (6, start)
        steps = 0
        while cb._on_step():
            steps += 1
        assert (cb.bar.n, cb.bar.total, clock.episodes) == (6, 6, 6)
        assert steps == (6 - start) // 2 - 1
        cb.close()


@slow
def test_evaluation_bar_counts_localized_images_times_methods(
    own_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bar's total is true: the images evaluate localizes (those holding the class: one dog
    among the first five trainval images) times the methods."""
    import evaluate.run
    from evaluate.tables import METHODS

    bars: list = []

    class Recorder(evaluate.run.tqdm):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            bars.append(self)

    monkeypatch.setattr(evaluate.run, "tqdm", Recorder)
    argv = ["--classes", "dog", "--split", "trainval", "--max-images", "5"]
    argv += ["--exhaustive-windows", "4", "--figures", "0", "--out", str(tmp_path / "res")]
    assert eval_main(argv) == 0
    (bar,) = bars
    data = open_split("animals", "trainval")
    assert evaluate.run.located_images(data, "dog", range(5)) == [1]
    assert bar.total == 1 * len(METHODS) and bar.n == bar.total
