"""`make images`: the three Coxswain images, built here with buildah, exported as one OCI layout.

Steps, each skipped when its result exists: a Debian root file system (mmdebstrap, cached by
its recipe), the base image made from it, an image holding the host's uv binary, the three
images (buildah's layer cache; trainer and server share their torch stage), then one OCI image
layout `~/.cache/coxswain/images/oci-<inputs hash>` that the real nodes import (docs/images.md).
An unchanged tree finds that layout and its images and runs no build at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from coxswain.api.modelservice import DEFAULT_SERVER_IMAGE
from coxswain.api.trainingjob import DEFAULT_TRAINER_IMAGE
from coxswain.devimages.buildah import Buildah, BuildahError
from coxswain.devimages.inputs import inputs_hash
from coxswain.devimages.layout import (
    annotate_index,
    drop_unreferenced_blobs,
    image_sizes,
    layout_bytes,
    seed_blobs,
)

# The chart's image.repository with its appVersion, and the CRDs' defaults (a test checks both).
OPERATOR_IMAGE = "ghcr.io/coxswain-dev/operator:0.1.0"
DOCKERFILES = {
    OPERATOR_IMAGE: "operator/Dockerfile",
    DEFAULT_TRAINER_IMAGE: "trainer_image/Dockerfile",
    DEFAULT_SERVER_IMAGE: "server_image/Dockerfile",
}
# Debian bookworm with python3.11 and venv; passwd for useradd, CA certificates for TLS.
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "passwd", "ca-certificates")
# Documentation, manuals and translations are not needed to run Python.
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")
RECIPES = "dev/images"


class BuildError(RuntimeError):
    """The images could not be built; the message says which step and why."""


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    digest: str
    size_bytes: int


@dataclass(frozen=True)
class BuiltImages:
    layout: Path
    images: list[BuiltImage]
    built: bool  # False when an unchanged tree reused the last build

    @property
    def import_command(self) -> str:
        return f"tar -C {self.layout} -cf - . | ctr -n k8s.io images import -"

    def to_json(self) -> dict[str, object]:
        return {
            "layout": str(self.layout),
            "images": [asdict(image) for image in self.images],
            "built": self.built,
            "import_command": self.import_command,
            "layout_bytes": layout_bytes(self.layout),
        }


def image_refs() -> list[str]:
    return list(DOCKERFILES)


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "coxswain"


def repo_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / RECIPES / "base.Containerfile").is_file():
            return parent
    raise BuildError("dev/images/ was not found: build the images from a source checkout (pip install -e .)")


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """One image build at a time on this machine: they share buildah's storage and 2 cores."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _uv_binary() -> Path:
    """The uv executable itself (pyenv puts a shell script called uv first on PATH)."""
    candidates = [Path(sys.prefix) / "bin" / "uv"]
    found = shutil.which("uv")
    if found:
        candidates.append(Path(found))
    pyenv = (
        subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, check=False)
        if (shutil.which("pyenv"))
        else None
    )
    if pyenv is not None and pyenv.returncode == 0:
        candidates.append(Path(pyenv.stdout.strip()))
    for candidate in candidates:
        if candidate.is_file() and candidate.read_bytes()[:4] == b"\x7fELF":
            return candidate.resolve()
    raise BuildError("the uv executable was not found (pip install uv); the image builds install with it")


def _uv_version(uv: Path) -> str:
    out = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def _rootfs_recipe() -> list[str]:
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(DEBIAN_PACKAGES),
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        DEBIAN_SUITE,
    ]


