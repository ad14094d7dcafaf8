"""make gpu-check's pieces that need no GPU: the table, the random classifier, the bf16
agreement, the script's settings checks and make-less recipes, and (slow) a smoke run of its
CPU mode in a copy of the checkout."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cutbg_env.backbone import load_classifier
from cutbg_env.errors import DataError
from evaluate import gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

STEPS = [
    {"step": "deps", "status": "ok", "rc": "0", "seconds": "3", "limit": "60"},
    {"step": "bench", "status": "ok", "rc": "0", "seconds": "95", "limit": "200"},
    {"step": "train", "status": "timed out", "rc": "124", "seconds": "180", "limit": "180"},
]
MACHINE = {
    "cuda_available": True,
    "device_name": "NVIDIA H200",
    "torch": "2.11.0+cu130",
    "torch_cuda": "13.0",
    "python": "3.12.3",
}
BENCH = {
    "backbone": {"input_size": 224, "width_divisor": 1},
    "dtype": "bfloat16 autocast",
    "ceiling_forwards_per_s": {"batch_1": 2600.0, "batch_256": 41800.0},
    "env_steps_per_s": {"single": 1300.0, "batched": 25000.0, "n_envs": 256},
    "env_vs_ceiling": {"single": 0.5, "batched": 25000.0 / 41800.0},
    "dqn_transitions_per_s": 4000.0,
    "localize_ms": {"agent": 8.0, "exhaustive": 240.0, "speedup": 30.0},
    "calls_per_image": {"agent": 9.5, "exhaustive": 2025},
}
AGREEMENT = {
    "crops": 152,
    "images": 16,
    "max_abs_diff": 0.0031,
    "mean_abs_diff": 0.0004,
    "ok": True,
}
EVAL = {
    "images": 300,
    "agent": {"seconds_per_image": 0.004, "calls_per_image": 10.0},
    "exhaustive": {"seconds_per_image": 0.05, "calls_per_image": 2025.0},
}


def rows(md: str) -> dict[str, list[str]]:
    """The table's rows by first cell: the other three cells."""
    out = {}
    for line in md.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        out[cells[0]] = cells[1:]
    return out


def test_table_against_the_targets_with_the_card() -> None:
    md = gpu_check.table(STEPS, MACHINE, BENCH, AGREEMENT, None, EVAL)
    assert md.splitlines()[:2] == ["| measure | target | measured | |", "|---|---|---|---|"]
    r = rows(md)
    assert r["card"] == ["", "NVIDIA H200 · torch 2.11.0+cu130 (CUDA 13.0) · Python 3.12.3", ""]
    assert r["bench: network"] == ["", "224 px, width 1/1, bfloat16 autocast", ""]
    assert r["bench: `upper`+`head` forwards/s, batch 256"] == ["", "41,800", ""]
    assert r["bench: env steps/s, batched ×256"] == [
        "≥ 20,000 and ≥ 0.5 × ceiling",
        "25,000 (0.60 of ceiling)",
        "meets",
    ]
    assert r["bench: SB3 DQN transitions/s"] == ["≥ 5,000", "4,000", "**misses**"]
    assert r["bench: agent ms/image (batch 1)"] == ["≤ 10", "8.00 (9.5 calls)", "meets"]
    assert r["bench: exhaustive ms/image, speed-up of the agent"] == [
        "≥ 20×",
        "240.0 (2025 calls), 30.0×",
        "meets",
    ]
    assert r["make train"] == ["", "— (train: timed out, rc 124)", ""]
    assert r["make eval: agent ms/image (300 test images, batched)"] == [
        "≤ 10",
        "4.00 (10.0 calls)",
        "meets",
    ]
    assert r["make eval: exhaustive ms/image, speed-up of the agent"][1:] == [
        "50.0 (2025 calls), 12.5×",
        "**misses**",
    ]
    key = "bf16 autocast vs fp32: max \\|Δp\\| (152 crops of 16 images)"
    assert r[key] == ["≤ 0.01", "3.10e-03 (mean 4.0e-04)", "meets"]
    assert r["steps: status, wall s / limit s"] == [
        "all ok, ≤ 480 s in all",
        "deps ok 3/60 · bench ok 95/200 · train timed out 180/180 · total 278 s",
        "**misses**",
    ]


def test_table_of_a_cpu_run_and_of_missing_files() -> None:
    cpu = {**MACHINE, "cuda_available": False, "device_name": None, "torch_cuda": None}
    train = {"timesteps": 120, "seconds": 60.0, "args": {"n_envs": 4}, "images": 8}
    r = rows(gpu_check.table(STEPS[:1], cpu, BENCH, None, train, None, budget=1200))
    steps = [*STEPS[:2]]
    bench_row = rows(gpu_check.table(steps, cpu, BENCH, None, None, None))[
        "bench: SB3 DQN transitions/s"
    ]
    assert bench_row[2] == "(CPU run: target is the GPU's)"
    assert r["card"][1] == "no GPU (CPU) · torch 2.11.0+cu130 · Python 3.12.3"
    assert r["bench"] == ["", "— (bench: not run)", ""]  # an old bench.json is not this run's
    assert r["make train: transitions/s end to end (120 in 60 s, 4 envs, 8 images)"] == [
        "≥ 5,000",
        "2",
        "(CPU run: target is the GPU's)",
    ]
    assert r["make eval"] == ["", "— (eval: not run)", ""]
    assert r["bf16 vs fp32 scores"] == ["", "— (agreement: not run)", ""]
    assert r["steps: status, wall s / limit s"] == [
        "all ok, ≤ 1200 s in all",
        "deps ok 3/60 · total 3 s",
        "meets",
    ]


