"""Open Inference Protocol v2 over gRPC: request and response codecs (protobuf <-> numpy).

The messages are `inference.GRPCInferenceService`'s, compiled and shipped by tritonclient
(`tritonclient.grpc.service_pb2`): Triton's proto is the KServe v2 proto plus extensions,
with the same package, service, messages and field numbers, so KServe's clients speak it too.

Inputs come either all in `raw_input_contents` (one little-endian buffer per input, in the
order of `inputs`: what tritonclient sends) or each in its typed `contents` field (what
KServe's client sends by default). Outputs always go back in `raw_output_contents`, as
Triton and KServe answer: both clients read that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb

from coxswain_server.errors import BadRequest
from coxswain_server.limits import check_rows
from coxswain_server.tensors import Signature, TensorSchema, v2_datatype

# v2 datatype -> the InferTensorContents field that carries it (FP16/BF16 have none: raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(slots=True)
class GrpcInferRequest:
    arrays: list[npt.NDArray[Any]]  # one per model input, in the model's order
    rows: int
    request_id: str
    outputs: tuple[int, ...] | None  # indexes of the outputs asked for; None: all


def parse(message: type[Any], data: bytes) -> Any:
    """A request message from its wire bytes; undecodable bytes are the client's mistake."""
    try:
        return message.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadRequest(f"the request is not a valid inference.{message.__name__} message: {exc}") from None


def decode_request(request: pb.ModelInferRequest, signature: Signature, max_rows: int) -> GrpcInferRequest:
    """The request's arrays, at most `max_rows` rows, checked against the model's inputs."""
    inputs = request.inputs
    if len(inputs) != len(signature.inputs):
        raise BadRequest(
            f"got {len(inputs)} inputs, this model takes {len(signature.inputs)}: {signature.input_names}"
        )
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} buffers for {len(inputs)} inputs; send one per input, "
            "in the order of inputs, or none and use each input's contents"
        )
    by_name: dict[str, int] = {}
    for i, tensor in enumerate(inputs):
        if tensor.name in by_name:
            raise BadRequest(
                f"input {tensor.name!r} is given twice; this model takes {signature.input_names}"
            )
        by_name[tensor.name] = i
    arrays: list[npt.NDArray[Any]] = []
    rows = -1
    for schema in signature.inputs:
        index = by_name.get(schema.name)
        if index is None:
            unknown = sorted(set(by_name) - {s.name for s in signature.inputs})
            raise BadRequest(
                f"input {schema.name} is missing (got {unknown}); this model takes {signature.input_names}"
            )
        tensor = inputs[index]
        if tensor.datatype != schema.datatype:
            raise BadRequest(
                f"input {schema.name}: datatype {tensor.datatype!r} is not the model's {schema.datatype}"
            )
        n = schema.check_shape(list(tensor.shape))
        check_rows(n, max_rows)  # before any data is converted
        if rows != -1 and n != rows:
            raise BadRequest(f"inputs disagree on the batch size ({rows} and {n} for {schema.name})")
        rows = n
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"input {schema.name}: has both contents and raw_input_contents; send one of them"
                )
            arrays.append(schema.from_binary(raw[index], n))
        else:
            arrays.append(_from_contents(schema, tensor, n))
    wanted: tuple[int, ...] | None = None
    if request.outputs:
        names = [s.name for s in signature.outputs]
        indexes: list[int] = []
        for out in request.outputs:
            if out.name not in names:
                raise BadRequest(f"output {out.name!r} is not one of this model's outputs {names}")
            indexes.append(names.index(out.name))
        wanted = tuple(indexes)
    return GrpcInferRequest(arrays, rows, request.id, wanted)


def _from_contents(
    schema: TensorSchema, tensor: pb.ModelInferRequest.InferInputTensor, rows: int
) -> npt.NDArray[Any]:
    field = CONTENTS_FIELD.get(schema.datatype)
    if field is None:
        raise BadRequest(
            f"input {schema.name}: {schema.datatype} has no typed contents field in the protocol; "
            "send it in raw_input_contents"
        )
    present = [f.name for f, _ in tensor.contents.ListFields()]
    if not present:
        raise BadRequest(f"input {schema.name}: needs contents.{field} (or all inputs in raw_input_contents)")
    if present != [field]:
        raise BadRequest(
            f"input {schema.name}: {schema.datatype} data goes in contents.{field}, "
            f"got contents.{', contents.'.join(present)}"
        )
    return schema.from_values(getattr(tensor.contents, field), rows, f"contents.{field}")


def encode_response(
    model: str,
    version: str,
    request: GrpcInferRequest,
    outputs: Sequence[npt.NDArray[Any]],
    signature: Signature,
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request.request_id)
    indexes = request.outputs if request.outputs is not None else range(len(signature.outputs))
    tensors = response.outputs
    raw = response.raw_output_contents
    for i in indexes:
        array = outputs[i]
        tensors.add(name=signature.outputs[i].name, datatype=v2_datatype(array), shape=array.shape)
        raw.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return response


def model_metadata(
    model: str, versions: list[str], platform: str, signature: Signature
) -> pb.ModelMetadataResponse:
    def tensor(schema: TensorSchema) -> pb.ModelMetadataResponse.TensorMetadata:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=schema.name, datatype=schema.datatype, shape=[-1, *schema.item_shape]
        )

    return pb.ModelMetadataResponse(
        name=model,
        versions=versions,
        platform=platform,
        inputs=[tensor(s) for s in signature.inputs],
        outputs=[tensor(s) for s in signature.outputs],
    )


def model_config(
    model: str, platform: str, max_batch_size: int, signature: Signature
) -> pb.ModelConfigResponse:
    """Triton's ModelConfig extension, so tritonclient's get_model_config works over gRPC too."""
    return pb.ModelConfigResponse(
        config=config_pb.ModelConfig(
            name=model,
            platform=platform,
            max_batch_size=max_batch_size,
            input=[
                config_pb.ModelInput(
                    name=s.name, data_type=config_pb.DataType.Value("TYPE_" + s.datatype), dims=s.item_shape
                )
                for s in signature.inputs
            ],
            output=[
                config_pb.ModelOutput(
                    name=s.name, data_type=config_pb.DataType.Value("TYPE_" + s.datatype), dims=s.item_shape
                )
                for s in signature.outputs
            ],
            dynamic_batching=config_pb.ModelDynamicBatching(),
        )
    )
