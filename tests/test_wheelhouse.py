"""evaluate.wheelhouse: what a bare GPU machine lacks, planned from metadata; the wheelhouse's
files; the offline install (a hand-made wheel into a temp folder, with the real pip)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evaluate import wheelhouse as wh
from evaluate.wheelhouse import Dist, WheelhouseError

ROOT = Path(__file__).resolve().parents[1]


def make_wheel(folder: Path, name: str, version: str, requires=(), pure: bool = True) -> Path:
    """A minimal installable wheel with one module ``<name>_mod``."""
    dist = f"{name.replace('-', '_')}-{version}"
    tag = "py3-none-any" if pure else "cp312-cp312-manylinux_2_17_x86_64"
    path = folder / f"{dist}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nA description.\nName: not-me\n"
    wheel = f"Wheel-Version: 1.0\nRoot-Is-Purelib: {str(pure).lower()}\nTag: {tag}\n"
    files = {
        f"{name.replace('-', '_')}_mod.py": "VALUE = 42\n",
        f"{dist}.dist-info/METADATA": meta,
        f"{dist}.dist-info/WHEEL": wheel,
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            z.writestr(n, text)
    return path


def test_canonical_names() -> None:
    assert wh.canonical("Stable_Baselines3") == "stable-baselines3"
    assert wh.canonical("typing.extensions") == "typing-extensions"
    assert (
        wh.is_excluded("torch")
        and wh.is_excluded("nvidia-cublas")
        and wh.is_excluded("cuda_bindings")
    )
    assert not wh.is_excluded("gymnasium")


HAVE = {
    "torch": Dist("torch", "2.11.0"),
    "numpy": Dist("numpy", "2.5.2"),
    "opencv-python-headless": Dist("opencv-python-headless", "4.11.0.86"),
    "typing-extensions": Dist("typing-extensions", "4.2.0"),
}
"""A GPU image: torch, numpy, headless OpenCV, an old typing-extensions."""
WHEELS = {
    "gymnasium": Dist(
        "gymnasium",
        "1.4.0",
        (
            "numpy>=1.21.0",
            "farama-notifications>=0.0.1",
            "typing-extensions>=4.3.0",
            'pytest>=7; extra == "testing"',
            'pywin32; sys_platform == "win32"',
        ),
    ),
    "farama-notifications": Dist("farama-notifications", "0.0.6"),
    "typing-extensions": Dist("typing-extensions", "4.16.0"),
    "tyro": Dist("tyro", "0.8.0"),
}


def test_plan_keeps_what_is_installed_and_takes_the_rest_from_the_wheelhouse() -> None:
    todo = wh.plan(
        ["gymnasium>=1.0", "torch>=2.3", "numpy>=1.24", "opencv-python>=4.8"], HAVE, WHEELS
    )
    assert todo.problems == ()
    assert [d.name for d in todo.install] == [
        "gymnasium",
        "farama-notifications",
        "typing-extensions",
    ]
    assert todo.present == {
        "torch": "torch 2.11.0",
        "numpy": "numpy 2.5.2",
        "opencv-python": "opencv-python-headless 4.11.0.86",  # the headless build provides cv2
    }


def test_plan_lists_every_unmet_requirement() -> None:
    have = {k: v for k, v in HAVE.items() if k != "torch"}
    todo = wh.plan(["torch>=2.3", "tyro>=0.9", "platformdirs>=3", "numpy>=3"], have, WHEELS)
    assert todo.install == ()
    assert todo.problems == (
        "torch>=2.3: not installed; the GPU machine's image must bring it",
        "tyro>=0.9: not installed, the wheelhouse has 0.8.0",
        "platformdirs>=3: not installed, not in the wheelhouse",
        "numpy>=3: numpy 2.5.2, not in the wheelhouse",
    )


def test_plan_checks_a_chosen_wheel_against_later_requirements() -> None:
    todo = wh.plan(["farama-notifications>=0.0.1", "farama-notifications<0.0.5"], {}, WHEELS)
    assert todo.problems == (
        "farama-notifications<0.0.5: the wheelhouse's farama-notifications is 0.0.6",
    )


def test_closure_skips_torch_extras_and_other_platforms() -> None:
    have = {
        "gymnasium": Dist("gymnasium", "1.4.0", ("numpy>=1.21", 'pytest; extra == "t"')),
        "numpy": Dist("numpy", "2.4.6", (), pure=False),
        "torch": Dist("torch", "2.14.1", ("sympy>=1.13",)),
        "opencv-python-headless": Dist("opencv-python-headless", "4.11", ("numpy",), pure=False),
    }
    got = wh.closure(["torch>=2.3", "gymnasium>=1.0", "opencv-python>=4.8"], have)
    assert [(d.name, d.pure) for d in got] == [
        ("gymnasium", True),
        ("opencv-python-headless", False),
        ("numpy", False),
    ]
    with pytest.raises(WheelhouseError, match=r"tyro>=0.9 is not met here \(not installed\)"):
        wh.closure(["tyro>=0.9"], have)


def test_wheel_metadata_and_purity(tmp_path: Path) -> None:
    path = make_wheel(tmp_path, "Some_Pkg", "1.2.3", ["numpy>=1", 'x; extra == "y"'])
    assert wh.wheel_dist(path) == Dist(
        "some-pkg", "1.2.3", ("numpy>=1", 'x; extra == "y"'), True, path
    )
    assert not wh.wheel_dist(make_wheel(tmp_path, "binary", "1.0", pure=False)).pure
    bad = tmp_path / "broken-1.0-py3-none-any.whl"
    bad.write_text("not a zip")
    with pytest.raises(
        WheelhouseError, match=r"broken-1.0-py3-none-any.whl is not a readable wheel"
    ):
        wh.wheel_dist(bad)


def test_wheelhouse_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(
        WheelhouseError,
        match=r"wheelhouse .*nowhere does not exist: build it with `make wheelhouse`",
    ):
        wh.wheelhouse(tmp_path / "nowhere")
    make_wheel(tmp_path, "pkg", "1.0")
    make_wheel(tmp_path, "pkg", "2.0")
    with pytest.raises(WheelhouseError, match=r"holds two versions of pkg"):
        wh.wheelhouse(tmp_path)


def test_project_requirements_and_download_command(tmp_path: Path) -> None:
    reqs = wh.project_requirements(ROOT / "pyproject.toml")
    assert "gymnasium>=1.0" in reqs and "tyro>=0.9" in reqs
    with pytest.raises(WheelhouseError, match=r"cannot read \[project\] dependencies"):
        wh.project_requirements(tmp_path / "pyproject.toml")
    cmd = wh.download_command([Dist("tyro", "1.0.17")], tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[-3:] == ["-d", str(tmp_path), "tyro==1.0.17"]


@pytest.mark.slow
def test_install_puts_the_missing_wheels_in_the_target_offline(tmp_path: Path, capsys) -> None:
    house = tmp_path / "house"
    house.mkdir()
    make_wheel(house, "cutbg-fake-dep", "1.0", ["cutbg-fake-sub>=0.5"])
    make_wheel(house, "cutbg-fake-sub", "0.5")
    make_wheel(house, "cutbg-fake-unused", "3.0")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["cutbg-fake-dep>=1", "pytest>=7"]\n'
    )
    todo = wh.install(pyproject, house, tmp_path / "site")
    assert [d.name for d in todo.install] == ["cutbg-fake-dep", "cutbg-fake-sub"]
    assert sorted(p.name for p in (tmp_path / "site").glob("*.py")) == [
        "cutbg_fake_dep_mod.py",
        "cutbg_fake_sub_mod.py",
    ]
    out = capsys.readouterr().out
    assert "install  cutbg-fake-dep" in out and f"PYTHONPATH={tmp_path / 'site'}" in out
    # a second run finds them installed in the target and installs nothing
    assert wh.install(pyproject, house, tmp_path / "site").install == ()


def test_cli_one_error_line_exit_2(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["cutbg-not-installed>=1"]\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluate.wheelhouse",
            "--pyproject",
            str(pyproject),
            "install",
            "--wheelhouse",
            str(tmp_path / "none"),
            "--target",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: unmet requirements: cutbg-not-installed>=1: not installed, not in the wheelhouse "
        f"(no wheelhouse at {tmp_path / 'none'}: build it with `make wheelhouse` and carry it)\n"
    )
    assert not (tmp_path / "site").exists()
