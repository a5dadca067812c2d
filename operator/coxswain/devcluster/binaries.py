"""Finding the cluster's binaries, building them with dev/build-tools.sh when missing.

The build script owns the cache key (versions and Go module files); asking it for the
directory costs a hash and a few stat calls when everything is built, so `up` always asks it
rather than guessing the key in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN_DIR_ENV = "COXSWAIN_BIN_DIR"
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")


class BinariesError(RuntimeError):
    """The binaries are missing and cannot be built here."""


def repo_root() -> Path | None:
    """The source checkout this package was installed from (editable install), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "dev" / "build-tools.sh").is_file():
            return parent
    return None


def _missing(bin_dir: Path) -> list[str]:
    return [name for name in REQUIRED if not os.access(bin_dir / name, os.X_OK)]


def locate_binaries(build: bool = True) -> Path:
    """The directory holding etcd, kube-apiserver, ... kwok, kubectl and helm.

    `$COXSWAIN_BIN_DIR` wins; otherwise dev/build-tools.sh is run, which builds what is
    missing (minutes the first time on a machine, its progress shown on stderr) and prints
    the directory.
    """
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        bin_dir = Path(override).expanduser()
        missing = _missing(bin_dir)
        if missing:
            raise BinariesError(
                f"${BIN_DIR_ENV}={bin_dir} lacks {', '.join(missing)}; unset it to build them"
            )
        return bin_dir
    root = repo_root()
    if root is None:
        raise BinariesError(
            "dev/build-tools.sh was not found: run from a source checkout (pip install -e .) "
            f"or point ${BIN_DIR_ENV} at a directory holding {', '.join(REQUIRED)}"
        )
    if not build:
        raise BinariesError("binaries not located and building was not allowed")
    result = subprocess.run(
        ["bash", str(root / "dev" / "build-tools.sh")],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BinariesError(
            f"dev/build-tools.sh failed (exit {result.returncode}); its output is above. "
            "It needs Go >= 1.24 and the Go module proxy."
        )
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    missing = _missing(bin_dir)
    if missing:
        raise BinariesError(f"dev/build-tools.sh finished but {bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def locate_kueue() -> Path:
    """The directory holding Kueue's manager and the manifests from its module, built by
    `dev/build-tools.sh kueue` the first time (minutes)."""
    root = repo_root()
    if root is None:
        raise BinariesError("dev/build-tools.sh was not found: Kueue is built from a source checkout only")
    result = subprocess.run(
        ["bash", str(root / "dev" / "build-tools.sh"), "kueue"],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BinariesError(
            f"dev/build-tools.sh kueue failed (exit {result.returncode}); its output is above"
        )
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    if not os.access(bin_dir / "kueue", os.X_OK) or not (bin_dir / "config").is_dir():
        raise BinariesError(f"dev/build-tools.sh kueue finished but {bin_dir} lacks kueue or config/")
    return bin_dir
