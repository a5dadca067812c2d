"""Tensor schemas and the conversions between wire data and numpy (no torch here).

Conversions are whole-array numpy calls: no Python loop per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coxswain.artifacts.manifest import ModelManifest, TaskKind, TensorSpec
from coxswain_server.errors import BadRequest

# manifest dtype -> (Open Inference Protocol datatype, numpy dtype used on the wire)
# bfloat16 has no numpy dtype: it travels as float32 in JSON (the model casts), and as the
# upper 16 bits of float32 in binary (what BF16 means on the wire).
_DTYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "float32": ("FP32", np.dtype(np.float32)),
    "float64": ("FP64", np.dtype(np.float64)),
    "float16": ("FP16", np.dtype(np.float16)),
    "bfloat16": ("BF16", np.dtype(np.float32)),
    "int64": ("INT64", np.dtype(np.int64)),
    "int32": ("INT32", np.dtype(np.int32)),
    "uint8": ("UINT8", np.dtype(np.uint8)),
    "bool": ("BOOL", np.dtype(np.bool_)),
}
# numpy dtype of a model output -> datatype on the wire
_NUMPY_TO_V2: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}
# which numpy kinds a JSON array may arrive as, for each target kind: JSON has no int/float
# distinction, so ints are fine for floats, but 1.5 for an int input or true for a float is a mistake.
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def v2_datatype(array: npt.NDArray[Any]) -> str:
    try:
        return _NUMPY_TO_V2[array.dtype]
    except KeyError:
        raise BadRequest(f"the model returned dtype {array.dtype}, which has no v2 datatype") from None


@dataclass(frozen=True, slots=True)
class TensorSchema:
    name: str
    dtype: str  # the manifest's name
    datatype: str  # the Open Inference Protocol's name
    np_dtype: np.dtype[Any]
    item_shape: tuple[int, ...]
    item_size: int

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorSchema:
        datatype, np_dtype = _DTYPES[spec.dtype]
        return cls(spec.name, spec.dtype, datatype, np_dtype, spec.item_shape, math.prod(spec.item_shape))

    def describe(self) -> str:
        return f"{self.name} ({self.datatype} {[-1, *self.item_shape]})"

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.item_shape]}

    def check_shape(self, shape: Any) -> int:
        """The batch size of a declared v2 shape, or BadRequest naming what is wrong."""
        if (
            not isinstance(shape, list)
            or len(shape) != len(self.item_shape) + 1
            or not all(type(d) is int for d in shape)
        ):
            raise BadRequest(
                f"input {self.name}: shape must be a list of {len(self.item_shape) + 1} integers "
                f"[batch, {', '.join(map(str, self.item_shape))}], got {shape!r}"
            )
        if tuple(shape[1:]) != self.item_shape or shape[0] < 1:
            raise BadRequest(
                f"input {self.name}: shape {shape} does not match the model's {[-1, *self.item_shape]} "
                "(batch >= 1 first, then the item shape)"
            )
        return int(shape[0])

    def from_json(self, data: Any, rows: int) -> npt.NDArray[Any]:
        """JSON data (flat, or nested in the declared shape) -> an array of `rows` items."""
        if not isinstance(data, list):
            raise BadRequest(f"input {self.name}: data must be a JSON array, got {type(data).__name__}")
        try:
            parsed = np.asarray(data)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(
                f"input {self.name}: data is not a rectangular array of numbers ({exc})"
            ) from None
        return self._coerce(parsed, rows, "data")

    def from_instances(self, instances: list[Any]) -> npt.NDArray[Any]:
        """v1 instances (one item each, nested in the item shape or flat) -> a batch array."""
        try:
            parsed = np.asarray(instances)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(
                f"instances for {self.name} are not a rectangular array of numbers ({exc}); "
                f"each instance must be {list(self.item_shape)} numbers"
            ) from None
        return self._coerce(parsed, len(instances), "instances")

    def _coerce(self, parsed: npt.NDArray[Any], rows: int, what: str) -> npt.NDArray[Any]:
        want = self.np_dtype.kind
        if parsed.dtype.kind not in _ACCEPTED_KINDS[want]:
            if parsed.size == 0:
                raise BadRequest(f"input {self.name}: {what} is empty")
            raise BadRequest(
                f"input {self.name}: {what} holds {_kind_name(parsed.dtype)}, but the model takes {self.datatype}"
            )
        if parsed.size != rows * self.item_size:
            raise BadRequest(
                f"input {self.name}: {what} has {parsed.size} values, but shape {[rows, *self.item_shape]} "
                f"needs {rows * self.item_size}"
            )
        if want in "iu" and self.np_dtype.itemsize < 8 and parsed.size:
            info = np.iinfo(self.np_dtype)
            if parsed.min() < info.min or parsed.max() > info.max:
                raise BadRequest(f"input {self.name}: values outside the range of {self.datatype}")
        return parsed.astype(self.np_dtype, copy=False).reshape(rows, *self.item_shape)

    def from_binary(self, buffer: bytes | memoryview, rows: int) -> npt.NDArray[Any]:
        """Raw little-endian bytes (the binary tensor extension) -> an array of `rows` items."""
        if self.dtype == "bfloat16":
            expected = rows * self.item_size * 2
            if len(buffer) != expected:
                raise BadRequest(f"input {self.name}: {len(buffer)} binary bytes, expected {expected}")
            halves = np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16
            return halves.view(np.float32).reshape(rows, *self.item_shape)
        expected = rows * self.item_size * self.np_dtype.itemsize
        if len(buffer) != expected:
            raise BadRequest(
                f"input {self.name}: {len(buffer)} binary bytes, but shape {[rows, *self.item_shape]} "
                f"of {self.datatype} needs {expected}"
            )
        # copy: torch wants writable memory, and the request's buffer is read-only bytes
        return (
            np.frombuffer(buffer, dtype=self.np_dtype.newbyteorder("<"))
            .astype(self.np_dtype)
            .reshape(rows, *self.item_shape)
        )


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {
        "b": "booleans",
        "i": "integers",
        "u": "integers",
        "f": "floats",
        "U": "strings",
        "O": "mixed values or nulls",
    }.get(dtype.kind, str(dtype))


@dataclass(frozen=True, slots=True)
class Signature:
    """What a version takes and returns, from its manifest."""

    inputs: tuple[TensorSchema, ...]
    outputs: tuple[TensorSchema, ...]
    task: TaskKind
    labels: tuple[str, ...] | None
    probabilities: bool  # forward() appends softmax(outputs[0]) as an extra array

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> Signature:
        outputs = tuple(TensorSchema.from_spec(s) for s in manifest.outputs)
        # Classifiers are usually exported returning logits; if the output already says it
        # holds probabilities, do not squash it a second time.
        probabilities = manifest.task == TaskKind.CLASSIFICATION and "prob" not in outputs[0].name.lower()
        return cls(
            inputs=tuple(TensorSchema.from_spec(s) for s in manifest.inputs),
            outputs=outputs,
            task=manifest.task,
            labels=tuple(manifest.labels) if manifest.labels else None,
            probabilities=probabilities,
        )

    def select_outputs(self, names: list[Any]) -> tuple[int, ...]:
        """Indexes of the outputs a v2 request names, in its order. Each output at most once:
        a request naming one output many times would make a response many times the size of
        the result (one request could build gigabytes)."""
        known = [s.name for s in self.outputs]
        indexes: list[int] = []
        for name in names:
            if not isinstance(name, str) or name not in known:
                raise BadRequest(f"output {name!r} is not one of this model's outputs {known}")
            index = known.index(name)
            if index in indexes:
                raise BadRequest(
                    f"output {name!r} is asked for more than once; name each output at most once"
                )
            indexes.append(index)
        return tuple(indexes)

    @property
    def input_names(self) -> str:
        return ", ".join(s.describe() for s in self.inputs)
