"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) request and response codecs.

Pure functions from bytes to numpy and back, with the binary tensor extension that
tritonclient uses by default: the body is a JSON header of `Inference-Header-Content-Length`
bytes followed by each binary input's raw bytes, in order; responses do the same for
outputs asked for in binary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from coxswain_server.errors import BadRequest
from coxswain_server.limits import check_rows
from coxswain_server.tensors import Signature, v2_datatype

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class InferRequest:
    arrays: list[npt.NDArray[Any]]  # one per model input, in the model's order
    rows: int
    request_id: str | None
    binary_outputs: frozenset[str]  # output names to send as raw bytes
    outputs: tuple[int, ...] | None  # indexes of the outputs asked for; None: all


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def decode_request(
    body: bytes, header_length: int | None, signature: Signature, max_rows: int
) -> InferRequest:
    """The request's arrays, at most `max_rows` rows, checked against the model's inputs."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        request = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    request = _object(request, "the request body")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(
            f'"inputs" must be a non-empty list of tensors; this model takes {signature.input_names}'
        )
    if len(inputs) != len(signature.inputs):
        raise BadRequest(
            f"got {len(inputs)} inputs, this model takes {len(signature.inputs)}: {signature.input_names}"
        )
    by_name: dict[str, dict[str, Any]] = {}
    for item in inputs:
        tensor = _object(item, "each input")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise BadRequest('each input needs a "name" (string)')
        by_name[name] = tensor

    arrays: list[npt.NDArray[Any]] = []
    rows = -1
    offset = 0
    for schema in signature.inputs:
        found = by_name.get(schema.name)
        if found is None:
            unknown = sorted(set(by_name) - {s.name for s in signature.inputs})
            raise BadRequest(
                f"input {schema.name} is missing (got {unknown or sorted(by_name)}); this model takes {signature.input_names}"
            )
        tensor = found
        if tensor.get("datatype") != schema.datatype:
            raise BadRequest(
                f"input {schema.name}: datatype {tensor.get('datatype')!r} is not the model's {schema.datatype}"
            )
        n = schema.check_shape(tensor.get("shape"))
        check_rows(n, max_rows)  # before any data is converted
        if rows != -1 and n != rows:
            raise BadRequest(f"inputs disagree on the batch size ({rows} and {n} for {schema.name})")
        rows = n
        parameters = tensor.get("parameters")
        binary_size = (
            _object(parameters, f"input {schema.name} parameters").get("binary_data_size")
            if parameters is not None
            else None
        )
        if binary_size is not None:
            if type(binary_size) is not int or binary_size < 0 or offset + binary_size > len(binary):
                raise BadRequest(
                    f"input {schema.name}: binary_data_size {binary_size!r} does not fit the "
                    f"{len(binary)} binary bytes after the JSON header"
                )
            arrays.append(schema.from_binary(binary[offset : offset + binary_size], n))
            offset += binary_size
        else:
            if "data" not in tensor:
                raise BadRequest(
                    f'input {schema.name}: needs "data", or parameters.binary_data_size with binary data'
                )
            arrays.append(schema.from_json(tensor["data"], n))
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} binary bytes after the JSON header belong to no input")

    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest('"id" must be a string')
    parameters = request.get("parameters")
    binary_all = (
        bool(_object(parameters, '"parameters"').get("binary_data_output"))
        if parameters is not None
        else False
    )
    binary_outputs: set[str] = {s.name for s in signature.outputs} if binary_all else set()
    wanted: tuple[int, ...] | None = None
    requested = request.get("outputs")
    if requested is not None:
        if not isinstance(requested, list):
            raise BadRequest('"outputs" must be a list of {"name": ...} objects')
        names: list[Any] = []
        binary_asked: list[bool] = []
        for item in requested:
            out = _object(item, "each requested output")
            names.append(out.get("name"))
            out_params = out.get("parameters")
            binary_asked.append(
                out_params is not None
                and bool(_object(out_params, f"output {out.get('name')!r} parameters").get("binary_data"))
            )
        wanted = signature.select_outputs(names)  # refuses unknown names and repeats
        binary_outputs.update(name for name, binary in zip(names, binary_asked, strict=True) if binary)
    return InferRequest(arrays, rows, request_id, frozenset(binary_outputs), wanted)


def encode_response(
    model: str, version: str, request: InferRequest, outputs: list[npt.NDArray[Any]], signature: Signature
) -> tuple[bytes, int | None]:
    """The response body and, when some outputs are binary, the JSON header's length."""
    indexes = request.outputs if request.outputs is not None else range(len(signature.outputs))
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i in indexes:
        schema, array = signature.outputs[i], outputs[i]
        tensor: dict[str, Any] = {"name": schema.name, "datatype": v2_datatype(array), "shape": array.shape}
        if schema.name in request.binary_outputs:
            blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1)
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.request_id is not None:
        response["id"] = request.request_id
    header = orjson.dumps(response, option=_DUMPS_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def model_metadata(model: str, versions: list[str], platform: str, signature: Signature) -> bytes:
    return orjson.dumps(
        {
            "name": model,
            "versions": versions,
            "platform": platform,
            "inputs": [s.metadata() for s in signature.inputs],
            "outputs": [s.metadata() for s in signature.outputs],
        }
    )


def model_config(model: str, platform: str, max_batch_size: int, signature: Signature) -> bytes:
    """Triton's `/config` extension, so tritonclient's get_model_config works."""

    def dims(schema: Any) -> dict[str, Any]:
        return {"name": schema.name, "data_type": "TYPE_" + schema.datatype, "dims": list(schema.item_shape)}

    return orjson.dumps(
        {
            "name": model,
            "platform": platform,
            "max_batch_size": max_batch_size,
            "input": [dims(s) for s in signature.inputs],
            "output": [dims(s) for s in signature.outputs],
            "dynamic_batching": {},
        }
    )
