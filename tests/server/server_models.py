"""Small models written to a model repository in the trainer's format, for tests and the
benchmark: an MLP 64->128->10 and a CNN on 1x8x8 inputs (the digits shapes)."""

from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from coxswain.artifacts.manifest import Architecture, ModelFormat, ModelManifest, TaskKind, TensorSpec
from coxswain.artifacts.repository import write_version

Kind = Literal["mlp", "cnn", "wide", "fragile"]


class MLP(nn.Module):
    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Fragile(MLP):
    """An MLP that raises on any input value above 1000: one poisoned request in a batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 1000.0).any()):
            raise RuntimeError("fragile: refused a poisoned row")
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


INPUT_SHAPES: dict[str, list[int]] = {
    "mlp": [-1, 64],
    "cnn": [-1, 1, 8, 8],
    "wide": [-1, 4096],
    "fragile": [-1, 64],
}


def build(kind: Kind, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP().eval()
    if kind == "cnn":
        return SmallCNN().eval()
    if kind == "fragile":
        return Fragile().eval()
    return MLP(features=4096, hidden=8192).eval()  # ~134 MB: slow enough to load to watch readiness


def serialize(module: nn.Module, kind: Kind, fmt: ModelFormat, trace: bool = False) -> bytes:
    example = torch.zeros(2, *INPUT_SHAPES[kind][1:])
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript's deprecation notices: the format is still what we serve
        warnings.simplefilter("ignore", FutureWarning)
        _write(module, example, fmt, trace, buffer)
    return buffer.getvalue()


def _write(
    module: nn.Module, example: torch.Tensor, fmt: ModelFormat, trace: bool, buffer: io.BytesIO
) -> None:
    if fmt == ModelFormat.TORCHSCRIPT:
        scripted = torch.jit.trace(module, example) if trace else torch.jit.script(module)
        torch.jit.save(scripted, buffer)
    elif fmt == ModelFormat.EXPORTED_PROGRAM:
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, buffer)
    else:
        torch.save(module.state_dict(), buffer)


def write_model(
    root: Path,
    name: str,
    version: str,
    kind: Kind = "mlp",
    *,
    seed: int = 0,
    key: bytes | None = None,
    fmt: ModelFormat = ModelFormat.TORCHSCRIPT,
    trace: bool = False,
    labels: list[str] | None = None,
) -> nn.Module:
    """Write one version; returns the eager module so tests can compute expected outputs."""
    module = build(kind, seed)
    filename = {"torchscript": "model.pt", "exported_program": "model.pt2", "state_dict": "weights.pt"}[
        fmt.value
    ]
    manifest = ModelManifest(
        name=name,
        version=version,
        created=datetime.now(UTC),
        format=fmt,
        model_file=filename,
        task=TaskKind.CLASSIFICATION,
        architecture=Architecture(kind="cnn" if kind == "cnn" else "mlp"),
        inputs=[TensorSpec(name="input", dtype="float32", shape=INPUT_SHAPES[kind])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 10])],
        labels=labels if labels is not None else [f"digit-{i}" for i in range(10)],
        framework={"torch": torch.__version__},
        files={},
    )
    write_version(root, manifest, {filename: serialize(module, kind, fmt, trace)}, key=key)
    return module


def write_legacy_encrypted_model(root: Path, name: str, version: str, key: bytes, seed: int = 0) -> nn.Module:
    """An MLP version encrypted the way the first encryption format did (before issue 15): the
    associated data is the file's path alone, and the manifest names no format. Written by
    hand here because the repository writes only the current format now."""
    import hashlib
    import json

    from coxswain.artifacts import crypto
    from coxswain.artifacts.manifest import Encryption, FileEntry

    module = build("mlp", seed)
    stored = crypto.encrypt(key, serialize(module, "mlp", ModelFormat.TORCHSCRIPT), "model.pt")
    manifest = ModelManifest(
        name=name,
        version=version,
        created=datetime.now(UTC),
        format=ModelFormat.TORCHSCRIPT,
        model_file="model.pt",
        task=TaskKind.CLASSIFICATION,
        architecture=Architecture(kind="mlp"),
        inputs=[TensorSpec(name="input", dtype="float32", shape=INPUT_SHAPES["mlp"])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 10])],
        framework={"torch": torch.__version__},
        encryption=Encryption(key_id=crypto.key_id(key)),
        files={"model.pt": FileEntry(sha256=hashlib.sha256(stored).hexdigest(), size=len(stored))},
    )
    target = root / name / version
    target.mkdir(parents=True)
    (target / "model.pt").write_bytes(stored)
    document = json.loads(manifest.to_json())
    document["encryption"].pop("format", None)  # the first format's manifests had no such field
    (target / "manifest.json").write_text(json.dumps(document, indent=2))
    return module
