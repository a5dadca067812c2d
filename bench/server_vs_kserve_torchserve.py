"""Benchmark: coxswain-server against KServe's Python ModelServer, TorchServe, and a bare
uvicorn ASGI app (the ceiling), on the same models, loaded by `wrk` from a separate process.

For each model (MLP 64->128->10, small CNN on 1x8x8) and server: throughput at saturation
(`wrk -t1 -c32`, closed loop) and p50/p99 latency at a fixed rate (each connection waits
between requests so the total rate is --rate), and p50 at one connection (`-c1`, one request
at a time: a lone caller's wait, where batching has nothing to gain). Prints raw figures, a table, and then
`ratio <what> <value>` lines.

KServe and TorchServe pin dependencies that conflict with ours, so they live in their own
venv (~/.cache/coxswain/bench-venvs/serving-baselines), created here with uv when missing.

    .venv/bin/python bench/server_vs_kserve_torchserve.py [--duration 10] [--rate 2000] [--only ours,kserve]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
LUA = BENCH / "_server_post.lua"
BASELINES = Path.home() / ".cache" / "coxswain" / "bench-venvs" / "serving-baselines"
ITEM_SHAPES = {"mlp": [64], "cnn": [1, 8, 8]}
CONNECTIONS = 32

sys.path.insert(0, str(ROOT / "tests" / "server"))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ensure_baselines_venv() -> Path:
    """The venv holding kserve, torchserve and torch-model-archiver (and our torch version)."""
    python = BASELINES / "bin" / "python"
    if (BASELINES / "bin" / "torchserve").exists() and python.exists():
        return python
    import torch

    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is needed to build the baselines venv: pip install uv")
    log(f"creating {BASELINES} with kserve and torchserve (one-off, a few minutes)")
    BASELINES.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [uv, "venv", str(BASELINES), "--python", "3.11", "--quiet", "--allow-existing"], check=True
    )
    version = torch.__version__.split("+")[0]  # same torch as ours: same kernels, and uv's cache has it
    subprocess.run(
        [uv, "pip", "install", "--python", str(python), "--quiet", f"torch=={version}", "numpy",
         "kserve", "torchserve", "torch-model-archiver"],
        check=True,
    )  # fmt: skip
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A server started in its own session, so stopping it stops its children (TorchServe's workers)."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, logfile: Path) -> None:
        self.logfile = logfile
        self._out = open(logfile, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        else:  # the group may still hold children of a parent that already exited
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


def wait_until(url: str, body: bytes | None, process: Process, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(
                f"server exited; log {process.logfile}:\n{process.logfile.read_text()[-3000:]}"
            )
        try:
            request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not answering 200 after {timeout}s; log {process.logfile}")


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx responses plus socket errors


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(
    url: str, body: Path, seconds: int, rate: float | None = None, connections: int = CONNECTIONS
) -> Load:
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_CONNECTIONS": str(connections)}
    if rate is not None:
        env["WRK_RATE"] = str(rate)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA), url],
        env=env, capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M))
    if "99" not in percentiles:
        raise RuntimeError(f"wrk gave no latency distribution (no request answered?):\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        bad += sum(int(g) for g in m.groups())
    return Load(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        requests=requests,
        bad=bad,
    )


@dataclass
class Target:
    """One server serving one model: how to start it, where to send, what to send."""

    name: str
    start: Callable[[str, Path, int], Process]
    infer_url: Callable[[str, int], str]
    body: Callable[[str], bytes]
    ready_url: Callable[[str, int], str] | None = None  # GET until 200; else POST the body


def v1_body(model: str) -> bytes:
    x = [[[0.5] * 8] * 8] if model == "cnn" else [0.5] * 64
    return json.dumps({"instances": [x]}).encode()


def v2_body(model: str) -> bytes:
    shape = [1, *ITEM_SHAPES[model]]
    return json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * 64}]}
    ).encode()


class Bench:
    def __init__(self, workdir: Path, baselines_python: Path | None) -> None:
        self.workdir = workdir
        self.repo = workdir / "repository"
        self.baselines_python = baselines_python
        from server_models import write_model

        for model in ITEM_SHAPES:
            write_model(self.repo, model, "v1", model, seed=0)

    def model_file(self, model: str) -> Path:
        return self.repo / model / "v1" / "model.pt"

    def shape_env(self, model: str) -> dict[str, str]:
        return {
            "BENCH_MODEL_FILE": str(self.model_file(model)),
            "BENCH_MODEL_NAME": model,
            "BENCH_INPUT_SHAPE": ",".join(map(str, ITEM_SHAPES[model])),
        }

    def start_ours(self, model: str, log_file: Path, port: int) -> Process:
        cmd = [sys.executable, "-m", "coxswain_server", "--repository", str(self.repo), "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
        return Process(cmd, {}, ROOT, log_file)

    def start_bare(self, model: str, log_file: Path, port: int) -> Process:
        env = {**self.shape_env(model), "BENCH_PORT": str(port)}
        return Process([sys.executable, str(BENCH / "_server_bare_asgi.py")], env, ROOT, log_file)

    def start_kserve(self, model: str, log_file: Path, port: int) -> Process:
        assert self.baselines_python is not None
        env = {**self.shape_env(model), "BENCH_PORT": str(port)}
        return Process(
            [str(self.baselines_python), str(BENCH / "_server_kserve_predictor.py")],
            env,
            self.workdir,
            log_file,
        )

    def start_torchserve(self, model: str, log_file: Path, port: int) -> Process:
        assert self.baselines_python is not None
        bindir = self.baselines_python.parent
        home = self.workdir / f"torchserve-{model}"
        store = home / "store"
        store.mkdir(parents=True, exist_ok=True)
        (home / "input_shape.json").write_text(json.dumps(ITEM_SHAPES[model]))
        subprocess.run(
            [str(bindir / "torch-model-archiver"), "--model-name", model, "--version", "1.0",
             "--serialized-file", str(self.model_file(model)), "--handler", str(BENCH / "_server_torchserve_handler.py"),
             "--extra-files", str(home / "input_shape.json"), "--export-path", str(store), "--force"],
            check=True, cwd=home,
        )  # fmt: skip
        config = home / "config.properties"
        config.write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{port}",
                    f"management_address=http://127.0.0.1:{port + 1}",
                    f"metrics_address=http://127.0.0.1:{port + 2}",
                    "disable_token_authorization=true",
                    "install_py_dep_per_model=false",
                    "enable_metrics_api=false",
                    "disable_system_metrics=true",
                    f"model_store={store}",
                    f"load_models={model}.mar",
                ]
            )
            + "\n"
        )
        env = {"PATH": f"{bindir}:{os.environ['PATH']}", "JAVA_TOOL_OPTIONS": "-Xmx1g"}
        cmd = [str(bindir / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config),
               "--model-store", str(store), "--models", f"{model}={model}.mar", "--disable-token-auth"]  # fmt: skip
        return Process(cmd, env, home, log_file)

    def targets(self) -> list[Target]:
        out = [
            Target("coxswain-v2", self.start_ours, lambda m, p: f"http://127.0.0.1:{p}/v2/models/{m}/infer", v2_body,
                   lambda m, p: f"http://127.0.0.1:{p}/v2/health/ready"),
            Target("coxswain-v1", self.start_ours, lambda m, p: f"http://127.0.0.1:{p}/v1/models/{m}:predict", v1_body,
                   lambda m, p: f"http://127.0.0.1:{p}/v2/health/ready"),
            Target("bare-asgi", self.start_bare, lambda m, p: f"http://127.0.0.1:{p}/", v1_body),
        ]  # fmt: skip
        if self.baselines_python is not None:
            out += [
                Target("kserve", self.start_kserve, lambda m, p: f"http://127.0.0.1:{p}/v1/models/{m}:predict", v1_body,
                       lambda m, p: f"http://127.0.0.1:{p}/v1/models/{m}"),
                Target("torchserve", self.start_torchserve, lambda m, p: f"http://127.0.0.1:{p}/predictions/{m}", v1_body),
            ]  # fmt: skip
        return out


def measure(
    bench: Bench, target: Target, model: str, tmp: Path, load: Callable[[str, Path], Load]
) -> Load | None:
    """Start `target` serving `model`, warm it up, run `load` against it, stop it."""
    port = free_port() if target.name != "torchserve" else _free_port_triple()
    body_file = tmp / f"{target.name}-{model}.json"
    body_file.write_bytes(target.body(model))
    log(f"{target.name} {model}: starting on port {port}")
    process = target.start(model, tmp / f"{target.name}-{model}.log", port)
    try:
        url = target.infer_url(model, port)
        if target.ready_url is not None:
            wait_until(target.ready_url(model, port), None, process)
        wait_until(url, body_file.read_bytes(), process)
        run_wrk(url, body_file, 2)  # warm-up: JIT profiling, allocator pools, connections
        return load(url, body_file)
    except Exception as exc:  # one server failing must not hide the others' numbers
        log(f"{target.name} {model}: FAILED: {type(exc).__name__}: {exc}")
        log(f"last lines of {process.logfile}:\n{process.logfile.read_text(errors='replace')[-2000:]}")
        return None
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests/s for the fixed-rate latency runs (default: half the slowest server's saturated rate, "
        "so every server runs below saturation)",
    )
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--only", default="", help="comma-separated server names to run (default: all)")
    parser.add_argument("--no-baselines", action="store_true", help="skip KServe and TorchServe")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: bash dev/install-system-deps.sh")
    baselines = None if args.no_baselines else ensure_baselines_venv()
    saturated: dict[tuple[str, str], Load] = {}
    fixed: dict[tuple[str, str], Load] = {}
    # One connection, one request at a time: what a lone caller waits (no batching to gain).
    alone: dict[tuple[str, str], Load] = {}
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="coxswain-bench-") as tmpdir:
        tmp = Path(tmpdir)
        bench = Bench(tmp, baselines)
        only = set(filter(None, args.only.split(",")))
        targets = [t for t in bench.targets() if not only or t.name in only]

        def sweep(
            model: str, what: str, run: Callable[..., Load], into: dict[tuple[str, str], Load], digits: int
        ) -> None:
            """Every target under `run`, kept in `into` and printed as a `raw` line."""
            for target in targets:
                result = measure(bench, target, model, tmp, run)
                if result is not None:
                    into[(target.name, model)] = result
                    print(
                        f"raw {target.name} {model} {what} rps={result.rps:.0f} "
                        f"p50_ms={result.p50_ms:.{digits}f} p99_ms={result.p99_ms:.{digits}f} "
                        f"requests={result.requests} bad={result.bad}",
                        flush=True,
                    )

        for model in args.models.split(","):
            sweep(model, f"saturation c={CONNECTIONS}", partial(run_wrk, seconds=args.duration), saturated, 2)
            measured = [saturated[(t.name, model)].rps for t in targets if (t.name, model) in saturated]
            rate = args.rate or (0.5 * min(measured) if measured else 100.0)
            rates[model] = rate
            sweep(
                model,
                f"fixed_rate target={rate:.0f}",
                partial(run_wrk, seconds=args.duration, rate=rate),
                fixed,
                2,
            )
            sweep(model, "one_connection", partial(run_wrk, seconds=args.duration, connections=1), alone, 3)
    print()
    print(f"{'server':<13} {'model':<5} {'req/s c=32':>10} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'fixed rate':>10} {'p50 ms':>7} {'p99 ms':>7}")  # fmt: skip
    for (name, model), s in saturated.items():
        f = fixed.get((name, model))
        tail = f"{f.rps:>10.0f} {f.p50_ms:>7.2f} {f.p99_ms:>7.2f}" if f else f"{'-':>10} {'-':>7} {'-':>7}"
        print(f"{name:<13} {model:<5} {s.rps:>10.0f} {s.p50_ms:>7.2f} {s.p99_ms:>7.2f} | {tail}")
    print()
    for model in args.models.split(","):
        for ours in ("coxswain-v1", "coxswain-v2"):
            for other in ("kserve", "torchserve", "bare-asgi"):
                if (ours, model) in saturated and (other, model) in saturated:
                    s, so = saturated[(ours, model)], saturated[(other, model)]
                    print(f"ratio throughput_{ours}_vs_{other}_{model} {s.rps / so.rps:.2f}")
                    print(f"ratio p99_saturated_{other}_over_{ours}_{model} {so.p99_ms / s.p99_ms:.2f}")
                if (ours, model) in alone and (other, model) in alone:
                    a, ao = alone[(ours, model)], alone[(other, model)]
                    print(f"ratio p50_one_connection_{ours}_over_{other}_{model} {a.p50_ms / ao.p50_ms:.2f}")
                if (ours, model) in fixed and (other, model) in fixed:
                    f, fo = fixed[(ours, model)], fixed[(other, model)]
                    print(
                        f"ratio p99_at_{rates[model]:.0f}rps_{other}_over_{ours}_{model} {fo.p99_ms / f.p99_ms:.2f}"
                    )
    return 0


def _free_port_triple() -> int:
    """A port p with p+1 and p+2 free too (TorchServe's management and metrics)."""
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port + 1))
                b.bind(("127.0.0.1", port + 2))
            return port
        except OSError:
            continue
    raise RuntimeError("no three free consecutive ports")


if __name__ == "__main__":
    sys.exit(main())
