"""Benchmark: coxswain-server's gRPC v2 endpoint against KServe's own gRPC server (its Python
ModelServer with `grpc_port`), same TorchScript MLP 64->128->10, loaded by ghz (a compiled
gRPC load generator, built from the Go module proxy into ~/.cache/coxswain) from a separate
process, and our HTTP figure at the same concurrency (wrk) beside it.

Both servers get the same ModelInfer message: one row in `raw_input_contents` (what
tritonclient sends). ghz reads the service from a protoset written here from the descriptors
tritonclient ships, so nothing generated lands in the repository. Prints raw figures, then
`ratio <what> <value>` lines.

    .venv/bin/python bench/server_grpc_vs_kserve.py [--duration 10] [--concurrency 32] [--connections 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server_vs_kserve_torchserve import (
    BENCH,
    ROOT,
    Bench,
    Process,
    ensure_baselines_venv,
    free_port,
    log,
    run_wrk,
    v2_body,
    wait_until,
)

GHZ_VERSION = "v0.120.0"
GHZ = Path.home() / ".cache" / "coxswain" / "bin" / f"ghz-{GHZ_VERSION}" / "ghz"
CALL = "inference.GRPCInferenceService.ModelInfer"


def ensure_ghz() -> Path:
    if GHZ.exists():
        return GHZ
    go = shutil.which("go")
    if go is None:
        raise SystemExit("Go is needed to build ghz (apt-get install golang-go, or see dev/build-tools.sh)")
    log(f"building ghz {GHZ_VERSION} into {GHZ.parent} (one-off, a few minutes)")
    cache = Path.home() / ".cache" / "coxswain"
    env = {**os.environ, "GOBIN": str(GHZ.parent), "CGO_ENABLED": "0",
           "GOCACHE": str(cache / "go-build"), "GOMODCACHE": str(cache / "go-mod")}  # fmt: skip
    subprocess.run(
        [go, "install", "-trimpath", "-ldflags", "-s -w", f"github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"],
        env=env,
        check=True,
    )
    return GHZ


def write_protoset(path: Path) -> None:
    """The inference.GRPCInferenceService descriptors (and what they import) as a FileDescriptorSet."""
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2

    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(fd) -> None:  # type: ignore[no-untyped-def]
        if fd.name in seen:
            return
        seen.add(fd.name)
        for dep in fd.dependencies:
            add(dep)
        fd.CopyToProto(files.file.add())

    add(service_pb2.DESCRIPTOR)
    path.write_bytes(files.SerializeToString())


def write_request(path: Path, model: str) -> None:
    from tritonclient.grpc import service_pb2 as pb

    x = np.full((1, 64), 0.5, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, id="bench")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(x.tobytes())
    path.write_bytes(request.SerializeToString())


@dataclass
class GrpcLoad:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int


def run_ghz(
    target: str, protoset: Path, request: Path, seconds: int, concurrency: int, connections: int
) -> GrpcLoad:
    out = subprocess.run(
        [str(GHZ), "--insecure", "--protoset", str(protoset), "--call", CALL, "--binary-file", str(request),
         "-c", str(concurrency), "--connections", str(connections), "-z", f"{seconds}s",
         "--format", "json", target],
        capture_output=True, text=True, check=True, timeout=seconds + 120,
    ).stdout  # fmt: skip
    report = json.loads(out)
    percentiles = {p["percentage"]: p["latency"] / 1e6 for p in report.get("latencyDistribution") or []}
    statuses = report.get("statusCodeDistribution") or {}
    # ghz ends a -z run by closing the connection under the calls still in flight: those are
    # cut off by the load generator, not failed by the server
    cut = sum(
        n
        for error, n in (report.get("errorDistribution") or {}).items()
        if "closed network connection" in error
    )
    bad = sum(n for code, n in statuses.items() if code != "OK") - cut
    if not percentiles:
        raise RuntimeError(f"ghz got no answers from {target}: {statuses} {report.get('errorDistribution')}")
    return GrpcLoad(report["rps"], percentiles[50], percentiles[99], report["count"], bad)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="calls in flight (ghz -c; wrk connections)"
    )
    parser.add_argument("--connections", type=int, default=1, help="gRPC connections ghz spreads them over")
    args = parser.parse_args()
    ensure_ghz()
    baselines = ensure_baselines_venv()
    model = "mlp"
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp_dir:
        tmp = Path(tmp_dir)
        bench = Bench(tmp, baselines)
        protoset, request, body = tmp / "inference.protoset", tmp / "request.bin", tmp / "body.json"
        write_protoset(protoset)
        write_request(request, model)
        body.write_bytes(v2_body(model))
        results: dict[str, GrpcLoad] = {}

        # ours: HTTP and gRPC on one server process
        port, grpc_port = free_port(), free_port()
        ours = Process(
            [sys.executable, "-m", "coxswain_server", "--repository", str(bench.repo), "--model", model,
             "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning"],
            {}, ROOT, tmp / "ours.log",
        )  # fmt: skip
        try:
            wait_until(f"http://127.0.0.1:{port}/v2/health/ready", None, ours)
            run_ghz(
                f"127.0.0.1:{grpc_port}", protoset, request, 2, args.concurrency, args.connections
            )  # warm
            results["ours-grpc"] = run_ghz(
                f"127.0.0.1:{grpc_port}", protoset, request, args.duration, args.concurrency, args.connections
            )
            http = run_wrk(f"http://127.0.0.1:{port}/v2/models/{model}/infer", body, seconds=args.duration)
            results["ours-http"] = GrpcLoad(http.rps, http.p50_ms, http.p99_ms, http.requests, http.bad)
        finally:
            ours.stop()

        # KServe's ModelServer with its gRPC server on
        port, grpc_port = free_port(), free_port()
        env = {**bench.shape_env(model), "BENCH_PORT": str(port), "BENCH_GRPC_PORT": str(grpc_port)}
        kserve = Process(
            [str(baselines), str(BENCH / "_server_kserve_predictor.py")], env, tmp, tmp / "kserve.log"
        )
        try:
            wait_until(f"http://127.0.0.1:{port}/v2/health/ready", None, kserve)
            time.sleep(1)  # its gRPC server starts beside the HTTP one
            run_ghz(f"127.0.0.1:{grpc_port}", protoset, request, 2, args.concurrency, args.connections)
            results["kserve-grpc"] = run_ghz(
                f"127.0.0.1:{grpc_port}", protoset, request, args.duration, args.concurrency, args.connections
            )
        finally:
            kserve.stop()

    print(f"# MLP 64->128->10, batch-1, {args.concurrency} in flight, {args.duration}s each, "
          f"gRPC over {args.connections} connection(s)")  # fmt: skip
    print(f"{'target':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} {'bad':>5}")
    for name, r in results.items():
        print(f"{name:<12} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.requests:>9} {r.bad:>5}")
    for name, r in results.items():
        if r.bad:
            print(f"# warning: {name} had {r.bad} failed calls")
    print(f"ratio grpc_rps_ours_vs_kserve_grpc {results['ours-grpc'].rps / results['kserve-grpc'].rps:.2f}")
    print(f"ratio grpc_vs_http_rps_ours {results['ours-grpc'].rps / results['ours-http'].rps:.2f}")
    print(f"ratio grpc_p50_kserve_vs_ours {results['kserve-grpc'].p50_ms / results['ours-grpc'].p50_ms:.2f}")


if __name__ == "__main__":
    main()
