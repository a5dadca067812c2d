"""The CRDs in git are exactly what the generator makes from the API models."""

from __future__ import annotations

from pathlib import Path

import pytest

from coxswain.crdgen.output import rendered_files, stale_files

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_generated_crds_match_the_files_in_git() -> None:
    stale = stale_files(ROOT)
    assert not stale, f"generated files are stale: {stale}; run make generate"


def test_generation_is_deterministic() -> None:
    assert rendered_files() == rendered_files()


def test_crds_and_chart_crds_are_the_same_files() -> None:
    files = rendered_files()
    for rel, text in files.items():
        if rel.startswith("crds/"):
            assert files[f"helm/coxswain/{rel}"] == text


def test_generate_check_reports_a_stale_file(tmp_path: Path) -> None:
    from coxswain.cli.main import main

    assert main(["generate", "crds", "--root", str(tmp_path)]) == 0
    assert main(["generate", "crds", "--root", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "crds" / "trainingjobs.coxswain.dev.yaml"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    assert main(["generate", "crds", "--root", str(tmp_path), "--check"]) == 1
