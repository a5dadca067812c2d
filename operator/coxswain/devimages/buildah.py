"""buildah, run daemonless with chroot isolation, its storage kept under ~/.cache/coxswain/buildah.

The storage driver is overlay where the kernel mounts it (layers shared, not copied), else vfs
(every layer a full copy: slow and large, but it works anywhere). Each driver has its own
storage directory, because a storage directory cannot change driver.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


class BuildahError(RuntimeError):
    """A buildah command failed; the message names the command and the tail of its output."""


def overlay_mounts(scratch: Path) -> bool:
    """Whether an overlay file system mounts here (needs root and kernel support)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        dirs = {name: Path(tmp) / name for name in ("lower", "upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir()
        options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(dirs["merged"])],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            return False
        subprocess.run(["umount", str(dirs["merged"])], capture_output=True, check=False)
        return True


class Buildah:
    """One buildah storage (root, run root, driver); every call goes through `run`."""

    def __init__(self, home: Path, log: IO[str] | None = None) -> None:
        if shutil.which("buildah") is None:
            raise BuildahError(
                "buildah is not installed: `apt-get install buildah` (Debian) or see "
                "https://github.com/containers/buildah/blob/main/install.md"
            )
        self.driver = "overlay" if overlay_mounts(home / "probe") else "vfs"
        self.root = home / f"storage-{self.driver}"
        self.run_root = home / f"run-{self.driver}"
        self.log = log if log is not None else sys.stderr

    def _base(self) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.run_root),
            "--storage-driver",
            self.driver,
        ]

    def run(self, args: Sequence[str], *, stream: bool = False, nice: bool = False) -> str:
        """Run `buildah ARGS`; with stream, its output goes to the log as it comes."""
        command = (["nice", "-n", "10"] if nice else []) + self._base() + list(args)
        if stream:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            tail: list[str] = []
            for line in proc.stdout:
                self.log.write(line)
                self.log.flush()
                tail = [*tail[-29:], line]
            code = proc.wait()
            output = "".join(tail)
        else:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            code, output = done.returncode, done.stdout + done.stderr
        if code != 0:
            raise BuildahError(f"`buildah {' '.join(args[:2])} …` failed (exit {code}):\n{output[-3000:]}")
        return output if stream else done.stdout

    def image_id(self, ref: str) -> str | None:
        """The id of the image tagged `ref` in this storage, None when there is none."""
        try:
            out = self.run(["inspect", "--type", "image", "--format", "{{.FromImageID}}", ref])
        except BuildahError:
            return None
        return out.strip() or None

    def build(
        self,
        *,
        context: Path,
        dockerfile: Path,
        tag: str,
        build_args: Mapping[str, str] | None = None,
        volumes: Sequence[str] = (),
    ) -> str:
        """`buildah build` with layer caching; returns the image id."""
        args = [
            "build",
            "--isolation",
            "chroot",
            "--layers",
            "--pull=never",
            "-f",
            str(dockerfile),
            "-t",
            tag,
        ]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        for volume in volumes:
            args += ["-v", volume]
        self.run([*args, str(context)], stream=True, nice=True)
        image = self.image_id(tag)
        if image is None:
            raise BuildahError(f"buildah built {tag} but it is not in {self.root}")
        return image

    def push_oci(self, ref: str, layout: Path) -> None:
        """Add `ref` to the OCI layout directory, layers uncompressed (import is then I/O, not gzip).

        skopeo, not `buildah push`: it reads layers straight from the storage, whose digests it
        knows, so a layer already in the layout (torch, shared) is not written again; buildah
        push regenerates every layer into a temporary file first.
        """
        if shutil.which("skopeo") is None:
            raise BuildahError("skopeo is not installed: `apt-get install skopeo`")
        source = f"containers-storage:[{self.driver}@{self.root}+{self.run_root}]{ref}"
        command = ["nice", "-n", "10", "skopeo", "copy", "--quiet", "--dest-oci-accept-uncompressed-layers"]
        done = subprocess.run([*command, source, f"oci:{layout}:{ref}"], capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildahError(f"`skopeo copy {ref}` failed (exit {done.returncode}):\n{done.stderr[-3000:]}")

    def images(self) -> list[dict[str, object]]:
        out = self.run(["images", "--json"])
        parsed = json.loads(out or "[]")
        return parsed if isinstance(parsed, list) else []
