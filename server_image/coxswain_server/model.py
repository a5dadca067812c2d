"""One loaded model version: verified, decrypted, deserialised, warmed up, ready to run
batches. The only module that imports torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from coxswain.artifacts.crypto import DecryptionError
from coxswain.artifacts.manifest import ModelFormat, ModelManifest
from coxswain.artifacts.repository import (
    ModelRepositoryError,
    list_versions,
    read_verified_files,
    version_dir,
)
from coxswain_server.errors import ModelLoadError
from coxswain_server.tensors import Signature

log = logging.getLogger("coxswain_server.model")

PLATFORMS = {
    ModelFormat.TORCHSCRIPT: "pytorch_torchscript",
    ModelFormat.EXPORTED_PROGRAM: "pytorch_exported_program",
}

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def configure_torch(threads: int) -> None:
    """Intra-op threads for the pod's CPU limit; one inter-op thread, since batches run one
    at a time on the inference thread anyway."""
    torch.set_num_threads(threads)
    # only settable before the first parallel work; harmless when already set
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto"
        )
    return torch.device(device)


class LoadedModel:
    """A deserialised version and the function the inference thread calls per batch."""

    def __init__(
        self,
        manifest: ModelManifest,
        module: Callable[..., Any],
        device: torch.device,
        load_seconds: float,
    ) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.signature = Signature.from_manifest(manifest)
        self.platform = PLATFORMS[manifest.format]
        self.load_seconds = load_seconds
        self._module = module
        self._device = device
        # bfloat16 inputs travel as float32 (numpy has no bfloat16); cast on the way in
        self._casts = [
            _TORCH_DTYPES[s.dtype] if s.dtype == "bfloat16" else None for s in self.signature.inputs
        ]

    def forward(self, arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run one batch; returns the outputs (and the probabilities for classifiers). Called
        on the inference thread only."""
        with torch.inference_mode():
            tensors = []
            for array, cast in zip(arrays, self._casts, strict=True):
                tensor = torch.from_numpy(array)
                if cast is not None:
                    tensor = tensor.to(cast)
                if self._device.type != "cpu":
                    tensor = tensor.to(self._device, non_blocking=True)
                tensors.append(tensor)
            result = self._module(*tensors)
            outs = list(result) if isinstance(result, tuple | list) else [result]
            if len(outs) != len(self.signature.outputs):
                raise RuntimeError(
                    f"{self.name} {self.version} returned {len(outs)} outputs; its manifest lists {len(self.signature.outputs)}"
                )
            if self.signature.probabilities:
                outs.append(torch.softmax(outs[0].float(), dim=-1))
            return [_to_numpy(t) for t in outs]

    def warm_up(self, max_batch_size: int, rounds: int = 3) -> None:
        """Run a full batch and a single row a few times: TorchScript's profiling executor
        optimises after the first calls, and allocator pools fill, so the first user request
        is not the slow one."""
        for rows in (1, max_batch_size):
            batch = [np.zeros((rows, *s.item_shape), dtype=s.np_dtype) for s in self.signature.inputs]
            for _ in range(rounds):
                outputs = self.forward(batch)
            if outputs[0].shape[0] != rows:
                raise ModelLoadError(
                    f"{self.name} {self.version}: a batch of {rows} gave an output of {outputs[0].shape[0]} rows; "
                    "the model must keep the batch dimension first"
                )


def _to_numpy(tensor: torch.Tensor) -> npt.NDArray[Any]:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def load_version(
    repository: Path, model: str, version: str, key: bytes | None, device: torch.device
) -> LoadedModel:
    """Verify (sha256 of every file), decrypt and deserialise one version.

    Raises ModelLoadError with a message that says what is wrong and what to do.
    """
    started = time.perf_counter()
    path = version_dir(repository, model, version)
    if not path.is_dir():
        present = list_versions(repository, model)
        raise ModelLoadError(
            f"model {model} version {version} is not in the repository ({path} does not exist); "
            f"versions present: {present or 'none'}"
        )
    try:
        manifest, files = read_verified_files(path, key)
    except (ModelRepositoryError, DecryptionError) as exc:
        raise ModelLoadError(str(exc)) from exc
    if manifest.name != model or manifest.version != version:
        raise ModelLoadError(
            f"{path}: the manifest says {manifest.name} {manifest.version}; a version directory must hold "
            "its own model (copied into the wrong place?)"
        )
    data = files[manifest.model_file]
    module: Callable[..., Any]
    try:
        if manifest.format == ModelFormat.TORCHSCRIPT:
            with warnings.catch_warnings():  # its deprecation notice is for authors, not for servers
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(io.BytesIO(data), map_location=device)  # type: ignore[no-untyped-call]
            scripted.eval()
            module = scripted
        elif manifest.format == ModelFormat.EXPORTED_PROGRAM:
            program = torch.export.load(io.BytesIO(data))
            exported = program.module()
            module = exported.to(device) if device.type != "cpu" else exported
        else:
            raise ModelLoadError(
                f"{model} {version} is in format {manifest.format.value}, which needs the model's Python class; "
                "this server runs self-contained formats only: export as torchscript or exported_program"
            )
    except ModelLoadError:
        raise
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelLoadError(
            f"{model} {version}: {manifest.model_file} could not be loaded as {manifest.format.value}: {exc}"
        ) from exc
    return LoadedModel(manifest, module, device, time.perf_counter() - started)
