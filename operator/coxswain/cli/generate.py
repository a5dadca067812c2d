"""`coxswain generate crds`: placeholder until the CRD generator lands (issue 3)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any, name: str, help_text: str) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    what = parser.add_subparsers(dest="what", required=True)
    crds = what.add_parser("crds", help="write crds/*.yaml and the chart's CRDs from the pydantic API")
    crds.set_defaults(func=_generate_crds)


def _generate_crds(args: argparse.Namespace) -> int:
    raise SystemExit("the CRD generator is not written yet")
