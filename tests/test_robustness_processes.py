"""Real processes on the tiny pipeline: two trainings of one run folder, two calibrations of one
dataset, trainings killed with SIGKILL (inside a checkpoint save included) then resumed, and a
member worker outliving a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutbg_env import runs
from evaluate.__main__ import main as eval_main

REPO = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow

TINY_AGENT = [
    "--class", "dog", "--n-envs", "2", "--max-images", "4", "--learning-starts", "32",
    "--buffer-size", "500", "--batch-size", "16", "--train-freq", "2", "--target-update", "100",
    "--threads", "1", "--no-progress", "--members", "1",
]  # fmt: skip
"""A training of a few seconds on the tiny dataset: one DQN, whose run-folder files these tests
follow (the default's members train as such runs: tests/test_members.py)."""

KILLER = """
import os, signal, sys
import cutbg_env.runs, train.schedules
from train.__main__ import main

point, argv = sys.argv[1], sys.argv[2:]
stamp, write_json = cutbg_env.runs.stamp_zip, train.schedules.write_json

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def stamp_then_kill(path, run_id):  # the temp zip is written, not yet in place
    stamp(path, run_id)
    if point == "checkpoint-save" and ".epoch_002.zip.tmp-" in path.name:
        kill()
    if point == "final-save" and ".agent.zip.tmp-" in path.name:
        kill()

def write_then_kill(path, obj):
    write_json(path, obj)
    if point == "after-state" and path.name == "state.json" and obj["epoch"] == 1:
        kill()

cutbg_env.runs.stamp_zip = train.schedules.stamp_zip = stamp_then_kill
train.schedules.write_json = write_then_kill
sys.exit(main(argv))
"""
"""Runs ``python -m train`` and SIGKILLs itself at a named point."""

HOLDER = """
import sys, time
from pathlib import Path
import train.schedules
from train.__main__ import main

release, argv = Path(sys.argv[1]), sys.argv[2:]
write_json = train.schedules.write_json

def write_then_wait(path, obj):
    write_json(path, obj)
    if path.name == "state.json" and obj["epoch"] == 1:
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

train.schedules.write_json = write_then_wait
sys.exit(main(argv))
"""
"""Runs ``python -m train`` and, once its first epoch is saved, waits for a file to appear: the
training holds its folder for as long as a test needs, however fast the machine."""


def train_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "train", *argv]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp-" in p.name)


