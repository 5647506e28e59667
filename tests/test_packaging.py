"""The installed distribution adds one import name, ``mmcross``, with the design card's
folders as its subpackages (a setuptools package-dir mapping in ``pyproject.toml``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("mmcross", "listeners", "matchers", "brokers", "catalogs", "config")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (so no build/ folder lands in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in (*FOLDERS, "pyproject.toml", "README.md"):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True)
    (built,) = out.glob("mmcross-*.whl")
    return built


def test_wheel_adds_only_the_mmcross_import_name(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"mmcross"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")] or [None]
    if top_level is not None:
        assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["mmcross"]


def test_wheel_holds_every_folder_as_a_subpackage_with_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in ("model", "app", "vtp", "listeners", "matchers", "brokers", "catalogs", "config"):
        assert f"mmcross/{sub}/__init__.py" in names, sub
    for data in ("default.toml", "match_report.avsc"):
        assert f"mmcross/config/{data}" in names
    assert "mmcross/listeners/fermi.py" in names and "mmcross/app/cli.py" in names
