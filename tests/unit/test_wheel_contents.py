"""The operator's pip install carries no development tooling: the wheel leaves out the dev
cluster, image builder, node agent and dev-only CLI commands (build_without_dev.py), the same
code .dockerignore keeps out of the images."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coxswain.devimages.inputs import read_ignore_patterns

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from build_without_dev import DEV_ONLY_MODULES, DEV_ONLY_PACKAGES

REPO = Path(__file__).resolve().parents[2]


def dotted(path: str) -> str:
    return path.removeprefix("operator/").removesuffix(".py").replace("/", ".")


@pytest.mark.unit
def test_the_wheel_and_the_images_leave_out_the_same_code() -> None:
    ignored = {dotted(p) for p in read_ignore_patterns(REPO) if p.startswith("operator/coxswain/")}
    assert ignored == set(DEV_ONLY_PACKAGES) | set(DEV_ONLY_MODULES)


def test_the_wheel_has_no_dev_code_and_the_cli_still_starts(tmp_path: Path) -> None:
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed (make venv installs it)")
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for tree in ("operator", "trainer_image", "server_image"):
        shutil.copytree(REPO / tree, source / tree, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "build_without_dev.py"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        ["uv", "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("coxswain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n.removesuffix(".py").replace("/", ".") for n in names if n.endswith(".py")}
    assert "coxswain.handlers" in modules and "coxswain.cli.operator" in modules
    assert "coxswain_trainer.__main__" in modules and "coxswain_server.cli" in modules
    leaked = [m for m in modules if m in DEV_ONLY_MODULES or m.startswith(DEV_ONLY_PACKAGES)]
    assert not leaked, leaked
    assert not [n for n in names if "kwok_stages" in n]
    # Installed from the wheel alone, `coxswain` starts and lists only what it has.
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['coxswain', '--help']; from coxswain.cli.main import main; main()",
        ],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "operator" in result.stdout and "generate" in result.stdout
    assert " dev " not in result.stdout and "demo" not in result.stdout
