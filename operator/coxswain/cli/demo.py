"""`coxswain dev demo`: train, export, serve and predict on this machine (`make demo`)."""

from __future__ import annotations

import argparse
from typing import Any


def register_demo(groups: Any) -> None:
    demo: argparse.ArgumentParser = groups.add_parser(
        "demo",
        help="train the digits CNN on 2 nodes, export it, serve it and predict, all on a local cluster",
        description=(
            "Builds the images, starts (or reuses) a local control plane with a real node, installs the operator with helm, runs the "
            "digits CNN TrainingJob on 2 nodes with a live progress view, prints where the model was "
            "exported, serves it with a ModelService and sends a prediction."
        ),
    )
    demo.add_argument("--epochs", type=int, default=20, help="training epochs (default %(default)s)")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the ModelService serving afterwards (the operator always stays installed)",
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from coxswain.devcluster import demo

    return demo.run(epochs=args.epochs, keep=args.keep)
