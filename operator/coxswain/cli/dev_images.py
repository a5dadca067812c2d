"""`coxswain dev images build`: the three images, built here with buildah (docs/images.md)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def register_images(groups: Any) -> None:
    images: argparse.ArgumentParser = groups.add_parser(
        "images",
        help="build the operator, trainer and server images with buildah (`make images`)",
        description=(
            "Builds operator/Dockerfile, trainer_image/Dockerfile and server_image/Dockerfile with "
            "buildah on a Debian base made by mmdebstrap, and exports them as one OCI image layout "
            "for `ctr images import` (docs/images.md). An unchanged tree rebuilds nothing."
        ),
    )
    actions = images.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build what changed; print each image and its size")
    build.add_argument("--json", action="store_true", help="print the result as one JSON object")
    build.add_argument(
        "--archive", type=Path, default=None, help="also write the layout as a tar file (for ctr import)"
    )
    build.set_defaults(func=_build)


def _human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _build(args: argparse.Namespace) -> int:
    from coxswain.devimages import BuildError, build_images

    try:
        result = build_images()
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.archive is not None:
        args.archive.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(result.layout), "-cf", str(args.archive), "."], check=True)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(("built" if result.built else "unchanged, nothing rebuilt") + f": {result.layout}")
    for image in result.images:
        print(f"  {image.ref:<40} {_human(image.size_bytes):>9}")
    print(
        f"  on disk (shared layers once)             {_human(int(str(result.to_json()['layout_bytes']))):>9}"
    )
    print(f"import into containerd:\n  {result.import_command}")
    return 0
