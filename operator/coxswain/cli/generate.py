"""`coxswain generate crds`: write crds/*.yaml and the chart's CRDs from the pydantic API."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    what = parser.add_subparsers(dest="what", required=True)
    crds = what.add_parser("crds", help="write crds/*.yaml and the chart's CRDs from the pydantic API")
    crds.add_argument("--root", type=Path, default=Path("."), help="repository root (default: .)")
    crds.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a generated file is stale"
    )
    crds.set_defaults(func=_generate_crds)


def _generate_crds(args: argparse.Namespace) -> int:
    # Imported here so that `coxswain --help` does not build the schemas.
    from coxswain.crdgen.output import rendered_files, stale_files, write_files

    root: Path = args.root
    if args.check:
        stale = stale_files(root)
        for rel in stale:
            print(f"stale: {rel} (run make generate)")
        return 1 if stale else 0
    changed = write_files(root)
    for rel in sorted(rendered_files()):
        print(f"{'wrote' if rel in changed else 'unchanged'}: {rel}")
    return 0
