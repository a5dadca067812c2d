"""KServe's Python ModelServer with a predictor equivalent to ours (TorchScript forward and
softmax, v1 `{"instances": ...}` in, probabilities out). Runs in the baselines venv.

Env: BENCH_MODEL_FILE, BENCH_MODEL_NAME, BENCH_PORT, BENCH_INPUT_SHAPE; BENCH_GRPC_PORT turns on
KServe's own gRPC server (v2 `ModelInfer`: the first input's tensor in, probabilities out as raw
bytes, as our server answers). Latency logging is off (it logs a line per request by default), so
KServe is measured at its best.
"""

from __future__ import annotations

import os
from typing import Any

import kserve
import torch

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
SHAPE = tuple(int(d) for d in os.environ.get("BENCH_INPUT_SHAPE", "64").split(","))


class TorchScriptPredictor(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model: Any = None

    def load(self) -> bool:
        self.model = torch.jit.load(self.path).eval()
        self.ready = True
        return True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        with torch.inference_mode():
            if isinstance(payload, kserve.InferRequest):  # v2 over gRPC
                x = torch.from_numpy(payload.inputs[0].as_numpy()).reshape(-1, *SHAPE)
                probabilities = torch.softmax(self.model(x), dim=-1).numpy()
                output = kserve.InferOutput("probabilities", list(probabilities.shape), "FP32")
                output.set_data_from_numpy(probabilities, binary_data=True)
                return kserve.InferResponse(payload.id, self.name, [output], use_binary_outputs=True)
            x = torch.tensor(payload["instances"], dtype=torch.float32).reshape(-1, *SHAPE)
            return {"predictions": torch.softmax(self.model(x), dim=-1).tolist()}


if __name__ == "__main__":
    model = TorchScriptPredictor(os.environ["BENCH_MODEL_NAME"], os.environ["BENCH_MODEL_FILE"])
    model.load()
    grpc_port = os.environ.get("BENCH_GRPC_PORT")
    kserve.ModelServer(
        http_port=int(os.environ["BENCH_PORT"]),
        grpc_port=int(grpc_port) if grpc_port else int(os.environ["BENCH_PORT"]) + 1,
        workers=1,
        enable_grpc=bool(grpc_port),
        enable_latency_logging=False,
    ).start([model])
