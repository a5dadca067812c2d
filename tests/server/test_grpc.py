"""The v2 protocol over gRPC with real clients: tritonclient.grpc (raw tensors) and KServe's
InferenceGRPCClient (typed contents and raw), on the same server, versions, batches, auth and
metrics as HTTP, and the 4xx-class status codes for bad calls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from server_harness import ROOT, RunningServer
from server_models import build
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

TOKEN = "s3cret-token"


def expected(seed: int, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return build("mlp", seed)(torch.from_numpy(x)).numpy()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = RunningServer(
        ["--repository", str(repo), "--model", "digits", "--version", "v1", "--version", "v2",
         "--weights", "v1=100,v2=0", "--max-body-bytes", "65536"],
        tmp_path_factory.mktemp("grpc") / "server.log",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(digits: RunningServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=digits.grpc_target)
    yield c
    c.close()


def _input(x: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_tritonclient_grpc_infers_and_reads_metadata(
    digits: RunningServer, client: triton.InferenceServerClient
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "v2")
    assert client.get_server_metadata().name == "coxswain-server"
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert sorted(metadata["versions"]) == ["v1", "v2"]
    config = client.get_model_config("digits", as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["input"][0]["data_type"] == "TYPE_FP32"
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    result = client.infer("digits", [_input(x)], request_id="req-1")
    np.testing.assert_allclose(result.as_numpy("logits"), expected(1, x), rtol=1e-4, atol=1e-5)
    response = result.get_response()
    assert response.model_version == "v1" and response.id == "req-1"
    # an explicit version, and only the output asked for
    result = client.infer(
        "digits", [_input(x)], model_version="v2", outputs=[triton.InferRequestedOutput("logits")]
    )
    np.testing.assert_allclose(result.as_numpy("logits"), expected(2, x), rtol=1e-4, atol=1e-5)
    assert [o.name for o in result.get_response().outputs] == ["logits"]


def test_grpc_and_http_give_the_same_answer(
    digits: RunningServer, client: triton.InferenceServerClient
) -> None:
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    over_http = httpx.post(digits.url + "/v2/models/digits/infer", json=body).json()
    over_grpc = client.infer("digits", [_input(x)])
    for out in over_http["outputs"]:
        np.testing.assert_allclose(
            over_grpc.as_numpy(out["name"]).ravel(), np.asarray(out["data"]), rtol=1e-5, atol=1e-6
        )


KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

async def main():
    target, token, raw = sys.argv[1], sys.argv[2], sys.argv[3] == "raw"
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64) / 100
    tensor = InferInput("input", [2, 64], "FP32")
    if raw:
        tensor.set_data_from_numpy(x, binary_data=True)
    else:
        tensor.set_data_from_numpy(x, binary_data=False)  # typed contents.fp32_contents
    headers = [("authorization", "Bearer " + token)] if token else None
    async with InferenceGRPCClient(target, timeout=30) as client:
        ready = await client.is_server_ready()
        response = await client.infer(InferRequest("digits", [tensor], request_id="k1"), headers=headers)
    print(json.dumps({"ready": ready, "id": response.id, "version": response.model_version,
                      "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs}}))

asyncio.run(main())
"""


def _kserve_infer(target: str, token: str, raw: bool) -> dict:  # type: ignore[type-arg]
    # its own process: kserve and tritonclient both register the `inference.*` protobuf
    # messages, and one process's descriptor pool takes only one of them
    done = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENT, target, token, "raw" if raw else "typed"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("raw", [False, True], ids=["typed-contents", "raw-contents"])
def test_kserve_inference_grpc_client_infers(digits: RunningServer, raw: bool) -> None:
    answer = _kserve_infer(digits.grpc_target, "", raw)
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64) / 100
    assert answer["ready"] is True and answer["id"] == "k1" and answer["version"] == "v1"
    np.testing.assert_allclose(np.asarray(answer["outputs"]["logits"]), expected(1, x), rtol=1e-4, atol=1e-5)


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    try:
        call()
    except InferenceServerException as exc:
        return grpc.StatusCode[str(exc.status()).removeprefix("StatusCode.")], exc.message()
    raise AssertionError("the call succeeded")


