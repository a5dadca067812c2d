"""The v2/v1 codecs and tensor conversions: bytes in, numpy out, and back."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pytest

from coxswain.artifacts.manifest import Architecture, ModelFormat, ModelManifest, TaskKind, TensorSpec
from coxswain_server import protocol_v1, protocol_v2
from coxswain_server.errors import BadRequest, PayloadTooLarge
from coxswain_server.tensors import Signature

pytestmark = pytest.mark.unit

MAX_ROWS = 32


def signature(
    task: TaskKind = TaskKind.CLASSIFICATION, shape: list[int] | None = None, dtype: str = "float32"
) -> Signature:
    manifest = ModelManifest(
        name="m",
        version="v1",
        created=datetime.now(UTC),
        format=ModelFormat.TORCHSCRIPT,
        model_file="model.pt",
        task=task,
        architecture=Architecture(kind="mlp"),
        inputs=[TensorSpec(name="input", dtype=dtype, shape=shape or [-1, 4])],  # type: ignore[arg-type]
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 3])],
        labels=["a", "b", "c"] if task == TaskKind.CLASSIFICATION else None,
        files={},
    )
    return Signature.from_manifest(manifest)


def v2_body(data: object, shape: object = (2, 4), datatype: str = "FP32", **extra: object) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input", "shape": list(shape), "datatype": datatype, "data": data}], **extra}
    )  # type: ignore[call-overload]


def test_v2_json_flat_and_nested_data_decode_to_the_same_array() -> None:
    sig = signature()
    flat = protocol_v2.decode_request(v2_body(list(range(8))), None, sig, MAX_ROWS)
    nested = protocol_v2.decode_request(v2_body([[0, 1, 2, 3], [4, 5, 6, 7]]), None, sig, MAX_ROWS)
    assert flat.rows == nested.rows == 2
    assert flat.arrays[0].dtype == np.float32
    np.testing.assert_array_equal(flat.arrays[0], nested.arrays[0])


def test_v2_binary_tensor_extension_round_trip() -> None:
    sig = signature()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
            "id": "r1",
        }
    )
    request = protocol_v2.decode_request(header + x.tobytes(), len(header), sig, MAX_ROWS)
    np.testing.assert_array_equal(request.arrays[0], x)
    assert request.arrays[0].flags.writeable  # torch.from_numpy needs writable memory
    out = np.ones((2, 3), dtype=np.float32)
    body, json_length = protocol_v2.encode_response("m", "v1", request, [out], sig)
    assert json_length is not None
    meta = orjson.loads(body[:json_length])
    assert meta["id"] == "r1" and meta["outputs"][0]["parameters"]["binary_data_size"] == 24
    np.testing.assert_array_equal(np.frombuffer(body[json_length:], dtype=np.float32).reshape(2, 3), out)


def test_v2_json_response_holds_flat_data_and_shape() -> None:
    sig = signature()
    request = protocol_v2.decode_request(v2_body(list(range(8))), None, sig, MAX_ROWS)
    body, json_length = protocol_v2.encode_response(
        "m", "v1", request, [np.arange(6, dtype=np.float32).reshape(2, 3)], sig
    )
    assert json_length is None
    out = orjson.loads(body)["outputs"][0]
    assert out == {"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (v2_body([1.5] * 8, datatype="INT64"), "datatype 'INT64'"),
        (v2_body([True] * 8), "booleans"),
        (v2_body([None] * 8), "mixed values or nulls"),
        (v2_body([[1, 2], [3]]), "not a rectangular array"),
        (v2_body(list(range(7))), "needs 8"),
        (v2_body(list(range(8)), shape=(2, 5)), "does not match"),
        (v2_body(list(range(8)), shape=(0, 4)), "does not match"),
        (v2_body(list(range(8)), shape=("2", 4)), "list of 2 integers"),
        (v2_body("abc"), "must be a JSON array"),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 99}}]}',
            "binary_data_size",
        ),
        (v2_body(list(range(8)), outputs=[{"name": "nope"}]), "not one of this model's outputs"),
    ],
)
def test_v2_bad_requests_name_the_problem(body: bytes, says: str) -> None:
    with pytest.raises(BadRequest, match=None) as caught:
        protocol_v2.decode_request(body, None, signature(), MAX_ROWS)
    assert says in caught.value.message


def test_integer_inputs_refuse_out_of_range_values() -> None:
    sig = signature(dtype="uint8")
    with pytest.raises(BadRequest, match="outside the range of UINT8"):
        protocol_v2.decode_request(v2_body([300] * 8, datatype="UINT8"), None, sig, MAX_ROWS)
    ok = protocol_v2.decode_request(v2_body([255] * 8, datatype="UINT8"), None, sig, MAX_ROWS)
    assert ok.arrays[0].dtype == np.uint8


def test_v1_classification_gives_label_index_and_probabilities_per_instance() -> None:
    sig = signature()
    arrays, rows = protocol_v1.decode_request(
        orjson.dumps({"instances": [[0, 0, 0, 0], [1, 1, 1, 1]]}), sig, MAX_ROWS
    )
    assert rows == 2 and arrays[0].shape == (2, 4)
    logits = np.array([[0, 5, 0], [9, 0, 0]], dtype=np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predictions = orjson.loads(protocol_v1.encode_response([logits, probabilities.astype(np.float32)], sig))[
        "predictions"
    ]
    assert [p["label"] for p in predictions] == ["b", "a"]
    assert [p["index"] for p in predictions] == [1, 0]
    assert sum(predictions[0]["probabilities"]) == pytest.approx(1.0, abs=1e-6)


def test_v1_regression_gives_a_number_per_instance() -> None:
    sig = signature(task=TaskKind.REGRESSION)
    regression = Signature(sig.inputs, sig.outputs, sig.task, None, probabilities=False)
    out = np.array([[1.5], [2.5]], dtype=np.float32)
    assert orjson.loads(protocol_v1.encode_response([out], regression))["predictions"] == [1.5, 2.5]


def test_v1_accepts_flat_instances_for_image_inputs() -> None:
    sig = signature(shape=[-1, 1, 2, 2])
    arrays, _ = protocol_v1.decode_request(b'{"instances": [[1, 2, 3, 4]]}', sig, MAX_ROWS)
    assert arrays[0].shape == (1, 1, 2, 2)
    with pytest.raises(BadRequest, match="non-empty list"):
        protocol_v1.decode_request(b'{"instances": []}', sig, MAX_ROWS)


def test_outputs_named_twice_or_unknown_are_refused_and_rows_over_the_cap_are_413() -> None:
    sig = signature()
    body = orjson.loads(v2_body(list(range(8))))
    for outputs, says in (
        ([{"name": "logits"}, {"name": "logits"}], "more than once"),
        ([{"name": "z"}], "not one of this model's outputs"),
        ([{"name": {"a": 1}}], "not one of this model's outputs"),
    ):
        with pytest.raises(BadRequest, match=says):
            protocol_v2.decode_request(orjson.dumps(body | {"outputs": outputs}), None, sig, MAX_ROWS)
    with pytest.raises(PayloadTooLarge, match="at most 1 rows per request"):
        protocol_v2.decode_request(v2_body(list(range(8))), None, sig, 1)
    with pytest.raises(PayloadTooLarge, match="2 rows; this server takes at most 1"):
        protocol_v1.decode_request(b'{"instances": [[1, 2, 3, 4], [1, 2, 3, 4]]}', sig, 1)
