"""Dynamic batching and backpressure, observed from outside: merged batches, per-caller
results, 429 with Retry-After over capacity, and memory that stays bounded."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from server_models import build


def _body(x: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }


def test_concurrent_requests_are_merged_and_each_caller_gets_its_own_rows(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        [
            "--repository",
            str(repo),
            "--model",
            "digits",
            "--version",
            "v1",
            "--max-latency-ms",
            "20",
            "--max-batch-size",
            "64",
        ]
    )
    server.wait_ready()
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(48)]
    with torch.no_grad():
        model = build("mlp", 1)
        wanted = [model(torch.from_numpy(x)).numpy() for x in inputs]
    barrier = threading.Barrier(len(inputs))

    def call(i: int) -> np.ndarray:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            barrier.wait()
            response = client.post("/v2/models/digits/infer", json=_body(inputs[i]))
            assert response.status_code == 200, response.text
            out = response.json()["outputs"][0]
            return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(call, range(len(inputs))))
    for got, want in zip(results, wanted, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    rows = server.metric("coxswain_server_batch_size_sum", version="v1")
    batches = server.metric("coxswain_server_batch_size_count", version="v1")
    assert rows == sum(len(x) for x in inputs)
    assert batches < len(inputs), f"{batches} batches for {len(inputs)} requests: nothing was merged"
    assert rows / batches > 1


def test_overload_gives_429_with_retry_after_and_memory_stays_bounded(repo: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    # a batch waits 100 ms to fill, and only 8 requests may wait: more than 8 at once must be refused
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1",
         "--max-latency-ms", "100", "--max-batch-size", "4096", "--max-queue-size", "8"]
    )  # fmt: skip
    server.wait_ready()
    body = _body(np.ones((1, 64), dtype=np.float32))
    rss_before = server.rss_bytes()
    codes: list[int] = []
    retry_after: set[str] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + 4

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while time.monotonic() < deadline:
                response = client.post("/v2/models/digits/infer", json=body)
                with lock:
                    codes.append(response.status_code)
                    if response.status_code == 429:
                        retry_after.add(response.headers.get("retry-after", ""))

    threads = [threading.Thread(target=hammer) for _ in range(32)]
    for t in threads:
        t.start()
    peak_queue = 0.0
    while any(t.is_alive() for t in threads):
        peak_queue = max(peak_queue, server.metric("coxswain_server_queue_depth", version="v1"))
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert set(codes) <= {200, 429}, f"unexpected codes {set(codes) - {200, 429}}"
    assert codes.count(429) > 0 and codes.count(200) > 0
    assert retry_after == {"1"}
    assert peak_queue <= 8
    grown = server.rss_bytes() - rss_before
    assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB under overload"
    assert server.metric("coxswain_server_requests_total", version="v1", code="429") == codes.count(429)
