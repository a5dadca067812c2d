"""Start-up, shutdown and refusal: ready only after load, SIGTERM finishes in-flight work
and exits 0, tampered/incomplete/encrypted-without-key models are refused, auth."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_models import write_model

from coxswain.artifacts.manifest import ModelFormat

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def test_live_at_once_ready_only_after_the_model_is_loaded(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    write_model(tmp_path, "wide", "v1", "wide")  # ~134 MB: hashing and loading take a moment
    server = start_server(["--repository", str(tmp_path), "--model", "wide"])
    server.wait_live()
    # the port is open before the model is loaded: liveness yes, readiness and inference no
    ready = httpx.get(server.url + "/v2/health/ready")
    infer = httpx.post(server.url + "/v2/models/wide/infer", json=BODY)
    assert ready.status_code == 503, "ready before the model was loaded"
    assert ready.json()["reason"] == "loading models"
    assert infer.status_code == 503 and infer.headers["retry-after"] == "1"
    server.wait_ready()
    assert "version v1 is loaded and warmed up" in server.output()


def test_sigterm_finishes_in_flight_requests_then_exits_zero(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    # batches wait 1 s to fill, so the requests below are still queued when SIGTERM arrives
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1",
         "--max-latency-ms", "1000", "--max-batch-size", "1024", "--drain-seconds", "0.5"]
    )  # fmt: skip
    server.wait_ready()
    codes: list[int] = []

    def call() -> None:
        codes.append(httpx.post(server.url + "/v2/models/digits/infer", json=BODY, timeout=30).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while server.metric("coxswain_server_queue_depth") < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    assert httpx.get(server.url + "/v2/health/ready").status_code == 503  # out of the Service at once
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    for t in threads:
        t.join()
    assert codes == [200] * 8
    assert server.wait_exit(30) == 0
    assert "stopped cleanly" in server.output()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda d: _corrupt(d / "model.pt"), "does not match its sha256"),
        (lambda d: (d / "model.pt").unlink(), "is missing (incomplete copy?)"),
    ],
    ids=["tampered", "incomplete"],
)
def test_damaged_model_is_refused_with_a_clear_error(tmp_path: Path, start_server, damage, says: str) -> None:  # type: ignore[no-untyped-def]
    write_model(tmp_path, "digits", "v1", "mlp")
    damage(tmp_path / "digits" / "v1")
    server = start_server(["--repository", str(tmp_path), "--model", "digits"])
    assert server.wait_exit(60) == 1
    assert says in server.output()


def test_encrypted_model_needs_its_key(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    key = os.urandom(32)
    write_model(tmp_path, "digits", "v1", "mlp", key=key)
    no_key = start_server(["--repository", str(tmp_path), "--model", "digits"])
    assert no_key.wait_exit(60) == 1
    assert "is encrypted" in no_key.output() and "--key-file" in no_key.output()
    wrong = tmp_path / "wrong.key"
    wrong.write_text(os.urandom(32).hex())
    wrong_key = start_server(["--repository", str(tmp_path), "--model", "digits", "--key-file", str(wrong)])
    assert wrong_key.wait_exit(60) == 1
    assert "not the one it was encrypted with" in wrong_key.output()
    right = tmp_path / "model.key"
    right.write_bytes(key)
    server = start_server(["--repository", str(tmp_path), "--model", "digits", "--key-file", str(right)])
    server.wait_ready()
    assert httpx.post(server.url + "/v2/models/digits/infer", json=BODY).status_code == 200


def test_state_dict_models_are_refused_with_what_to_do(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    write_model(tmp_path, "digits", "v1", "mlp", fmt=ModelFormat.STATE_DICT)
    server = start_server(["--repository", str(tmp_path), "--model", "digits"])
    assert server.wait_exit(60) == 1
    assert "export as torchscript or exported_program" in server.output()


def test_bearer_token_auth(repo: Path, tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1"],
        env={"COXSWAIN_SERVER_AUTH_TOKEN": "t0ken"},
    )
    server.wait_ready()  # health needs no token: the kubelet's probes carry none
    assert httpx.post(server.url + "/v2/models/digits/infer", json=BODY).status_code == 401
    bad = httpx.post(
        server.url + "/v2/models/digits/infer", json=BODY, headers={"authorization": "Bearer nope"}
    )
    assert bad.status_code == 401
    good = httpx.post(
        server.url + "/v2/models/digits/infer", json=BODY, headers={"authorization": "Bearer t0ken"}
    )
    assert good.status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
