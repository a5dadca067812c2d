"""Image blobs are linked, not copied, into a real node's containerd content store."""

from __future__ import annotations

from pathlib import Path

import pytest

from coxswain.devcluster.realnode_images import link_layout_blobs

pytestmark = pytest.mark.unit


def _layout(tmp_path: Path) -> Path:
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for name, data in (("a" * 64, b"layer"), ("b" * 64, b"config")):
        (blobs / name).write_bytes(data)
    return tmp_path / "layout"


def test_blobs_become_hard_links_into_the_store(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    store = tmp_path / "node" / "content" / "blobs" / "sha256"
    assert link_layout_blobs(layout, store) == 2
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert (store / blob.name).stat().st_ino == blob.stat().st_ino


def test_blobs_already_in_the_store_are_left_alone(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / ("a" * 64)).write_bytes(b"layer")
    assert link_layout_blobs(layout, store) == 1
    assert (store / ("a" * 64)).stat().st_ino != (layout / "blobs" / "sha256" / ("a" * 64)).stat().st_ino


def test_a_directory_without_blobs_links_nothing(tmp_path: Path) -> None:
    assert link_layout_blobs(tmp_path, tmp_path / "store") == 0
