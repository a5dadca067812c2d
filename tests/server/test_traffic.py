"""Traffic weights changed at run time, by the admin endpoint and by the watched file,
under steady load: no request fails, and explicit version calls keep their version."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from pathlib import Path

import httpx

BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


class SteadyLoad:
    """Threads sending unversioned requests until stopped; records (code, version, sent at) per
    response. A response can be recorded after a mark although its request was sent (and
    routed) before it: `versions_since` leaves those out."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.results: list[tuple[int, str, float]] = []
        self._marked: dict[int, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post("/v2/models/digits/infer", json=BODY)
                    item = (r.status_code, r.headers.get("x-coxswain-version", ""), sent)
                except httpx.HTTPError as exc:
                    item = (0, type(exc).__name__, sent)
                with self._lock:
                    self.results.append(item)

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def mark(self) -> int:
        with self._lock:
            count = len(self.results)
            self._marked[count] = time.monotonic()
            return count

    def versions_since(self, mark: int) -> collections.Counter[str]:
        """Versions that answered requests sent after `mark` was taken."""
        with self._lock:
            since = self._marked.get(mark, float("-inf"))
            return collections.Counter(v for _, v, sent in self.results[mark:] if sent >= since)


def _wait_for(predicate, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_weight_changes_under_load_fail_no_request(repo: Path, tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    token = tmp_path / "admin-token"
    token.write_text("s3cret\n")
    server = start_server(
        ["--repository", str(repo), "--model", "digits", "--version", "v1", "--version", "v2",
         "--weights", "v1=100,v2=0", "--admin-token-file", str(token)]
    )  # fmt: skip
    server.wait_ready()
    admin = httpx.Client(base_url=server.url, headers={"authorization": "Bearer s3cret"}, timeout=30)
    with SteadyLoad(server.url) as load:
        _wait_for(lambda: load.mark() > 50)
        assert set(load.versions_since(0)) == {"v1"}
        mark = load.mark()
        r = admin.put("/admin/traffic", json={"weights": {"v1": 50, "v2": 50}})
        assert r.status_code == 200, r.text
        _wait_for(lambda: load.mark() > mark + 200)
        split = load.versions_since(mark)
        assert split["v1"] > 40 and split["v2"] > 40, split
        mark = load.mark()
        assert admin.put("/admin/traffic", json={"weights": {"v2": 100}}).status_code == 200
        # explicit calls still reach v1, which is loaded but out of rotation
        explicit = httpx.post(server.url + "/v2/models/digits/versions/v1/infer", json=BODY)
        assert explicit.headers["x-coxswain-version"] == "v1"
        _wait_for(lambda: load.mark() > mark + 100)
        time.sleep(0.2)
        late = load.mark()
        _wait_for(lambda: load.mark() > late + 50)
        assert set(load.versions_since(late)) == {"v2"}
    failures = [r for r in load.results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} requests failed: {failures[:5]}"
    # what the admin endpoint refuses, it refuses with a reason
    assert admin.put("/admin/traffic", json={"weights": {"v7": 100}}).status_code == 409
    assert admin.put("/admin/traffic", json={"weights": {"v1": 0}}).status_code == 400
    assert httpx.put(server.url + "/admin/traffic", json={"weights": {"v1": 1}}).status_code == 401
    assert server.metric("coxswain_server_traffic_weight", version="v2") == 100
    # load and unload a version at run time
    loaded = admin.post("/admin/versions/v3/load")
    assert loaded.status_code == 200, loaded.text
    v3 = httpx.post(server.url + "/v2/models/digits/versions/v3/infer", json=BODY)
    assert v3.headers["x-coxswain-version"] == "v3"
    assert admin.post("/admin/versions/v3/unload").status_code == 200
    assert httpx.post(server.url + "/v2/models/digits/versions/v3/infer", json=BODY).status_code == 404
    assert admin.post("/admin/versions/v2/unload").status_code == 409  # it takes all the traffic
    assert admin.post("/admin/versions/v9/load").status_code == 400  # not in the repository
    admin.close()


def _write_atomically(path: Path, weights: dict[str, int]) -> None:
    """What the kubelet does to a ConfigMap volume: new file, then a rename over the old one."""
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps({"weights": weights}))
    os.replace(staged, path)


def test_traffic_file_loads_new_versions_shifts_traffic_and_unloads_old_ones(
    repo: Path,
    tmp_path: Path,
    start_server,  # type: ignore[no-untyped-def]
) -> None:
    traffic = tmp_path / "traffic.json"
    _write_atomically(traffic, {"v1": 100})
    server = start_server(
        [
            "--repository",
            str(repo),
            "--model",
            "digits",
            "--traffic-file",
            str(traffic),
            "--traffic-poll-seconds",
            "0.2",
        ]
    )
    server.wait_ready()
    with SteadyLoad(server.url) as load:
        _wait_for(lambda: load.mark() > 50)
        _write_atomically(traffic, {"v1": 90, "v3": 10})  # v3 is not loaded yet: the server loads it
        _wait_for(lambda: "v3" in load.versions_since(0))
        _write_atomically(traffic, {"v3": 100})  # v1 leaves the file: out of rotation, then unloaded
        _wait_for(lambda: httpx.get(server.url + "/v2/models/digits/versions/v1/ready").status_code == 404)
        mark = load.mark()
        _wait_for(lambda: load.mark() > mark + 50)
        assert set(load.versions_since(mark)) == {"v3"}
        _write_atomically(traffic, {"v3": "lots"})  # type: ignore[dict-item]  # a bad file is logged and ignored
        time.sleep(0.6)
    failures = [r for r in load.results if r[0] != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} requests failed: {failures[:5]}"
    assert "keeping the current weights" in server.output()
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
