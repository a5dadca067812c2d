"""`make images`: cold build (empty buildah storage) against a warm rebuild of an unchanged tree.

Cold: a fresh cache home (XDG_CACHE_HOME in a temporary directory), so buildah's storage and
the Debian root file system start empty, while uv's wheel cache (~/.cache/uv) and the
downloaded Debian packages stay warm, as on a machine that ran `make venv` before. Warm: the
same command again, which must find the build and run none. Then an edit to shipped code
(a comment in the trainer), which rebuilds only the small layers above the shared torch one.

Prints raw figures (seconds, image sizes, disk), then `ratio <what> <value>` lines; the cold
build is the baseline. Takes as long as a cold build: tens of minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COXSWAIN = [sys.executable, "-m", "coxswain", "dev", "images", "build", "--json"]


def build(env: dict[str, str]) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    done = subprocess.run(COXSWAIN, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return time.monotonic() - started, json.loads(done.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main() -> int:
    real_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    with tempfile.TemporaryDirectory(dir=real_cache, prefix="bench-images-") as tmp:
        env = {
            **os.environ,
            "XDG_CACHE_HOME": tmp,
            "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(real_cache / "uv")),
        }
        images_home = Path(tmp) / "coxswain" / "images"
        images_home.mkdir(parents=True)
        debs = real_cache / "coxswain" / "images" / "debs"
        if debs.is_dir():
            shutil.copytree(debs, images_home / "debs")
        cold, result = build(env)
        warm, again = build(env)
        assert again["built"] is False, "an unchanged tree rebuilt something"
        probe = REPO / "trainer_image" / "coxswain_trainer" / "__init__.py"
        original = probe.read_text()
        try:
            probe.write_text(original + "# bench/images.py: a one-line edit\n")
            edited, _ = build(env)
        finally:
            probe.write_text(original)
        storage = du(Path(tmp) / "coxswain" / "buildah")
        for image in result["images"]:  # type: ignore[attr-defined]
            print(f"size {image['ref']} {image['size_bytes'] / 1e9:.2f} GB")
        print(
            f"cold build {cold:.0f} s; warm (unchanged) {warm:.1f} s; after a one-line trainer edit {edited:.0f} s"
        )
        print(
            f"disk: OCI layout {int(str(result['layout_bytes'])) / 1e9:.2f} GB, buildah storage {storage / 1e9:.2f} GB"
        )
        print(f"ratio images_warm_over_cold {warm / cold:.4f}")
        print(f"ratio images_edit_over_cold {edited / cold:.3f}")
        # Leave no overlay mount of the temporary storage behind.
        subprocess.run(
            [
                "buildah",
                "--root",
                f"{tmp}/coxswain/buildah/storage-overlay",
                "--runroot",
                f"{tmp}/coxswain/buildah/run-overlay",
                "rm",
                "--all",
            ],
            capture_output=True,
            check=False,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
