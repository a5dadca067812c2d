"""The ceiling: a bare uvicorn ASGI app that only parses JSON, runs the forward, and answers.

No validation, batching, metrics or routing. Env: BENCH_MODEL_FILE (TorchScript), BENCH_PORT,
BENCH_INPUT_SHAPE (item shape, e.g. "64" or "1,8,8").
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import torch
import uvicorn

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
MODEL = torch.jit.load(os.environ["BENCH_MODEL_FILE"]).eval()  # type: ignore[no-untyped-call]
SHAPE = tuple(int(d) for d in os.environ.get("BENCH_INPUT_SHAPE", "64").split(","))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    instances = orjson.loads(body)["instances"]
    with torch.inference_mode():
        out = torch.softmax(MODEL(torch.tensor(instances, dtype=torch.float32).reshape(-1, *SHAPE)), dim=-1)
    payload = orjson.dumps({"predictions": out.numpy()}, option=orjson.OPT_SERIALIZE_NUMPY)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), loop="uvloop", http="httptools",
        access_log=False, log_level="warning",
    )  # fmt: skip
