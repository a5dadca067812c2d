"""Coxswain's model server: Open Inference Protocol v2 and a v1 predict endpoint in front of
dynamically batched PyTorch models loaded from a Coxswain model repository.

Layers, outermost first (each module names its concern):
- transport: `app` (raw ASGI), `server` (uvicorn, signals, graceful drain), `cli`
- protocol: `protocol_v2`, `protocol_v1` (bytes <-> numpy, no torch), `tensors` (dtypes)
- routing: `versions` (loaded versions and traffic), `traffic` (weights, watched file)
- batching: `batcher` (queue, merge, split, backpressure)
- model: `model` (load, verify, forward, warm-up; the only module that imports torch)
"""