def test_bad_calls_get_4xx_class_codes_naming_the_problem(
    digits: RunningServer, client: triton.InferenceServerClient
) -> None:
    x = np.ones((1, 64), dtype=np.float32)
    wrong_dtype = triton.InferInput("input", [1, 64], "FP64")
    wrong_dtype.set_data_from_numpy(x.astype(np.float64))
    code, message = _code(lambda: client.infer("digits", [wrong_dtype]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input input" in message and "FP32" in message
    wrong_shape = triton.InferInput("input", [1, 63], "FP32")
    wrong_shape.set_data_from_numpy(np.ones((1, 63), dtype=np.float32))
    code, message = _code(lambda: client.infer("digits", [wrong_shape]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input input" in message and "[-1, 64]" in message
    wrong_name = triton.InferInput("pixels", [1, 64], "FP32")
    wrong_name.set_data_from_numpy(x)
    code, message = _code(lambda: client.infer("digits", [wrong_name]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "input input is missing" in message
    code, message = _code(
        lambda: client.infer("digits", [_input(x)], outputs=[triton.InferRequestedOutput("nope")])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'nope'" in message
    code, message = _code(lambda: client.infer("cats", [_input(x)]))
    assert code == grpc.StatusCode.NOT_FOUND and "digits" in message
    code, message = _code(lambda: client.infer("digits", [_input(x)], model_version="v9"))
    assert code == grpc.StatusCode.NOT_FOUND and "v9" in message
    # over --max-body-bytes (65536): refused with the limit
    big = np.ones((300, 64), dtype=np.float32)
    code, message = _code(lambda: client.infer("digits", [_input(big)]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "65536" in message
    assert digits.metric("coxswain_server_requests_total", protocol="grpc", code="400") >= 4
    assert digits.metric("coxswain_server_requests_total", protocol="grpc", code="500") == 0


def test_grpc_calls_are_counted_with_a_protocol_label(
    digits: RunningServer, client: triton.InferenceServerClient
) -> None:
    before = digits.metric("coxswain_server_requests_total", protocol="grpc", code="200", version="v1")
    client.infer("digits", [_input(np.ones((1, 64), dtype=np.float32))])
    after = digits.metric("coxswain_server_requests_total", protocol="grpc", code="200", version="v1")
    assert after == before + 1
    assert digits.metric("coxswain_server_request_duration_seconds_count", protocol="grpc") >= 1
    assert digits.metric("coxswain_server_request_duration_seconds_count", protocol="http") >= 1


def test_grpc_and_http_requests_ride_in_one_batch(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    # a batch waits up to 2 s to fill 2 rows: one HTTP and one gRPC request fill it together
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1",
         "--max-latency-ms", "1000", "--max-batch-size", "2"]
    )  # fmt: skip
    server.wait_ready()
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    results: dict[str, np.ndarray] = {}

    def over_http() -> None:
        body = {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]
        }
        out = httpx.post(server.url + "/v2/models/digits/infer", json=body, timeout=30).json()
        results["http"] = np.asarray(out["outputs"][0]["data"])

    thread = threading.Thread(target=over_http)
    thread.start()
    with triton.InferenceServerClient(url=server.grpc_target) as c:
        results["grpc"] = c.infer("digits", [_input(x)]).as_numpy("logits").ravel()
    thread.join()
    np.testing.assert_allclose(results["grpc"], results["http"], rtol=1e-5, atol=1e-6)
    # the warm-up batches are not observed; the one batch of the two requests is
    assert server.metric("coxswain_server_batch_size_count", version="v1") == 1
    assert server.metric("coxswain_server_batch_size_sum", version="v1") == 2


def test_bearer_token_is_checked_on_grpc_metadata(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1"],
        env={"COXSWAIN_SERVER_AUTH_TOKEN": TOKEN},
    )
    server.wait_ready()
    x = np.ones((1, 64), dtype=np.float32)
    with triton.InferenceServerClient(url=server.grpc_target) as c:
        assert c.is_server_live() and c.is_server_ready()  # health is open, as over HTTP
        code, message = _code(lambda: c.infer("digits", [_input(x)]))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization: Bearer" in message
        code, _ = _code(lambda: c.infer("digits", [_input(x)], headers={"authorization": "Bearer nope"}))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _code(lambda: c.get_model_metadata("digits"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        result = c.infer("digits", [_input(x)], headers={"authorization": f"Bearer {TOKEN}"})
        assert result.as_numpy("logits").shape == (1, 10)
    assert _kserve_infer(server.grpc_target, TOKEN, raw=False)["version"] == "v1"


def test_overload_gives_resource_exhausted_with_the_limit(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1",
         "--max-latency-ms", "200", "--max-batch-size", "4096", "--max-queue-size", "2"]
    )  # fmt: skip
    server.wait_ready()
    x = np.ones((1, 64), dtype=np.float32)
    with triton.InferenceServerClient(url=server.grpc_target) as c:
        done: list[tuple[grpc.StatusCode, str] | None] = []

        def call() -> None:
            try:
                c.infer("digits", [_input(x)])
                done.append(None)
            except InferenceServerException as exc:
                done.append((grpc.StatusCode[str(exc.status()).removeprefix("StatusCode.")], exc.message()))

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    refused = [d for d in done if d is not None]
    assert refused and len(refused) < 8
    assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max 2" in m for code, m in refused)
    assert server.metric("coxswain_server_requests_total", protocol="grpc", code="429") == len(refused)


def test_sigterm_drains_grpc_like_http(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    # batches wait 1 s to fill, so the calls below are still queued when SIGTERM arrives
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1",
         "--max-latency-ms", "1000", "--max-batch-size", "1024", "--drain-seconds", "0.5"]
    )  # fmt: skip
    server.wait_ready()
    x = np.ones((1, 64), dtype=np.float32)
    shapes: list[tuple[int, ...]] = []
    with triton.InferenceServerClient(url=server.grpc_target) as c:

        def call() -> None:
            shapes.append(c.infer("digits", [_input(x)], client_timeout=30).as_numpy("logits").shape)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while server.metric("coxswain_server_queue_depth") < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while c.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not c.is_server_ready()  # out of the Service at once
        assert c.is_server_live()
        for t in threads:
            t.join()
    assert shapes == [(1, 10)] * 4
    assert server.wait_exit(30) == 0


def test_grpc_port_in_use_fails_the_start_with_a_clear_error(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    first = start_server(["--repository", str(repo), "--model", "digits", "--version", "v1"])
    first.wait_live()
    second = start_server(
        [
            "--repository",
            str(repo),
            "--model",
            "digits",
            "--version",
            "v1",
            "--grpc-port",
            str(first.grpc_port),
        ]
    )
    assert second.wait_exit(60) != 0
    assert f"cannot listen for gRPC on 127.0.0.1:{first.grpc_port}" in second.output()


def test_unimplemented_triton_extensions_say_so(client: triton.InferenceServerClient) -> None:
    code, _ = _code(lambda: client.get_inference_statistics("digits"))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_raw_channel_undecodable_bytes_are_invalid_argument(digits: RunningServer) -> None:
    with grpc.insecure_channel(digits.grpc_target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            infer(b"\xff\xff\xff", timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in raised.value.details()