def _build_rootfs(tar: Path, debs: Path, log: IO[str]) -> None:
    """A Debian root file system as a tar; downloaded packages are kept in `debs` for the next time."""
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is not installed: `apt-get install mmdebstrap`")
    debs.mkdir(parents=True, exist_ok=True)
    recipe = _rootfs_recipe()
    command = [
        *recipe[:-1],
        "--format=tar",
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        '--customize-hook=rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*',
        recipe[-1],
        str(tar) + ".part",
    ]
    log.write(f"[images] making a Debian {DEBIAN_SUITE} root file system with mmdebstrap\n")
    done = subprocess.run(["nice", "-n", "10", *command], stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise BuildError(f"mmdebstrap failed (exit {done.returncode}); its output is above")
    Path(str(tar) + ".part").rename(tar)


def _base_image(buildah: Buildah, root: Path, home: Path, log: IO[str]) -> str:
    containerfile = root / RECIPES / "base.Containerfile"
    recipe_hash = hashlib.sha256(
        ("\0".join(_rootfs_recipe()) + "\0").encode() + containerfile.read_bytes()
    ).hexdigest()[:16]
    tag = f"localhost/coxswain/python:3.11-{DEBIAN_SUITE}-{recipe_hash}"
    if buildah.image_id(tag) is not None:
        return tag
    tar = home / "base" / f"rootfs-{recipe_hash}.tar"
    tar.parent.mkdir(parents=True, exist_ok=True)
    if not tar.is_file():
        _build_rootfs(tar, home / "debs", log)
    with tempfile.TemporaryDirectory(dir=home) as context:
        os.link(tar, Path(context) / "rootfs.tar")
        buildah.build(context=Path(context), dockerfile=containerfile, tag=tag)
    return tag


def _uv_image(buildah: Buildah, root: Path, home: Path, uv: Path, version: str) -> str:
    tag = f"localhost/coxswain/uv:{version}"
    if buildah.image_id(tag) is not None:
        return tag
    with tempfile.TemporaryDirectory(dir=home) as context:
        shutil.copy2(uv, Path(context) / "uv")
        buildah.build(context=Path(context), dockerfile=root / RECIPES / "uv.Containerfile", tag=tag)
    return tag


def _build_volumes(home: Path) -> tuple[dict[str, str], list[str]]:
    """The host's uv cache, CA certificates and a uv config trusting them, mounted into every RUN.

    Mounted, not copied: nothing of the host ends up in a layer.
    """
    uv_cache = Path(os.environ.get("UV_CACHE_DIR", Path.home() / ".cache" / "uv"))
    uv_cache.mkdir(parents=True, exist_ok=True)
    uv_config = home / "uv.toml"
    # Certificates from the system store (with any CA this machine's proxy needs), not uv's own.
    uv_config.write_text("native-tls = true\n")
    volumes = [f"{uv_cache}:/var/cache/host-uv", f"{uv_config}:/etc/uv/uv.toml:ro"]
    ca_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca_bundle.is_file():
        volumes.append(f"{ca_bundle}:{ca_bundle}:ro")
    return {"UV_CACHE_DIR": "/var/cache/host-uv"}, volumes


def _read_record(layout: Path) -> list[BuiltImage] | None:
    record = layout / "coxswain-images.json"
    if not record.is_file():
        return None
    return [BuiltImage(**item) for item in json.loads(record.read_text())]


def _newest_layout(home: Path) -> Path | None:
    done = [p for p in home.glob("oci-*") if p.is_dir() and not p.name.endswith(".part")]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def _remove_old_layouts(home: Path, keep: Path, count: int = 2) -> None:
    """Keep the newest `count` layouts besides `keep` (other checkouts may be importing them)."""
    old = sorted(
        (p for p in home.glob("oci-*") if p != keep and p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for stale in old[count:]:
        shutil.rmtree(stale, ignore_errors=True)


def build_images(log: IO[str] | None = None) -> BuiltImages:
    """Build (or find) the three images and their OCI layout; see docs/images.md."""
    out = log if log is not None else sys.stderr
    root = repo_root()
    home = cache_home() / "images"
    home.mkdir(parents=True, exist_ok=True)
    with _exclusive(home / ".lock"):
        try:
            return _build_locked(root, home, out)
        except BuildahError as e:
            raise BuildError(str(e)) from e


def _build_locked(root: Path, home: Path, log: IO[str]) -> BuiltImages:
    buildah = Buildah(cache_home() / "buildah", log)
    uv = _uv_binary()
    uv_version = _uv_version(uv)
    recipes = [(root / RECIPES / name).read_text() for name in sorted(os.listdir(root / RECIPES))]
    key = inputs_hash(root, [buildah.driver, uv_version, *recipes, *_rootfs_recipe()])[:16]
    layout = home / f"oci-{key}"
    recorded = _read_record(layout)
    if recorded is not None and all(buildah.image_id(i.ref) is not None for i in recorded):
        os.utime(layout)
        return BuiltImages(layout=layout, images=recorded, built=False)

    base = _base_image(buildah, root, home, log)
    uv_image = _uv_image(buildah, root, home, uv, uv_version)
    build_args, volumes = _build_volumes(home)
    build_args |= {"PYTHON_IMAGE": base, "UV_IMAGE": uv_image}
    for ref, dockerfile in DOCKERFILES.items():
        log.write(f"[images] building {ref} from {dockerfile}\n")
        buildah.build(
            context=root, dockerfile=root / dockerfile, tag=ref, build_args=build_args, volumes=volumes
        )
    if recorded is None:
        partial = home / f"oci-{key}.part"
        shutil.rmtree(partial, ignore_errors=True)
        previous = _newest_layout(home)
        if previous is not None:
            seed_blobs(partial, previous)
        for ref in DOCKERFILES:
            log.write(f"[images] exporting {ref} to {layout}\n")
            buildah.push_oci(ref, partial)
        annotate_index(partial)
        drop_unreferenced_blobs(partial)
        sizes = image_sizes(partial)
        images = [BuiltImage(ref=ref, digest=sizes[ref][0], size_bytes=sizes[ref][1]) for ref in DOCKERFILES]
        (partial / "coxswain-images.json").write_text(json.dumps([asdict(i) for i in images], indent=1))
        partial.rename(layout)
        recorded = images
    _remove_old_layouts(home, layout)
    return BuiltImages(layout=layout, images=recorded, built=True)
