"""The shared command-line layer (tyro dataclasses, one-line errors), the run/data paths, the
calibration file's loading and δ's resolution order."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from cutbg_env import paths, shipped
from cutbg_env.calibration import DEFAULT_DELTA, load_calibration, resolve_delta
from cutbg_env.cli import StageArgs, command_main, run_cli, subcommand_main
from cutbg_env.data import dataset_splits, open_split
from cutbg_env.errors import CheckpointError, DataError, OptionError
from cutbg_env.io import file_sha256


@dataclass(frozen=True)
class Demo(StageArgs):
    """Make widgets."""

    widgets: int = 3
    """Number of widgets to make."""
    shiny: bool = True
    """Polish each widget."""


# -- run_cli / command_main / subcommand_main ---------------------------------------------------
def test_run_cli_turns_project_errors_into_one_line(capsys: pytest.CaptureFixture) -> None:
    def bad() -> None:
        raise OptionError("--a and --b contradict each other: drop one")

    assert run_cli(bad) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --a and --b contradict each other: drop one\n"
    assert captured.out == ""
    assert run_cli(lambda: None) == 0


def test_run_cli_lets_programming_errors_through() -> None:
    def broken() -> None:
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError, match="a bug, not bad input"):
        run_cli(broken)


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    # `python -m train classifier --help | head -1`: the reader is gone before the help is written
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "train", "classifier", "--help"]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), err) == (1, "")


def test_command_main_parses_the_dataclass_fields() -> None:
    seen: list[Demo] = []
    assert command_main("demo", None, Demo, seen.append, ["--widgets", "0", "--no-shiny"]) == 0
    assert seen == [Demo(widgets=0, shiny=False)]
    assert command_main("demo", None, Demo, seen.append, ["--dataset", "voc2007"]) == 0
    assert seen[1] == Demo(dataset="voc2007") and seen[1].shiny is True


def test_command_main_help_shows_the_field_docstrings(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        command_main("demo", None, Demo, print, ["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # tyro wraps lines to the terminal
    assert "Make widgets." in out and "Number of widgets to make." in out
    assert "--shiny" in out and "--no-shiny" in out and "Polish each widget." in out


def test_command_main_error_of_the_body_is_one_line(capsys: pytest.CaptureFixture) -> None:
    def body(args: Demo) -> None:
        raise CheckpointError(f"no widget factory for {args.widgets} widgets: run `make factory`")

    assert command_main("demo", None, Demo, body, ["--widgets", "7"]) == 2
    assert capsys.readouterr().err == (
        "error: no widget factory for 7 widgets: run `make factory`\n"
    )


def test_command_main_rejects_an_unknown_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        command_main("demo", None, Demo, print, ["--gadgets", "2"])
    assert info.value.code == 2
    assert "--gadgets" in capsys.readouterr().err


def test_subcommand_main_runs_the_chosen_stage() -> None:
    @dataclass(frozen=True)
    class Other(StageArgs):
        """Another stage."""

        level: float = 0.5
        """A level."""

    ran: list = []
    stages = {"demo": (Demo, ran.append), "other": (Other, ran.append)}
    assert subcommand_main("prog", None, stages, ["other", "--level", "0.25"]) == 0
    assert subcommand_main("prog", None, stages, ["demo", "--widgets", "5"]) == 0
    assert ran == [Other(level=0.25), Demo(widgets=5)]


def test_stage_args_classifier_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from train.classifier import ClassifierArgs

    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    # No trained classifier: the stages read the shipped one on animals, as the env does ...
    assert StageArgs().classifier_file() == shipped.classifier_path()
    assert StageArgs(dataset="voc2007").classifier_file() == tmp_path / "voc2007" / "classifier.pt"
    assert StageArgs(checkpoint="my.pt").classifier_file() == Path("my.pt")
    # ... but the classifier stage writes to the runs folder, never over the shipped file.
    assert ClassifierArgs().classifier_file() == tmp_path / "animals" / "classifier.pt"
    trained = tmp_path / "animals" / "classifier.pt"
    trained.parent.mkdir()
    trained.write_bytes(b"")
    assert StageArgs().classifier_file() == trained  # a trained one wins


def test_agent_delta_falls_back_to_the_shipped_calibration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from train.agent import AgentArgs, class_delta

    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    shipped_delta = shipped.calibration()["delta"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped classifier's δ: no default-δ warning
        assert class_delta(AgentArgs(class_name="cat")) == shipped_delta["cat"]
        assert class_delta(AgentArgs(class_name="cat", delta=0.3)) == 0.3
    mine = tmp_path / "mine.pt"  # another classifier: the shipped δ is not its δ
    with pytest.warns(UserWarning, match=r"no calibrated delta for animals/cat"):
        assert class_delta(AgentArgs(class_name="cat", checkpoint=str(mine))) == DEFAULT_DELTA


def test_classifier_args_write_to_the_checkpoint_field() -> None:
    from train.classifier import ClassifierArgs

    names = {f.name for f in dataclasses.fields(ClassifierArgs)}
    assert "out" not in names and {"checkpoint", "dataset", "root", "device"} <= names
    assert ClassifierArgs().lr is None  # resolved per network when training
    assert ClassifierArgs(checkpoint="c.pt").classifier_file() == Path("c.pt")


def test_removed_flags_are_rejected(capsys: pytest.CaptureFixture) -> None:
    from train.__main__ import main as train_main

    for argv, word in (
        (["classifier", "--out", "x.pt"], "--out"),
        (["agent", "--branches", "2"], "--branches"),
        (["agent", "--average-last", "2"], "--average-last"),
        (["agent", "--observe-cut-mass"], "--observe-cut-mass"),
        (["agent", "--ensemble-member"], "--ensemble-member"),
        (["refinement", "--class", "dog"], "refinement"),
    ):
        with pytest.raises(SystemExit) as info:
            train_main(argv)
        assert info.value.code == 2, argv
        assert word in capsys.readouterr().err, argv


# -- paths -------------------------------------------------------------------------------------
def test_paths_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the checkout (another test may cd)
    monkeypatch.delenv("CUTBG_DATA", raising=False)
    monkeypatch.delenv("CUTBG_RUNS", raising=False)
    assert (paths.data_dir(), paths.runs_dir()) == (Path("data"), Path("runs"))
    monkeypatch.setenv("CUTBG_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "r"))
    assert (paths.data_dir(), paths.runs_dir()) == (tmp_path / "d", tmp_path / "r")
    runs = tmp_path / "r"
    assert paths.classifier_path("voc2007") == runs / "voc2007" / "classifier.pt"
    assert paths.calibration_path("animals") == runs / "animals" / "calibration.json"
    assert paths.agent_dir("animals", "dog") == runs / "animals" / "dog"
    assert paths.seed_dir("animals", "dog") == runs / "animals" / "dog"  # seed 0
    assert paths.seed_dir("animals", "dog", 3) == runs / "animals" / "dog" / "seeds" / "seed_3"
    # a dataset given as a folder keeps its runs under the folder's name and a hash of its path
    key = paths.dataset_key("/data/sets/my-set")
    assert paths.agent_dir("/data/sets/my-set", "cat") == runs / key / "cat"
    assert (paths.AGENT_FILE, paths.CONFIG_FILE, paths.DEFAULT_DATASET) == (
        "agent.zip",
        "config.json",
        "animals",
    )


@pytest.mark.parametrize("dataset", ["animals", "voc2007", "voc2012"])
def test_dataset_key_of_a_named_dataset_is_its_name(dataset: str) -> None:
    assert paths.dataset_key(dataset) == dataset


def test_dataset_key_of_a_folder_hashes_its_resolved_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    digest = hashlib.sha256(b"/a/b/my-set").hexdigest()[:8]
    assert paths.dataset_key("/a/b/my-set") == f"my-set-{digest}"
    assert paths.dataset_key("/a/b/my-set/") == f"my-set-{digest}"
    # two folders with the same last part never share a runs folder
    assert paths.dataset_key("/a/x/c") != paths.dataset_key("/b/x/c")
    monkeypatch.chdir(tmp_path)  # a relative path is keyed by where it resolves
    assert paths.dataset_key("x/y") == paths.dataset_key(str(tmp_path / "x" / "y"))
    assert paths.dataset_key("/a b/c d").startswith("c_d-")  # no space in the folder name


def test_make_command_leaves_out_the_default_dataset() -> None:
    assert paths.make_command("train-classifier", "animals") == "make train-classifier"
    assert (
        paths.make_command("train", "voc2007", CLASS="cat")
        == "make train CLASS=cat DATASET=voc2007"
    )
    assert (
        paths.make_command("seeds", "animals", CLASS="dog", SEEDS=5)
        == "make seeds CLASS=dog SEEDS=5"
    )


# -- datasets ----------------------------------------------------------------------------------
def test_dataset_splits() -> None:
    assert dataset_splits("animals") == ("trainval", "test")
    assert dataset_splits("voc2007") == ("trainval", "test")
    assert dataset_splits("voc2012") == ("train", "val")
    assert dataset_splits("/some/voc-layout/folder") == ("trainval", "test")


def test_open_split(tiny_animals: Path, tmp_path: Path) -> None:
    test = open_split(str(tiny_animals), "test")
    assert (test.root, test.split, len(test)) == (tiny_animals, "test", 12)
    trainval = open_split("animals", "trainval", root=tiny_animals.parent)
    assert (trainval.root, len(trainval)) == (tiny_animals, 24)
    with pytest.raises(
        DataError, match=r"dataset 'voc2012' not found at .*VOCdevkit/VOC2012; PASCAL VOC must be"
    ):
        open_split("voc2012", "train", root=tmp_path)
    with pytest.raises(DataError, match=r"split file .*ImageSets/Main/val\.txt does not exist"):
        open_split(str(tiny_animals), "val")


# -- calibration file and δ --------------------------------------------------------------------
def test_load_calibration_and_resolve_delta(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    assert load_calibration("animals") == {}
    with pytest.warns(
        UserWarning, match=r"no calibrated delta for animals/dog .*; using 0\.1\. Run"
    ):
        assert resolve_delta("animals", "dog", None) == DEFAULT_DELTA == 0.1
    path = tmp_path / "animals" / "calibration.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"delta": {"dog": 0.25}}))
    assert load_calibration("animals") == {"delta": {"dog": 0.25}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the calibrated value: no warning
        assert resolve_delta("animals", "dog", None) == 0.25
        assert resolve_delta("animals", "dog", 0) == 0.0  # a given δ wins, 0 included
        assert resolve_delta("animals", "cat", 0.5) == 0.5
    # With the shipped classifier the shipped calibration fills in what the file lacks.
    ours = shipped.classifier_path()
    both = load_calibration("animals", ours)
    assert both["delta"] == shipped.calibration()["delta"] | {"dog": 0.25}
    assert both["heatmap_layer"] == shipped.calibration()["heatmap_layer"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_delta("animals", "dog", None, ours) == 0.25  # the file's value wins
        assert resolve_delta("animals", "cat", None, ours) == shipped.calibration()["delta"]["cat"]
    path.write_text("{oops")
    with pytest.raises(
        DataError,
        match=r"calibration file .*calibration\.json is unreadable \(.*\): recreate it with "
        r"`python -m train calibrate --dataset animals`",
    ):
        load_calibration("animals")


def test_calibration_made_with_another_classifier_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path))
    ours, other = tmp_path / "ours.pt", tmp_path / "other.pt"
    ours.write_bytes(b"ours")
    other.write_bytes(b"other")
    digest = hashlib.sha256(b"ours").hexdigest()
    assert file_sha256(ours) == digest
    path = tmp_path / "animals" / "calibration.json"
    path.parent.mkdir()
    table = {
        "delta": {"dog": 0.25, "cat": 0.3, "cow": 0.4},
        "heatmap_threshold": {"dog": 0.5, "cat": 0.6},
        "classifier": {"dog": digest, "cat": hashlib.sha256(b"other").hexdigest()},
    }
    path.write_text(json.dumps(table))
    assert load_calibration("animals") == table  # no classifier named: the file as it is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_calibration("animals", tmp_path / "missing.pt") == table  # not readable
    with pytest.warns(
        UserWarning,
        match=r"calibration\.json: cat calibrated with another classifier than .*ours\.pt; "
        r"ignoring those entries\. Recalibrate: `python -m train calibrate --dataset animals "
        r"--classes cat`",
    ):
        kept = load_calibration("animals", ours)
    # cat goes from every table; dog (made with ours) and cow (no record) stay.
    assert kept["delta"] == {"dog": 0.25, "cow": 0.4}
    assert kept["heatmap_threshold"] == {"dog": 0.5}
    with pytest.warns(UserWarning, match=r"dog calibrated with another classifier"):
        assert resolve_delta("animals", "cat", None, other) == 0.3
    # The shipped classifier: its own calibration replaces entries made with another one.
    with pytest.warns(UserWarning, match=r"cat, dog calibrated with another classifier"):
        merged = load_calibration("animals", shipped.classifier_path())
    assert merged["delta"]["dog"] == shipped.calibration()["delta"]["dog"]
    assert merged["delta"]["cow"] == 0.4
