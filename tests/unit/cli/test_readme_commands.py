"""Every `coxswain` command the README prints is one the CLI accepts, arguments and all.

Parsed, not run: running them needs the cluster the README starts first (the demo's own
printed commands are run as printed in test_printed_commands.py). Docker/kind lines are not
checked: no Docker here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from coxswain.cli.main import build_parser, installed_groups

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def readme_coxswain_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ").split("  #")[0].strip().rstrip("&").strip()
            line = re.sub(r'^eval "\$\((.*)\)"$', r"\1", line)
            words = shlex.split(line) if line else []
            if words and words[0] in ("coxswain", ".venv/bin/coxswain"):
                commands.append(words[1:])
    return commands


def test_readme_names_coxswain_commands() -> None:
    assert len(readme_coxswain_commands()) >= 5


@pytest.mark.parametrize("argv", readme_coxswain_commands(), ids=" ".join)
def test_readme_command_parses_as_printed(argv: list[str]) -> None:
    parser = build_parser(installed_groups())
    args = parser.parse_args(argv)
    assert callable(args.func)
