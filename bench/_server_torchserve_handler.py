"""TorchServe handler equivalent to our predictor: TorchScript forward and softmax over the
batch TorchServe hands over, `{"instances": ...}` in, probabilities out per request."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

SHAPE = (64,)


class Handler:
    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        global SHAPE
        model_dir = context.system_properties.get("model_dir")
        self.model = torch.jit.load(
            os.path.join(model_dir, context.manifest["model"]["serializedFile"])
        ).eval()
        with open(os.path.join(model_dir, "input_shape.json")) as f:
            SHAPE = tuple(json.load(f))
        torch.set_num_threads(1)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        rows = []
        counts = []
        for request in data:
            body = request.get("body") or request.get("data")
            if isinstance(body, bytes | bytearray):
                body = json.loads(body)
            instances = body["instances"]
            counts.append(len(instances))
            rows.extend(instances)
        with torch.inference_mode():
            x = torch.tensor(rows, dtype=torch.float32).reshape(-1, *SHAPE)
            probabilities = torch.softmax(self.model(x), dim=-1).tolist()
        out, start = [], 0
        for n in counts:
            out.append({"predictions": probabilities[start : start + n]})
            start += n
        return out


_service = Handler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
