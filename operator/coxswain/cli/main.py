"""Entry point of the `coxswain` command.

Each command group lives in its own module under `coxswain.cli` and exposes
`register(subparsers)`, which adds its sub-commands and sets `func` on each. Modules are
imported only when their group is named, so `coxswain get` never pays for torch-free but
heavy imports of the operator (kopf) or the dev cluster.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# group name -> (module, one-line help)
COMMAND_GROUPS: dict[str, tuple[str, str]] = {
    "generate": ("coxswain.cli.generate", "generate CRD YAML and chart files from the API types"),
    "dev": ("coxswain.cli.dev", "local development cluster: `coxswain dev cluster up|down|status|env`"),
    "operator": ("coxswain.cli.operator", "run the operator: `coxswain operator run`"),
    "activator": (
        "coxswain.cli.activator",
        "hold requests for ModelServices scaled to zero and wake them: `coxswain activator run`",
    ),
    "logs": (
        "coxswain.cli.logs",
        "logs of a pod run by the local node agent: `coxswain logs POD [-n NS] [-f]`",
    ),
    "get": ("coxswain.cli.inspect", "list TrainingJobs and ModelServices with progress"),
    "describe": ("coxswain.cli.inspect", "show one TrainingJob or ModelService: status, conditions, events"),
    "watch": ("coxswain.cli.inspect", "live progress bar of a TrainingJob until it finishes"),
    "predict": ("coxswain.cli.inspect", "send inputs to a ModelService and print the predictions"),
}


def build_parser(groups: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coxswain",
        description="Train PyTorch models across many pods and serve them as autoscaled services.",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    for name in groups:
        module_name, help_text = COMMAND_GROUPS[name]
        module = importlib.import_module(module_name)
        module.register(sub, name, help_text)
    return parser


def installed_groups() -> list[str]:
    """The groups whose module is installed: images leave out the dev-only ones (.dockerignore)."""
    return [name for name, (module, _) in COMMAND_GROUPS.items() if importlib.util.find_spec(module)]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    installed = installed_groups()
    # Import only the named group (fast start); with no or an unknown group, load all for help.
    chosen = [args_list[0]] if args_list and args_list[0] in installed else installed
    parser = build_parser(chosen)
    args = parser.parse_args(args_list)
    result: int = args.func(args)
    return result
