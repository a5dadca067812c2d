"""Issue 15, the model server's half: one test per finding, each against a real server
process on loopback. Every one of them failed on the server as it was before the fix."""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from server_harness import RunningServer
from server_models import write_model

KEY = bytes(range(32))


def _v2(rows: int, value: float = 0.5) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [value] * (64 * rows)}]
    }


def _digits(repo: Path, start_server, *extra: str) -> RunningServer:  # type: ignore[no-untyped-def]
    server: RunningServer = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1", *extra]
    )
    server.wait_ready()
    return server


# --- response amplification ---------------------------------------------------------------


def test_repeated_or_unknown_output_names_are_refused(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = _digits(repo, start_server)
    body = _v2(2) | {"outputs": [{"name": "logits"}] * 2000}
    response = httpx.post(server.url + "/v2/models/digits/infer", json=body, timeout=30)
    assert response.status_code == 400, f"{response.status_code}, {len(response.content)} bytes"
    assert "logits" in response.json()["error"] and "more than once" in response.json()["error"]
    unknown = httpx.post(
        server.url + "/v2/models/digits/infer", json=_v2(1) | {"outputs": [{"name": "nope"}]}
    )
    assert unknown.status_code == 400 and "nope" in unknown.json()["error"]
    once = httpx.post(server.url + "/v2/models/digits/infer", json=_v2(1) | {"outputs": [{"name": "logits"}]})
    assert once.status_code == 200 and [o["name"] for o in once.json()["outputs"]] == ["logits"]


# --- per-request row cap ------------------------------------------------------------------


def test_a_request_over_the_row_cap_gets_413_naming_the_limit(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = _digits(repo, start_server, "--max-batch-size", "32")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        v1 = client.post("/v1/models/digits:predict", json={"instances": [[0.5] * 64] * 33})
        assert v1.status_code == 413 and "32" in v1.json()["error"], v1.text
        v2 = client.post("/v2/models/digits/infer", json=_v2(33))
        assert v2.status_code == 413 and "32" in v2.json()["error"], v2.text
        assert client.post("/v2/models/digits/infer", json=_v2(32)).status_code == 200
    lower = _digits(repo, start_server, "--max-batch-size", "32", "--max-request-rows", "4")
    refused = httpx.post(lower.url + "/v2/models/digits/infer", json=_v2(5))
    assert refused.status_code == 413 and "4" in refused.json()["error"]


# --- bounded concurrency, request-read deadline, in-flight after the body ----------------


def _trickle(server: RunningServer, declared: int = 4096) -> socket.socket:
    """A connection that sends its headers and the first bytes of a body, then stalls."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {declared}\r\n\r\n".encode()
        + b'{"inputs": ['
    )
    return sock


def _status_of(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_a_trickled_body_gets_408_and_is_not_counted_in_flight(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = _digits(repo, start_server, "--request-read-timeout-seconds", "1.5")
    sock = _trickle(server)
    try:
        # the autoscaler reads this: a request still sending its body is not work for the model
        seen: list[float] = []
        answered: list[int] = []
        reader = threading.Thread(target=lambda: answered.append(_status_of(sock, 20)))
        reader.start()
        while reader.is_alive():
            seen.append(server.metric("coxswain_server_inflight_requests"))
            time.sleep(0.05)
        assert answered == [408]
        assert seen and max(seen) == 0, f"in-flight counted a body still arriving: {max(seen)}"
    finally:
        sock.close()
    assert server.metric("coxswain_server_requests_total", code="408") == 1
    assert httpx.post(server.url + "/v2/models/digits/infer", json=_v2(1)).status_code == 200


def test_requests_over_the_concurrency_bound_get_429_without_reading_their_body(
    repo: Path,
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    server = _digits(
        repo, start_server, "--max-concurrent-requests", "2", "--request-read-timeout-seconds", "20"
    )
    stalled = [_trickle(server), _trickle(server)]
    try:
        # both stalled requests hold their slots until their read deadline: the third is refused
        # at once, while the first two are still open
        deadline = (
            time.monotonic() + 15
        )  # well inside the stalled requests' 20 s deadline, even on a busy machine
        refused = None
        while time.monotonic() < deadline:
            refused = httpx.post(server.url + "/v2/models/digits/infer", json=_v2(1))
            if refused.status_code == 429:
                break
            time.sleep(0.05)
        assert refused is not None and refused.status_code == 429, refused and refused.text
        assert refused.headers["retry-after"] == "1"
        assert "2" in refused.json()["error"]
        # health and metrics stay answerable: probes must not fail because clients are busy
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200
        assert [_status_of(s, 40) for s in stalled] == [408, 408]
    finally:
        for s in stalled:
            s.close()
    assert httpx.post(server.url + "/v2/models/digits/infer", json=_v2(1)).status_code == 200


# --- one failing request fails alone --------------------------------------------------------


def test_a_failing_request_fails_alone_with_a_generic_message_and_an_id_in_the_log(
    tmp_path: Path,
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    write_model(tmp_path, "fragile", "v1", "fragile", seed=1)
    server = start_server(
        [
            "--repository",
            str(tmp_path),
            "--model",
            "fragile",
            "--max-latency-ms",
            "200",
            "--max-batch-size",
            "32",
        ]
    )
    server.wait_ready()
    barrier = threading.Barrier(6)

    def call(i: int) -> httpx.Response:
        body = _v2(1, 5000.0 if i == 3 else 0.5)  # the fragile model raises on values above 1000
        with httpx.Client(base_url=server.url, timeout=30) as client:
            barrier.wait()
            return client.post("/v2/models/fragile/infer", json=body)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(call, range(6)))
    codes = [r.status_code for r in responses]
    assert codes == [200, 200, 200, 500, 200, 200], codes
    assert server.metric("coxswain_server_batch_size_count") >= 1
    message = responses[3].json()["error"]
    assert "poisoned" not in message and "RuntimeError" not in message, (
        "the exception text reached the client"
    )
    match = re.search(r"error id ([0-9a-f]{12})", message)
    assert match, message
    log_lines = [line for line in server.output().splitlines() if match.group(1) in line]
    assert log_lines and "poisoned" in server.output(), server.output()


# --- a separate admin credential ------------------------------------------------------------


def test_the_inference_token_is_not_an_admin_token(repo: Path, tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "token").write_text("inference-token\n")
    (tmp_path / "admin").write_text("admin-token\n")
    only_auth = _digits(repo, start_server, "--auth-token-file", str(tmp_path / "token"))
    bearer = {"authorization": "Bearer inference-token"}
    change = httpx.put(only_auth.url + "/admin/traffic", json={"weights": {"v1": 1}}, headers=bearer)
    assert change.status_code == 403, change.text  # admin is off: no fallback to the inference token
    assert httpx.post(only_auth.url + "/admin/versions/v1/unload", headers=bearer).status_code == 403

    both = _digits(
        repo,
        start_server,
        "--auth-token-file",
        str(tmp_path / "token"),
        "--admin-token-file",
        str(tmp_path / "admin"),
    )
    assert httpx.get(both.url + "/admin/traffic", headers=bearer).status_code == 401
    admin = {"authorization": "Bearer admin-token"}
    assert httpx.get(both.url + "/admin/traffic", headers=admin).status_code == 200
    assert httpx.post(both.url + "/v2/models/digits/infer", json=_v2(1), headers=admin).status_code == 401

    (tmp_path / "same").write_text("inference-token")
    same: RunningServer = start_server(
        ["--repository", str(repo), "--model", "digits", "--auth-token-file", str(tmp_path / "token"),
         "--admin-token-file", str(tmp_path / "same")]
    )  # fmt: skip
    assert same.wait_exit(180) == 2
    assert "admin token must differ" in same.output()


# --- the model repository -------------------------------------------------------------------


def test_with_a_key_an_unencrypted_version_is_refused(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    write_model(tmp_path, "digits", "v1", "mlp", seed=1)  # no key: plaintext
    (tmp_path / "key").write_bytes(KEY)
    server: RunningServer = start_server(
        ["--repository", str(tmp_path), "--model", "digits", "--key-file", str(tmp_path / "key")]
    )
    assert server.wait_exit(180) == 1
    assert "digits v1 is not encrypted" in server.output()


def test_encrypted_files_swapped_between_versions_are_refused(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    write_model(tmp_path, "digits", "v1", "mlp", seed=1, key=KEY)
    write_model(tmp_path, "digits", "v2", "mlp", seed=2, key=KEY)
    # someone with write access to the storage (not the key) puts v2's weights under v1
    _swap_file(tmp_path / "digits" / "v2", tmp_path / "digits" / "v1", "model.pt")
    (tmp_path / "key").write_bytes(KEY)
    server: RunningServer = start_server(
        [
            "--repository",
            str(tmp_path),
            "--model",
            "digits",
            "--version",
            "v1",
            "--key-file",
            str(tmp_path / "key"),
        ]
    )
    # Refused at start: 1 from the server's own load check, or uvicorn's 3 when the failure
    # surfaces through its lifespan start-up first (seen on a loaded machine).
    assert server.wait_exit(180) in (1, 3)
    assert "decryption failed" in server.output()


def _swap_file(source: Path, target: Path, rel: str) -> None:
    import hashlib
    import json

    data = (source / rel).read_bytes()
    (target / rel).write_bytes(data)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (target / "manifest.json").write_text(json.dumps(manifest))


def test_versions_encrypted_in_the_first_format_still_load_with_a_warning(
    tmp_path: Path,
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    from server_models import write_legacy_encrypted_model

    module = write_legacy_encrypted_model(tmp_path, "digits", "v7", KEY)
    (tmp_path / "key").write_bytes(KEY)
    server: RunningServer = start_server(
        ["--repository", str(tmp_path), "--model", "digits", "--key-file", str(tmp_path / "key")]
    )
    server.wait_ready()
    x = np.full((1, 64), 0.5, dtype=np.float32)
    response = httpx.post(server.url + "/v2/models/digits/infer", json=_v2(1))
    assert response.status_code == 200
    import torch

    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        np.asarray(response.json()["outputs"][0]["data"]), want.ravel(), rtol=1e-4, atol=1e-5
    )
    warning = [
        line for line in server.output().splitlines() if "WARNING" in line and "encryption format 1" in line
    ]
    assert warning and "digits v7" in warning[0], server.output()


def test_operator_made_server_pods_run_with_admin_off(repo: Path, tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """The server started with exactly the environment the operator gives its pods (paths
    mapped to this machine): the inference token opens inference, and nothing opens admin.
    The operator changes weights through the traffic file, never the admin API."""
    from coxswain.api.modelservice import ModelService
    from coxswain.modelservice import builders
    from coxswain.modelservice.source import ServedModel, resolve

    ms = ModelService.model_validate(
        {
            "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {
                "model": {"uri": "pvc://models/digits"},
                "repository": {"persistentVolumeClaim": {"claimName": "models"}},
                "versions": {"stable": "v1"},
                "authTokenSecretRef": {"name": "tok", "key": "t"},
            },
        }
    )
    model = resolve(ms, None)
    assert isinstance(model, ServedModel)
    env = {e["name"]: e["value"] for e in builders.build_env(ms, model)}
    assert not [name for name in env if "ADMIN" in name], env
    (tmp_path / "token").write_text("inference-token")
    (tmp_path / "traffic.json").write_text('{"weights": {"v1": 100}}')
    env |= {
        "COXSWAIN_SERVER_REPOSITORY": str(repo),
        "COXSWAIN_SERVER_TRAFFIC_FILE": str(tmp_path / "traffic.json"),
        "COXSWAIN_SERVER_AUTH_TOKEN_FILE": str(tmp_path / "token"),
        "COXSWAIN_SERVER_DRAIN_SECONDS": "0",
    }
    server: RunningServer = start_server([], env=env)
    server.wait_ready()
    bearer = {"authorization": "Bearer inference-token"}
    assert httpx.post(server.url + "/v2/models/digits/infer", json=_v2(1), headers=bearer).status_code == 200
    change = httpx.put(server.url + "/admin/traffic", json={"weights": {"v1": 1}}, headers=bearer)
    assert change.status_code == 403, change.text


# --- memory stays bounded -------------------------------------------------------------------

MiB = 1024 * 1024


def _peak_rss_since_reset(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_memory_stays_bounded_under_50_concurrent_maximum_size_requests(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    """50 clients at once, each with a body of the largest size and the most rows; half of them
    also ask for the output 20,000 times (once a 47 MB response each). The server's peak RSS
    grows by less than the bound the README states: requests held at once
    (--max-concurrent-requests) x 2 x --max-body-bytes, plus 64 MiB."""
    body_limit, held = 4 * MiB, 16
    server = _digits(
        repo, start_server, "--max-body-bytes", str(body_limit), "--max-concurrent-requests", str(held),
        "--max-batch-size", "32",
    )  # fmt: skip
    import json

    def padded(document: dict[str, object]) -> bytes:
        text = json.dumps(document).encode()
        return text + b" " * (body_limit - len(text))  # trailing whitespace: still valid JSON

    plain = padded(_v2(32))
    amplifying = padded(_v2(32) | {"outputs": [{"name": "logits"}] * 20_000})
    assert len(plain) == len(amplifying) == body_limit
    baseline = server.rss_bytes()
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    barrier = threading.Barrier(50)

    def call(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            barrier.wait()
            return client.post("/v2/models/digits/infer", content=amplifying if i % 2 else plain).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(call, range(50)))
    peak = _peak_rss_since_reset(server.proc.pid)
    bound = held * 2 * body_limit + 64 * MiB
    print(
        f"\npeak RSS {peak / MiB:.0f} MiB, baseline {baseline / MiB:.0f} MiB, grown {(peak - baseline) / MiB:.0f} MiB "
        f"(bound {bound / MiB:.0f} MiB); codes {sorted(set(codes))}: "
        f"{codes.count(200)} x 200, {codes.count(400)} x 400, {codes.count(429)} x 429"
    )
    assert set(codes) <= {200, 400, 429}, codes
    assert codes.count(200) + codes.count(400) >= held, "fewer requests served than the server may hold"
    assert peak - baseline < bound, (
        f"peak RSS grew by {(peak - baseline) / MiB:.0f} MiB, over {bound / MiB:.0f}"
    )
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