def test_read_steps_and_write_table(tmp_path: Path, capsys) -> None:
    d = tmp_path / "gpu-check"
    d.mkdir()
    (d / "steps.tsv").write_text("step\tstatus\trc\tseconds\tlimit\ndeps\tok\t0\t3\t60\n")
    assert gpu_check.read_steps(d / "steps.tsv") == [STEPS[0]]
    assert gpu_check.read_steps(d / "absent.tsv") == []
    out = tmp_path / "table.md"
    md = gpu_check.write_table(
        gpu_check.TableArgs(dir=str(d), bench=str(d / "no.json"), out=str(out))
    )
    assert out.read_text() == md and md in capsys.readouterr().out
    assert rows(md)["card"] == ["", "— (machine: not run)", ""]


@pytest.fixture
def animals_env(tiny_animals: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``dataset="animals"`` is the tiny set; runs go to a temp folder."""
    monkeypatch.setenv("CUTBG_DATA", str(tiny_animals.parent))
    monkeypatch.setenv("CUTBG_RUNS", str(tmp_path / "runs"))
    return tmp_path


def test_random_classifier_and_bf16_agreement(animals_env: Path) -> None:
    ckpt = animals_env / "runs" / "animals" / "classifier.pt"
    gpu_check.write_classifier(gpu_check.ClassifierArgs(out=str(ckpt), backbone="small"))
    model, meta = load_classifier(ckpt)
    assert model.config.width_divisor == 8 and meta == {"random_weights": True, "seed": 0}
    with pytest.raises(DataError, match=r"--backbone 'huge': use full or small"):
        gpu_check.write_classifier(gpu_check.ClassifierArgs(out=str(ckpt), backbone="huge"))
    out = animals_env / "agreement.json"
    res = gpu_check.agreement(
        gpu_check.AgreementArgs(checkpoint=str(ckpt), images=2, crops=3, out=str(out))
    )
    assert (res["images"], res["crops"], res["backbone"]) == (2, 8 + 2 * 4, "small")
    assert 0 < res["max_abs_diff"] <= gpu_check.TOLERANCE and res["ok"] is True
    with pytest.raises(DataError, match=r"no trainval image of 'dog'"):
        gpu_check.agreement(
            gpu_check.AgreementArgs(checkpoint=str(ckpt), class_name="dog", images=0)
        )


def run_script(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(cwd / "scripts" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GPU_CHECK_SIZE": "huge"}, "error: GPU_CHECK_SIZE=huge: use full or tiny\n"),
        (
            {"GPU_CHECK_STEPS": "deps fly"},
            "error: GPU_CHECK_STEPS: unknown step 'fly' (the steps: deps machine data bench "
            "classifier agreement train eval)\n",
        ),
    ],
)
def test_script_rejects_bad_settings_before_touching_anything(env, message, tmp_path) -> None:
    proc = run_script(**env)
    assert (proc.returncode, proc.stderr) == (2, message)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_make_less_recipes_are_the_makefiles(device: str, tmp_path: Path) -> None:
    """Where the machine has no make, the script runs what `make -n` shows for the same call."""
    env = {"GPU_CHECK_DEVICE": device, "GPU_CHECK_PYTHON": "PYBIN"}
    recipes = run_script("--print-recipes", **env).stdout.splitlines()
    calls = run_script("--print-make", **env).stdout.splitlines()
    assert len(recipes) == len(calls) == 3
    stamp = tmp_path / "stamp"
    stamp.touch()
    for recipe, call in zip(recipes, calls, strict=True):
        argv = shlex.split(call)
        assert argv[0] == "make"
        shown = subprocess.run(
            ["make", "-n", *argv[1:], f"STAMP={stamp}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        ).stdout
        assert shlex.split(shown) == shlex.split(recipe)  # the same argv once the shell parses it


@pytest.mark.slow
def test_cpu_mode_smoke_run_in_a_copy(tmp_path: Path) -> None:
    """The script end to end on the CPU (tiny data, small backbone, no bench), in a copy of the
    checkout so that its results/ and .gpu-check/ stay there."""
    repo = tmp_path / "repo"
    for name in ("cutbg_env", "train", "evaluate", "scripts"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    proc = run_script(
        cwd=repo,
        GPU_CHECK_DEVICE="cpu",
        GPU_CHECK_PYTHON=sys.executable,
        GPU_CHECK_STEPS="deps data classifier train eval",
        GPU_CHECK_BACKBONE="small",
        GPU_CHECK_ARCHIVE=str(tmp_path / "check.tar.gz"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    d = repo / "results" / "gpu-check"
    steps = gpu_check.read_steps(d / "steps.tsv")
    assert [(s["step"], s["status"]) for s in steps] == [
        (s, "ok") for s in ("deps", "data", "classifier", "train", "eval")
    ]
    r = rows((d / "table.md").read_text())
    assert any(k.startswith("make train: transitions/s") for k in r)
    assert any(k.startswith("make eval: agent ms/image (2 test images") for k in r)
    assert r["bench"] == ["", "— (bench: not run)", ""]
    assert "nothing to install" in (d / "deps.log").read_text()
    assert (tmp_path / "check.tar.gz").stat().st_size > 0
