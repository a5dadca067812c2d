"""Inference over real HTTP with real clients: tritonclient (v2), plain JSON (v1), the CNN
and exported-program formats, explicit versions, and the 4xx paths."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from server_harness import RunningServer
from server_models import build


def expected(kind: str, seed: int, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build(kind, seed)(torch.from_numpy(x)).numpy()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = RunningServer(
        ["--repository", str(repo), "--model", "digits", "--version", "v1", "--version", "v2",
         "--weights", "v1=100,v2=0", "--max-body-bytes", "65536"],
        tmp_path_factory.mktemp("digits") / "server.log",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cnn(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = RunningServer(
        ["--repository", str(repo), "--model", "cnn", "--version", "v1", "--version", "v2"],
        tmp_path_factory.mktemp("cnn") / "server.log",
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritonclient_infers_against_the_server(digits: RunningServer, binary: bool) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{digits.port}")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    tensor = triton.InferInput("input", [3, 64], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer("digits", [tensor], outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("logits"), expected("mlp", 1, x), rtol=1e-4, atol=1e-5)
    # no outputs named: tritonclient asks for all in binary
    result = client.infer("digits", [tensor], model_version="v2")
    np.testing.assert_allclose(result.as_numpy("logits"), expected("mlp", 2, x), rtol=1e-4, atol=1e-5)
    assert result.get_response()["model_version"] == "v2"
    client.close()


def test_v1_batch_predict_returns_one_prediction_per_instance(digits: RunningServer) -> None:
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    response = httpx.post(digits.url + "/v1/models/digits:predict", json={"instances": x.tolist()})
    assert response.status_code == 200, response.text
    assert response.headers["x-coxswain-version"] == "v1"
    predictions = response.json()["predictions"]
    assert len(predictions) == 5
    logits = expected("mlp", 1, x)
    for row, prediction in enumerate(predictions):
        assert prediction["index"] == int(logits[row].argmax())
        assert prediction["label"] == f"digit-{prediction['index']}"
        assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    versioned = httpx.post(
        digits.url + "/v1/models/digits/versions/v2:predict", json={"instances": x.tolist()}
    )
    assert versioned.headers["x-coxswain-version"] == "v2"


def test_explicit_version_calls_reach_that_version(digits: RunningServer) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}
    with httpx.Client(base_url=digits.url) as client:
        for _ in range(20):
            assert (
                client.post("/v2/models/digits/versions/v2/infer", json=body).headers["x-coxswain-version"]
                == "v2"
            )
            assert client.post("/v2/models/digits/infer", json=body).headers["x-coxswain-version"] == "v1"
        missing = client.post("/v2/models/digits/versions/v9/infer", json=body)
        assert missing.status_code == 404
        assert "v1" in missing.json()["error"] and "v2" in missing.json()["error"]
        assert client.get("/v2/models/digits/versions/v2/ready").status_code == 200
        assert client.get("/v2/models/digits/versions/v9/ready").status_code == 404


def test_cnn_served_from_torchscript_and_exported_program(cnn: RunningServer) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{cnn.port}")
    x = np.random.default_rng(2).standard_normal((4, 1, 8, 8)).astype(np.float32)
    tensor = triton.InferInput("input", [4, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(x)
    for version, seed in (("v1", 4), ("v2", 5)):
        result = client.infer("cnn", [tensor], model_version=version)
        np.testing.assert_allclose(result.as_numpy("logits"), expected("cnn", seed, x), rtol=1e-4, atol=1e-5)
    assert client.get_model_metadata("cnn", "v2")["platform"] == "pytorch_exported_program"
    client.close()
    # v1 instances may be nested in the item shape or flat
    flat = httpx.post(cnn.url + "/v1/models/cnn:predict", json={"instances": x.reshape(4, 64).tolist()})
    nested = httpx.post(cnn.url + "/v1/models/cnn:predict", json={"instances": x.tolist()})
    assert flat.status_code == nested.status_code == 200
    assert flat.json() == nested.json()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"inputs": []}', 400, "input (FP32 [-1, 64])"),
        (
            b'{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": []}]}',
            400,
            "input input is missing",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": []}]}',
            400,
            "datatype 'INT64'",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": []}]}',
            400,
            "does not match",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [1, 2]}]}',
            400,
            "needs 128",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ["a"]}]}',
            400,
            "strings",
        ),
    ],
)
def test_bad_v2_requests_get_a_4xx_naming_the_problem(
    digits: RunningServer, body: bytes, status: int, says: str
) -> None:
    response = httpx.post(digits.url + "/v2/models/digits/infer", content=body)
    assert response.status_code == status
    assert says in response.json()["error"]


def test_limits_and_routes(digits: RunningServer) -> None:
    with httpx.Client(base_url=digits.url) as client:
        big = client.post("/v2/models/digits/infer", content=b"[" + b"1," * 40000 + b"1]")
        assert big.status_code == 413
        assert client.get("/v2/models/digits/infer").status_code == 405
        assert client.get("/v2/models/other").status_code == 404
        assert client.post("/v1/models/digits:predict", json={"instances": [[1.0] * 63]}).status_code == 400
        assert (
            client.post(
                "/v2/models/digits/infer", content=b"x", headers={"content-encoding": "br"}
            ).status_code
            == 415
        )
        assert client.get("/v2").json()["name"] == "coxswain-server"
        # without a token configured the admin endpoints are off, not open
        assert client.put("/admin/traffic", json={"weights": {"v2": 100}}).status_code == 403


def test_metrics_pass_promtool_and_carry_version_and_code(digits: RunningServer) -> None:
    httpx.post(digits.url + "/v2/models/digits/infer", content=b"{}")  # one 400 for the code label
    text = httpx.get(digits.url + "/metrics").text
    for name in (
        "coxswain_server_requests_total",
        "coxswain_server_request_duration_seconds_bucket",
        "coxswain_server_batch_size_bucket",
        "coxswain_server_queue_depth",
        "coxswain_server_inflight_requests",
        "coxswain_server_model_load_seconds",
        "coxswain_server_traffic_weight",
    ):
        assert name in text, f"{name} missing from /metrics"
    assert digits.metric("coxswain_server_requests_total", version="v1", code="400") >= 1
    assert digits.metric("coxswain_server_model_load_seconds", version="v2") > 0
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (bash dev/install-system-deps.sh)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
