"""Install paths: the supported Pythons, and `make install CUDA=...` really replacing the CPU
torch build (a plain install would keep it: it already satisfies the pin)."""

from __future__ import annotations

import subprocess
import tomllib

from packaging.specifiers import SpecifierSet

from tests.conftest import REPO


def _dry_run(*args: str) -> str:
    # -B: the recipes as if the venv were new, so every step of the chain is printed
    return subprocess.run(
        ["make", "-n", "-B", "install", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def test_python_3_11_to_3_13_are_supported() -> None:
    spec = SpecifierSet(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    )
    assert [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if v in spec] == [
        "3.11",
        "3.12",
        "3.13",
    ]


def test_cuda_install_force_reinstalls_torch_from_the_cuda_index() -> None:
    lines = _dry_run("CUDA=cu128").splitlines()
    pin = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"][0]
    assert pin.startswith("torch==")
    reinstall = (
        f'.venv/bin/pip install --quiet --force-reinstall "{pin}" '
        "--index-url https://download.pytorch.org/whl/cu128"
    )
    assert reinstall in lines
    assert lines.index(reinstall) > lines.index("touch .venv/.installed")  # after the CPU build
    assert any("not a CUDA build" in line for line in lines)  # and checked


def test_the_cpu_default_installs_nothing_from_pytorchs_index() -> None:
    assert "download.pytorch.org" not in _dry_run()