@slow
def test_second_training_of_a_folder_is_refused_and_the_first_is_intact(
    own_runs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    release = tmp_path / "release"
    cmd = [sys.executable, "-c", HOLDER, str(release), "agent", *TINY_AGENT, "--epochs", "3"]
    first = subprocess.Popen([*cmd, "--out", str(out)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not runs.owner_file(out).exists() and time.monotonic() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        owner = json.loads(runs.owner_file(out).read_text())
        assert owner["pid"] == first.pid
        second = run(train_cmd("agent", *TINY_AGENT, "--epochs", "1", "--out", str(out)))
        assert first.poll() is None, "the first training ended before the second tried"
    finally:
        release.touch()
        first_err = first.communicate(timeout=600)[1]
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines == [
        f"error: {out} is being trained by pid {first.pid} on {owner['host']} (run "
        f"{owner['run_id']}, started {owner['started']}): wait for it to finish, or train into "
        "another folder with --out"
    ]
    assert first.returncode == 0, first_err
    # the first run is intact: its files all carry its id, one TensorBoard run
    assert runs.check_run(out, "retrain") == owner["run_id"]
    config = json.loads((out / "config.json").read_text())
    assert config["finished"] is True and config["args"]["epochs"] == 3
    assert len(list((out / "tb").iterdir())) == 1
    # a finished folder is retrained only with --force, which starts clean
    again = run(train_cmd("agent", *TINY_AGENT, "--epochs", "1", "--out", str(out)))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {out} holds a finished run: retrain it with --force (its files are replaced); "
        "or train into another --out"
    ]
    forced = run(train_cmd("agent", *TINY_AGENT, "--epochs", "1", "--force", "--out", str(out)))
    assert forced.returncode == 0, forced.stderr
    new_id = runs.check_run(out, "retrain")
    assert new_id != owner["run_id"]
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*")) == ["epoch_001.zip"]
    assert len(list((out / "tb").iterdir())) == 1


@slow
def test_two_calibrations_at_once_keep_both_classes(own_runs: Path) -> None:
    path = own_runs / "calibration.json"
    before = json.loads(path.read_text())
    # the validation subset of seed 1 (one tiny image) holds a bear and a giraffe
    procs = [
        subprocess.Popen(
            train_cmd("calibrate", "--classes", c, "--seed", "1"),
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in ("bear", "giraffe")
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    calib = json.loads(path.read_text())
    assert all("calibration -> " in e for e in errs)
    assert {"dog", "bear", "giraffe"} <= set(calib["heatmap_threshold"])
    assert {"bear", "giraffe"} <= set(calib["validation"]) and "zebra" not in calib["delta"]
    assert calib["delta"]["dog"] == before["delta"]["dog"]  # the class nobody recalibrated


@slow
def test_killed_trainings_resume_and_leave_no_temp_file(
    own_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dog = own_runs / "dog"  # the default run folder, holding the pipeline's finished run

    def killed(point: str, *argv: str) -> None:
        proc = run([sys.executable, "-c", KILLER, point, "agent", *TINY_AGENT, *argv])
        assert proc.returncode == -signal.SIGKILL, proc.stderr

    # 1. killed inside epoch 2's checkpoint save: its temp zip stays, epoch 1 is the newest
    killed("checkpoint-save", "--epochs", "3", "--force")
    assert temps(dog) and all(".epoch_002.zip.tmp-" in t for t in temps(dog))
    state = json.loads((dog / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and runs.run_state(dog) == "interrupted"
    assert eval_main(["--classes", "dog", "--out", str(tmp_path / "r")]) == 2
    assert "--resume" in capsys.readouterr().err
    # 2. resumed, then killed inside the final agent.zip save
    killed("final-save", "--epochs", "3", "--resume")
    assert not any(".epoch_002.zip.tmp-" in t for t in temps(dog))  # removed by the next run
    assert [t for t in temps(dog) if ".agent.zip.tmp-" in t]
    assert json.loads((dog / "checkpoints" / "state.json").read_text())["epoch"] == 3
    assert runs.run_state(dog) == "interrupted" and not (dog / "agent.zip").exists()
    # 3. resumed to the end
    done = run(train_cmd("agent", *TINY_AGENT, "--epochs", "3", "--resume"))
    assert done.returncode == 0, done.stderr
    assert temps(dog) == [] and runs.run_state(dog) == "finished"
    run_id = runs.check_run(dog, "retrain")
    assert run_id and json.loads((dog / "refinement.json").read_text())["run_id"] == run_id
    # evaluation runs on the resumed agent
    argv = ["--classes", "dog", "--split", "trainval", "--max-images", "6"]
    argv += ["--exhaustive-windows", "4", "--figures", "0", "--out", str(tmp_path / "res")]
    assert eval_main(argv) == 0
    assert json.loads((tmp_path / "res" / "eval.json").read_text())["classes"] == ["dog"]
    assert temps(tmp_path / "res") == []

    # 4. another folder: killed right after epoch 1's state.json, then by an outside SIGKILL
    out = tmp_path / "other"
    killed("after-state", "--epochs", "3", "--out", str(out))
    proc = subprocess.Popen(
        train_cmd("agent", *TINY_AGENT, "--epochs", "3", "--resume", "--out", str(out)),
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not runs.owner_file(out).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # somewhere in loading or training
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = run(train_cmd("agent", *TINY_AGENT, "--epochs", "3", "--resume", "--out", str(out)))
    assert done.returncode == 0, done.stderr
    assert temps(out) == [] and runs.run_state(out) == "finished"
    assert json.loads((out / "checkpoints" / "state.json").read_text())["epoch"] == 3
    assert runs.check_run(out, "retrain")


ORPHAN = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from train.agent import exit_with_parent

def job(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(), 0.1)
    ) as pool:
        pool.submit(job, sys.argv[1])
        time.sleep(120)
"""
"""A driver whose one worker, started as ``_fit_members`` starts members, writes its pid and
sleeps: the test kills the driver and watches the worker."""


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a dead orphan may wait unreaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@slow
def test_a_member_worker_exits_when_its_driver_is_killed(tmp_path: Path) -> None:
    """SIGKILL runs no clean-up in the driver: the worker notices and exits by itself."""
    script, pid_file = tmp_path / "driver.py", tmp_path / "worker.pid"
    script.write_text(ORPHAN)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.is_file() and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before its worker started"
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        assert _running(worker)
        time.sleep(0.5)
        assert _running(worker)  # the watchdog leaves a worker with a live parent alone
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(worker), "the orphaned worker kept running"
    finally:
        if driver.poll() is None:
            driver.kill()
